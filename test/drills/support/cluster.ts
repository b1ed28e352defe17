/**
 * A whole Trace deployment as separate processes for the failure drills: `trace dispatcher`,
 * `trace worker` x2, `trace sink` and `trace delivery`, talking real HTTP, on three fresh
 * databases (state, data and a queue database of its own) on the shared Postgres. Every
 * service's database URL points at a TCP proxy the test owns, so a drill cuts a database by
 * cutting its proxy; the harness itself reads the databases directly.
 *
 * Child output goes to one log file per process under the cluster's home; `tail(name)` shows the
 * end of one when a drill fails. Every exit is recorded: an exit the drill did not ask for is a
 * crash, and the drills assert there are none.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream, type WriteStream } from 'node:fs';
import { cp, mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createPgDatabase } from '../../support/db.js';
import { pgTarget, startTcpProxy, type TcpProxy } from '../../support/tcp-proxy.js';
import { openDb } from '../../../src/db/open.js';
import type { Db } from '../../../src/db/db.js';
import { mintDevUserToken } from '../../../src/auth/user.js';
import { buildBundleFromDir } from '../../../src/cli/commands/udf.js';

const ROOT = new URL('../../../', import.meta.url).pathname;
const BUNDLE_DIR = new URL('./bundle/', import.meta.url).pathname;

export const SECRETS = {
  worker: 'drill-worker-token-0123456789abcdef',
  capability: 'drill-capability-secret-'.padEnd(48, 'c'),
  user: 'drill-user-secret-'.padEnd(48, 'u'),
};

export type ServiceName = string;

interface Proc {
  name: string;
  child: ChildProcess;
  exited: Promise<number | null>;
  code: number | null | undefined;
  signal: NodeJS.Signals | null | undefined;
  intentional: boolean;
  log: WriteStream;
}

/** A webhook receiver: records every request; answers 503 while failing. */
export class Receiver {
  readonly requests: Array<{ deliveryId: string; key: string | undefined; status: number; at: number; body: Record<string, any> }> = [];
  failing = false;
  url = '';
  private server: Server | undefined;

  async start(): Promise<this> {
    this.server = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        let body: Record<string, any> = {};
        try { body = JSON.parse(Buffer.concat(chunks).toString('utf8')) as Record<string, any>; } catch { /* keep {} */ }
        const status = this.failing ? 503 : 200;
        this.requests.push({ deliveryId: String(body.delivery_id), key: req.headers['idempotency-key'] as string | undefined, status, at: Date.now(), body });
        res.writeHead(status, { 'content-type': 'application/json' });
        res.end('{}');
      });
    });
    await new Promise<void>((r) => this.server!.listen(0, '127.0.0.1', r));
    this.url = `http://127.0.0.1:${(this.server.address() as net.AddressInfo).port}`;
    return this;
  }

  /** 2xx answers per delivery id. */
  delivered(): Map<string, number> {
    const m = new Map<string, number>();
    for (const r of this.requests) if (r.status === 200) m.set(r.deliveryId, (m.get(r.deliveryId) ?? 0) + 1);
    return m;
  }

  async close(): Promise<void> {
    this.server?.closeAllConnections();
    await new Promise<void>((r) => (this.server ? this.server.close(() => r()) : r()));
  }
}

async function freePort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

export class Cluster {
  readonly procs = new Map<ServiceName, Proc>();
  readonly unexpected: string[] = [];
  orgId = '';
  alertId = '';
  bundleId = '';
  adminToken = '';
  private drops: Array<() => Promise<void>> = [];

  private constructor(
    readonly home: string,
    readonly port: number,
    readonly urls: { state: string; data: string; queue: string },
    readonly proxies: { state: TcpProxy; data: TcpProxy; queue: TcpProxy },
    readonly db: { state: Db; data: Db; queue: Db },
    readonly receiver: Receiver,
  ) {}

  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  static async start(): Promise<Cluster> {
    const home = await mkdtemp(join(tmpdir(), 'trace-drills-'));
    await mkdir(join(home, 'logs'), { recursive: true });
    const s = await createPgDatabase('trace_drs');
    const d = await createPgDatabase('trace_drd');
    const q = await createPgDatabase('trace_drq');
    const proxies = {
      state: await startTcpProxy(pgTarget(s.url)),
      data: await startTcpProxy(pgTarget(d.url)),
      queue: await startTcpProxy(pgTarget(q.url)),
    };
    const db = {
      state: await openDb(s.url, { max: 4 }),
      data: await openDb(d.url, { max: 4 }),
      queue: await openDb(q.url, { max: 4 }),
    };
    const receiver = await new Receiver().start();
    const c = new Cluster(home, await freePort(), { state: s.url, data: d.url, queue: q.url }, proxies, db, receiver);
    c.drops.push(s.drop, d.drop, q.drop);
    c.adminToken = await mintDevUserToken(SECRETS.user, 'admin');
    return c;
  }

  /** The environment every service shares: databases through the proxies, one object store, the secrets. */
  env(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
    return {
      PATH: process.env.PATH,
      TRACE_FROM_SOURCE: '1',
      TRACE_LOG_LEVEL: 'info',
      TRACE_HOME: this.home,
      TRACE_OBJECT_STORE_URL: `file://${join(this.home, 'objects')}`,
      TRACE_STATE_DATABASE_URL: this.proxies.state.urlFor(this.urls.state),
      TRACE_DATA_DATABASE_URL: this.proxies.data.urlFor(this.urls.data),
      TRACE_QUEUE_DATABASE_URL: this.proxies.queue.urlFor(this.urls.queue),
      TRACE_DISPATCHER_URL: this.url,
      TRACE_WORKER_TOKEN: SECRETS.worker,
      TRACE_TASK_CAPABILITY_SECRET: SECRETS.capability,
      TRACE_USER_JWT_SECRET: SECRETS.user,
      TRACE_ADMIN_SUB: 'admin',
      TRACE_DELIVERY_ALLOW_HTTP_LOOPBACK: '1',
      TRACE_SINK_MAX_RECEIVES: '3',
      TRACE_DB_CONNECT_TIMEOUT_MS: '2000',
      TRACE_SHUTDOWN_GRACE_SECONDS: '5',
      TRACE_TASK_RETRY_BASE_MS: '500',
      TRACE_TASK_RETRY_MAX_MS: '2000',
      TRACE_INFRA_RETRY_BASE_MS: '1000',
      TRACE_INFRA_RETRY_MAX_MS: '5000',
      TRACE_LEASE_SECONDS: '60',
      ...extra,
    };
  }

  private spawnService(name: ServiceName, args: string[], env: NodeJS.ProcessEnv): Proc {
    const log = createWriteStream(join(this.home, 'logs', `${name}.log`), { flags: 'a' });
    const child = spawn(process.execPath, [join(ROOT, 'bin/trace.mjs'), ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    child.stdout!.pipe(log, { end: false });
    child.stderr!.pipe(log, { end: false });
    const p: Proc = { name, child, code: undefined, signal: undefined, intentional: false, log, exited: undefined as unknown as Promise<number | null> };
    p.exited = new Promise((resolve) => {
      child.on('exit', (code, signal) => {
        p.code = code;
        p.signal = signal;
        if (!p.intentional) this.unexpected.push(`${name} exited (code ${code}, signal ${signal})`);
        resolve(code);
      });
    });
    this.procs.set(name, p);
    return p;
  }

  async startDispatcher(extra: Record<string, string> = {}): Promise<void> {
    this.spawnService('dispatcher', ['dispatcher', '--include-test-operators', '--port', String(this.port)], this.env(extra));
    await this.until('the Dispatcher to answer', async () => (await fetch(`${this.url}/healthz`).then((r) => r.ok).catch(() => false)), 60_000);
  }

  /** Stops the Dispatcher with `signal` and returns its exit code. */
  async stopDispatcher(signal: NodeJS.Signals = 'SIGTERM'): Promise<number | null> {
    return this.stop('dispatcher', signal);
  }

  startWorker(id: string): void {
    this.spawnService(`worker:${id}`, ['worker', '--include-test-operators', '--worker-id', id, '--concurrency', '4'], this.env());
  }

  startSink(): void {
    this.spawnService('sink', ['sink'], this.env());
  }

  startDelivery(): void {
    this.spawnService('delivery', ['delivery'], this.env());
  }

  /** Sends `signal` to a service the drill means to stop, and waits for it to exit. */
  async stop(name: ServiceName, signal: NodeJS.Signals = 'SIGTERM'): Promise<number | null> {
    const p = this.procs.get(name);
    if (!p || p.code !== undefined) return p?.code ?? null;
    p.intentional = true;
    p.child.kill(signal);
    return p.exited;
  }

  /** Services running now (no exit recorded). */
  running(): string[] {
    return [...this.procs.values()].filter((p) => p.code === undefined).map((p) => p.name);
  }

  async tail(name: ServiceName, lines = 40): Promise<string> {
    const text = await readFile(join(this.home, 'logs', `${name}.log`), 'utf8').catch(() => '');
    return text.split('\n').slice(-lines).join('\n');
  }

  async api<T = any>(method: string, path: string, body?: unknown): Promise<{ status: number; body: T }> {
    const headers: Record<string, string> = { authorization: `Bearer ${this.adminToken}` };
    let payload: string | undefined;
    if (body !== undefined) {
      payload = typeof body === 'string' ? body : JSON.stringify(body);
      headers['content-type'] = typeof body === 'string' ? 'application/yaml' : 'application/json';
    }
    const res = await fetch(`${this.url}${path}`, { method, headers, ...(payload === undefined ? {} : { body: payload }) });
    const text = await res.text();
    let parsed: unknown = text;
    try { parsed = JSON.parse(text); } catch { /* text */ }
    return { status: res.status, body: parsed as T };
  }

  async until<T>(what: string, fn: () => Promise<T | undefined | null | false>, timeoutMs: number, everyMs = 100): Promise<T> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const v = await fn().catch(() => undefined);
      if (v) return v;
      if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
      await new Promise((r) => setTimeout(r, everyMs));
    }
  }

  /** Uploads the drill alert bundle, creates an alert definition to the receiver, deploys the drill DAG. */
  async setUp(): Promise<void> {
    const dir = join(this.home, 'bundle');
    await cp(BUNDLE_DIR, dir, { recursive: true });
    await cp(join(ROOT, 'examples/udf/node-alert/trace-udf.mjs'), join(dir, 'trace-udf.mjs'));
    const built = await buildBundleFromDir(dir);
    const open = await this.api('POST', '/v1/udf/bundles', { runtime: 'node' });
    if (open.status !== 201) throw new Error(`bundle open failed: ${JSON.stringify(open.body)}`);
    const put = await fetch(open.body.upload.url, { method: 'PUT', body: built.zip, headers: open.body.upload.headers });
    if (!put.ok) throw new Error(`bundle upload failed: ${put.status}`);
    const fin = await this.api('POST', `/v1/udf/bundles/${open.body.bundle_id}/finalize`, { sha256: built.sha256 });
    if (fin.status !== 200) throw new Error(`bundle finalize failed: ${JSON.stringify(fin.body)}`);
    this.bundleId = open.body.bundle_id;
    const alert = await this.api('POST', '/v1/alerts', { name: 'drill alert', condition: {}, channels: [{ type: 'webhook', url: `${this.receiver.url}/hook` }] });
    if (alert.status !== 201) throw new Error(`alert create failed: ${JSON.stringify(alert.body)}`);
    this.alertId = alert.body.id;
    const dep = await this.api('POST', '/v1/dags/drill/versions?activate=true', drillDag(this.bundleId, this.alertId));
    if (dep.status !== 201) throw new Error(`deploy failed: ${JSON.stringify(dep.body)}`);
    this.orgId = (await this.db.state.query<{ id: string }>(`SELECT id FROM orgs LIMIT 1`)).rows[0]!.id;
  }

  async trigger(job: string, cursor: number): Promise<string> {
    const r = await this.api('POST', `/v1/dags/drill/jobs/${job}/trigger`, { cursor });
    if (r.status !== 201 && r.status !== 200) throw new Error(`trigger ${job} ${cursor} failed: ${r.status} ${JSON.stringify(r.body)}`);
    return r.body.task_id as string;
  }

  async close(): Promise<void> {
    for (const p of this.procs.values()) {
      if (p.code === undefined) {
        p.intentional = true;
        p.child.kill('SIGKILL');
        await p.exited;
      }
      p.log.end();
    }
    await this.receiver.close();
    for (const d of Object.values(this.db)) await d.close().catch(() => undefined);
    for (const p of Object.values(this.proxies)) await p.close();
    for (const drop of this.drops) await drop().catch(() => undefined);
    if (!process.env.TRACE_DRILL_KEEP) await rm(this.home, { recursive: true, force: true });
  }
}

/**
 * The drill DAG. Work items run by the workers (`work`, `work_long`) and by the Dispatcher
 * itself (`inproc`, `inproc_long`), each emitting its trigger cursor to one downstream job (one
 * downstream task per item: a duplicate output would show as a second one). Alert items: a
 * `ticks` cursor feeds `evaluate` (the drill UDF bundle), whose batch the sink writes into
 * alert_events; `route` (alert_route, on the workers) creates the deliveries.
 */
export function drillDag(bundleId: string, alertId: string): string {
  const source = (name: string, runtime: string, ms: number) => `
  - name: ${name}
    activation: source
    runtime: ${runtime}
    operator: test_sleep
    source: { kind: manual }
    outputs: 1
    max_attempts: 3
    config: { ms: ${ms}, emit_cursor: true }
  - name: after_${name}
    activation: reactive
    runtime: ecs_platform
    operator: noop
    execution_strategy: PerUpdate
    inputs:
      - from: { job: ${name}, output: 0 }
    outputs: 1
    update_strategy: replace`;
  return `name: drill
jobs:${source('work', 'ecs_platform', 1500)}${source('work_long', 'ecs_platform', 4000)}${source('inproc', 'dispatcher', 1500)}${source('inproc_long', 'dispatcher', 8000)}
  - name: ticks
    activation: source
    runtime: dispatcher
    operator: cursor_emitter
    source: { kind: manual }
    outputs: 1
  - name: evaluate
    activation: reactive
    runtime: lambda
    operator: alert_evaluate
    execution_strategy: PerUpdate
    inputs:
      - from: { job: ticks, output: 0 }
    outputs: 1
    update_strategy: append
    unique_key: [dedupe_key]
    timeout_seconds: 120
    config:
      alert_definition_id: ${alertId}
      params: { poison_cursor: 7001 }
    udf:
      bundle_id: "${bundleId}"
      entrypoint: index.mjs
  - name: route
    activation: reactive
    runtime: ecs_platform
    operator: alert_route
    execution_strategy: PerUpdate
    inputs:
      - from: { dataset: alert_events }
    outputs: 1
    update_strategy: replace
`;
}
