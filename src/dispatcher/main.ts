import { readEnv, DEFAULT_PORTS, shutdownGraceMsFromEnv } from '../core/config.js';
import { createLogger } from '../core/log.js';
import { openDb } from '../db/open.js';
import { migrate } from '../db/migrate.js';
import { PgQueue } from '../queue/pgqueue.js';
import { createCapabilityIssuer, capabilityKeyConfigFromEnv, es256KeyConfigFromEnv } from '../auth/capability.js';
import { createUserVerifier, userVerifierConfigFromEnv } from '../auth/user.js';
import { operatorCatalog, operatorRegistry } from '../operators/registry.js';
import { WorkerDagParser } from './dag-parser.js';
import { Dispatcher } from './dispatcher.js';
import { defaultSettings, dispatcherSettingsFromEnv } from './settings.js';
import { pingDb } from '../db/db.js';
import { bootstrapDeployment } from './identity.js';
import { InProcessExecutor } from './executors.js';
import { STSClient } from '@aws-sdk/client-sts';
import { LambdaClient } from '@aws-sdk/client-lambda';
import { openObjectStore } from '../objectstore/open.js';
import { datasetRootsFromEnv } from './publication.js';
import { S3ObjectStore } from '../objectstore/s3.js';
import { AwsLambdaInvoker } from '../udf/invoker.js';
import { deriveUploadSecret, udfPlugin, UdfExecutor, withAttemptScopes, StsCredentialMinter, bundleUrlPresigner } from './udf/index.js';
import { alertingPlugin, alertEvaluateContext, createAlertRouteStore } from '../alerting/index.js';
import { allowHttpLoopbackFromEnv } from '../delivery/net/index.js';
import { chainSyncPlugin } from './chain-sync/index.js';
import { bufferGcPlugin } from './buffer-gc.js';
import { sandboxConfigFromEnv, UdfSandbox } from '../udf/sandbox/index.js';

/**
 * `trace dispatcher`: the Dispatcher as its own service on real Postgres. Every secret comes
 * from the environment; missing ones are a startup error that names the variable.
 *
 * `stop()` drains: it stops leasing at once, lets the Dispatcher's own runs finish within the
 * grace period (TRACE_SHUTDOWN_GRACE_SECONDS, default 25 s), releases the leases of the rest so
 * the next Dispatcher retries them at once, then closes the listener and the pools.
 */
export async function runDispatcherProcess(
  penv: NodeJS.ProcessEnv,
  opts: { host?: string; port?: number; includeTestOperators?: boolean } = {},
): Promise<{ stop(opts?: { graceMs?: number }): Promise<void>; url: string }> {
  const env = readEnv(penv);
  const settings = defaultSettings(dispatcherSettingsFromEnv(penv));
  const graceMs = shutdownGraceMsFromEnv(penv);
  const missing: string[] = [];
  if (!env.stateDatabaseUrl) missing.push('TRACE_STATE_DATABASE_URL');
  if (!env.dataDatabaseUrl) missing.push('TRACE_DATA_DATABASE_URL');
  if (!env.workerToken) missing.push('TRACE_WORKER_TOKEN');
  const keyCfg = es256KeyConfigFromEnv(penv) ?? capabilityKeyConfigFromEnv(env);
  if (!keyCfg) missing.push('TRACE_TASK_CAPABILITY_SECRET or TRACE_TASK_CAPABILITY_ES256_PRIVATE_KEY');
  const userCfg = userVerifierConfigFromEnv(env);
  if (!userCfg) missing.push('TRACE_USER_JWT_SECRET or TRACE_OIDC_ISSUER/TRACE_OIDC_AUDIENCE/TRACE_OIDC_JWKS_URL');
  const uploadSecretEnv = penv.TRACE_UPLOAD_SECRET?.trim();
  if (!uploadSecretEnv && !env.taskCapabilitySecret) missing.push('TRACE_UPLOAD_SECRET (needed with ES256 task keys)');
  const s3Store = env.objectStoreUrl?.startsWith('s3://');
  if (s3Store && !penv.TRACE_TASK_CREDENTIALS_ROLE_ARN) missing.push('TRACE_TASK_CREDENTIALS_ROLE_ARN (needed with an s3:// object store)');
  if (missing.length > 0) throw new Error(`missing configuration: ${missing.join(', ')}`);
  const lambdaFn = penv.TRACE_UDF_LAMBDA_FUNCTION?.trim();
  const sandboxConfig = lambdaFn && s3Store ? undefined : sandboxConfigFromEnv(penv);
  const log = createLogger('dispatcher');
  const state = await openDb(env.stateDatabaseUrl!, { max: 20, applicationName: 'trace-dispatcher', role: 'state' });
  const queueDb = env.queueDatabaseUrl && env.queueDatabaseUrl !== env.stateDatabaseUrl
    ? await openDb(env.queueDatabaseUrl, { max: 5, applicationName: 'trace-dispatcher', role: 'queue' })
    : state;
  const data = await openDb(env.dataDatabaseUrl!, { max: 10, applicationName: 'trace-dispatcher', role: 'data' });
  await migrate(state, 'state');
  await migrate(data, 'data');
  if (queueDb !== state) await migrate(queueDb, 'queue');
  const store = openObjectStore(env.objectStoreUrl, env.home);
  const { org_id } = await bootstrapDeployment(state, penv.TRACE_ADMIN_SUB ? { adminSub: penv.TRACE_ADMIN_SUB } : {});
  const issuer = withAttemptScopes(await createCapabilityIssuer(keyCfg!), store.rootUrl);
  const uploadSecret = uploadSecretEnv ?? deriveUploadSecret(env.taskCapabilitySecret!);
  const queue = new PgQueue(queueDb);
  const registryOpts = { includeTestOperators: opts.includeTestOperators ?? false, alertRouteStore: createAlertRouteStore(data) };
  const registry = operatorRegistry(registryOpts);
  const self: { url?: string; dispatcher?: Dispatcher } = {};
  const executor = new InProcessExecutor({ dispatcherUrl: () => self.dispatcher?.url, registry, log, workerToken: env.workerToken! });
  // Local UDF runs (no Lambda runner): every run goes through the OS sandbox probed here.
  const udfSandbox = sandboxConfig ? await UdfSandbox.start({ config: sandboxConfig, log: log.child({ component: 'udf-sandbox' }) }) : undefined;
  const udfExecutor = new UdfExecutor({
    state, store, dispatcherUrl: () => self.dispatcher?.url, queryUrl: () => env.queryUrl ?? `http://127.0.0.1:${DEFAULT_PORTS.query}`,
    fallback: executor, context: alertEvaluateContext(data), log, workerToken: env.workerToken!,
    dependencyOutage: (since) => self.dispatcher?.ctx.monitor.downDuring(since),
    ...(lambdaFn && store instanceof S3ObjectStore
      ? { invoker: new AwsLambdaInvoker({ client: new LambdaClient({}), functionName: lambdaFn, presignBundleUrl: bundleUrlPresigner(state, store) }) }
      : {}),
    ...(udfSandbox ? { sandbox: udfSandbox } : {}),
  });
  const d = new Dispatcher({
    state,
    queue,
    ...(queueDb === state ? { sendInTx: (q, name, bodies) => queue.sendInTx(q, name, bodies) } : {}),
    issuer,
    capabilityVerifier: issuer.verifier(),
    userVerifier: createUserVerifier(userCfg!),
    workerToken: env.workerToken!,
    catalog: operatorCatalog(registryOpts),
    allowHiddenOperators: opts.includeTestOperators ?? false,
    dagParser: new WorkerDagParser({ includeTestOperators: opts.includeTestOperators ?? false }),
    executors: { dispatcher: executor, lambda: udfExecutor },
    orgId: org_id,
    datasetStorage: { store, roots: datasetRootsFromEnv(penv, store, env.home) },
    settings,
    log,
    probes: {
      data_database: (ms) => pingDb(data, ms),
      ...(queueDb !== state ? { queue: (ms: number) => pingDb(queueDb, ms) } : {}),
    },
  }, [], [
    udfPlugin({
      store, publicUrl: () => penv.TRACE_PUBLIC_DISPATCHER_URL ?? self.dispatcher?.url ?? self.url!, uploadSecret,
      ...(s3Store ? { credentials: new StsCredentialMinter({ client: new STSClient({}), roleArn: penv.TRACE_TASK_CREDENTIALS_ROLE_ARN!, rootUrl: store.rootUrl }) } : {}),
    }),
    alertingPlugin({ data, allowHttpLoopback: allowHttpLoopbackFromEnv(penv) }),
    chainSyncPlugin({ objectStore: store }),
    bufferGcPlugin({ data, getStore: () => store }),
  ]);
  self.dispatcher = d;
  await d.start({ host: opts.host ?? '127.0.0.1', port: opts.port ?? DEFAULT_PORTS.dispatcher });
  self.url = d.url!;
  log.info({ url: self.url }, 'dispatcher listening');
  return {
    url: self.url,
    async stop(o = {}) {
      log.info({ grace_ms: o.graceMs ?? graceMs }, 'stopping: no new leases; waiting for running tasks');
      await d.stop({ graceMs: o.graceMs ?? graceMs });
      await queue.close();
      if (queueDb !== state) await queueDb.close();
      await data.close();
      await state.close();
      await udfSandbox?.close();
    },
  };
}
