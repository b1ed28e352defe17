import { TraceError, badRequest, conflict } from '../../core/errors.js';
import { canonicalJson } from '../../core/ids.js';
import type { Queryable } from '../../db/db.js';
import type { JobRow } from '../jobs.js';
import { lockFenced } from './fence.js';
import { recordEvents } from './events.js';
import { countedAttempt, type DatasetEvent, type TaskRef, type TaskRow, type TaskStatus } from './types.js';

export interface OperatorStateWrite {
  state_key: string;
  expected_version: number | null;
  state: Record<string, unknown>;
}

export interface DatasetPublished {
  dataset_uuid: string;
  dataset_version: string;
  storage_ref: Record<string, unknown>;
  config_hash?: string;
  range_start?: number;
  range_end?: number;
  row_count?: number;
  bytes?: number;
}

export interface Completion {
  status: 'Completed' | 'Failed' | 'Canceled';
  events: DatasetEvent[];
  outputs: unknown[];
  datasets_published: DatasetPublished[];
  error_message: string | null;
  operator_state: OperatorStateWrite[];
}

/**
 * A plugin's part in a Completed transition, run inside its transaction after the events are
 * recorded. Returning true means the hook registered the task's publications itself (the
 * generic registration is skipped); throwing refuses the completion and changes nothing.
 */
export type CompletionHook = (q: Queryable, task: TaskRow, job: JobRow, c: Completion) => Promise<boolean>;

/**
 * Checks that the platform can read a published storage ref before it is recorded (see
 * `checkPublishedRef` in ../publication.ts); throws 400 naming `field` when it cannot.
 */
export type PublishedRefCheck = (field: string, ref: Record<string, unknown>, task: { task_id: string; attempt: number }) => Promise<unknown>;

/** Without an object store nothing can be checked, so nothing is accepted. */
const noStore: PublishedRefCheck = async (field) => {
  throw badRequest(`${field}: this Dispatcher has no object store configured, so it cannot accept publications`, 'OBJECT_STORE_NOT_CONFIGURED');
};

export interface CompletionResult {
  status: TaskStatus;
  /** false when this was a repeat of an already accepted completion (a no-op). */
  applied: boolean;
  retry_at: Date | null;
  job_id: string;
  /** true when the transition wrote outbox rows (routed events, freed concurrency slots). */
  woke: boolean;
}

const INSERT_STATE = `
INSERT INTO operator_state (org_id, job_id, state_key, state, version) VALUES ($1, $2, $3, $4::jsonb, 1)
ON CONFLICT (org_id, job_id, state_key) DO NOTHING RETURNING version`;

const UPDATE_STATE = `
UPDATE operator_state SET state = $4::jsonb, version = version + 1, updated_at = now()
WHERE org_id = $1 AND job_id = $2 AND state_key = $3 AND version = $5 RETURNING version`;

/** Registers an immutable dataset version (a re-registration of the same id is a no-op). */
export const PUBLISH_VERSION = `
INSERT INTO dataset_versions (id, dataset_uuid, storage_location, storage_ref, config_hash, range_start, range_end)
VALUES ($1, $2, $3, $4::jsonb, $5, $6, $7)
ON CONFLICT DO NOTHING`;

const LOCK_VERSION = `SELECT dataset_uuid, storage_ref FROM dataset_versions WHERE id = $1 FOR UPDATE`;

/** Gives a version created without a storage ref (at deploy) the ref of its first publication. */
const ATTACH_REF = `
UPDATE dataset_versions SET storage_ref = $2::jsonb, storage_location = $3 WHERE id = $1 AND storage_ref IS NULL`;

const RECORD_PARTITION = `
INSERT INTO partition_versions (dataset_uuid, dataset_version, partition_key, config_hash, location, row_count, bytes)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (dataset_uuid, dataset_version, partition_key) DO UPDATE
  SET materialized_at = now(), location = EXCLUDED.location, row_count = EXCLUDED.row_count, bytes = EXCLUDED.bytes`;

// Consumers' cursors only move forward (numeric cursors compared as numbers).
const ADVANCE_CURSOR = `
INSERT INTO dataset_cursors (dataset_uuid, dataset_version, job_id, cursor_column, cursor_value)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (dataset_uuid, dataset_version, job_id) DO UPDATE
  SET cursor_value = CASE
        WHEN dataset_cursors.cursor_value ~ '^-?[0-9]+$' AND EXCLUDED.cursor_value ~ '^-?[0-9]+$'
          THEN (greatest(dataset_cursors.cursor_value::numeric, EXCLUDED.cursor_value::numeric))::text
        ELSE greatest(dataset_cursors.cursor_value, EXCLUDED.cursor_value) END,
      updated_at = now()`;

const FINISH_TASK = `
UPDATE tasks SET status = $2, completed_at = CASE WHEN $2 = 'Failed' THEN NULL ELSE now() END,
       outputs = $3::jsonb, error_message = $4, next_retry_at = $5, timed_out_at = NULL, waiting_on = NULL, updated_at = now()
WHERE id = $1`;

const FINISH_ATTEMPT = `
UPDATE task_attempts SET status = $3, finished_at = now(), error_message = $4 WHERE task_id = $1 AND attempt = $2`;

// A finished task frees a slot of a capped job: wake the oldest queued tasks of that job.
export const WAKE_THROTTLED = `
INSERT INTO outbox (kind, payload)
SELECT CASE WHEN j.runtime IN ('lambda', 'dispatcher') THEN 'invoke_task' ELSE 'enqueue_task' END, jsonb_build_object('task_id', t.id)
FROM (SELECT id, job_id FROM tasks WHERE job_id = $1 AND status = 'Queued' ORDER BY created_at LIMIT $2) t
JOIN jobs j ON j.id = t.job_id`;

// The common case in one statement: a live attempt completing with nothing else to commit
// (no events, state, publications or input cursors, and no concurrency cap to wake). Anything
// else, and every refusal, goes through the full transaction below.
const COMPLETE_PLAIN = `
WITH t AS (
  UPDATE tasks SET status = 'Completed', completed_at = now(), outputs = $4::jsonb, error_message = NULL,
         next_retry_at = NULL, timed_out_at = NULL, waiting_on = NULL, updated_at = now()
  WHERE id = $1 AND attempt = $2 AND lease_token = $3 AND status = 'Running'
    AND NOT EXISTS (SELECT 1 FROM jsonb_array_elements(inputs) e WHERE e ? 'cursor')
    AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.id = tasks.job_id AND j.scaling->'max_concurrency' IS NOT NULL)
    AND NOT EXISTS (SELECT 1 FROM chain_sync_scheduled_ranges r WHERE r.task_id = tasks.id)
    AND NOT EXISTS (SELECT 1 FROM chain_sync_compactions c WHERE c.task_id = tasks.id)
    -- a re-run of an invalidation records its cascade (invalidations.ts) in the full transition
    AND coalesce(trigger->>'kind', '') <> 'invalidation'
  RETURNING id, attempt, job_id
), a AS (
  UPDATE task_attempts SET status = 'Completed', finished_at = now(), error_message = NULL
  FROM t WHERE task_attempts.task_id = t.id AND task_attempts.attempt = t.attempt
)
SELECT job_id FROM t`;

/** Tries the one-statement completion; returns undefined when the full transition is needed. */
export async function completePlain(q: Queryable, ref: TaskRef, c: Completion): Promise<CompletionResult | undefined> {
  if (c.status !== 'Completed' || c.events.length > 0 || c.operator_state.length > 0 || c.datasets_published.length > 0) return undefined;
  const r = await q.query<{ job_id: string }>(COMPLETE_PLAIN, [ref.task_id, ref.attempt, ref.lease_token, JSON.stringify(c.outputs)]);
  const row = r.rows[0];
  return row ? { status: 'Completed', applied: true, retry_at: null, job_id: row.job_id, woke: false } : undefined;
}

/**
 * Records one publication on its dataset version, inside the completion's transaction. The
 * version row may exist already (deploy creates each output's version without a storage ref):
 * - no ref yet: the platform must be able to read Parquet at the ref (`checkRef`, 400 naming
 *   the field otherwise), then the ref is attached (or the row created with it);
 * - the same ref: nothing to do (a repeat is idempotent);
 * - another ref, or a version of another dataset: 409 PUBLICATION_CONFLICT.
 * Any refusal rolls the whole completion back.
 */
async function publishVersion(
  q: Queryable,
  task: TaskRow,
  p: DatasetPublished,
  i: number,
  location: string | null,
  checkRef: PublishedRefCheck,
): Promise<void> {
  const field = `datasets_published[${i}].storage_ref`;
  const prior = (await q.query<{ dataset_uuid: string; storage_ref: unknown }>(LOCK_VERSION, [p.dataset_version])).rows[0];
  if (prior && prior.dataset_uuid !== p.dataset_uuid) {
    throw conflict(`datasets_published[${i}].dataset_version is a version of another dataset`, 'PUBLICATION_CONFLICT');
  }
  if (prior && prior.storage_ref !== null && prior.storage_ref !== undefined) {
    if (canonicalJson(prior.storage_ref) === canonicalJson(p.storage_ref)) return;
    throw conflict(`${field}: dataset version ${p.dataset_version} is already published with another storage reference; a version's data never changes (publish a new version)`, 'PUBLICATION_CONFLICT');
  }
  await checkRef(field, p.storage_ref, { task_id: task.id, attempt: task.attempt });
  const ref = JSON.stringify(p.storage_ref);
  const r = prior
    ? await q.query(ATTACH_REF, [p.dataset_version, ref, location])
    : await q.query(PUBLISH_VERSION, [p.dataset_version, p.dataset_uuid, location, ref, p.config_hash ?? null, p.range_start ?? null, p.range_end ?? null]);
  if (r.rowCount === 0) {
    throw conflict(`datasets_published[${i}]: another version of this dataset already has the same config_hash and range`, 'PUBLICATION_CONFLICT');
  }
}

/**
 * The completion transition, fenced by `(task_id, attempt, lease_token)`. Operator state (CAS),
 * events, dataset publications, cursor advances and the status change commit together or not
 * at all. A repeat of an accepted completion is a no-op.
 */
export async function completeTask(
  q: Queryable,
  ref: TaskRef,
  c: Completion,
  getJob: (id: string) => Promise<JobRow>,
  retryDelayMs: (attempt: number) => number,
  hooks: readonly CompletionHook[] = [],
  checkRef: PublishedRefCheck = noStore,
): Promise<CompletionResult> {
  const { task, mode } = await lockFenced(q, ref);
  if (mode === 'finished') {
    if (task.status === c.status) return { status: task.status, applied: false, retry_at: task.next_retry_at, job_id: task.job_id, woke: false };
    if (task.status === 'Canceled') throw new TraceError(409, 'TASK_CANCELED', 'the task was canceled; its results are not committed');
    throw new TraceError(409, 'ALREADY_FINISHED', `this attempt already finished as ${task.status}`);
  }
  const job = await getJob(task.job_id);

  const status: TaskStatus = c.status;
  let retryAt: Date | null = null;
  let woke = false;
  let error: string | null = c.error_message === null ? null : c.error_message.slice(0, 2000);

  if (c.status === 'Completed') {
    for (const [i, w] of c.operator_state.entries()) {
      const r = w.expected_version === null
        ? await q.query(INSERT_STATE, [task.org_id, task.job_id, w.state_key, JSON.stringify(w.state)])
        : await q.query(UPDATE_STATE, [task.org_id, task.job_id, w.state_key, JSON.stringify(w.state), w.expected_version]);
      if (r.rowCount === 0) {
        throw new TraceError(409, 'STATE_CONFLICT', `operator_state[${i}] (${w.state_key}) changed since it was read; re-fetch and retry`);
      }
    }
    const ev = await recordEvents(q, task, job, c.events);
    woke = ev.routed > 0;
    let published = false;
    for (const hook of hooks) published = (await hook(q, task, job, c)) || published;
    const owned = new Set(job.outputs.map((o) => o.dataset_uuid));
    for (const [i, p] of (published ? [] : c.datasets_published).entries()) {
      if (!owned.has(p.dataset_uuid)) {
        throw new TraceError(403, 'EVENT_NOT_OWNED', `datasets_published[${i}].dataset_uuid is not an output of this task's job`);
      }
      const ranged = p.range_start !== undefined && p.range_end !== undefined;
      if (ranged && !(p.range_end! > p.range_start!)) throw badRequest(`datasets_published[${i}]: range_end must be greater than range_start`);
      const location = typeof p.storage_ref.prefix === 'string' ? p.storage_ref.prefix : null;
      await publishVersion(q, task, p, i, location, checkRef);
      if (ranged) {
        await q.query(RECORD_PARTITION, [p.dataset_uuid, p.dataset_version, `${p.range_start}-${p.range_end}`, p.config_hash ?? null, location, p.row_count ?? null, p.bytes ?? null]);
      }
    }
    for (const input of task.inputs as Array<{ dataset_uuid?: string; dataset_version?: string; cursor?: unknown }>) {
      if (input.dataset_uuid && input.dataset_version && input.cursor !== undefined && input.cursor !== null) {
        const col = typeof job.config.cursor_column === 'string' ? job.config.cursor_column : null;
        await q.query(ADVANCE_CURSOR, [input.dataset_uuid, input.dataset_version, task.job_id, col, String(input.cursor)]);
      }
    }
    error = null;
  } else if (c.status === 'Failed') {
    // Attempts released on shutdown or failed by an unreachable dependency do not count.
    if (countedAttempt(task) < task.max_attempts) {
      retryAt = new Date(Date.now() + retryDelayMs(countedAttempt(task)));
    }
    error ??= 'failed without a message';
  }
  await q.query(FINISH_TASK, [task.id, status, JSON.stringify(c.outputs), error, retryAt]);
  await q.query(FINISH_ATTEMPT, [task.id, task.attempt, status, error]);
  const cap = job.scaling?.max_concurrency;
  if (cap !== undefined && mode === 'live') {
    await q.query(WAKE_THROTTLED, [task.job_id, cap]);
    woke = true;
  }
  return { status, applied: true, retry_at: retryAt, job_id: task.job_id, woke };
}
