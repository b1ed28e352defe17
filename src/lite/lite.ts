import { mkdir, rm, writeFile } from 'node:fs/promises';
import { TraceError } from '../core/errors.js';
import { readEnv, liteJsonPath, DEFAULT_PORTS, shutdownGraceMsFromEnv, type TraceEnv } from '../core/config.js';
import { pingDb } from '../db/db.js';
import { createLogger, type Logger } from '../core/log.js';
import { openDatabases, type Databases } from '../db/open.js';
import { migrate } from '../db/migrate.js';
import { PgQueue } from '../queue/pgqueue.js';
import { createCapabilityIssuer, capabilityKeyConfigFromEnv, es256KeyConfigFromEnv } from '../auth/capability.js';
import { createUserVerifier, mintDevUserToken, userVerifierConfigFromEnv } from '../auth/user.js';
import { operatorCatalog, operatorRegistry } from '../operators/registry.js';
import { Dispatcher } from '../dispatcher/dispatcher.js';
import { WorkerDagParser } from '../dispatcher/dag-parser.js';
import { defaultSettings, dispatcherSettingsFromEnv, type DispatcherSettings } from '../dispatcher/settings.js';
import { bootstrapDeployment } from '../dispatcher/identity.js';
import { InProcessExecutor } from '../dispatcher/executors.js';
import { startWorker, type WorkerHandle } from '../worker/worker.js';
import { workerTaskClient } from '../worker/batching.js';
import { loadOrCreateSecrets } from './secrets.js';
import { startQueryService } from './query.js';
import { queryConfigFromEnv } from '../query/settings.js';
import type { QueryServiceConfig } from '../query/service.js';
import { chainSyncPlugin } from '../dispatcher/chain-sync/index.js';
import { createCryoIngestOperator } from '../operators/cryo_ingest/operator.js';
import { acquireHomeLock } from './lock.js';
import type { DemoHandle, DemoOptions } from './demo.js';
import { anvilBinary } from './devchain.js';
import { startRpcGateway } from '../rpc-gateway/gateway.js';
import { startGateway, gatewaySettingsFromEnv } from '../gateway/main.js';
import { datasetRootsFromEnv } from '../dispatcher/publication.js';
import { openObjectStore } from '../objectstore/open.js';
import { deriveUploadSecret, udfPlugin, UdfExecutor, withAttemptScopes } from '../dispatcher/udf/index.js';
import { alertingPlugin, alertEvaluateContext, createAlertRouteStore } from '../alerting/index.js';
import { allowHttpLoopbackFromEnv } from '../delivery/net/index.js';
import { startSink } from '../sink/sink.js';
import { httpDatasetEvents } from '../sink/events.js';
import { startDelivery } from '../delivery/service/service.js';
import { sandboxConfigFromEnv, UdfSandbox, type SandboxState } from '../udf/sandbox/index.js';
import { LISTEN_ENV, serviceRegistry, startOpsListener } from '../core/ops.js';
import { sinkMetrics } from '../sink/metrics.js';
import { deliveryMetrics } from '../delivery/service/metrics.js';
import { workerMetrics } from '../worker/metrics.js';
import { liteListeners, type LitePorts } from './listeners.js';
import { bufferGcPlugin } from '../dispatcher/buffer-gc.js';

export interface LiteOptions {
  home?: string;
  /** In-process workers (0 = none, so the worker contract can be driven by hand). */
  workers?: number;
  workerConcurrency?: number;
  /**
   * Listener ports on `host`; 0 picks a free port. Unset: `TRACE_<SERVICE>_LISTEN`, else the
   * standard 808x ports; the worker, sink and delivery ops listeners are off unless set.
   */
  ports?: LitePorts;
  host?: string;
  env?: NodeJS.ProcessEnv;
  settings?: Partial<DispatcherSettings>;
  includeTestOperators?: boolean;
  log?: Logger;
  /** Start a local dev chain, a follow_head chain sync against it, and an alert to a local receiver. */
  demo?: boolean;
  /** Demo knobs (tests): block interval, transfers per block, history, publish interval. */
  demoOptions?: Pick<DemoOptions, 'blockIntervalMs' | 'transfersPerBlock' | 'historyBlocks' | 'publishIntervalMs' | 'alertMinValue'>;
  /** Heartbeat interval override for in-process workers (tests). */
  heartbeatMs?: number;
  /** How long stop() lets running tasks finish before their leases are released (default TRACE_SHUTDOWN_GRACE_SECONDS, 25 s). */
  shutdownGraceMs?: number;
  /** Query Service settings over the environment's (TRACE_QUERY_*) and the defaults. */
  query?: Partial<QueryServiceConfig>;
}

export interface LiteInfo {
  profile: 'embedded' | 'postgres';
  home: string;
  org_id: string;
  dispatcher_url: string;
  gateway_url: string;
  query_url: string;
  /** The RPC egress gateway this platform started (the demo's, or one for TRACE_RPC_POOL_*). */
  rpc_gateway_url?: string;
  /** Ops listeners (/healthz, /readyz, /metrics) of the in-process workers, sink and delivery, when enabled. */
  worker_ops_url?: string;
  sink_ops_url?: string;
  delivery_ops_url?: string;
  worker_token: string;
  admin_token: string;
  admin_sub: string;
  pid: number;
  started_at: string;
  /** How local UDF runs are isolated: `bubblewrap`, `unsafe-none` (opted out) or `unavailable`. */
  udf_sandbox: SandboxState;
  /** Why the sandbox is unavailable (UDF tasks fail until it is fixed). */
  udf_sandbox_reason?: string;
  /** Present with `--demo`: the dev chain, its RPC gateway, the chain sync, the alert and its receiver. */
  demo?: LiteDemoInfo;
}

export interface LiteDemoInfo {
  chain_url: string;
  chain_id: number;
  rpc_gateway_url: string;
  rpc_pool: string;
  chain_sync: string;
  datasets: string[];
  token: string;
  /** The local webhook receiver the demo alert delivers to (plain http on loopback). */
  webhook_url: string;
  alert_id: string;
  alert_dag: string;
}

export interface LiteHandle {
  info: LiteInfo;
  /** The running demo (with `demo: true`). */
  demo?: DemoHandle;
  dispatcher: Dispatcher;
  dbs: Databases;
  queue: PgQueue;
  workers: WorkerHandle[];
  udfSandbox: UdfSandbox;
  /**
   * Drains and stops, in this order: workers stop claiming and the Dispatcher stops leasing; work
   * in flight (worker tasks and the Dispatcher's own runs, UDFs included) gets the grace period
   * and whatever still runs after it is released; then the sink, delivery, gateway and query
   * listeners stop; the Dispatcher closes last, so every completion of the drain reaches it.
   */
  stop(opts?: { graceMs?: number }): Promise<void>;
}

const ADMIN_SUB = 'admin';

/** Binds a listener; a taken port becomes one clear line naming the service and the port. */
async function bind<T>(what: string, host: string, port: number, start: () => Promise<T>): Promise<T> {
  try {
    return await start();
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'EADDRINUSE') throw new TraceError(409, 'PORT_IN_USE', `the ${what} cannot listen on ${host}:${port}: the port is in use (another trace lite up, or another program)`);
    if (code === 'EACCES') throw new TraceError(409, 'PORT_DENIED', `the ${what} may not listen on ${host}:${port}`);
    throw e;
  }
}

/**
 * The whole platform in one process: databases (embedded PGlite under TRACE_HOME unless
 * TRACE_STATE_DATABASE_URL is set), migrations, the Dispatcher with its loops, and a worker
 * pool. Writes `$TRACE_HOME/lite.json` with every URL and the dev credentials.
 *
 * Order matters: the home lock is taken first (one instance per home), then every listener is
 * bound (Dispatcher, Query Service, Gateway, RPC gateway, the demo's chain and receiver), and
 * only then do loops start (Dispatcher loops, workers, sink, delivery). A taken port or a
 * locked home therefore fails before anything runs, and everything started is stopped again.
 */
export async function startLite(opts: LiteOptions = {}): Promise<LiteHandle> {
  const penv = opts.env ?? process.env;
  const env: TraceEnv = readEnv(penv);
  const graceMs = opts.shutdownGraceMs ?? shutdownGraceMsFromEnv(penv);
  const home = opts.home ?? env.home;
  const log = opts.log ?? createLogger('trace-lite');
  // Bad sandbox settings are a start-up error naming the variable, before anything starts.
  const sandboxConfig = sandboxConfigFromEnv(penv);
  // The demo's dev chain is a development dependency: without it, say so before anything starts.
  if (opts.demo) anvilBinary(penv);
  await mkdir(home, { recursive: true, mode: 0o700 });
  const lock = await acquireHomeLock(home);
  let dbs: Databases;
  try {
    dbs = await openDatabases({
      home,
      ...(env.stateDatabaseUrl ? { stateUrl: env.stateDatabaseUrl } : {}),
      ...(env.dataDatabaseUrl ? { dataUrl: env.dataDatabaseUrl } : {}),
      ...(env.queueDatabaseUrl ? { queueUrl: env.queueDatabaseUrl } : {}),
    });
  } catch (e) {
    await lock.release();
    throw e;
  }
  // What started so far, stopped in reverse order on shutdown or when startup fails.
  const services: Array<() => Promise<void>> = [];
  let dispatcherStarted: Dispatcher | undefined;
  let queueOpened: PgQueue | undefined;
  const workers: WorkerHandle[] = [];
  let udfSandbox: UdfSandbox | undefined;
  try {
    // Probed once: every local UDF run goes through this boundary (or is refused).
    udfSandbox = await UdfSandbox.start({ config: sandboxConfig, log: log.child({ component: 'udf-sandbox' }) });
    await migrate(dbs.state, 'state');
    await migrate(dbs.data, 'data');
    if (dbs.queue !== dbs.state) await migrate(dbs.queue, 'queue');
    const { org_id } = await bootstrapDeployment(dbs.state, { adminSub: ADMIN_SUB });
    const secrets = await loadOrCreateSecrets(home);
    const workerToken = env.workerToken ?? secrets.worker_token;
    const keyCfg = es256KeyConfigFromEnv(penv) ?? capabilityKeyConfigFromEnv(env) ?? { alg: 'HS256' as const, current: { kid: secrets.task_capability_kid, secret: secrets.task_capability_secret } };
    const store = openObjectStore(env.objectStoreUrl, home);
    // Each attempt's token carries its own scratch and buffer prefixes (credential minting).
    const issuer = withAttemptScopes(await createCapabilityIssuer(keyCfg), store.rootUrl);
    const userCfg = userVerifierConfigFromEnv(env) ?? { mode: 'dev' as const, secret: secrets.user_jwt_secret };
    const userVerifier = createUserVerifier(userCfg);
    const queue = new PgQueue(dbs.queue);
    queueOpened = queue;
    const registryOpts = { includeTestOperators: opts.includeTestOperators ?? false, alertRouteStore: createAlertRouteStore(dbs.data) };
    const registry = operatorRegistry(registryOpts);
    // Operators reach chain RPC only through the RPC egress gateway (the demo starts one).
    const rpcGateway: { url?: string } = { url: penv.TRACE_RPC_GATEWAY_URL };
    registry.set('cryo_ingest', createCryoIngestOperator({ objectStore: store, rpcGatewayUrl: () => rpcGateway.url }));
    const host = opts.host ?? '127.0.0.1';
    const listeners = liteListeners(penv, opts.ports, host);
    const self: { url?: string; queryUrl?: string; dispatcher?: Dispatcher } = {};
    const executor = new InProcessExecutor({ dispatcherUrl: () => self.dispatcher?.url, registry, log, workerToken });
    // The demo delivers its alert to its own plain-http loopback receiver: it turns on the
    // development switch for this process (and says so).
    const loopback = allowHttpLoopbackFromEnv(penv) || opts.demo === true;
    const udfExecutor = new UdfExecutor({
      state: dbs.state, store, dispatcherUrl: () => self.dispatcher?.url, queryUrl: () => self.queryUrl ?? env.queryUrl ?? `http://127.0.0.1:${DEFAULT_PORTS.query}`,
      fallback: executor, context: alertEvaluateContext(dbs.data), log: log.child({ component: 'udf' }), workerToken,
      dependencyOutage: (since) => self.dispatcher?.ctx.monitor.downDuring(since),
      sandbox: udfSandbox,
    });
    const uploadSecret = deriveUploadSecret(secrets.task_capability_secret);
    const dispatcher = new Dispatcher({
      state: dbs.state,
      queue,
      ...(dbs.queue === dbs.state ? { sendInTx: (q, name, bodies) => queue.sendInTx(q, name, bodies) } : {}),
      issuer,
      capabilityVerifier: issuer.verifier(),
      userVerifier,
      workerToken,
      catalog: operatorCatalog(registryOpts),
      dagParser: new WorkerDagParser({ includeTestOperators: registryOpts.includeTestOperators }),
      allowHiddenOperators: opts.includeTestOperators ?? false,
      executors: { dispatcher: executor, lambda: udfExecutor },
      orgId: org_id,
      datasetStorage: { store, roots: datasetRootsFromEnv(penv, store, home) },
      settings: defaultSettings({ ...dispatcherSettingsFromEnv(penv), ...opts.settings }),
      log: log.child({ component: 'dispatcher' }),
      probes: {
        data_database: (ms) => pingDb(dbs.data, ms),
        ...(dbs.queue !== dbs.state ? { queue: (ms: number) => pingDb(dbs.queue, ms) } : {}),
      },
    }, [], [
      udfPlugin({ store, publicUrl: () => self.dispatcher?.url ?? self.url!, uploadSecret }),
      alertingPlugin({ data: dbs.data, allowHttpLoopback: loopback }),
      chainSyncPlugin({ objectStore: store, rpcGatewayUrl: () => rpcGateway.url }),
      bufferGcPlugin({ data: dbs.data, getStore: () => store }),
    ]);

    self.dispatcher = dispatcher;
    // 1. Every listener, before any loop.
    const dl = listeners.dispatcher!;
    await bind('Dispatcher', dl.host, dl.port, () => dispatcher.start({ host: dl.host, port: dl.port, loops: false }));
    dispatcherStarted = dispatcher;
    const dispatcherUrl = dispatcher.url!;
    self.url = dispatcherUrl;

    const ql = listeners.query!;
    const query = await bind('Query Service', ql.host, ql.port, () => startQueryService({
      state: dbs.state, data: dbs.data, orgId: org_id, userVerifier, capabilityVerifier: issuer.verifier(), dispatcherUrl, results: store,
      host: ql.host, port: ql.port, log: log.child({ component: 'query-service' }),
      config: { ...queryConfigFromEnv(opts.env ?? process.env), ...opts.query },
    }));
    self.queryUrl = query.url;
    services.push(() => query.stop());

    const gwSettings = gatewaySettingsFromEnv(penv);
    const gl = listeners.gateway!;
    const gateway = await bind('Gateway', gl.host, gl.port, () => startGateway({
      dispatcherUrl,
      queryUrl: query.url,
      userVerifier,
      host: gl.host,
      port: gl.port,
      limits: gwSettings.limits,
      corsOrigins: gwSettings.corsOrigins,
      console: gwSettings.console,
      log: log.child({ component: 'gateway' }),
    }));
    services.push(() => gateway.stop());

    const info: LiteInfo = {
      profile: env.stateDatabaseUrl ? 'postgres' : 'embedded',
      home,
      org_id,
      dispatcher_url: dispatcherUrl,
      gateway_url: gateway.url,
      query_url: query.url,
      worker_token: workerToken,
      admin_token: userCfg.mode === 'dev' ? await mintDevUserToken(userCfg.secret, ADMIN_SUB) : '',
      admin_sub: ADMIN_SUB,
      pid: process.pid,
      started_at: new Date().toISOString(),
      ...udfSandbox.summary(),
    };
    // Ops listeners of the in-process workers, sink and delivery (their metrics are added once they run).
    const opsRegistries = { worker: serviceRegistry('worker'), sink: serviceRegistry('sink'), delivery: serviceRegistry('delivery') };
    const opsChecks = { state_database: (ms: number) => pingDb(dbs.state, ms), data_database: (ms: number) => pingDb(dbs.data, ms), ...(dbs.queue !== dbs.state ? { queue: (ms: number) => pingDb(dbs.queue, ms) } : {}) };
    for (const svc of ['worker', 'sink', 'delivery'] as const) {
      const at = listeners[svc];
      if (!at) continue;
      const ops = await bind(`${svc} ops listener`, at.host, at.port, () => startOpsListener({ service: svc, registry: opsRegistries[svc], checks: opsChecks, address: at, log: log.child({ component: `${svc}-ops` }) }));
      services.push(() => ops.stop());
      info[`${svc}_ops_url`] = ops.url;
    }
    if (!opts.demo && !rpcGateway.url && Object.keys(env.rpcPools).length > 0) {
      const rl = listeners.rpcGateway!;
      const gw = await bind('RPC gateway', rl.host, rl.port, () => startRpcGateway({ pools: env.rpcPools, host: rl.host, port: rl.port, log: log.child({ component: 'rpc-gateway' }) }));
      rpcGateway.url = gw.url;
      info.rpc_gateway_url = gw.url;
      services.push(() => gw.close());
    }
    let demo: DemoHandle | undefined;
    if (opts.demo) {
      // The dev chain is a development dependency: imported only here.
      const { startDemo } = await import('./demo.js');
      demo = await startDemo({
        dispatcherUrl, adminToken: info.admin_token, home, host, log: log.child({ component: 'demo' }),
        ...(opts.ports?.rpcGateway !== undefined || penv[LISTEN_ENV.rpcGateway]?.trim() ? { rpcGatewayPort: listeners.rpcGateway!.port } : {}),
        ...opts.demoOptions,
        onGateway: (url) => { rpcGateway.url = url; },
      });
      const d = demo;
      services.push(() => d.stop());
      info.demo = {
        chain_url: d.chainUrl, chain_id: d.chainId, rpc_gateway_url: d.rpcGatewayUrl, rpc_pool: d.pool, chain_sync: d.jobName,
        datasets: d.datasets, token: d.token, webhook_url: d.webhookUrl, alert_id: d.alertId, alert_dag: d.alertDag,
      };
      info.rpc_gateway_url = d.rpcGatewayUrl;
    }

    // 2. The loops.
    dispatcher.startLoops();
    // The same batched client as `trace worker`, shared by this process's workers.
    const client = workerTaskClient({ baseUrl: dispatcherUrl, workerToken, log: log.child({ component: 'worker' }) });
    for (let i = 0; i < (opts.workers ?? 2); i++) {
      workers.push(startWorker({
        queue, client, registry, workerId: `lite:${process.pid}:${i}`,
        concurrency: opts.workerConcurrency ?? 4,
        log: log.child({ component: 'worker', worker: i }),
        ...(opts.heartbeatMs ? { heartbeatMs: opts.heartbeatMs } : {}),
      }));
    }
    const sink = startSink({ data: dbs.data, queue, store, events: httpDatasetEvents({ dispatcherUrl, workerToken }), log: log.child({ component: 'sink' }) });
    services.push(() => sink.stop());
    const delivery = startDelivery({ data: dbs.data, log: log.child({ component: 'delivery' }), allowHttpLoopback: loopback, stopGraceMs: graceMs });
    services.push(() => delivery.stop());
    workerMetrics(opsRegistries.worker, workers, queue);
    sinkMetrics(opsRegistries.sink, { stats: sink.stats, queue, queueDb: dbs.queue });
    deliveryMetrics(opsRegistries.delivery, { stats: delivery.stats, data: dbs.data });

    await writeFile(liteJsonPath(home), JSON.stringify(info, null, 2), { mode: 0o600 });
    let stopped = false;
    const d = dbs;
    const sandbox = udfSandbox;
    return {
      info, dispatcher, dbs: d, queue, workers, udfSandbox: sandbox, ...(demo ? { demo } : {}),
      async stop(o = {}) {
        if (stopped) return;
        stopped = true;
        const grace = o.graceMs ?? graceMs;
        // No new work: workers stop claiming (synchronously, before anything awaits) and the
        // Dispatcher stops leasing its own runtimes.
        const workersDone = Promise.all(workers.map((w) => w.stop({ graceMs: grace })));
        await dispatcher.stopLeasing();
        // Work in flight finishes within the grace period; the rest is released.
        await Promise.all([workersDone, dispatcher.ctx.drainRuns(grace)]);
        for (const stopService of services.reverse()) await stopService().catch(() => undefined);
        await dispatcher.stop();
        await queue.close();
        await d.close();
        await sandbox.close();
        await rm(liteJsonPath(home), { force: true });
        await lock.release();
      },
    };
  } catch (e) {
    await Promise.all(workers.map((w) => w.stop({ graceMs: 1_000 }).catch(() => undefined)));
    for (const stopService of services.reverse()) await stopService().catch(() => undefined);
    await dispatcherStarted?.stop().catch(() => undefined);
    await queueOpened?.close().catch(() => undefined);
    await dbs.close().catch(() => undefined);
    await udfSandbox?.close().catch(() => undefined);
    await lock.release();
    throw e;
  }
}

export { liteSummary } from './summary.js';
