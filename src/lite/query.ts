import type { FastifyInstance } from 'fastify';
import type { Db } from '../db/db.js';
import type { Logger } from '../core/log.js';
import { serve } from '../core/http.js';
import type { UserVerifier } from '../auth/user.js';
import type { CapabilityVerifier } from '../auth/capability.js';
import { buildQueryApp, type QueryServiceConfig } from '../query/service.js';
import { queryDepsFromState } from '../query/wiring.js';

export interface StartQueryServiceOptions {
  state: Db;
  data: Db;
  orgId: string;
  userVerifier: UserVerifier;
  capabilityVerifier: CapabilityVerifier;
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

/** The Query Service listener of the one-process platform (and of `trace query-service`). */
export async function startQueryService(opts: StartQueryServiceOptions): Promise<QueryServiceHandle> {
  const app = buildQueryApp({
    ...queryDepsFromState(opts),
    logger: opts.log,
    ...(opts.config ? { config: opts.config } : {}),
  });
  return serve(app, opts.host, opts.port);
}
