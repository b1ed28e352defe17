import { readEnv, DEFAULT_PORTS } from '../core/config.js';
import { createLogger } from '../core/log.js';
import { openDb } from '../db/open.js';
import { migrate } from '../db/migrate.js';
import { PgQueue } from '../queue/pgqueue.js';
import { createCapabilityIssuer, capabilityKeyConfigFromEnv, es256KeyConfigFromEnv } from '../auth/capability.js';
import { createUserVerifier, userVerifierConfigFromEnv } from '../auth/user.js';
import { operatorCatalog, operatorRegistry } from '../operators/registry.js';
import { Dispatcher } from './dispatcher.js';
import { defaultSettings } from './settings.js';
import { bootstrapDeployment } from './identity.js';
import { InProcessExecutor } from './executors.js';
import { STSClient } from '@aws-sdk/client-sts';
import { LambdaClient } from '@aws-sdk/client-lambda';
import { openObjectStore } from '../objectstore/open.js';
import { S3ObjectStore } from '../objectstore/s3.js';
import { AwsLambdaInvoker } from '../udf/invoker.js';
import { deriveUploadSecret, udfPlugin, UdfExecutor, withAttemptScopes, StsCredentialMinter, bundleUrlPresigner } from './udf/index.js';
import { alertingPlugin, alertEvaluateContext, createAlertRouteStore } from '../alerting/index.js';
import { allowHttpLoopbackFromEnv } from '../delivery/net/index.js';
import { chainSyncPlugin } from './chain-sync/index.js';

/**
 * `trace dispatcher`: the Dispatcher as its own service on real Postgres. Every secret comes
 * from the environment; missing ones are a startup error that names the variable.
 */
export async function runDispatcherProcess(penv: NodeJS.ProcessEnv, opts: { host?: string; port?: number } = {}): Promise<{ stop(): Promise<void>; url: string }> {
  const env = readEnv(penv);
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
  const log = createLogger('dispatcher');
  const state = await openDb(env.stateDatabaseUrl!, { max: 20, applicationName: 'trace-dispatcher' });
  const queueDb = env.queueDatabaseUrl && env.queueDatabaseUrl !== env.stateDatabaseUrl ? await openDb(env.queueDatabaseUrl) : state;
  const data = await openDb(env.dataDatabaseUrl!, { max: 10, applicationName: 'trace-dispatcher' });
  await migrate(state, 'state');
  await migrate(data, 'data');
  const store = openObjectStore(env.objectStoreUrl, env.home);
  const { org_id } = await bootstrapDeployment(state, penv.TRACE_ADMIN_SUB ? { adminSub: penv.TRACE_ADMIN_SUB } : {});
  const issuer = withAttemptScopes(await createCapabilityIssuer(keyCfg!), store.rootUrl);
  const uploadSecret = uploadSecretEnv ?? deriveUploadSecret(env.taskCapabilitySecret!);
  const queue = new PgQueue(queueDb);
  const registry = operatorRegistry({ alertRouteStore: createAlertRouteStore(data) });
  const self: { url?: string } = {};
  const executor = new InProcessExecutor({ dispatcherUrl: () => self.url, registry, log });
  const lambdaFn = penv.TRACE_UDF_LAMBDA_FUNCTION?.trim();
  const udfExecutor = new UdfExecutor({
    state, store, dispatcherUrl: () => self.url!, queryUrl: () => env.queryUrl ?? `http://127.0.0.1:${DEFAULT_PORTS.query}`,
    fallback: executor, context: alertEvaluateContext(data), log,
    ...(lambdaFn && store instanceof S3ObjectStore
      ? { invoker: new AwsLambdaInvoker({ client: new LambdaClient({}), functionName: lambdaFn, presignBundleUrl: bundleUrlPresigner(state, store) }) }
      : {}),
  });
  const d = new Dispatcher({
    state,
    queue,
    ...(queueDb === state ? { sendInTx: (q, name, bodies) => queue.sendInTx(q, name, bodies) } : {}),
    issuer,
    capabilityVerifier: issuer.verifier(),
    userVerifier: createUserVerifier(userCfg!),
    workerToken: env.workerToken!,
    catalog: operatorCatalog(),
    executors: { dispatcher: executor, lambda: udfExecutor },
    orgId: org_id,
    settings: defaultSettings(),
    log,
  }, [], [
    udfPlugin({
      store, publicUrl: () => penv.TRACE_PUBLIC_DISPATCHER_URL ?? self.url!, uploadSecret,
      ...(s3Store ? { credentials: new StsCredentialMinter({ client: new STSClient({}), roleArn: penv.TRACE_TASK_CREDENTIALS_ROLE_ARN!, rootUrl: store.rootUrl }) } : {}),
    }),
    alertingPlugin({ data, allowHttpLoopback: allowHttpLoopbackFromEnv(penv) }),
    chainSyncPlugin({ objectStore: store }),
  ]);
  await d.start({ host: opts.host ?? '127.0.0.1', port: opts.port ?? DEFAULT_PORTS.dispatcher });
  self.url = d.url!;
  log.info({ url: self.url }, 'dispatcher listening');
  return {
    url: self.url,
    async stop() {
      await d.stop();
      await queue.close();
      if (queueDb !== state) await queueDb.close();
      await data.close();
      await state.close();
    },
  };
}
