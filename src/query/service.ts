/**
 * The Query Service HTTP surface (containers/query_service.md):
 * - `POST /v1/task/query`: task capability token in `X-Trace-Task-Capability`; body
 *   `{task_id, attempt, dataset_uuid | dataset_id | dataset, sql, limit?}`; reads one dataset
 *   granted in the token (specs/query_service_task_query.md).
 * - `POST /v1/query`: user Bearer token; body `{dataset, sql, limit?}` with `dataset` a registry
 *   name, resolved once at query start to a pinned version (specs/query_service_user_query.md,
 *   ADR 0009).
 * Both: SQL gate, exact file list resolved by trusted code, DuckDB sandbox, audit row (never
 * SQL), `{columns, rows, truncated}` on success and `{error, code}` otherwise. Authentication
 * and dataset lookup are injected, so this module holds no keys and no registry code.
 */
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { z } from 'zod';
import { TraceError, forbidden, notFound, unauthorized, badRequest } from '../core/errors.js';
import { UUID_RE } from '../core/ids.js';
import { createLogger, type Logger } from '../core/log.js';
import { createHttpServer, header, parseInput } from '../core/http.js';
import type { Db } from '../db/db.js';
import { SqlGate, sharedGate, type GatedSql } from './gate.js';
import { ENGINE_LIMITS, clampLimit, runQuery, type QueryResultSet, type SandboxOptions } from './engine.js';
import { parseStorageRef, resolveStorageFiles, storagePrefixUrl, urlWithin, type StorageDeps, type StorageRefInput } from './storage.js';
import { recordTaskQuery, recordUserQuery } from './audit.js';
import { Semaphore } from './semaphore.js';
import { SandboxPool } from './pool.js';

/** One dataset grant as carried by a task capability token (contracts/task_capability_tokens.md). */
export interface TaskDatasetGrant {
  dataset_uuid: string;
  dataset_version: string;
  /** `{scheme:'file', prefix, glob, manifest?}` or `{scheme:'s3', bucket, prefix, glob, manifest?}`. */
  storage_ref?: unknown;
  /** Optional: PII column names; a query then also writes a pii_access_log row. */
  pii_columns?: string[];
}

/** The claims the Query Service needs; a verified CapabilityClaims satisfies this. */
export interface TaskQueryClaims {
  org_id: string;
  task_id: string;
  attempt: number;
  datasets: TaskDatasetGrant[];
  /** Canonical `s3://bucket/prefix/` read prefixes; S3 storage refs must lie inside one. */
  s3?: { read_prefixes: string[] };
}

export interface UserPrincipal {
  org_id: string;
  /** users.id (UUID). */
  user_id: string;
  /** Org role slugs (`finance` or `role:finance`). */
  roles: string[];
  /** Stable subject for `user_query_audit.user_sub`; defaults to user_id. */
  sub?: string;
}

/** A registry dataset pinned to its current version at query start. */
export interface ResolvedDataset {
  dataset_uuid: string;
  dataset_version: string | null;
  storage_ref: unknown;
  /** Empty: any org member may read; otherwise the user needs one of these roles. */
  read_roles: string[];
  pii_columns?: string[];
}

export interface QueryServiceConfig {
  /** Queries executing at once in this process. */
  maxConcurrent: number;
  /** Requests allowed to wait for a slot; beyond that 429 QUERY_BUSY. */
  maxQueued: number;
  userTimeoutMs: number;
  taskTimeoutMs: number;
  maxRows: number;
  maxBytes: number;
  bodyLimit: number;
  sandbox: SandboxOptions;
  /**
   * Locked instances kept for reuse, one per grant (pool.ts); 0 gives every query a fresh
   * instance. Reuse saves the ~10 ms instance setup per query.
   */
  poolMaxInstances: number;
  /** A reusable instance idle this long is closed. */
  poolIdleMs: number;
}

export const QUERY_SERVICE_DEFAULTS: QueryServiceConfig = {
  maxConcurrent: 2,
  maxQueued: 8,
  userTimeoutMs: 60_000,
  taskTimeoutMs: 300_000,
  maxRows: ENGINE_LIMITS.maxRows,
  maxBytes: ENGINE_LIMITS.maxBytes,
  bodyLimit: 256 * 1024,
  sandbox: {},
  poolMaxInstances: 4,
  poolIdleMs: 60_000,
};

export interface QueryServiceDeps {
  /** Postgres data (audit tables). */
  dataDb: Db;
  /** Verifies a task capability token; throws (TraceError 401) when it is not valid. */
  verifyTaskToken(token: string): Promise<TaskQueryClaims> | TaskQueryClaims;
  /** Authenticates the raw Authorization header; throws TraceError 401/403. */
  authenticateUser(authorization: string): Promise<UserPrincipal> | UserPrincipal;
  /** Registry lookup by name within the org, pinned to the current version; null when unknown. */
  resolveDataset(orgId: string, name: string): Promise<ResolvedDataset | null> | ResolvedDataset | null;
  storage?: StorageDeps;
  gate?: SqlGate;
  logger?: Logger;
  config?: Partial<QueryServiceConfig>;
}

const uuid = z.string().regex(UUID_RE, 'must be a UUID');
const limitField = z.number().int('must be an integer').optional();
const sqlField = z.string().min(1, 'must not be empty');

const taskBodySchema = z.object({
  task_id: uuid,
  attempt: z.number().int().min(1),
  dataset_uuid: uuid.optional(),
  dataset_id: uuid.optional(),
  dataset: uuid.optional(),
  sql: sqlField,
  limit: limitField,
});

const userBodySchema = z.object({
  dataset: z.string().regex(/^[a-z][a-z0-9_]{0,127}$/, 'must be a dataset name (lower snake_case)'),
  sql: sqlField,
  limit: limitField,
});

const normRole = (r: string) => r.replace(/^role:/, '');

function asAuthError(e: unknown): TraceError {
  if (e instanceof TraceError && (e.status === 401 || e.status === 403)) return e;
  return unauthorized();
}

export function buildQueryApp(deps: QueryServiceDeps): FastifyInstance {
  const cfg: QueryServiceConfig = { ...QUERY_SERVICE_DEFAULTS, ...deps.config };
  const log = deps.logger ?? createLogger('query-service');
  const app = createHttpServer({ log, bodyLimit: cfg.bodyLimit, name: 'query-service' });
  const slots = new Semaphore(cfg.maxConcurrent, cfg.maxQueued);
  const pool = cfg.poolMaxInstances > 0 ? new SandboxPool(cfg.sandbox, { maxInstances: cfg.poolMaxInstances, idleMs: cfg.poolIdleMs }) : undefined;
  app.addHook('onClose', async () => pool?.close());
  const taskClaims = new WeakMap<FastifyRequest, TaskQueryClaims>();
  const principals = new WeakMap<FastifyRequest, UserPrincipal>();
  const gate = () => (deps.gate ? Promise.resolve(deps.gate) : sharedGate());

  /**
   * The exact file list, resolved once at query start (ADR 0009), and the gate's verdict, run
   * side by side. Errors keep their order: a gate rejection (400) before a listing failure.
   */
  async function prepare(ref: StorageRefInput, gated: Promise<GatedSql>): Promise<{ sql: GatedSql; files: string[] }> {
    const listing = resolveStorageFiles(ref, deps.storage);
    listing.catch(() => {});
    const sql = await gated;
    const files = await listing;
    if (files.length === 0) throw notFound('the dataset has no files yet', 'DATASET_EMPTY');
    return { sql, files };
  }

  /** Acquire a slot and run the sandboxed query over the resolved files. */
  async function execute(files: string[], sql: GatedSql, limit: number | undefined, timeoutMs: number): Promise<QueryResultSet> {
    const release = await slots.acquire();
    try {
      return await runQuery({
        grant: { files },
        sql,
        limit: clampLimit(limit, cfg.maxRows),
        timeoutMs,
        maxBytes: cfg.maxBytes,
        sandbox: cfg.sandbox,
        ...(pool ? { pool } : {}),
      });
    } finally {
      release();
    }
  }

  /** Starts the gate on `sql` now; the verdict is awaited later, after the checks that come first. */
  function startGate(sql: string): Promise<GatedSql> {
    const p = gate().then((g) => g.check(sql));
    p.catch(() => {});
    return p;
  }

  async function audit(fn: () => Promise<void>): Promise<void> {
    try {
      await fn();
    } catch (e) {
      log.error({ err: e instanceof Error ? e.message : String(e) }, 'query audit write failed');
      throw new TraceError(500, 'AUDIT_FAILED', 'the query ran but its audit record could not be written; no result is returned');
    }
  }

  const denied = (req: FastifyRequest, fields: Record<string, unknown>, e: unknown) => {
    if (e instanceof TraceError) {
      const rule = e.extra?.rule;
      req.log.info({ event: 'query_denied', route: req.routeOptions.url, status: e.status, code: e.code, ...(rule ? { rule } : {}), ...fields }, 'query refused');
    }
  };

  app.get('/healthz', async () => ({ ok: true }));

  app.post(
    '/v1/task/query',
    {
      onRequest: async (req) => {
        const token = header(req, 'x-trace-task-capability');
        if (!token) throw unauthorized('missing X-Trace-Task-Capability header');
        try {
          taskClaims.set(req, await deps.verifyTaskToken(token));
        } catch (e) {
          throw asAuthError(e);
        }
      },
    },
    async (req) => {
      const claims = taskClaims.get(req);
      if (!claims) throw unauthorized();
      const ctx: Record<string, unknown> = { org_id: claims.org_id, task_id: claims.task_id, attempt: claims.attempt };
      try {
        const body = parseInput(taskBodySchema, req.body);
        if (body.task_id !== claims.task_id || body.attempt !== claims.attempt) {
          throw new TraceError(403, 'CAPABILITY_MISMATCH', 'task capability token does not match task_id and attempt');
        }
        const named = [body.dataset_uuid, body.dataset_id, body.dataset].filter((x): x is string => x !== undefined);
        if (new Set(named.map((s) => s.toLowerCase())).size > 1) throw badRequest('dataset_uuid, dataset_id and dataset name different datasets', 'INVALID_REQUEST');
        let grant: TaskDatasetGrant | undefined;
        if (named.length > 0) grant = claims.datasets.find((d) => d.dataset_uuid.toLowerCase() === named[0]!.toLowerCase());
        else if (claims.datasets.length === 1) grant = claims.datasets[0];
        else throw badRequest('dataset_uuid is required', 'INVALID_REQUEST');
        if (!grant) throw forbidden('the dataset is not granted to this task', 'DATASET_NOT_GRANTED');
        ctx.dataset_uuid = grant.dataset_uuid;
        const ref = parseStorageRef(grant.storage_ref);
        if (ref.scheme === 's3') {
          const prefix = storagePrefixUrl(ref);
          const ok = (claims.s3?.read_prefixes ?? []).some((p) => urlWithin(prefix, p));
          if (!ok) throw forbidden('the dataset storage is outside the token read prefixes', 'STORAGE_OUTSIDE_GRANT');
        }
        const t0 = performance.now();
        const { sql, files } = await prepare(ref, startGate(body.sql));
        const result = await execute(files, sql, body.limit, cfg.taskTimeoutMs);
        const durationMs = performance.now() - t0;
        await audit(() =>
          recordTaskQuery(deps.dataDb, {
            org_id: claims.org_id,
            task_id: claims.task_id,
            attempt: claims.attempt,
            dataset_uuid: grant.dataset_uuid,
            dataset_version: grant.dataset_version ?? null,
            duration_ms: durationMs,
            row_count: result.rows.length,
            columns: result.columns.map((c) => c.name),
            truncated: result.truncated,
            ...(grant.pii_columns && grant.pii_columns.length > 0 ? { pii_dataset: grant.dataset_uuid } : {}),
          }),
        );
        req.log.info({ event: 'query_ok', route: '/v1/task/query', ...ctx, row_count: result.rows.length, truncated: result.truncated, duration_ms: Math.round(durationMs) }, 'query served');
        return result;
      } catch (e) {
        denied(req, ctx, e);
        throw e;
      }
    },
  );

  app.post(
    '/v1/query',
    {
      onRequest: async (req) => {
        const authz = header(req, 'authorization');
        if (!authz) throw unauthorized('missing Authorization header');
        try {
          principals.set(req, await deps.authenticateUser(authz));
        } catch (e) {
          throw asAuthError(e);
        }
      },
    },
    async (req) => {
      const who = principals.get(req);
      if (!who) throw unauthorized();
      const ctx: Record<string, unknown> = { org_id: who.org_id, user_id: who.user_id };
      try {
        const body = parseInput(userBodySchema, req.body);
        ctx.dataset = body.dataset;
        const t0 = performance.now();
        // The gate works while the registry answers; its verdict is only used after the checks.
        const gated = startGate(body.sql);
        const ds = await deps.resolveDataset(who.org_id, body.dataset);
        if (!ds) throw notFound('no such dataset', 'DATASET_NOT_FOUND');
        if (ds.read_roles.length > 0) {
          const need = new Set(ds.read_roles.map(normRole));
          if (!who.roles.some((r) => need.has(normRole(r)))) throw forbidden('you do not have a role that may read this dataset', 'DATASET_FORBIDDEN');
        }
        const ref = parseStorageRef(ds.storage_ref);
        const { sql, files } = await prepare(ref, gated);
        const result = await execute(files, sql, body.limit, cfg.userTimeoutMs);
        const durationMs = performance.now() - t0;
        await audit(() =>
          recordUserQuery(deps.dataDb, {
            org_id: who.org_id,
            user_id: who.user_id,
            ...(who.sub ? { user_sub: who.sub } : {}),
            dataset_uuid: ds.dataset_uuid,
            dataset_name: body.dataset,
            dataset_version: ds.dataset_version,
            duration_ms: durationMs,
            row_count: result.rows.length,
            columns: result.columns.map((c) => c.name),
            truncated: result.truncated,
            ...(ds.pii_columns && ds.pii_columns.length > 0 ? { pii_dataset: body.dataset } : {}),
          }),
        );
        req.log.info({ event: 'query_ok', route: '/v1/query', ...ctx, row_count: result.rows.length, truncated: result.truncated, duration_ms: Math.round(durationMs) }, 'query served');
        return result;
      } catch (e) {
        denied(req, ctx, e);
        throw e;
      }
    },
  );

  return app;
}
