/**
 * What every Trace service answers for operations, in one place:
 * - `GET /healthz`: alive; 200 `{ok: true, service}` while the process runs, whatever its
 *   dependencies do.
 * - `GET /readyz`: 200 `{ok: true, service, checks}` only when every dependency the service needs
 *   (its databases, its queue) answers within a short timeout; else 503 `NOT_READY` naming the
 *   ones that did not, so a frozen database cannot hang the probe.
 * - `GET /metrics`: Prometheus text from the service's own prom-client registry. Gauges that need
 *   a database read are collected at scrape time with a bounded query (scrapeQuery).
 *
 * Also the listener settings every command shares: `--listen host:port`, `TRACE_<SERVICE>_LISTEN`
 * (`host:port`, `:port`, `port`; `0` = a free port) and the older `--host`/`--port`.
 */
import type { FastifyInstance } from 'fastify';
import { Counter, Gauge, Histogram, Registry, type Metric } from 'prom-client';
import type { Logger } from './log.js';
import { createHttpServer, serve, type ServedApp } from './http.js';

/** How long a readiness check or a scrape-time query may take before it counts as failed. */
export const OPS_CHECK_TIMEOUT_MS = 1_000;
export const SCRAPE_QUERY_TIMEOUT_MS = 2_000;

/** A readiness check: resolves when the dependency answers within `timeoutMs`, rejects otherwise. */
export type ReadyCheck = (timeoutMs: number) => Promise<void>;

export interface Readiness {
  ready: boolean;
  checks: Record<string, string>;
  /** Why the service is not ready besides failed checks (e.g. it is draining). */
  reason?: string;
  /** Fields added to the answer as they are. */
  extra?: Record<string, unknown>;
}

/** Rejects after `ms` unless `p` settles first; a late rejection of `p` is swallowed. */
export async function withTimeout<T>(p: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  p.catch(() => undefined);
  try {
    return await Promise.race([p, new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(Object.assign(new Error(`no answer within ${ms} ms`), { code: 'ETIMEDOUT' })), ms);
    })]);
  } finally {
    clearTimeout(timer);
  }
}

/** Runs every check at once, each bounded by `timeoutMs`; `ok` or a short reason per check. */
export async function runChecks(checks: Record<string, ReadyCheck>, timeoutMs = OPS_CHECK_TIMEOUT_MS): Promise<Readiness> {
  const out: Record<string, string> = {};
  await Promise.all(Object.entries(checks).map(async ([name, check]) => {
    try {
      await withTimeout(check(timeoutMs), timeoutMs + 100);
      out[name] = 'ok';
    } catch (e) {
      out[name] = (e instanceof Error ? e.message : String(e)).slice(0, 200) || 'failed';
    }
  }));
  return { ready: Object.values(out).every((v) => v === 'ok'), checks: out };
}

export interface OpsOptions {
  /** Stable service name: `dispatcher`, `gateway`, `query`, `rpc-gateway`, `worker`, `sink`, `delivery`. */
  service: string;
  registry: Registry;
  /** Dependencies probed by `/readyz` (ignored when `ready` is given). */
  checks?: Record<string, ReadyCheck>;
  /** A readiness of the service's own (the Dispatcher's monitor and drain state). */
  ready?: () => Promise<Readiness>;
}

/**
 * A registry for one service instance (several share a `trace lite up` process, so none uses
 * prom-client's global registry); every series carries `service`.
 */
export function serviceRegistry(service: string): Registry {
  const r = new Registry();
  r.setDefaultLabels({ service });
  new Gauge({
    name: 'trace_service_start_time_seconds',
    help: 'When this service instance started (Unix time); its presence says the service is scraped',
    registers: [r],
  }).set(Date.now() / 1000);
  return r;
}

/** Adds `/healthz`, `/readyz` and `/metrics` to a service's app, and times every request. */
export function installOps(app: FastifyInstance, opts: OpsOptions): void {
  const { service, registry } = opts;
  const requests = metric(registry, 'trace_http_request_duration_seconds', () => new Histogram({
    name: 'trace_http_request_duration_seconds',
    help: 'HTTP requests by route template, method and status class (the claim latency is route="/internal/task-claim")',
    labelNames: ['route', 'method', 'status'],
    buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
    registers: [registry],
  }));
  app.addHook('onResponse', async (req, reply) => {
    const route = req.routeOptions.url ?? 'unmatched';
    if (route === '/metrics' || route === '/healthz' || route === '/readyz') return;
    requests.observe({ route, method: req.method, status: `${Math.floor(reply.statusCode / 100)}xx` }, reply.elapsedTime / 1000);
  });
  app.get('/healthz', async () => ({ ok: true, service }));
  app.get('/readyz', async (_req, reply) => {
    const r = opts.ready ? await opts.ready() : await runChecks(opts.checks ?? {});
    if (r.ready) return { ok: true, service, checks: r.checks, ...r.extra };
    const down = Object.entries(r.checks).filter(([, v]) => v !== 'ok').map(([k]) => k.replace(/_/g, ' '));
    const why = r.reason ?? `${down.join(', ')} unreachable`;
    return reply.status(503).send({ error: `not ready: ${why}`, code: 'NOT_READY', service, checks: r.checks, ...r.extra });
  });
  app.get('/metrics', async (_req, reply) => {
    const text = await registry.metrics();
    return reply.header('content-type', registry.contentType).send(text);
  });
}

/** Returns the registry's metric of that name, creating it once (several apps may share a registry). */
export function metric<T extends Metric>(registry: Registry, name: string, create: () => T): T {
  return (registry.getSingleMetric(name) as T | undefined) ?? create();
}

/**
 * A gauge filled at scrape time from a bounded read. `read` returns the label sets and values
 * to publish now; a read that fails or takes longer than SCRAPE_QUERY_TIMEOUT_MS leaves the
 * gauge empty for this scrape and counts in `trace_metrics_collect_errors_total{collector}`.
 */
export function scrapeGauge<L extends string>(registry: Registry, opts: {
  name: string;
  help: string;
  labelNames?: readonly L[];
  read: () => Promise<Array<{ labels?: Partial<Record<L, string>>; value: number }>>;
}): Gauge<L> {
  const errors = metric(registry, 'trace_metrics_collect_errors_total', () => new Counter({
    name: 'trace_metrics_collect_errors_total',
    help: 'Scrape-time reads that failed or timed out (their gauges are left empty for that scrape)',
    labelNames: ['collector'],
    registers: [registry],
  }));
  return new Gauge<L>({
    name: opts.name,
    help: opts.help,
    labelNames: opts.labelNames ?? [],
    registers: [registry],
    async collect() {
      this.reset();
      try {
        const rows = await withTimeout(opts.read(), SCRAPE_QUERY_TIMEOUT_MS);
        for (const r of rows) {
          if (r.labels) this.set(r.labels as Record<L, string>, r.value);
          else this.set(r.value);
        }
      } catch {
        errors.inc({ collector: opts.name });
      }
    },
  });
}

/**
 * Counters that mirror a service's own running totals (`stats` objects the services already
 * keep): each scrape adds what grew since the last one.
 */
export function statsCounter<K extends string>(registry: Registry, opts: {
  name: string;
  help: string;
  label: string;
  read: () => Record<K, number>;
}): Counter<string> {
  const last = new Map<string, number>();
  return new Counter({
    name: opts.name,
    help: opts.help,
    labelNames: [opts.label],
    registers: [registry],
    collect() {
      for (const [k, v] of Object.entries(opts.read()) as Array<[string, number]>) {
        const grew = v - (last.get(k) ?? 0);
        last.set(k, v);
        this.inc({ [opts.label]: k }, Math.max(0, grew));
      }
    },
  });
}

// ---- listeners ----

export interface ListenAddress {
  host: string;
  /** 0 picks a free port. */
  port: number;
}

/**
 * Parses a listen address: `host:port`, `[v6]:port`, `:port` or `port` (the host then defaults),
 * `0` or `host:0` for a free port. Throws a TypeError naming `what` on anything else.
 */
export function parseListen(value: string, what: string, defaultHost = '127.0.0.1'): ListenAddress {
  const v = value.trim();
  const m = /^(?:(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]*):)?(\d{1,5})$/.exec(v);
  const port = m ? Number(m[2]) : NaN;
  if (!m || !Number.isSafeInteger(port) || port > 65535) {
    throw new TypeError(`${what} must be host:port, :port or port (0 = a free port), got "${v.slice(0, 60)}"`);
  }
  const host = m[1] ? m[1].replace(/^\[|\]$/g, '') : defaultHost;
  return { host, port };
}

/** The services with a listener, and the variable that sets each one's address. */
export const LISTEN_ENV = {
  dispatcher: 'TRACE_DISPATCHER_LISTEN',
  gateway: 'TRACE_GATEWAY_LISTEN',
  query: 'TRACE_QUERY_LISTEN',
  rpcGateway: 'TRACE_RPC_GATEWAY_LISTEN',
  worker: 'TRACE_WORKER_LISTEN',
  sink: 'TRACE_SINK_LISTEN',
  delivery: 'TRACE_DELIVERY_LISTEN',
} as const;
export type ListenService = keyof typeof LISTEN_ENV;

/**
 * Where a service listens: `--listen` first, then `--host`/`--port`, then its
 * `TRACE_<SERVICE>_LISTEN`, else `fallback` (undefined = no listener: the worker, sink and
 * delivery ops listeners are off unless asked for).
 */
export function resolveListen(
  service: ListenService,
  penv: NodeJS.ProcessEnv,
  flags: { listen?: string; host?: string; port?: number },
  fallback: ListenAddress | undefined,
): ListenAddress | undefined {
  if (flags.listen !== undefined) return parseListen(flags.listen, '--listen');
  const raw = penv[LISTEN_ENV[service]]?.trim();
  const fromEnv = raw ? parseListen(raw, LISTEN_ENV[service]) : undefined;
  if (flags.host !== undefined || flags.port !== undefined) {
    const port = flags.port ?? fromEnv?.port ?? fallback?.port;
    if (port === undefined) throw new TypeError(`--host needs --port (or --listen host:port) for the ${service} listener`);
    return { host: flags.host ?? fromEnv?.host ?? fallback?.host ?? '127.0.0.1', port };
  }
  return fromEnv ?? fallback;
}

/**
 * The small ops-only listener of a service that has no HTTP API of its own (worker, sink,
 * delivery): `/healthz`, `/readyz` and `/metrics`.
 */
export async function startOpsListener(opts: OpsOptions & { address: ListenAddress; log: Logger }): Promise<ServedApp> {
  const app = createHttpServer({ log: opts.log, name: `${opts.service}-ops` });
  installOps(app, opts);
  return serve(app, opts.address.host, opts.address.port);
}
