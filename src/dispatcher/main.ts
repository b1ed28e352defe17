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

/**
 * `trace dispatcher`: the Dispatcher as its own service on real Postgres. Every secret comes
 * from the environment; missing ones are a startup error that names the variable.
 */
export async function runDispatcherProcess(penv: NodeJS.ProcessEnv, opts: { host?: string; port?: number } = {}): Promise<{ stop(): Promise<void>; url: string }> {
  const env = readEnv(penv);
  const missing: string[] = [];
  if (!env.stateDatabaseUrl) missing.push('TRACE_STATE_DATABASE_URL');
  if (!env.workerToken) missing.push('TRACE_WORKER_TOKEN');
  const keyCfg = es256KeyConfigFromEnv(penv) ?? capabilityKeyConfigFromEnv(env);
  if (!keyCfg) missing.push('TRACE_TASK_CAPABILITY_SECRET or TRACE_TASK_CAPABILITY_ES256_PRIVATE_KEY');
  const userCfg = userVerifierConfigFromEnv(env);
  if (!userCfg) missing.push('TRACE_USER_JWT_SECRET or TRACE_OIDC_ISSUER/TRACE_OIDC_AUDIENCE/TRACE_OIDC_JWKS_URL');
  if (missing.length > 0) throw new Error(`missing configuration: ${missing.join(', ')}`);
  const log = createLogger('dispatcher');
  const state = await openDb(env.stateDatabaseUrl!, { max: 20, applicationName: 'trace-dispatcher' });
  const queueDb = env.queueDatabaseUrl && env.queueDatabaseUrl !== env.stateDatabaseUrl ? await openDb(env.queueDatabaseUrl) : state;
  await migrate(state, 'state');
  const { org_id } = await bootstrapDeployment(state, penv.TRACE_ADMIN_SUB ? { adminSub: penv.TRACE_ADMIN_SUB } : {});
  const issuer = await createCapabilityIssuer(keyCfg!);
  const queue = new PgQueue(queueDb);
  const registry = operatorRegistry();
  const self: { url?: string } = {};
  const executor = new InProcessExecutor({ dispatcherUrl: () => self.url, registry, log });
  const d = new Dispatcher({
    state,
    queue,
    ...(queueDb === state ? { sendInTx: (q, name, bodies) => queue.sendInTx(q, name, bodies) } : {}),
    issuer,
    capabilityVerifier: issuer.verifier(),
    userVerifier: createUserVerifier(userCfg!),
    workerToken: env.workerToken!,
    catalog: operatorCatalog(),
    executors: { dispatcher: executor, lambda: executor },
    orgId: org_id,
    settings: defaultSettings(),
    log,
  });
  await d.start({ host: opts.host ?? '127.0.0.1', port: opts.port ?? DEFAULT_PORTS.dispatcher });
  self.url = d.url!;
  log.info({ url: self.url }, 'dispatcher listening');
  return {
    url: self.url,
    async stop() {
      await d.stop();
      await queue.close();
      if (queueDb !== state) await queueDb.close();
      await state.close();
    },
  };
}
