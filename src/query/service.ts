/**
 * The Query Service HTTP surface (containers/query_service.md):
 * - `POST /v1/task/query`: task capability token in `X-Trace-Task-Capability`; body
 *   `{task_id, attempt, lease_token?, dataset_uuid | dataset_id | dataset, sql, limit?}` for one
 *   dataset (the relation `dataset`) or `{..., datasets: {name: dataset_uuid, ...}, sql}` for
 *   several, each granted in the token (specs/query_service_task_query.md). The attempt must
 *   still hold its lease: the Dispatcher is asked (lease.ts).
 * - `POST /v1/query`: user Bearer token; body `{dataset, sql, limit?}` or
 *   `{datasets: {name: dataset_name, ...}, sql, limit?}` with registry names, each resolved once
 *   at query start to a pinned version (specs/query_service_user_query.md, ADR 0009).
 * Both: the SQL scanner here, the exact file lists resolved by trusted code, then one executor
 * process (executors.ts) runs the full SQL gate and the DuckDB sandbox; an audit row per dataset
 * (never SQL); `{columns, rows, truncated}` on success and `{error, code}` otherwise.
 * Authentication, dataset lookup and the lease check are injected, so this module holds no keys
 * and no registry code.
 */
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { z } from 'zod';
import { TraceError, forbidden, notFound, unauthorized, badRequest } from '../core/errors.js';
import { UUID_RE } from '../core/ids.js';
import { createLogger, type Logger } from '../core/log.js';
import { createHttpServer, header, parseInput } from '../core/http.js';
import { pingDb, type Db } from '../db/db.js';
import { Counter, Histogram, type Registry } from 'prom-client';
import { installOps, serviceRegistry, type ReadyCheck } from '../core/ops.js';
import { scanSql, DATASET_RELATION } from './executor/scan.js';
import { namedRelations } from './executor/relations.js';
import type { RelationGrant, S3Settings } from './executor/engine.js';
import { parseStorageRef, resolveStorageFiles, storagePrefixUrl, urlWithin, type StorageDeps, type StorageRefInput } from './storage.js';
import { recordTaskQuery, recordUserQuery } from './audit.js';
import { EXECUTOR_DEFAULTS, ExecutorPool, type ExecuteResult } from './executors.js';
import type { TaskLeaseCheck } from './lease.js';
import { rm } from 'node:fs/promises';
import { createReadStream } from 'node:fs';
import { randomUUID } from 'node:crypto';
import type { ObjectStore } from '../objectstore/objectstore.js';
import { FileObjectStore } from '../objectstore/file.js';
import {
  DEFAULT_RESULT_RETENTION_SECONDS, PAGE_LIMITS, decodeCursor, failAbandoned, describeResult, encodeCursor, insertQueued, markFailed, markRunning, markSucceeded,
  newQueryId, readResult, resultGone, resultKey, resultNotFound, resultPrefix, sqlHash, sweepExpired, uploadResult, type QueryResultRow,
} from './results.js';
import type { InputFilter } from '../core/input-filter.js';

/** One dataset grant as carried by a task capability token (contracts/task_capability_tokens.md). */
export interface TaskDatasetGrant {
  dataset_uuid: string;
  dataset_version: string;
  /** `{scheme:'file', prefix, glob, manifest?}` or `{scheme:'s3', bucket, prefix, glob, manifest?}`. */
  storage_ref?: unknown;
  /** Optional: PII column names; a query then also writes a pii_access_log row. */
  pii_columns?: string[];
  /** The input edge filter (ADR 0007): the relation shows only matching rows. */
  where?: InputFilter;
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

/** Engine settings passed to every executor. */
export interface SandboxSettings {
  /** DuckDB `memory_limit` per instance; default half of `executorMemoryBytes`. */
  memoryLimit?: string;
  threads?: number;
  maxTempDirectorySize?: string;
  /** Where the executors' owned spill root is made; default /dev/shm when writable, else the OS tmpdir. */
  tempRoot?: string;
  s3?: S3Settings;
}

export interface QueryServiceConfig {
  /** Executor processes: queries executing at once in this service. */
  maxConcurrent: number;
  /** Requests allowed to wait for an executor; beyond that 429 QUERY_BUSY. */
  maxQueued: number;
  /** Executors one caller (a user, or a task) may hold at once; its further queries wait. */
  maxPerCaller: number;
  userTimeoutMs: number;
  taskTimeoutMs: number;
  maxRows: number;
  maxBytes: number;
  bodyLimit: number;
  sandbox: SandboxSettings;
  /** Memory cap of one executor process in bytes: its data-segment limit and the RSS it is killed above. */
  executorMemoryBytes: number;
  /** How often a busy executor's resident memory is read. */
  memoryPollMs: number;
  /** Niceness of the executor processes (0 to 19): under CPU contention the platform's routes win. */
  executorNice: number;
  /**
   * Locked instances each executor keeps for reuse, one per grant; 0 gives every query a fresh
   * instance. Reuse saves the ~10 ms instance setup per query.
   */
  poolMaxInstances: number;
  /** A reusable instance idle this long is closed. */
  poolIdleMs: number;
  /** Deadline of one batch query (`mode: "batch"`), like a task query's. */
  batchTimeoutMs: number;
  /** Batch queries running at once; the rest wait in order. */
  batchConcurrency: number;
  /** Batch queries accepted but not finished, at most; beyond that 429 QUERY_BUSY. */
  batchMaxQueued: number;
  /** How long a batch result is kept (`TRACE_QUERY_RESULT_RETENTION_SECONDS`, default 7 days). */
  resultRetentionSeconds: number;
  /** How often expired results are swept (objects removed, rows marked `expired`); 0: never. */
  resultSweepMs: number;
}

export const QUERY_SERVICE_DEFAULTS: QueryServiceConfig = {
  maxConcurrent: EXECUTOR_DEFAULTS.size,
  maxQueued: EXECUTOR_DEFAULTS.maxQueued,
  maxPerCaller: EXECUTOR_DEFAULTS.maxPerCaller,
  userTimeoutMs: 60_000,
  taskTimeoutMs: 300_000,
  maxRows: 10_000,
  maxBytes: 10 * 1024 * 1024,
  bodyLimit: 256 * 1024,
  sandbox: {},
  executorMemoryBytes: EXECUTOR_DEFAULTS.memoryCapBytes,
  memoryPollMs: EXECUTOR_DEFAULTS.memoryPollMs,
  executorNice: EXECUTOR_DEFAULTS.nice,
  poolMaxInstances: EXECUTOR_DEFAULTS.maxInstances,
  poolIdleMs: EXECUTOR_DEFAULTS.idleMs,
  batchTimeoutMs: 300_000,
  batchConcurrency: 1,
  batchMaxQueued: 64,
  resultRetentionSeconds: DEFAULT_RESULT_RETENTION_SECONDS,
  resultSweepMs: 60_000,
};

export interface QueryServiceDeps {
  /** Postgres data (audit tables). */
  dataDb: Db;
  /** Verifies a task capability token; throws (TraceError 401) when it is not valid. */
  verifyTaskToken(token: string): Promise<TaskQueryClaims> | TaskQueryClaims;
  /** Whether the token's attempt still holds its lease (lease.ts); throws TraceError 403/401/503 when not. */
  checkTaskLease: TaskLeaseCheck;
  /** Authenticates the raw Authorization header; throws TraceError 401/403. */
  authenticateUser(authorization: string): Promise<UserPrincipal> | UserPrincipal;
  /**
   * Registry lookup by name within the org, pinned to the current version, or to `version` when
   * one is given; null when the dataset is unknown. With a version that is not one of this
   * dataset's, the result has `dataset_version: null`.
   */
  resolveDataset(orgId: string, name: string, version?: string): Promise<ResolvedDataset | null> | ResolvedDataset | null;
  storage?: StorageDeps;
  /**
   * The object store batch results are written to (`results/{org_id}/{query_id}/` in it). Without
   * it `mode: "batch"` answers 501 RESULTS_NOT_CONFIGURED.
   */
  results?: ObjectStore;
  logger?: Logger;
  config?: Partial<QueryServiceConfig>;
  /** What `/readyz` probes; default the data database. */
  readyChecks?: Record<string, ReadyCheck>;
  /** The registry `/metrics` serves; default a fresh one. */
  metrics?: Registry;
}

const uuid = z.string().regex(UUID_RE, 'must be a UUID');
const limitField = z.number().int('must be an integer').optional();
const sqlField = z.string().min(1, 'must not be empty');
const DATASET_NAME_RE = /^[a-z][a-z0-9_]{0,127}$/;
const datasetName = z.string().regex(DATASET_NAME_RE, 'must be a dataset name matching ^[a-z][a-z0-9_]{0,127}$ (lower snake_case, starting with a letter)');

const taskBodySchema = z.object({
  task_id: uuid,
  attempt: z.number().int().min(1),
  lease_token: uuid.optional(),
  dataset_uuid: uuid.optional(),
  dataset_id: uuid.optional(),
  dataset: uuid.optional(),
  datasets: z.record(z.string(), uuid).optional(),
  sql: sqlField,
  limit: limitField,
});

export const userBodySchema = z.object({
  dataset: datasetName.optional(),
  datasets: z.record(z.string(), datasetName).optional(),
  /** Pins `dataset` to this version instead of its current one (ADR 0009). */
  version: uuid.optional(),
  /** Pins relations of `datasets` (by relation name) to these versions; the others read their current version. */
  versions: z.record(z.string(), uuid).optional(),
  sql: sqlField,
  limit: limitField,
  mode: z.enum(['interactive', 'batch']).optional(),
}).refine((b) => (b.dataset === undefined) !== (b.datasets === undefined), { message: 'give either dataset or datasets', path: ['dataset'] })
  .refine((b) => b.version === undefined || b.dataset !== undefined, { message: 'version pins dataset; with datasets, give versions: {relation: version}', path: ['version'] })
  .refine((b) => b.versions === undefined || (b.datasets !== undefined && Object.keys(b.versions).every((k) => Object.keys(b.datasets!).includes(k))),
    { message: 'every key of versions must be a relation name of datasets', path: ['versions'] });

const resultParams = z.object({ id: uuid });
export const resultPageQuery = z.object({
  cursor: z.string().optional(),
  limit: z.coerce.number().int('must be an integer').min(1, 'must be from 1 to 10000').max(PAGE_LIMITS.maxLimit, 'must be from 1 to 10000').optional(),
});
export const resultExportQuery = z.object({ format: z.enum(['csv', 'parquet']).default('parquet') });

const normRole = (r: string) => r.replace(/^role:/, '');

function asAuthError(e: unknown): TraceError {
  if (e instanceof TraceError && (e.status === 401 || e.status === 403)) return e;
  return unauthorized();
}

/** `{alias: value}` from a request to validated relations sorted by name (400 naming the bad field). */
function relationsOf<T>(record: Record<string, T>): Array<{ name: string; ref: T }> {
  const r = namedRelations(Object.entries(record));
  if (!r.ok) {
    const first = r.problems[0]!;
    throw badRequest(`invalid request body: ${first.path}: ${first.message}`, 'INVALID_REQUEST', r.problems);
  }
  return r.relations;
}

/** Slack beyond a batch query's deadline (the upload, a loaded machine) before it counts as abandoned. */
const ABANDON_MARGIN_SECONDS = 600;

const pools = new WeakMap<FastifyInstance, ExecutorPool>();
const sweeps = new WeakMap<FastifyInstance, () => Promise<string[]>>();

/** One pass of the query result expiry sweep of an app built by buildQueryApp (operators, tests). */
export function sweepResultsOf(app: FastifyInstance): (() => Promise<string[]>) | undefined {
  return sweeps.get(app);
}

/** The executor pool of an app built by buildQueryApp (operators' stats, tests). */
export function executorsOf(app: FastifyInstance): ExecutorPool | undefined {
  return pools.get(app);
}

/** One relation of a query, resolved: what the audit row needs and where its files are. */
interface PlannedRelation {
  name: string;
  dataset_uuid: string;
  dataset_version: string | null;
  ref: StorageRefInput;
  pii: boolean;
  /** The registry name (user queries). */
  dataset_name?: string;
  /** The task's input edge filter on this dataset, applied in the executor. */
  where?: InputFilter;
}

export function buildQueryApp(deps: QueryServiceDeps): FastifyInstance {
  const cfg: QueryServiceConfig = { ...QUERY_SERVICE_DEFAULTS, ...deps.config };
  const log = deps.logger ?? createLogger('query-service');
  const app = createHttpServer({ log, bodyLimit: cfg.bodyLimit, name: 'query-service' });
  const pool = new ExecutorPool({
    size: cfg.maxConcurrent,
    maxQueued: cfg.maxQueued,
    maxPerCaller: cfg.maxPerCaller,
    memoryCapBytes: cfg.executorMemoryBytes,
    ...(cfg.sandbox.memoryLimit ? { memoryLimit: cfg.sandbox.memoryLimit } : {}),
    threads: cfg.sandbox.threads ?? EXECUTOR_DEFAULTS.threads,
    maxTempDirectorySize: cfg.sandbox.maxTempDirectorySize ?? EXECUTOR_DEFAULTS.maxTempDirectorySize,
    ...(cfg.sandbox.tempRoot ? { tempRoot: cfg.sandbox.tempRoot } : {}),
    ...(cfg.sandbox.s3 ? { s3: cfg.sandbox.s3 } : {}),
    maxInstances: cfg.poolMaxInstances,
    idleMs: cfg.poolIdleMs,
    memoryPollMs: cfg.memoryPollMs,
    nice: cfg.executorNice,
    log,
  });
  pools.set(app, pool);
  app.addHook('onClose', async () => pool.close());
  const taskClaims = new WeakMap<FastifyRequest, { claims: TaskQueryClaims; token: string }>();
  const principals = new WeakMap<FastifyRequest, UserPrincipal>();

  /**
   * The exact file list of every relation, resolved once at query start (ADR 0009), side by
   * side. Errors come in relation-name order.
   */
  async function listFiles(planned: PlannedRelation[]): Promise<RelationGrant[]> {
    const listings = planned.map((p) => resolveStorageFiles(p.ref, deps.storage));
    for (const l of listings) l.catch(() => {});
    const out: RelationGrant[] = [];
    for (const [i, p] of planned.entries()) {
      const files = await listings[i]!;
      if (files.length === 0) throw notFound(planned.length > 1 ? `the dataset of relation ${p.name} has no files yet` : 'the dataset has no files yet', 'DATASET_EMPTY');
      out.push({ name: p.name, files, ...(p.where ? { where: p.where } : {}) });
    }
    return out;
  }

  /** Runs the statement on an executor. */
  function execute(caller: string, relations: RelationGrant[], sql: string, limit: number | undefined, timeoutMs: number): Promise<ExecuteResult> {
    const clamped = limit === undefined || !Number.isFinite(limit) ? cfg.maxRows : Math.min(cfg.maxRows, Math.max(1, Math.trunc(limit)));
    return pool.execute({ caller, sql, relations, limit: clamped, maxBytes: cfg.maxBytes, timeoutMs });
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
      rejections.inc({ route: req.routeOptions.url ?? 'unmatched', code: e.code });
      const rule = e.extra?.rule;
      req.log.info({ event: 'query_denied', route: req.routeOptions.url, status: e.status, code: e.code, ...(rule ? { rule } : {}), ...fields }, 'query refused');
    }
  };

  const registry = deps.metrics ?? serviceRegistry('query');
  installOps(app, { service: 'query', registry, checks: deps.readyChecks ?? { data_database: (ms) => pingDb(deps.dataDb, ms) } });
  const queryDuration = new Histogram({
    name: 'trace_query_duration_seconds',
    help: 'Queries answered, by route and status class (rejections included)',
    labelNames: ['route', 'status'],
    buckets: [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120],
    registers: [registry],
  });
  const rejections = new Counter({
    name: 'trace_query_rejections_total',
    help: 'Queries refused (SQL gate, authorization, limits, lease), by route and error code',
    labelNames: ['route', 'code'],
    registers: [registry],
  });
  app.addHook('onResponse', async (req, reply) => {
    const route = req.routeOptions.url;
    if (route !== '/v1/query' && route !== '/v1/task/query') return;
    queryDuration.observe({ route, status: `${Math.floor(reply.statusCode / 100)}xx` }, reply.elapsedTime / 1000);
  });

  app.post(
    '/v1/task/query',
    {
      onRequest: async (req) => {
        const token = header(req, 'x-trace-task-capability');
        if (!token) throw unauthorized('missing X-Trace-Task-Capability header');
        try {
          taskClaims.set(req, { claims: await deps.verifyTaskToken(token), token });
        } catch (e) {
          throw asAuthError(e);
        }
      },
    },
    async (req, reply) => {
      const auth = taskClaims.get(req);
      if (!auth) throw unauthorized();
      const { claims, token } = auth;
      const ctx: Record<string, unknown> = { org_id: claims.org_id, task_id: claims.task_id, attempt: claims.attempt };
      try {
        const body = parseInput(taskBodySchema, req.body);
        if (body.task_id !== claims.task_id || body.attempt !== claims.attempt) {
          throw new TraceError(403, 'CAPABILITY_MISMATCH', 'task capability token does not match task_id and attempt');
        }
        // The lease is asked for now and awaited before any file is read.
        const lease = deps.checkTaskLease(token, { task_id: body.task_id, attempt: body.attempt, ...(body.lease_token ? { lease_token: body.lease_token } : {}) });
        lease.catch(() => {});
        const named = [body.dataset_uuid, body.dataset_id, body.dataset].filter((x): x is string => x !== undefined);
        let wanted: Array<{ name: string; ref: string | undefined }>;
        if (body.datasets !== undefined) {
          if (named.length > 0) throw badRequest('give either datasets or one of dataset_uuid, dataset_id, dataset', 'INVALID_REQUEST');
          wanted = relationsOf(body.datasets);
        } else {
          if (new Set(named.map((s) => s.toLowerCase())).size > 1) throw badRequest('dataset_uuid, dataset_id and dataset name different datasets', 'INVALID_REQUEST');
          if (named.length === 0 && claims.datasets.length !== 1) throw badRequest('dataset_uuid is required', 'INVALID_REQUEST');
          wanted = [{ name: DATASET_RELATION, ref: named[0] }];
        }
        const planned: PlannedRelation[] = [];
        for (const w of wanted) {
          const grant = w.ref === undefined ? claims.datasets[0] : claims.datasets.find((d) => d.dataset_uuid.toLowerCase() === w.ref!.toLowerCase());
          if (!grant) throw forbidden(wanted.length > 1 ? `the dataset of relation ${w.name} is not granted to this task` : 'the dataset is not granted to this task', 'DATASET_NOT_GRANTED');
          const ref = parseStorageRef(grant.storage_ref);
          if (ref.scheme === 's3') {
            const prefix = storagePrefixUrl(ref);
            const ok = (claims.s3?.read_prefixes ?? []).some((p) => urlWithin(prefix, p));
            if (!ok) throw forbidden('the dataset storage is outside the token read prefixes', 'STORAGE_OUTSIDE_GRANT');
          }
          planned.push({ name: w.name, dataset_uuid: grant.dataset_uuid, dataset_version: grant.dataset_version ?? null, ref, pii: (grant.pii_columns?.length ?? 0) > 0, ...(grant.where ? { where: grant.where } : {}) });
        }
        if (planned.length === 1) ctx.dataset_uuid = planned[0]!.dataset_uuid;
        else ctx.dataset_uuids = planned.map((p) => p.dataset_uuid);
        const t0 = performance.now();
        await lease;
        scanSql(body.sql);
        const relations = await listFiles(planned);
        const result = await execute(`task:${claims.task_id}`, relations, body.sql, body.limit, cfg.taskTimeoutMs);
        const durationMs = performance.now() - t0;
        await audit(() =>
          recordTaskQuery(deps.dataDb, {
            org_id: claims.org_id,
            task_id: claims.task_id,
            attempt: claims.attempt,
            datasets: planned.map((p) => ({ dataset_uuid: p.dataset_uuid, dataset_version: p.dataset_version, ...(p.pii ? { pii_dataset: p.dataset_uuid } : {}) })),
            duration_ms: durationMs,
            row_count: result.rowCount,
            columns: result.columns.map((c) => c.name),
            truncated: result.truncated,
          }),
        );
        req.log.info({ event: 'query_ok', route: '/v1/task/query', ...ctx, row_count: result.rowCount, truncated: result.truncated, duration_ms: Math.round(durationMs) }, 'query served');
        return reply.header('content-type', 'application/json; charset=utf-8').send(result.body);
      } catch (e) {
        denied(req, ctx, e);
        throw e;
      }
    },
  );

  const userAuth = async (req: FastifyRequest) => {
    const authz = header(req, 'authorization');
    if (!authz) throw unauthorized('missing Authorization header');
    try {
      principals.set(req, await deps.authenticateUser(authz));
    } catch (e) {
      throw asAuthError(e);
    }
  };

  // -------------------------------------------------------------------------------------------
  // Batch queries (ADR 0005): accepted at once with a query id, run in order in the background
  // by this service on its executors, the whole result exported as Parquet to the results prefix.
  // -------------------------------------------------------------------------------------------
  interface BatchJob {
    id: string;
    who: UserPrincipal;
    sql: string;
    relations: RelationGrant[];
    planned: PlannedRelation[];
  }
  const batchQueue: BatchJob[] = [];
  let batchRunning = 0;
  let closing = false;

  function pumpBatch(): void {
    while (!closing && batchRunning < cfg.batchConcurrency && batchQueue.length > 0) {
      const job = batchQueue.shift()!;
      batchRunning++;
      void runBatch(job).finally(() => {
        batchRunning--;
        pumpBatch();
      });
    }
  }

  async function runBatch(job: BatchJob): Promise<void> {
    const store = deps.results!;
    const t0 = performance.now();
    const key = resultKey(job.who.org_id, job.id);
    const ctx = { event: 'batch_query', query_id: job.id, org_id: job.who.org_id, user_id: job.who.user_id };
    try {
      if (!(await markRunning(deps.dataDb, job.id))) return;
      const r = await pool.execute({
        caller: `batch:${job.who.user_id}`, sql: job.sql, relations: job.relations, limit: 1, maxBytes: cfg.maxBytes, timeoutMs: cfg.batchTimeoutMs,
        action: 'export', export: { format: 'parquet', name: `result-${job.id}.parquet` },
      });
      const bytes = await uploadResult(store, key, r.file!);
      const durationMs = performance.now() - t0;
      try {
        await audit(() =>
          recordUserQuery(deps.dataDb, {
            org_id: job.who.org_id,
            user_id: job.who.user_id,
            ...(job.who.sub ? { user_sub: job.who.sub } : {}),
            datasets: job.planned.map((p) => ({ dataset_uuid: p.dataset_uuid, dataset_name: p.dataset_name!, dataset_version: p.dataset_version, ...(p.pii ? { pii_dataset: p.dataset_name! } : {}) })),
            duration_ms: durationMs,
            row_count: r.rowCount,
            columns: r.columns.map((c) => c.name),
            truncated: false,
          }),
        );
      } catch (e) {
        await store.deletePrefix(resultPrefix(job.who.org_id, job.id));
        throw e;
      }
      // A result that expired while it ran is not resurrected: its object goes again.
      if (!(await markSucceeded(deps.dataDb, job.id, { row_count: r.rowCount, bytes, columns: r.columns, duration_ms: durationMs }))) {
        await store.deletePrefix(resultPrefix(job.who.org_id, job.id));
      }
      log.info({ ...ctx, status: 'succeeded', row_count: r.rowCount, bytes, duration_ms: Math.round(durationMs) }, 'batch query finished');
    } catch (e) {
      const err = e instanceof TraceError ? e : new TraceError(500, 'QUERY_FAILED', 'the batch query failed');
      if (!(e instanceof TraceError)) log.error({ ...ctx, err: e instanceof Error ? e.message : String(e) }, 'batch query failed unexpectedly');
      else log.info({ ...ctx, status: 'failed', code: err.code }, 'batch query failed');
      await markFailed(deps.dataDb, job.id, { code: err.code, message: err.message, duration_ms: performance.now() - t0 }).catch((me: unknown) => {
        log.error({ ...ctx, err: me instanceof Error ? me.message : String(me) }, 'could not record the batch query failure');
      });
    }
  }

  /** Accepts a batch query whose SQL passed the full gate; answers 202 with its id. */
  async function acceptBatch(who: UserPrincipal, sql: string, relations: RelationGrant[], planned: PlannedRelation[]): Promise<Record<string, unknown>> {
    const store = deps.results;
    if (!store) throw new TraceError(501, 'RESULTS_NOT_CONFIGURED', 'this Query Service has no object store for query results, so batch mode is not available');
    // The full SQL gate now, on an executor, so batch mode refuses exactly what interactive mode refuses.
    await pool.execute({ caller: `user:${who.user_id}`, sql, relations, limit: 1, maxBytes: cfg.maxBytes, timeoutMs: cfg.userTimeoutMs, action: 'check' });
    if (batchQueue.length + batchRunning >= cfg.batchMaxQueued) throw new TraceError(429, 'QUERY_BUSY', `${cfg.batchMaxQueued} batch queries are already waiting or running; try again later`);
    const id = newQueryId();
    const location = `${store.url(resultPrefix(who.org_id, id))}/`;
    await insertQueued(deps.dataDb, { id, org_id: who.org_id, user_id: who.user_id, sql_hash: sqlHash(sql), output_location: location, retention_seconds: cfg.resultRetentionSeconds });
    batchQueue.push({ id, who, sql, relations, planned });
    pumpBatch();
    return { mode: 'batch', query_id: id, status: 'queued', task_id: null, format: 'parquet', output_location: location };
  }

  /** The caller's own result, or 404 (another org's or another user's id alike); 410 once expired. */
  async function ownResult(who: UserPrincipal, id: string): Promise<QueryResultRow> {
    const row = await readResult(deps.dataDb, id);
    if (!row || row.org_id !== who.org_id || row.user_id !== who.user_id) throw resultNotFound();
    if (row.status === 'expired' || row.past_expiry) throw resultGone();
    return row;
  }

  async function resultFile(row: QueryResultRow): Promise<string> {
    const store = deps.results;
    if (!store) throw new TraceError(501, 'RESULTS_NOT_CONFIGURED', 'this Query Service has no object store for query results');
    const key = resultKey(row.org_id, row.id);
    return store instanceof FileObjectStore ? store.localPath(key) : store.url(key);
  }

  function notReady(row: QueryResultRow): TraceError {
    if (row.status === 'failed') return new TraceError(409, 'QUERY_RESULT_FAILED', `the batch query failed (${row.error_code ?? 'QUERY_FAILED'}): ${row.error_message ?? ''}`.trim());
    return new TraceError(409, 'QUERY_RESULT_NOT_READY', `the batch query is ${row.status}; poll GET /v1/query-results/${row.id} until its status is succeeded`);
  }

  app.get('/v1/query-results/:id', { onRequest: userAuth }, async (req) => {
    const who = principals.get(req);
    if (!who) throw unauthorized();
    const { id } = parseInput(resultParams, req.params, 'path');
    const q = parseInput(resultPageQuery, req.query, 'query');
    const row = await ownResult(who, id);
    const out = describeResult(row);
    if (row.status !== 'succeeded') return out;
    const offset = decodeCursor(q.cursor);
    const total = row.row_count ?? 0;
    const limit = q.limit ?? PAGE_LIMITS.defaultLimit;
    if (offset >= total) return { ...out, rows: [], truncated: false, next_cursor: null };
    const file = await resultFile(row);
    const r = await pool.execute({
      caller: `user:${who.user_id}`, sql: `SELECT * FROM ${DATASET_RELATION} LIMIT ${limit} OFFSET ${offset}`,
      relations: [{ name: DATASET_RELATION, files: [file] }], limit, maxBytes: cfg.maxBytes, timeoutMs: cfg.userTimeoutMs,
    });
    const page = JSON.parse(r.body) as { columns: unknown; rows: unknown[]; truncated: boolean };
    const next = offset + page.rows.length;
    return { ...out, columns: page.columns, rows: page.rows, truncated: page.truncated, next_cursor: next < total && page.rows.length > 0 ? encodeCursor(next) : null };
  });

  app.get('/v1/query-results/:id/export', { onRequest: userAuth }, async (req, reply) => {
    const who = principals.get(req);
    if (!who) throw unauthorized();
    const { id } = parseInput(resultParams, req.params, 'path');
    const { format } = parseInput(resultExportQuery, req.query, 'query');
    const row = await ownResult(who, id);
    if (row.status !== 'succeeded') throw notReady(row);
    reply.header('content-disposition', `attachment; filename="${row.id}.${format}"`);
    if (format === 'parquet') {
      const stream = await deps.results!.getStream(resultKey(row.org_id, row.id));
      return reply.header('content-type', 'application/vnd.apache.parquet').send(stream);
    }
    // CSV: DuckDB's own writer, in an executor, over the stored Parquet.
    const file = await resultFile(row);
    const r = await pool.execute({
      caller: `user:${who.user_id}`, sql: `SELECT * FROM ${DATASET_RELATION}`, relations: [{ name: DATASET_RELATION, files: [file] }],
      limit: 1, maxBytes: cfg.maxBytes, timeoutMs: cfg.batchTimeoutMs, action: 'export', export: { format: 'csv', name: `export-${randomUUID()}.csv` },
    });
    const csv = r.file!;
    const stream = createReadStream(csv);
    stream.on('close', () => void rm(csv, { force: true }));
    return reply.header('content-type', 'text/csv; charset=utf-8').send(stream);
  });

  let sweepTimer: NodeJS.Timeout | undefined;
  const sweep = async (): Promise<string[]> => {
    const ids = await sweepExpired(deps.dataDb, deps.results);
    if (ids.length > 0) log.info({ event: 'query_results_expired', count: ids.length }, 'expired query results removed');
    // A run is bounded by its deadline plus the upload; a wait by the queue ahead of it.
    const runSeconds = Math.ceil(cfg.batchTimeoutMs / 1000) + ABANDON_MARGIN_SECONDS;
    const abandoned = await failAbandoned(deps.dataDb, {
      runningSeconds: runSeconds,
      queuedSeconds: Math.ceil(cfg.batchMaxQueued / Math.max(1, cfg.batchConcurrency)) * runSeconds + ABANDON_MARGIN_SECONDS,
    });
    if (abandoned.length > 0) log.warn({ event: 'query_results_abandoned', count: abandoned.length }, 'batch queries whose runner stopped marked failed');
    return ids;
  };
  sweeps.set(app, sweep);
  if (cfg.resultSweepMs > 0) {
    const tick = () => {
      sweepTimer = setTimeout(() => {
        sweep().catch((e: unknown) => log.warn({ err: e instanceof Error ? e.message : String(e) }, 'query result sweep failed')).finally(() => {
          if (!closing) tick();
        });
      }, cfg.resultSweepMs);
      sweepTimer.unref();
    };
    tick();
  }
  app.addHook('onClose', async () => {
    closing = true;
    if (sweepTimer) clearTimeout(sweepTimer);
    // Nothing waits for batch queries here: closing the pool ends a running one (recorded as
    // failed when the database still answers). Rows left `queued` or `running` by a stopped
    // service become failed (QUERY_ABANDONED) in a later sweep.
  });

  app.post(
    '/v1/query',
    { onRequest: userAuth },
    async (req, reply) => {
      const who = principals.get(req);
      if (!who) throw unauthorized();
      const ctx: Record<string, unknown> = { org_id: who.org_id, user_id: who.user_id };
      try {
        const body = parseInput(userBodySchema, req.body);
        const wanted = body.datasets !== undefined ? relationsOf(body.datasets) : [{ name: DATASET_RELATION, ref: body.dataset! }];
        if (wanted.length === 1 && body.dataset !== undefined) ctx.dataset = body.dataset;
        else ctx.datasets = wanted.map((w) => w.ref);
        // Pinned versions by relation name (ADR 0009); the others read the current version.
        const pins = new Map<string, string>(body.dataset !== undefined
          ? (body.version !== undefined ? [[DATASET_RELATION, body.version]] : [])
          : Object.entries(body.versions ?? {}).map(([alias, v]) => [wanted.find((w) => w.name.toLowerCase() === alias.toLowerCase())!.name, v]));
        const t0 = performance.now();
        // Registry lookups side by side; errors in relation-name order.
        const lookups = wanted.map((w) => {
          const pin = pins.get(w.name);
          return Promise.resolve(pin !== undefined ? deps.resolveDataset(who.org_id, w.ref, pin) : deps.resolveDataset(who.org_id, w.ref));
        });
        for (const l of lookups) l.catch(() => {});
        const planned: PlannedRelation[] = [];
        for (const [i, w] of wanted.entries()) {
          const ds = await lookups[i]!;
          const which = wanted.length > 1 ? ` (relation ${w.name})` : '';
          if (!ds) throw notFound(`no such dataset${which}`, 'DATASET_NOT_FOUND');
          if (ds.read_roles.length > 0) {
            const need = new Set(ds.read_roles.map(normRole));
            if (!who.roles.some((r) => need.has(normRole(r)))) throw forbidden(`you do not have a role that may read this dataset${which}`, 'DATASET_FORBIDDEN');
          }
          const pin = pins.get(w.name);
          if (pin !== undefined && ds.dataset_version?.toLowerCase() !== pin.toLowerCase()) {
            throw notFound(`${w.ref} has no version ${pin}${which}`, 'DATASET_VERSION_NOT_FOUND');
          }
          planned.push({ name: w.name, dataset_uuid: ds.dataset_uuid, dataset_version: ds.dataset_version, ref: parseStorageRef(ds.storage_ref), pii: (ds.pii_columns?.length ?? 0) > 0, dataset_name: w.ref });
        }
        scanSql(body.sql);
        const relations = await listFiles(planned);
        if (body.mode === 'batch') {
          const accepted = await acceptBatch(who, body.sql, relations, planned);
          req.log.info({ event: 'query_accepted', route: '/v1/query', mode: 'batch', query_id: accepted.query_id, ...ctx }, 'batch query accepted');
          // Like an interactive answer, it names the version each relation reads (pinned at acceptance).
          return reply.code(202).send({ ...accepted, dataset_versions: Object.fromEntries(planned.map((p) => [p.name, p.dataset_version])) });
        }
        const result = await execute(`user:${who.user_id}`, relations, body.sql, body.limit, cfg.userTimeoutMs);
        const durationMs = performance.now() - t0;
        await audit(() =>
          recordUserQuery(deps.dataDb, {
            org_id: who.org_id,
            user_id: who.user_id,
            ...(who.sub ? { user_sub: who.sub } : {}),
            datasets: planned.map((p) => ({ dataset_uuid: p.dataset_uuid, dataset_name: p.dataset_name!, dataset_version: p.dataset_version, ...(p.pii ? { pii_dataset: p.dataset_name! } : {}) })),
            duration_ms: durationMs,
            row_count: result.rowCount,
            columns: result.columns.map((c) => c.name),
            truncated: result.truncated,
          }),
        );
        req.log.info({ event: 'query_ok', route: '/v1/query', ...ctx, row_count: result.rowCount, truncated: result.truncated, duration_ms: Math.round(durationMs) }, 'query served');
        // The answer names the version each relation read: `dataset_versions: {relation: version}`.
        const versions = JSON.stringify(Object.fromEntries(planned.map((p) => [p.name, p.dataset_version])));
        return reply.header('content-type', 'application/json; charset=utf-8').send(`${result.body.slice(0, -1)},"dataset_versions":${versions}}`);
      } catch (e) {
        denied(req, ctx, e);
        throw e;
      }
    },
  );

  return app;
}
