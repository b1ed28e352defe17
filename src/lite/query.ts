import type { FastifyInstance } from 'fastify';
import { pingDb, type Db } from '../db/db.js';
import type { Logger } from '../core/log.js';
import { serve } from '../core/http.js';
import type { UserVerifier } from '../auth/user.js';
import type { CapabilityVerifier } from '../auth/capability.js';
import { buildQueryApp, executorsOf, type QueryServiceConfig } from '../query/service.js';
import { queryDepsFromState } from '../query/wiring.js';

export interface StartQueryServiceOptions {
  state: Db;
  data: Db;
  orgId: string;
  userVerifier: UserVerifier;
  capabilityVerifier: CapabilityVerifier;
  /** The Dispatcher, asked whether a task query's attempt still holds its lease. */
  dispatcherUrl: string | (() => string);
  host: string;
  /** 0 picks a free port. */
  port: number;
  log: Logger;
  config?: Partial<QueryServiceConfig>;
}

export interface QueryServiceHandle {
  url: string;
  app: FastifyInstance;
  stop(): Promise<void>;
}

/** How long the readiness probe waits for each database. */
const READY_TIMEOUT_MS = 1_000;

/**
 * The Query Service listener of the one-process platform (and of `trace query-service`). It
 * listens once its executor processes have started (a warm pool). Besides the service's routes
 * it answers `GET /readyz`: 200 when the state and data databases answer within a second, else
 * 503 `NOT_READY` naming the unreachable one (`/healthz` stays alive-only).
 */
export async function startQueryService(opts: StartQueryServiceOptions): Promise<QueryServiceHandle> {
  const app = buildQueryApp({
    ...queryDepsFromState(opts),
    logger: opts.log,
    ...(opts.config ? { config: opts.config } : {}),
  });
  app.get('/readyz', async (_req, reply) => {
    const checks: Record<string, string> = {};
    await Promise.all(([['state_database', opts.state], ['data_database', opts.data]] as const).map(async ([name, db]) => {
      try {
        await pingDb(db, READY_TIMEOUT_MS);
        checks[name] = 'ok';
      } catch (e) {
        checks[name] = (e instanceof Error ? e.message : String(e)).slice(0, 200);
      }
    }));
    const down = Object.entries(checks).filter(([, v]) => v !== 'ok').map(([k]) => k.replace('_', ' '));
    if (down.length === 0) return { ok: true, checks };
    return reply.status(503).send({ error: `not ready: ${down.join(', ')} unreachable`, code: 'NOT_READY', checks });
  });
  try {
    await executorsOf(app)?.ready();
  } catch (e) {
    await app.close();
    throw e;
  }
  return serve(app, opts.host, opts.port);
}
