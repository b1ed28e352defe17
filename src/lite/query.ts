import type { FastifyInstance } from 'fastify';
import { pingDb, type Db } from '../db/db.js';
import type { Logger } from '../core/log.js';
import type { ObjectStore } from '../objectstore/objectstore.js';
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
  /** Where batch query results go (`results/{org_id}/{query_id}/`); without it batch mode is 501. */
  results?: ObjectStore;
}

export interface QueryServiceHandle {
  url: string;
  app: FastifyInstance;
  stop(): Promise<void>;
}

/**
 * The Query Service listener of the one-process platform (and of `trace query-service`). It
 * listens once its executor processes have started (a warm pool). Besides the service's routes
 * its `GET /readyz` (core/ops.ts) probes the state and data databases: 503 `NOT_READY` naming the
 * one that does not answer within a second (`/healthz` stays alive-only).
 */
export async function startQueryService(opts: StartQueryServiceOptions): Promise<QueryServiceHandle> {
  const app = buildQueryApp({
    ...queryDepsFromState(opts),
    logger: opts.log,
    ...(opts.results ? { results: opts.results } : {}),
    ...(opts.config ? { config: opts.config } : {}),
    readyChecks: { state_database: (ms) => pingDb(opts.state, ms), data_database: (ms) => pingDb(opts.data, ms) },
  });
  try {
    await executorsOf(app)?.ready();
  } catch (e) {
    await app.close();
    throw e;
  }
  return serve(app, opts.host, opts.port);
}
