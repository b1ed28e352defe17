/**
 * The UDF/sink/alerting platform pieces built by hand on fresh databases (lite wiring comes
 * later): a Dispatcher with the udf and alerting plugins and the UDF executor, a Query Service,
 * a worker (runs alert_route), the sink and the Delivery Service, all in this process and on
 * 127.0.0.1 ephemeral ports. Each part can be left out or stopped by the test.
 *
 * test/support/dispatcher.ts `buildDispatcher` takes no plugins, executors or catalog, so this
 * builder mirrors it (same TEST_SECRETS, FAST settings) with those added.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createHash } from 'node:crypto';
import type { FastifyInstance } from 'fastify';
import { freshDbs, type TestDbs } from '../support/db.js';
import { TEST_SECRETS, testDispatcherDeps } from '../support/dispatcher.js';
import { waitFor } from '../support/platform.js';
import { writeParquet } from '../query/support.js';
import { inspectBundle } from '../../src/udf/bundle.js';
import { PgQueue } from '../../src/queue/pgqueue.js';
import { createCapabilityIssuer, type CapabilityIssuer } from '../../src/auth/capability.js';
import { mintDevUserToken } from '../../src/auth/user.js';
import { operatorRegistry } from '../../src/operators/registry.js';
import type { Operator, OperatorCatalog, OperatorInfo } from '../../src/operators/types.js';
import { Dispatcher, type DispatcherPlugin } from '../../src/dispatcher/dispatcher.js';
import type { DispatcherSettings } from '../../src/dispatcher/settings.js';
import { bootstrapDeployment } from '../../src/dispatcher/identity.js';
import { InProcessExecutor } from '../../src/dispatcher/executors.js';
import { silentLogger, type Logger } from '../../src/core/log.js';
import { listen } from '../../src/core/http.js';
import { unauthorized } from '../../src/core/errors.js';
import { newId } from '../../src/core/ids.js';
import { FileObjectStore } from '../../src/objectstore/file.js';
import { dispatcherLeaseCheck } from '../../src/query/lease.js';
import { buildQueryApp } from '../../src/query/service.js';
import { startWorker, type WorkerHandle } from '../../src/worker/worker.js';
import { TaskClient } from '../../src/worker/task-client.js';
import { udfPlugin, UdfExecutor, withAttemptScopes, type UdfExecutorOptions } from '../../src/dispatcher/udf/index.js';
import { alertingPlugin, alertEvaluateContext, createAlertRouteStore } from '../../src/alerting/index.js';
import { createAlertRoute } from '../../src/operators/alert_route/index.js';
import { alertEvaluate } from '../../src/operators/alert_evaluate/index.js';
import { udfOperator } from '../../src/operators/udf/index.js';
import { startSink, type SinkHandle, type SinkOptions } from '../../src/sink/sink.js';
import { httpDatasetEvents } from '../../src/sink/events.js';
import { startDelivery, type DeliveryHandle, type DeliveryOptions } from '../../src/delivery/service/service.js';
import type { SandboxConfig } from '../../src/udf/sandbox/config.js';
import type { UdfSandbox } from '../../src/udf/sandbox/sandbox.js';
import { startTestSandbox } from '../udf/support/sandbox.js';

export const UPLOAD_SECRET = 'upload-secret-'.padEnd(48, 'x');

export interface PlatformOptions {
  settings?: Partial<DispatcherSettings>;
  /** Allow http:// loopback channel URLs (the development switch). Default true. */
  loopback?: boolean;
  worker?: boolean;
  sink?: boolean | Partial<SinkOptions>;
  delivery?: boolean | Partial<DeliveryOptions>;
  query?: boolean;
  executor?: Partial<UdfExecutorOptions>;
  /** Settings of the UDF sandbox every local run goes through (default: bubblewrap). */
  sandbox?: Partial<SandboxConfig>;
  log?: Logger;
}

export interface UdfPlatform {
  dbs: TestDbs;
  home: string;
  store: FileObjectStore;
  queue: PgQueue;
  dispatcher: Dispatcher;
  issuer: CapabilityIssuer;
  executor: UdfExecutor;
  sandbox: UdfSandbox;
  orgId: string;
  url: string;
  queryUrl: string;
  adminToken: string;
  worker?: WorkerHandle;
  sink?: SinkHandle;
  delivery?: DeliveryHandle;
  api<T = any>(method: string, path: string, body?: unknown, token?: string): Promise<{ status: number; body: T }>;
  close(): Promise<void>;
}

export function platformRegistry(data: TestDbs['data']): Map<string, Operator> {
  const reg = operatorRegistry({ includeTestOperators: true });
  reg.set('alert_route', createAlertRoute(createAlertRouteStore(data)));
  reg.set('alert_evaluate', alertEvaluate);
  reg.set('udf', udfOperator);
  return reg;
}

export function catalogOf(reg: Map<string, Operator>): OperatorCatalog {
  const m = new Map<string, OperatorInfo>();
  for (const [k, op] of reg) m.set(k, op.info);
  return m;
}

export async function buildUdfPlatform(backend: 'postgres' | 'pglite', opts: PlatformOptions = {}): Promise<UdfPlatform> {
  const dbs = await freshDbs(backend);
  const home = await mkdtemp(join(tmpdir(), 'trace-udfp-'));
  const log = opts.log ?? silentLogger;
  const store = new FileObjectStore(join(home, 'objects'));
  const { org_id } = await bootstrapDeployment(dbs.state, { adminSub: 'admin' });
  const issuer = withAttemptScopes(await createCapabilityIssuer({ alg: 'HS256', current: { kid: 'test', secret: TEST_SECRETS.capability } }), store.rootUrl);
  const queue = new PgQueue(dbs.state);
  const registry = platformRegistry(dbs.data);
  const self: { url?: string; queryUrl?: string } = {};
  const inproc = new InProcessExecutor({ dispatcherUrl: () => self.url, registry, log });
  const sandbox = await startTestSandbox(opts.sandbox ?? {}, log);
  const executor = new UdfExecutor({
    sandbox,
    state: dbs.state,
    store,
    dispatcherUrl: () => self.url,
    queryUrl: () => self.queryUrl,
    fallback: inproc,
    context: alertEvaluateContext(dbs.data),
    log,
    heartbeatMs: 300,
    ...opts.executor,
  });
  const plugins: DispatcherPlugin[] = [
    udfPlugin({ store, publicUrl: () => self.url, uploadSecret: UPLOAD_SECRET }),
    alertingPlugin({ data: dbs.data, allowHttpLoopback: opts.loopback ?? true }),
  ];
  const dispatcher = new Dispatcher(testDispatcherDeps({
    state: dbs.state,
    queue,
    sendInTx: (q, name, bodies) => queue.sendInTx(q, name, bodies),
    issuer,
    catalog: catalogOf(registry),
    executors: { dispatcher: inproc, lambda: executor },
    orgId: org_id,
    ...(opts.settings ? { settings: opts.settings } : {}),
    log,
  }), [], plugins);
  await dispatcher.start({ host: '127.0.0.1', port: 0 });
  self.url = dispatcher.url!;

  let queryApp: FastifyInstance | undefined;
  if (opts.query !== false) {
    const verifier = issuer.verifier();
    queryApp = buildQueryApp({
      dataDb: dbs.data,
      verifyTaskToken: (t) => verifier.verify(t),
      checkTaskLease: dispatcherLeaseCheck({ dispatcherUrl: () => self.url! }),
      authenticateUser: () => { throw unauthorized(); },
      resolveDataset: () => null,
      logger: log,
      config: { maxConcurrent: 2 },
    });
    self.queryUrl = await listen(queryApp, '127.0.0.1', 0);
  }

  const p: UdfPlatform = {
    dbs, home, store, queue, dispatcher, issuer, executor, sandbox, orgId: org_id, url: self.url, queryUrl: self.queryUrl ?? '',
    adminToken: await mintDevUserToken(TEST_SECRETS.user, 'admin'),
    async api(method, path, body, token) {
      const headers: Record<string, string> = { authorization: `Bearer ${token ?? p.adminToken}` };
      let payload: string | undefined;
      if (body !== undefined) {
        payload = typeof body === 'string' ? body : JSON.stringify(body);
        headers['content-type'] = typeof body === 'string' ? 'application/yaml' : 'application/json';
      }
      const res = await fetch(`${self.url}${path}`, { method, headers, ...(payload !== undefined ? { body: payload } : {}) });
      const text = await res.text();
      let parsed: unknown = text;
      try { parsed = JSON.parse(text); } catch { /* text */ }
      return { status: res.status, body: parsed as any };
    },
    async close() {
      await p.delivery?.stop();
      await p.sink?.stop();
      await p.worker?.stop({ graceMs: 2000 });
      await dispatcher.stop();
      await queryApp?.close();
      await queue.close();
      await dbs.close();
      await sandbox.dispose();
      await rm(home, { recursive: true, force: true });
    },
  };
  if (opts.worker !== false) {
    p.worker = startWorker({
      queue, client: new TaskClient({ baseUrl: self.url, workerToken: TEST_SECRETS.worker }), registry, workerId: 'udfp-worker',
      log, pollWaitMs: 500, heartbeatMs: 300,
    });
  }
  if (opts.sink !== false) {
    p.sink = startSink({
      data: dbs.data, queue, store, log,
      events: httpDatasetEvents({ dispatcherUrl: self.url, workerToken: TEST_SECRETS.worker }),
      retryBaseSeconds: 0.05, retryMaxSeconds: 0.2, pollWaitMs: 300,
      ...(typeof opts.sink === 'object' ? opts.sink : {}),
    });
  }
  if (opts.delivery !== false) {
    p.delivery = startDelivery({
      data: dbs.data, log, allowHttpLoopback: opts.loopback ?? true, backoff: { baseMs: 10, maxMs: 40 }, pollMs: 50,
      ...(typeof opts.delivery === 'object' ? opts.delivery : {}),
    });
  }
  return p;
}

/** Registers an external Parquet dataset (a directory of files) with one current version. */
export async function registerParquetDataset(p: UdfPlatform, name: string, rows: string): Promise<{ dataset_uuid: string; dataset_version: string; dir: string }> {
  const id = newId();
  const version = newId();
  const dir = join(p.home, 'datasets', name, version);
  await writeParquet([{ path: join(dir, 'part-0.parquet'), select: rows }]);
  await p.dbs.state.query(`INSERT INTO datasets (id, org_id, name, kind) VALUES ($1, $2, $3, 'external')`, [id, p.orgId, name]);
  await p.dbs.state.query(`INSERT INTO dataset_versions (id, dataset_uuid, storage_ref, config_hash) VALUES ($1, $2, $3::jsonb, $4)`,
    [version, id, JSON.stringify({ scheme: 'file', prefix: `${dir}/`, glob: '*.parquet' }), `ext:${name}`]);
  await p.dbs.state.query(`UPDATE datasets SET current_version = $2 WHERE id = $1`, [id, version]);
  return { dataset_uuid: id, dataset_version: version, dir };
}

/** Deploys and activates a DAG; throws with the server's answer on failure. */
export async function deployDag(p: UdfPlatform, yaml: string): Promise<any> {
  const name = /^name:\s*(\S+)/m.exec(yaml)![1]!;
  const r = await p.api('POST', `/v1/dags/${name}/versions?activate=true`, yaml);
  if (r.status >= 300) throw new Error(`deploy failed: ${JSON.stringify(r.body)}`);
  return r.body;
}

export async function triggerJob(p: UdfPlatform, dag: string, job: string, body: Record<string, unknown>): Promise<string> {
  const r = await p.api('POST', `/v1/dags/${dag}/jobs/${job}/trigger`, body);
  if (r.status >= 300) throw new Error(`trigger failed: ${JSON.stringify(r.body)}`);
  return r.body.task_id;
}

export async function taskState(p: UdfPlatform, id: string): Promise<{ status: string; attempt: number; error_message: string | null; outputs: unknown }> {
  return (await p.dbs.state.query<any>(`SELECT status, attempt, error_message, outputs FROM tasks WHERE id = $1`, [id])).rows[0];
}

export async function waitTask(p: UdfPlatform, id: string, statuses: string[] = ['Completed'], timeoutMs = 30_000): Promise<{ status: string; attempt: number; error_message: string | null; outputs: unknown }> {
  return waitFor(`task ${id} to be ${statuses.join('|')}`, async () => {
    const t = await taskState(p, id);
    return t && statuses.includes(t.status) ? t : undefined;
  }, timeoutMs);
}

/** Opens, uploads and finalizes a bundle through the HTTP routes; returns the finalize answer. */
export async function uploadBundle(p: UdfPlatform, zip: Buffer, declared: Record<string, unknown> = {}): Promise<{ status: number; body: any; bundle_id: string }> {
  // The open call must name the runtime: take the zip's own (node for zips that have none).
  const runtime = declared.runtime ?? (await inspectBundle(zip).then((b) => b.manifest.runtime, () => 'node'));
  const open = await p.api('POST', '/v1/udf/bundles', { ...declared, runtime });
  if (open.status !== 201) throw new Error(`open failed: ${JSON.stringify(open.body)}`);
  const put = await fetch(open.body.upload.url, { method: 'PUT', body: zip, headers: open.body.upload.headers });
  if (put.status !== 200) throw new Error(`upload failed: ${put.status} ${await put.text()}`);
  const fin = await p.api('POST', `/v1/udf/bundles/${open.body.bundle_id}/finalize`, { sha256: createHash('sha256').update(zip).digest('hex') });
  return { ...fin, bundle_id: open.body.bundle_id };
}

export { waitFor, TEST_SECRETS };
