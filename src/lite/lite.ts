import { mkdir, rm, writeFile } from 'node:fs/promises';
import { readEnv, liteJsonPath, DEFAULT_PORTS, type TraceEnv } from '../core/config.js';
import { createLogger, type Logger } from '../core/log.js';
import { openDatabases, type Databases } from '../db/open.js';
import { migrate } from '../db/migrate.js';
import { PgQueue } from '../queue/pgqueue.js';
import { createCapabilityIssuer, capabilityKeyConfigFromEnv, es256KeyConfigFromEnv } from '../auth/capability.js';
import { createUserVerifier, mintDevUserToken, userVerifierConfigFromEnv } from '../auth/user.js';
import { operatorCatalog, operatorRegistry } from '../operators/registry.js';
import { Dispatcher } from '../dispatcher/dispatcher.js';
import { defaultSettings, type DispatcherSettings } from '../dispatcher/settings.js';
import { bootstrapDeployment } from '../dispatcher/identity.js';
import { InProcessExecutor } from '../dispatcher/executors.js';
import { startWorker, type WorkerHandle } from '../worker/worker.js';
import { TaskClient } from '../worker/task-client.js';
import { loadOrCreateSecrets } from './secrets.js';
import { startQueryService } from './query.js';
import { chainSyncPlugin } from '../dispatcher/chain-sync/index.js';
import { createCryoIngestOperator } from '../operators/cryo_ingest/operator.js';
import { startDemo } from './demo.js';
import { startRpcGateway } from '../rpc-gateway/gateway.js';
import { startGateway, gatewaySettingsFromEnv } from '../gateway/main.js';
import { openObjectStore } from '../objectstore/open.js';
import { deriveUploadSecret, udfPlugin, UdfExecutor, withAttemptScopes } from '../dispatcher/udf/index.js';
import { alertingPlugin, alertEvaluateContext, createAlertRouteStore } from '../alerting/index.js';
import { allowHttpLoopbackFromEnv } from '../delivery/net/index.js';
import { startSink } from '../sink/sink.js';
import { httpDatasetEvents } from '../sink/events.js';
import { startDelivery } from '../delivery/service/service.js';

export interface LiteOptions {
  home?: string;
  /** In-process workers (0 = none, so the worker contract can be driven by hand). */
  workers?: number;
  workerConcurrency?: number;
  /** Listener ports; 0 picks a free port. Defaults are the standard 808x ports. */
  ports?: Partial<Record<'dispatcher' | 'query' | 'gateway' | 'rpcGateway', number>>;
  host?: string;
  env?: NodeJS.ProcessEnv;
  settings?: Partial<DispatcherSettings>;
  includeTestOperators?: boolean;
  log?: Logger;
  /** Start a local dev chain and a follow_head chain sync against it. */
  demo?: boolean;
  /** Heartbeat interval override for in-process workers (tests). */
  heartbeatMs?: number;
}

export interface LiteInfo {
  profile: 'embedded' | 'postgres';
  home: string;
  org_id: string;
  dispatcher_url: string;
  gateway_url: string;
  query_url: string;
  worker_token: string;
  admin_token: string;
  admin_sub: string;
  pid: number;
  started_at: string;
}

export interface LiteHandle {
  info: LiteInfo;
  dispatcher: Dispatcher;
  dbs: Databases;
  queue: PgQueue;
  workers: WorkerHandle[];
  stop(): Promise<void>;
}

const ADMIN_SUB = 'admin';

/**
 * The whole platform in one process: databases (embedded PGlite under TRACE_HOME unless
 * TRACE_STATE_DATABASE_URL is set), migrations, the Dispatcher with its loops, and a worker
 * pool. Writes `$TRACE_HOME/lite.json` with every URL and the dev credentials.
 */
export async function startLite(opts: LiteOptions = {}): Promise<LiteHandle> {
  const env: TraceEnv = readEnv(opts.env ?? process.env);
  const home = opts.home ?? env.home;
  const log = opts.log ?? createLogger('trace-lite');
  await mkdir(home, { recursive: true });
  const dbs = await openDatabases({
    home,
    ...(env.stateDatabaseUrl ? { stateUrl: env.stateDatabaseUrl } : {}),
    ...(env.dataDatabaseUrl ? { dataUrl: env.dataDatabaseUrl } : {}),
    ...(env.queueDatabaseUrl ? { queueUrl: env.queueDatabaseUrl } : {}),
  });
  // Listeners started so far, stopped in reverse order on shutdown or when startup fails.
  const services: Array<() => Promise<void>> = [];
  let dispatcherStarted: Dispatcher | undefined;
  try {
    await migrate(dbs.state, 'state');
    await migrate(dbs.data, 'data');
    const { org_id } = await bootstrapDeployment(dbs.state, { adminSub: ADMIN_SUB });
    const secrets = await loadOrCreateSecrets(home);
    const workerToken = env.workerToken ?? secrets.worker_token;
    const keyCfg = es256KeyConfigFromEnv(opts.env ?? process.env) ?? capabilityKeyConfigFromEnv(env) ?? { alg: 'HS256' as const, current: { kid: secrets.task_capability_kid, secret: secrets.task_capability_secret } };
    const store = openObjectStore(env.objectStoreUrl, home);
    // Each attempt's token carries its own scratch and buffer prefixes (credential minting).
    const issuer = withAttemptScopes(await createCapabilityIssuer(keyCfg), store.rootUrl);
    const userCfg = userVerifierConfigFromEnv(env) ?? { mode: 'dev' as const, secret: secrets.user_jwt_secret };
    const userVerifier = createUserVerifier(userCfg);
    const queue = new PgQueue(dbs.queue);
    const registryOpts = { includeTestOperators: opts.includeTestOperators ?? false, alertRouteStore: createAlertRouteStore(dbs.data) };
    const registry = operatorRegistry(registryOpts);
    // Operators reach chain RPC only through the RPC egress gateway (the demo starts one).
    const rpcGateway: { url?: string } = { url: (opts.env ?? process.env).TRACE_RPC_GATEWAY_URL };
    registry.set('cryo_ingest', createCryoIngestOperator({ objectStore: store, rpcGatewayUrl: () => rpcGateway.url }));
    const host = opts.host ?? '127.0.0.1';
    const self: { url?: string; queryUrl?: string } = {};
    const executor = new InProcessExecutor({ dispatcherUrl: () => self.url, registry, log });
    const loopback = allowHttpLoopbackFromEnv(opts.env ?? process.env);
    const udfExecutor = new UdfExecutor({
      state: dbs.state, store, dispatcherUrl: () => self.url!, queryUrl: () => self.queryUrl ?? env.queryUrl ?? `http://127.0.0.1:${DEFAULT_PORTS.query}`,
      fallback: executor, context: alertEvaluateContext(dbs.data), log: log.child({ component: 'udf' }),
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
      allowHiddenOperators: opts.includeTestOperators ?? false,
      executors: { dispatcher: executor, lambda: udfExecutor },
      orgId: org_id,
      settings: defaultSettings(opts.settings),
      log: log.child({ component: 'dispatcher' }),
    }, [], [
      udfPlugin({ store, publicUrl: () => self.url!, uploadSecret }),
      alertingPlugin({ data: dbs.data, allowHttpLoopback: loopback }),
      chainSyncPlugin({ objectStore: store, rpcGatewayUrl: () => rpcGateway.url }),
    ]);
    await dispatcher.start({ host, port: opts.ports?.dispatcher ?? DEFAULT_PORTS.dispatcher });
    dispatcherStarted = dispatcher;
    const dispatcherUrl = dispatcher.url!;
    self.url = dispatcherUrl;

    const query = await startQueryService({
      state: dbs.state, data: dbs.data, orgId: org_id, userVerifier, capabilityVerifier: issuer.verifier(),
      host, port: opts.ports?.query ?? DEFAULT_PORTS.query, log: log.child({ component: 'query-service' }),
    });
    self.queryUrl = query.url;
    services.push(() => query.stop());

    const gwSettings = gatewaySettingsFromEnv(opts.env ?? process.env);
    const gateway = await startGateway({
      dispatcherUrl,
      queryUrl: query.url,
      userVerifier,
      host,
      port: opts.ports?.gateway ?? DEFAULT_PORTS.gateway,
      limits: gwSettings.limits,
      corsOrigins: gwSettings.corsOrigins,
      log: log.child({ component: 'gateway' }),
    });
    services.push(() => gateway.stop());

    const workers: WorkerHandle[] = [];
    const client = new TaskClient({ baseUrl: dispatcherUrl, workerToken });
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
    const delivery = startDelivery({ data: dbs.data, log: log.child({ component: 'delivery' }), allowHttpLoopback: loopback });
    services.push(() => delivery.stop());

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
    };
    if (!opts.demo && !rpcGateway.url && Object.keys(env.rpcPools).length > 0) {
      const gw = await startRpcGateway({ pools: env.rpcPools, host, port: opts.ports?.rpcGateway ?? DEFAULT_PORTS.rpcGateway, log: log.child({ component: 'rpc-gateway' }) });
      rpcGateway.url = gw.url;
      services.push(() => gw.close());
    }
    if (opts.demo) {
      const demo = await startDemo({ dispatcherUrl, adminToken: info.admin_token, host, onGateway: (url) => { rpcGateway.url = url; } });
      services.push(() => demo.stop());
    }
    await writeFile(liteJsonPath(home), JSON.stringify(info, null, 2), { mode: 0o600 });
    let stopped = false;
    return {
      info, dispatcher, dbs, queue, workers,
      async stop() {
        if (stopped) return;
        stopped = true;
        for (const stopService of services.reverse()) await stopService().catch(() => undefined);
        await Promise.all(workers.map((w) => w.stop({ graceMs: 5_000 })));
        await dispatcher.stop();
        await queue.close();
        await dbs.close();
        await rm(liteJsonPath(home), { force: true });
      },
    };
  } catch (e) {
    for (const stopService of services.reverse()) await stopService().catch(() => undefined);
    await dispatcherStarted?.stop().catch(() => undefined);
    await dbs.close().catch(() => undefined);
    throw e;
  }
}

