import Fastify, { type FastifyError, type FastifyInstance } from 'fastify';
import { z } from 'zod';
import { TraceError, badRequest, formatPath, isTraceError, notFound } from '../core/errors.js';
import { DEFAULTS, DEFAULT_PORTS, readEnv } from '../core/config.js';
import { createLogger, type Logger } from '../core/log.js';
import { classifyRpcError, isJsonRpcRequest, isJsonRpcResponse, jsonRpcRequestSchema } from '../chain/jsonrpc.js';
import { HttpTransportError, httpRequestRaw, type HttpRawResult } from '../core/http-client.js';
import { methodAwareNotFound } from '../core/http.js';
import { installOps, serviceRegistry } from '../core/ops.js';
import { Counter } from 'prom-client';
import { Limiter } from './limiter.js';
import { DEFAULT_HEALTH, type HealthPolicy, type Provider, ProviderPool, parseRetryAfter } from './providers.js';

/**
 * RPC egress gateway: the only path from workers to chain RPC providers. Workers POST a
 * JSON-RPC request or batch to `/rpc/{pool}`; the gateway forwards it to one provider of the
 * named pool, failing over on connect errors, timeouts, 5xx, 429 (or a JSON-RPC rate-limit
 * error), 401/403 and non-JSON answers. Provider URLs (and the keys inside them) stay in
 * this process: logs and errors name a provider as `<index>:<host>`.
 */

export interface RpcGatewayOptions {
  /** Pool name -> provider URLs (`readEnv().rpcPools`). */
  pools: Record<string, readonly string[]>;
  /** Per upstream attempt, including reading the body. Default 30 s. */
  timeoutMs?: number;
  /** Upstream requests in flight per pool. Default 32. */
  concurrencyPerPool?: number;
  /** Requests allowed to wait for a slot per pool before answering 429. Default 1024. */
  maxQueuePerPool?: number;
  /** How long a request may wait for a slot. Default `timeoutMs`. */
  queueWaitMs?: number;
  /** Request body cap. Default `DEFAULTS.maxBodyBytes` (1 MiB). */
  bodyLimitBytes?: number;
  /** Upstream response cap. Default 64 MiB. */
  maxResponseBytes?: number;
  /** Items allowed in one JSON-RPC batch. Default 1000. */
  maxBatchItems?: number;
  health?: Partial<HealthPolicy>;
  log?: Logger;
}

export const POOL_NAME_RE = /^[a-z0-9_]{1,64}$/;

const DEFAULTS_GW = {
  timeoutMs: 30_000,
  concurrencyPerPool: 32,
  maxQueuePerPool: 1024,
  maxResponseBytes: 64 * 1024 * 1024,
  maxBatchItems: 1000,
} as const;

type FailureKind = 'connect' | 'timeout' | 'rate_limited' | 'http_5xx' | 'http_auth' | 'bad_response';

interface Forwarded {
  status: number;
  body: Buffer;
  provider: Provider;
  attempts: number;
}

interface PoolRuntime {
  pool: ProviderPool;
  limiter: Limiter;
}

class UpstreamFailure extends Error {
  constructor(
    readonly kind: FailureKind,
    readonly retryAfterMs?: number,
  ) {
    super(kind);
  }
}

class ResponseTooLarge extends Error {}

function classifyFetchError(e: unknown): FailureKind {
  if (e instanceof UpstreamFailure) return e.kind;
  if (e instanceof HttpTransportError && e.timedOut) return 'timeout';
  return 'connect';
}

const headerValue = (v: string | string[] | undefined): string | null => (Array.isArray(v) ? (v[0] ?? null) : (v ?? null));

const looksLikeJsonText = (text: string): boolean => /^\s*[[{]/.test(text);

/**
 * `looksLikeJsonText` of the decoded body, read from the bytes: ASCII whitespace is skipped,
 * `[`/`{` or any other ASCII byte decides; a non-ASCII byte (maybe Unicode whitespace) falls
 * back to decoding the body.
 */
function looksLikeJson(body: Buffer): boolean {
  for (let i = 0; i < body.length; i++) {
    const b = body[i]!;
    if (b === 0x20 || (b >= 0x09 && b <= 0x0d)) continue;
    if (b === 0x5b || b === 0x7b) return true;
    if (b < 0x80) return false;
    return looksLikeJsonText(body.toString('utf8'));
  }
  return false;
}

/**
 * Some providers answer a rate limit with HTTP 200 and a JSON-RPC error (-32005, "limit
 * exceeded"); another key of the pool may still have capacity. Only small single answers
 * are inspected (errors are short; results are not parsed).
 */
function isRateLimitText(text: string): boolean {
  if (text.length > 4096 || !/^\s*\{/.test(text)) return false;
  try {
    const v: unknown = JSON.parse(text);
    return isJsonRpcResponse(v) && v.error !== undefined && classifyRpcError(v.error) === 'rate_limited';
  } catch {
    return false;
  }
}

/** A UTF-8 body over 3 * 4096 bytes decodes to more than 4096 UTF-16 units: never inspected. */
const isRateLimitAnswer = (body: Buffer): boolean => body.length <= 3 * 4096 && isRateLimitText(body.toString('utf8'));

function summarise(body: unknown): { methods: string[]; batch: number } {
  const items = Array.isArray(body) ? body : [body];
  const methods = [...new Set(items.map((i) => String((i as { method?: unknown }).method)))].slice(0, 5);
  return { methods, batch: items.length };
}

function validateBody(body: unknown, maxBatchItems: number): void {
  const problems: Array<{ path: string; message: string }> = [];
  const check = (item: unknown, prefix: Array<string | number>) => {
    if (isJsonRpcRequest(item)) return;
    const r = jsonRpcRequestSchema.safeParse(item);
    if (!r.success) {
      for (const issue of r.error.issues) problems.push({ path: formatPath([...prefix, ...issue.path]), message: issue.message });
    }
  };
  if (Array.isArray(body)) {
    if (body.length === 0) throw badRequest('empty JSON-RPC batch', 'RPC_INVALID_REQUEST');
    if (body.length > maxBatchItems) {
      throw new TraceError(413, 'RPC_BATCH_TOO_LARGE', `a JSON-RPC batch may hold at most ${maxBatchItems} requests`);
    }
    body.forEach((item, i) => check(item, [i]));
  } else if (body !== null && typeof body === 'object') {
    check(body, []);
  } else {
    throw badRequest('body must be a JSON-RPC request object or batch array', 'RPC_INVALID_REQUEST');
  }
  if (problems.length > 0) throw badRequest('invalid JSON-RPC request', 'RPC_INVALID_REQUEST', problems.slice(0, 20));
}

export function buildRpcGateway(opts: RpcGatewayOptions): FastifyInstance {
  const timeoutMs = opts.timeoutMs ?? DEFAULTS_GW.timeoutMs;
  const maxResponseBytes = opts.maxResponseBytes ?? DEFAULTS_GW.maxResponseBytes;
  const maxBatchItems = opts.maxBatchItems ?? DEFAULTS_GW.maxBatchItems;
  const queueWaitMs = opts.queueWaitMs ?? timeoutMs;
  const health: HealthPolicy = { ...DEFAULT_HEALTH, ...opts.health };
  const log = opts.log ?? createLogger('rpc-gateway');
  const registry = serviceRegistry('rpc-gateway');
  const rpcRequests = new Counter({
    name: 'trace_rpc_requests_total',
    help: 'JSON-RPC requests forwarded, by pool and outcome (ok, or the error code answered)',
    labelNames: ['pool', 'outcome'],
    registers: [registry],
  });

  const pools = new Map<string, PoolRuntime>();
  for (const [rawName, urls] of Object.entries(opts.pools)) {
    const name = rawName.toLowerCase();
    if (!POOL_NAME_RE.test(name)) throw new TraceError(500, 'RPC_POOL_CONFIG_INVALID', 'pool names must match ^[a-z0-9_]{1,64}$');
    const concurrency = opts.concurrencyPerPool ?? DEFAULTS_GW.concurrencyPerPool;
    pools.set(name, {
      pool: new ProviderPool(name, urls, health, concurrency),
      limiter: new Limiter(concurrency, opts.maxQueuePerPool ?? DEFAULTS_GW.maxQueuePerPool),
    });
  }

  const app = Fastify({
    logger: false, // our own request log below never carries provider URLs
    bodyLimit: opts.bodyLimitBytes ?? DEFAULTS.maxBodyBytes,
  });

  app.setErrorHandler((err: FastifyError | TraceError, _req, reply) => {
    if (isTraceError(err)) return reply.code(err.status).send(err.toJSON());
    const status = err.statusCode ?? 500;
    if (status === 413) return reply.code(413).send({ error: 'request body too large', code: 'PAYLOAD_TOO_LARGE' });
    if (status === 415) return reply.code(415).send({ error: 'content type must be application/json', code: 'UNSUPPORTED_MEDIA_TYPE' });
    if (status >= 400 && status < 500) return reply.code(400).send({ error: 'malformed request body', code: 'BAD_REQUEST' });
    log.error({ err: { name: err.name, code: err.code } }, 'rpc gateway internal error');
    return reply.code(500).send({ error: 'internal error', code: 'INTERNAL' });
  });
  // JSON-RPC bodies are JSON: anything else (Fastify's default text/plain included) is 415.
  app.removeContentTypeParser('text/plain');
  methodAwareNotFound(app);

  async function attempt(p: Provider, body: string): Promise<{ status: number; body: Buffer }> {
    let res: HttpRawResult;
    try {
      res = await httpRequestRaw(p.endpoint, {
        method: 'POST',
        headers: { 'content-type': 'application/json', accept: 'application/json' },
        body,
        timeoutMs,
        maxResponseBytes,
        agent: p.agent,
      });
    } catch (e) {
      if (e instanceof HttpTransportError && e.code === 'RESPONSE_TOO_LARGE') throw new ResponseTooLarge();
      throw e;
    }
    if (res.status === 429) throw new UpstreamFailure('rate_limited', parseRetryAfter(headerValue(res.headers['retry-after'])));
    if (res.status >= 500 || (res.status >= 300 && res.status < 400)) throw new UpstreamFailure('http_5xx');
    if (res.status === 401 || res.status === 403) throw new UpstreamFailure('http_auth');
    const answer = res.body;
    if (!looksLikeJson(answer)) throw new UpstreamFailure('bad_response');
    if (isRateLimitAnswer(answer)) throw new UpstreamFailure('rate_limited');
    return { status: res.status, body: answer };
  }

  async function forward(rt: PoolRuntime, body: string, ctx: Record<string, unknown>): Promise<Forwarded> {
    const kinds: FailureKind[] = [];
    let attempts = 0;
    for (const p of rt.pool.order()) {
      attempts++;
      try {
        const r = await attempt(p, body);
        rt.pool.markSuccess(p);
        return { ...r, provider: p, attempts };
      } catch (e) {
        if (e instanceof ResponseTooLarge) {
          throw new TraceError(502, 'RPC_RESPONSE_TOO_LARGE', `the upstream response exceeded ${maxResponseBytes} bytes`);
        }
        const kind = classifyFetchError(e);
        kinds.push(kind);
        rt.pool.markFailure(p, e instanceof UpstreamFailure ? e.retryAfterMs : undefined);
        log.warn({ ...ctx, provider: p.label, reason: kind, attempt: attempts }, 'rpc provider failed; trying the next one');
      }
    }
    if (kinds.every((k) => k === 'rate_limited')) {
      throw new TraceError(429, 'RPC_UPSTREAM_RATE_LIMITED', 'every provider of the pool is rate limiting');
    }
    if (kinds[kinds.length - 1] === 'timeout') {
      throw new TraceError(504, 'RPC_UPSTREAM_TIMEOUT', 'the RPC providers of the pool timed out');
    }
    throw new TraceError(502, 'RPC_UPSTREAM_UNAVAILABLE', 'no RPC provider of the pool answered');
  }

  app.post<{ Params: { pool: string } }>('/rpc/:pool', async (req, reply) => {
    const name = req.params.pool.toLowerCase();
    const rt = POOL_NAME_RE.test(name) ? pools.get(name) : undefined;
    if (!rt) throw notFound('unknown RPC pool', 'RPC_POOL_NOT_FOUND');
    validateBody(req.body, maxBatchItems);
    const { methods, batch } = summarise(req.body);
    const ctx = { pool: name, methods, batch };
    const started = Date.now();
    const release = await rt.limiter.acquire(queueWaitMs).catch((e: unknown) => {
      log.warn({ ...ctx, reason: 'pool_busy' }, 'rpc request rejected');
      rpcRequests.inc({ pool: name, outcome: isTraceError(e) ? e.code : 'INTERNAL' });
      throw e;
    });
    try {
      const out = await forward(rt, JSON.stringify(req.body), ctx);
      log.info({ ...ctx, provider: out.provider.label, attempts: out.attempts, status: out.status, ms: Date.now() - started }, 'rpc request');
      rpcRequests.inc({ pool: name, outcome: 'ok' });
      return reply
        .code(out.status)
        .header('content-type', 'application/json; charset=utf-8')
        .header('x-trace-rpc-provider', String(out.provider.index))
        .send(out.body);
    } catch (e) {
      const code = isTraceError(e) ? e.code : 'INTERNAL';
      rpcRequests.inc({ pool: name, outcome: code });
      log.warn({ ...ctx, code, ms: Date.now() - started }, 'rpc request failed');
      throw e;
    } finally {
      release();
    }
  });

  app.addHook('onClose', async () => {
    for (const rt of pools.values()) rt.pool.close();
  });

  // Ready as soon as it listens: its providers are outside Trace, and a pool whose providers all
  // fail answers 502 per request (counted below) rather than taking the gateway out of rotation.
  installOps(app, { service: 'rpc-gateway', registry });

  app.get('/v1/pools', async () => ({
    pools: [...pools.values()]
      .map((rt) => ({ name: rt.pool.name, providers: rt.pool.providers.length }))
      .sort((a, b) => a.name.localeCompare(b.name)),
  }));

  return app;
}

const startOptionsSchema = z.object({
  host: z.string().min(1).default('127.0.0.1'),
  port: z.number().int().min(0).max(65535).default(DEFAULT_PORTS.rpcGateway),
});

export interface StartedRpcGateway {
  app: FastifyInstance;
  /** Base URL, e.g. `http://127.0.0.1:8083`; workers call `${url}/rpc/{pool}`. */
  url: string;
  close(): Promise<void>;
}

/** Builds and listens (127.0.0.1:8083 by default). Pools default to `TRACE_RPC_POOL_<NAME>_URL`. */
export async function startRpcGateway(
  opts: Partial<RpcGatewayOptions> & { host?: string; port?: number } = {},
): Promise<StartedRpcGateway> {
  const { host, port } = startOptionsSchema.parse({ host: opts.host, port: opts.port });
  const app = buildRpcGateway({ ...opts, pools: opts.pools ?? readEnv().rpcPools });
  await app.listen({ host, port });
  const addr = app.server.address();
  const boundPort = typeof addr === 'object' && addr ? addr.port : port;
  const shownHost = host.includes(':') ? `[${host}]` : host;
  return { app, url: `http://${shownHost}:${boundPort}`, close: () => app.close() };
}
