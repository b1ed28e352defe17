/**
 * Query results (ADR 0005, specs/query_service_query_results.md): the `query_results` rows of
 * batch queries and their result objects under the results prefix
 * (`results/{org_id}/{query_id}/result.parquet` in the object store). This module owns the
 * table's state transitions (SQL in plain view below), the result object keys, the page cursor
 * and the expiry sweep. Running a statement stays with the executors (service.ts hands it the
 * pool); no SQL text is stored, only its hash.
 *
 * Statuses: `queued` -> `running` -> `succeeded` | `failed`; any of them -> `expired` when
 * `expires_at` has passed and the sweep removed the result object. The row stays as the record
 * of the run.
 */
import { createHash, randomUUID } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { rm, stat } from 'node:fs/promises';
import type { Db, Queryable } from '../db/db.js';
import { TraceError, badRequest } from '../core/errors.js';
import type { ObjectStore } from '../objectstore/objectstore.js';
import type { QueryColumn } from './executor/engine.js';

export type ResultStatus = 'queued' | 'running' | 'succeeded' | 'failed' | 'expired';

export interface QueryResultRow {
  id: string;
  org_id: string;
  user_id: string;
  task_id: string | null;
  mode: 'interactive' | 'batch';
  status: ResultStatus;
  sql_hash: string;
  output_format: string;
  output_location: string | null;
  columns: QueryColumn[] | null;
  row_count: number | null;
  bytes: number | null;
  duration_ms: number | null;
  error_code: string | null;
  error_message: string | null;
  expires_at: Date;
  created_at: Date;
  updated_at: Date;
  /** Computed: expires_at has passed (whether or not the sweep ran yet). */
  past_expiry: boolean;
}

/** Default retention of a result: operations.md, "Scratch/query export retention", 7 days. */
export const DEFAULT_RESULT_RETENTION_SECONDS = 7 * 24 * 3600;

export const RESULT_FILE = 'result.parquet';

/** The result object's prefix and key in the object store. */
export function resultPrefix(orgId: string, queryId: string): string {
  return `results/${orgId}/${queryId}`;
}
export function resultKey(orgId: string, queryId: string): string {
  return `${resultPrefix(orgId, queryId)}/${RESULT_FILE}`;
}

export function sqlHash(sql: string): string {
  return `sha256:${createHash('sha256').update(sql, 'utf8').digest('hex')}`;
}

const INSERT = `
INSERT INTO query_results (id, org_id, user_id, mode, status, sql_hash, output_format, output_location, expires_at)
VALUES ($1, $2, $3, 'batch', 'queued', $4, 'parquet', $5, now() + make_interval(secs => $6))`;

const START = `
UPDATE query_results SET status = 'running', updated_at = now()
WHERE id = $1 AND status = 'queued'`;

const SUCCEED = `
UPDATE query_results
SET status = 'succeeded', row_count = $2, bytes = $3, columns = $4::jsonb, duration_ms = $5, updated_at = now()
WHERE id = $1 AND status = 'running'`;

const FAIL = `
UPDATE query_results
SET status = 'failed', error_code = $2, error_message = $3, duration_ms = $4, updated_at = now()
WHERE id = $1 AND status IN ('queued', 'running')`;

const SELECT_ONE = `
SELECT id, org_id, user_id, task_id, mode, status, sql_hash, output_format, output_location, columns,
       row_count, bytes, duration_ms, error_code, error_message, expires_at, created_at, updated_at,
       (expires_at <= now()) AS past_expiry
FROM query_results WHERE id = $1`;

const DUE_FOR_EXPIRY = `
SELECT id, org_id FROM query_results
WHERE status <> 'expired' AND expires_at <= now()
ORDER BY expires_at LIMIT $1`;

const EXPIRE = `
UPDATE query_results SET status = 'expired', updated_at = now()
WHERE id = $1 AND status <> 'expired'`;

export async function insertQueued(db: Queryable, r: { id: string; org_id: string; user_id: string; sql_hash: string; output_location: string; retention_seconds: number }): Promise<void> {
  await db.query(INSERT, [r.id, r.org_id, r.user_id, r.sql_hash, r.output_location, r.retention_seconds]);
}

/** queued -> running; false when the row is no longer queued (expired meanwhile). */
export async function markRunning(db: Queryable, id: string): Promise<boolean> {
  return ((await db.query(START, [id])).rowCount ?? 0) === 1;
}

/** running -> succeeded; false when the row left `running` meanwhile (expired). */
export async function markSucceeded(db: Queryable, id: string, r: { row_count: number; bytes: number; columns: QueryColumn[]; duration_ms: number }): Promise<boolean> {
  const res = await db.query(SUCCEED, [id, r.row_count, r.bytes, JSON.stringify(r.columns), Math.round(r.duration_ms)]);
  return (res.rowCount ?? 0) === 1;
}

const ABANDON = `
UPDATE query_results
SET status = 'failed', error_code = 'QUERY_ABANDONED',
    error_message = 'the Query Service that ran this batch query stopped before it finished; run it again', updated_at = now()
WHERE (status = 'running' AND updated_at < now() - make_interval(secs => $1))
   OR (status = 'queued' AND updated_at < now() - make_interval(secs => $2))
RETURNING id`;

/**
 * Batch queries whose runner is gone (the service stopped or crashed): a `running` row older
 * than a run can take, or a `queued` row older than the longest wait its bounded queue allows,
 * becomes `failed` (QUERY_ABANDONED), so a client polling it gets an answer.
 */
export async function failAbandoned(db: Queryable, limits: { runningSeconds: number; queuedSeconds: number }): Promise<string[]> {
  const r = await db.query<{ id: string }>(ABANDON, [limits.runningSeconds, limits.queuedSeconds]);
  return r.rows.map((x) => x.id);
}

export async function markFailed(db: Queryable, id: string, e: { code: string; message: string; duration_ms: number }): Promise<void> {
  await db.query(FAIL, [id, e.code, e.message.slice(0, 1000), Math.round(e.duration_ms)]);
}

export async function readResult(db: Queryable, id: string): Promise<QueryResultRow | null> {
  const r = await db.query<QueryResultRow & { row_count: string | number | null; bytes: string | number | null }>(SELECT_ONE, [id]);
  const row = r.rows[0];
  if (!row) return null;
  return { ...row, row_count: row.row_count === null ? null : Number(row.row_count), bytes: row.bytes === null ? null : Number(row.bytes) };
}

/**
 * One pass of the expiry sweep: for each result past `expires_at` (at most `batch`), its
 * objects are removed first, then the row is marked `expired` (a failed removal is retried by
 * the next pass). Returns the ids expired.
 */
export async function sweepExpired(db: Db, store: ObjectStore | undefined, batch = 100): Promise<string[]> {
  const due = await db.query<{ id: string; org_id: string }>(DUE_FOR_EXPIRY, [batch]);
  const done: string[] = [];
  for (const r of due.rows) {
    if (store) await store.deletePrefix(resultPrefix(r.org_id, r.id));
    await db.query(EXPIRE, [r.id]);
    done.push(r.id);
  }
  return done;
}

/** Moves an executor's export file into the object store; returns its size. Removes the file. */
export async function uploadResult(store: ObjectStore, key: string, file: string): Promise<number> {
  try {
    const { size } = await stat(file);
    await store.putStream(key, createReadStream(file));
    return size;
  } finally {
    await rm(file, { force: true });
  }
}

// ---------------------------------------------------------------------------------------------
// Page cursor: opaque to clients; the offset of the next row in the result.
// ---------------------------------------------------------------------------------------------

export const PAGE_LIMITS = { defaultLimit: 1000, maxLimit: 10_000 } as const;

export function encodeCursor(offset: number): string {
  return Buffer.from(`o:${offset}`, 'utf8').toString('base64url');
}

/** The offset a cursor names; 400 INVALID_REQUEST naming `cursor` when it is not one of ours. */
export function decodeCursor(cursor: string | undefined): number {
  if (cursor === undefined) return 0;
  const m = /^o:(0|[1-9][0-9]{0,14})$/.exec(/^[A-Za-z0-9_-]{1,32}$/.test(cursor) ? Buffer.from(cursor, 'base64url').toString('utf8') : '');
  if (!m) throw badRequest('invalid query: cursor: must be a next_cursor value from a previous page', 'INVALID_REQUEST', [{ path: 'cursor', message: 'must be a next_cursor value from a previous page' }]);
  return Number(m[1]);
}

export const newQueryId = (): string => randomUUID();

/** The public view of a row (no SQL hash detail beyond the hash itself). */
export function describeResult(r: QueryResultRow): Record<string, unknown> {
  const status = r.status !== 'expired' && r.past_expiry ? 'expired' : r.status;
  return {
    query_id: r.id,
    mode: r.mode,
    status,
    sql_hash: r.sql_hash,
    format: r.output_format,
    output_location: status === 'expired' ? null : r.output_location,
    row_count: r.row_count,
    bytes: r.bytes,
    duration_ms: r.duration_ms,
    created_at: r.created_at.toISOString(),
    updated_at: r.updated_at.toISOString(),
    expires_at: r.expires_at.toISOString(),
    ...(r.columns ? { columns: r.columns } : {}),
    ...(r.error_code ? { error: { code: r.error_code, message: r.error_message ?? '' } } : {}),
  };
}

export const resultGone = () => new TraceError(410, 'QUERY_RESULT_EXPIRED', 'the query result has expired and was removed; run the query again');
export const resultNotFound = () => new TraceError(404, 'QUERY_RESULT_NOT_FOUND', 'no such query result');
