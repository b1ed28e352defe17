/**
 * `trace query-service`: the Query Service as its own process on real Postgres.
 *
 * Configuration (environment):
 * - TRACE_STATE_DATABASE_URL: users, roles and the dataset registry (read only: `/v1/query`).
 * - TRACE_DISPATCHER_URL: asked whether a task query's attempt still holds its lease
 *   (`POST /v1/task/lease-check`); task queries fail closed when it cannot be reached.
 * - TRACE_QUERY_EXECUTORS, TRACE_QUERY_EXECUTOR_MEMORY_MB: the executor pool (settings.ts).
 * - TRACE_DATA_DATABASE_URL: audit and query_results rows (its migrations are applied at start, idempotently).
 * - TRACE_OBJECT_STORE_URL (or TRACE_HOME's object folder): where batch query results are written
 *   (`results/{org_id}/{query_id}/`); TRACE_QUERY_RESULT_RETENTION_SECONDS how long they are kept.
 * - Task tokens: TRACE_TASK_CAPABILITY_SECRET (+ _KID, _NEXT_SECRET, _NEXT_KID) for HS256, or
 *   TRACE_DISPATCHER_URL with TRACE_WORKER_TOKEN to read the Dispatcher's task JWKS
 *   (`/internal/jwks/task`, ES256).
 * - User tokens: TRACE_USER_JWT_SECRET (dev) or TRACE_OIDC_ISSUER / _AUDIENCE / _JWKS_URL.
 * Every missing variable is named in one startup error.
 */
import { readEnv, DEFAULT_PORTS } from '../core/config.js';
import { createLogger, type Logger } from '../core/log.js';
import { openDb } from '../db/open.js';
import { migrate } from '../db/migrate.js';
import type { Db } from '../db/db.js';
import { capabilityKeyConfigFromEnv, createCapabilityVerifier, type CapabilityVerifier } from '../auth/capability.js';
import { createUserVerifier, userVerifierConfigFromEnv } from '../auth/user.js';
import { WORKER_TOKEN_HEADER } from '../auth/worker-token.js';
import { startQueryService } from '../lite/query.js';
import { queryConfigFromEnv } from './settings.js';
import { openObjectStore } from '../objectstore/open.js';

/** The org every Trace v1 deployment creates (`bootstrapDeployment`'s default slug). */
const DEPLOYMENT_ORG_SLUG = 'default';

export interface QueryServiceProcess {
  url: string;
  stop(): Promise<void>;
}

function capabilityVerifierFromEnv(env: ReturnType<typeof readEnv>): CapabilityVerifier | undefined {
  const hs = capabilityKeyConfigFromEnv(env);
  if (hs) return createCapabilityVerifier({ hs256: { current: hs.current, ...(hs.next ? { next: hs.next } : {}) } });
  if (env.dispatcherUrl && env.workerToken) {
    return createCapabilityVerifier({
      jwksUrl: `${env.dispatcherUrl.replace(/\/+$/, '')}/internal/jwks/task`,
      headers: { [WORKER_TOKEN_HEADER]: env.workerToken },
    });
  }
  return undefined;
}

async function deploymentOrg(state: Db): Promise<string> {
  const r = await state.query<{ id: string }>(`SELECT id FROM orgs WHERE slug = $1`, [DEPLOYMENT_ORG_SLUG]);
  const id = r.rows[0]?.id;
  if (!id) throw new Error('the state database has no deployment org yet: start the Dispatcher (or run `trace migrate` and `trace dispatcher`) first');
  return id;
}

export async function runQueryServiceProcess(
  penv: NodeJS.ProcessEnv,
  opts: { host?: string; port?: number; log?: Logger } = {},
): Promise<QueryServiceProcess> {
  const env = readEnv(penv);
  const missing: string[] = [];
  const invalid: string[] = [];
  /** Runs a config reader; a thrown message becomes an "invalid" problem, `null` its result. */
  const read = <T>(fn: () => T | undefined): T | undefined | null => {
    try {
      return fn();
    } catch (e) {
      invalid.push(e instanceof Error ? e.message : String(e));
      return null;
    }
  };
  if (!env.stateDatabaseUrl) missing.push('TRACE_STATE_DATABASE_URL');
  if (!env.dataDatabaseUrl) missing.push('TRACE_DATA_DATABASE_URL');
  if (!env.dispatcherUrl) missing.push('TRACE_DISPATCHER_URL (lease checks of task queries)');
  const queryConfig = read(() => queryConfigFromEnv(penv));
  const capabilityVerifier = read(() => capabilityVerifierFromEnv(env));
  const userCfg = read(() => userVerifierConfigFromEnv(env));
  if (capabilityVerifier === undefined) missing.push('TRACE_TASK_CAPABILITY_SECRET (or TRACE_DISPATCHER_URL with TRACE_WORKER_TOKEN for the task JWKS)');
  if (userCfg === undefined) missing.push('TRACE_USER_JWT_SECRET or TRACE_OIDC_ISSUER/TRACE_OIDC_AUDIENCE/TRACE_OIDC_JWKS_URL');
  const problems = [...(missing.length > 0 ? [`missing configuration: ${missing.join(', ')}`] : []), ...invalid.map((m) => `invalid configuration: ${m}`)];
  if (problems.length > 0) throw new Error(problems.join('; '));

  const log = opts.log ?? createLogger('query-service');
  const state = await openDb(env.stateDatabaseUrl!, { max: 5, applicationName: 'trace-query-service', role: 'state' });
  let data: Db | undefined;
  try {
    data = await openDb(env.dataDatabaseUrl!, { max: 5, applicationName: 'trace-query-service', role: 'data' });
    await migrate(data, 'data');
    const orgId = await deploymentOrg(state);
    const svc = await startQueryService({
      state,
      data,
      orgId,
      userVerifier: createUserVerifier(userCfg!),
      capabilityVerifier: capabilityVerifier!,
      dispatcherUrl: env.dispatcherUrl!,
      config: queryConfig ?? {},
      results: openObjectStore(env.objectStoreUrl, env.home),
      host: opts.host ?? '127.0.0.1',
      port: opts.port ?? DEFAULT_PORTS.query,
      log,
    });
    log.info({ url: svc.url }, 'query service listening');
    const dataDb = data;
    return {
      url: svc.url,
      async stop() {
        await svc.stop();
        await dataDb.close();
        await state.close();
      },
    };
  } catch (e) {
    await data?.close().catch(() => undefined);
    await state.close().catch(() => undefined);
    throw e;
  }
}
