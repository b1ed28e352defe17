import type { Queryable, Db } from '../../db/db.js';

export type NotClaimedReason = 'AlreadyRunning' | 'Completed' | 'Canceled' | 'NotFound' | 'Throttled' | 'NotQueued';

export interface ClaimedRow {
  id: string;
  org_id: string;
  job_id: string;
  attempt: number;
  lease_token: string;
  lease_expires_at: Date;
  inputs: unknown[];
  trigger: Record<string, unknown>;
  timeout_seconds: number;
  operator_state: Array<{ state_key: string; state: Record<string, unknown>; version: number }>;
  cursors: InputCursor[];
}

/** The job's committed high-water mark on one pinned input version (`dataset_cursors`). */
export interface InputCursor {
  dataset_uuid: string;
  dataset_version: string;
  cursor_value: string | null;
}

/**
 * The job's committed cursors on the dataset versions a task's inputs pin, as a JSON array
 * (`task` is the alias of the tasks row): read at claim and fetch, so an operator reads only
 * what is newer than what its job has already consumed.
 */
export const INPUT_CURSORS = (task: string) => `
  (SELECT coalesce(json_agg(json_build_object('dataset_uuid', dc.dataset_uuid, 'dataset_version', dc.dataset_version, 'cursor_value', dc.cursor_value)), '[]'::json)
     FROM dataset_cursors dc
    WHERE dc.job_id = ${task}.job_id
      AND (dc.dataset_uuid, dc.dataset_version) IN (
        SELECT (e->>'dataset_uuid')::uuid, (e->>'dataset_version')::uuid FROM jsonb_array_elements(${task}.inputs) e
         WHERE e ? 'dataset_uuid' AND e ? 'dataset_version'))`;

// The lease lasts the job's heartbeat_timeout_seconds, capped by the Dispatcher's ceiling ($3).
export const JOB_LEASE_SECONDS = (ceiling: string, task: string) =>
  `LEAST(${ceiling}::float8, (SELECT lj.heartbeat_timeout_seconds FROM jobs lj WHERE lj.id = ${task}.job_id))`;

const LEASE_COLUMNS = `
  status = 'Running', lease_token = gen_random_uuid(), lease_expires_at = now() + make_interval(secs => ${JOB_LEASE_SECONDS('$3', 't')}),
  worker_id = $2, started_at = now(), last_heartbeat = now(), timed_out_at = NULL, updated_at = now()`;

const CLAIM_TAIL = `
, attempt_row AS (
  INSERT INTO task_attempts (task_id, attempt, worker_id, lease_token, status)
  SELECT id, attempt, worker_id, lease_token, 'Running' FROM c
  ON CONFLICT (task_id, attempt) DO UPDATE
    SET worker_id = EXCLUDED.worker_id, lease_token = EXCLUDED.lease_token, status = 'Running', started_at = now(), finished_at = NULL
)
SELECT c.id, c.org_id, c.job_id, c.attempt, c.lease_token, c.lease_expires_at, c.inputs, c.trigger, c.timeout_seconds,
       (SELECT coalesce(json_agg(json_build_object('state_key', s.state_key, 'state', s.state, 'version', s.version)), '[]'::json)
          FROM operator_state s WHERE s.job_id = c.job_id) AS operator_state,
       ${INPUT_CURSORS('c')} AS cursors
FROM c`;

// Fast path, one statement: Queued -> Running for jobs without a concurrency cap.
const CLAIM_UNCAPPED = `
WITH c AS (
  UPDATE tasks t SET ${LEASE_COLUMNS}
  FROM jobs j
  WHERE t.id = $1 AND t.status = 'Queued' AND j.id = t.job_id AND j.scaling->'max_concurrency' IS NULL
  RETURNING t.*
)${CLAIM_TAIL}`;

// Capped path, inside a transaction that holds the job row lock so Running never exceeds the cap.
const CLAIM_CAPPED = `
WITH c AS (
  UPDATE tasks t SET ${LEASE_COLUMNS}
  WHERE t.id = $1 AND t.status = 'Queued'
    AND (SELECT count(*) FROM tasks r WHERE r.job_id = t.job_id AND r.status = 'Running') < $4
  RETURNING t.*
)${CLAIM_TAIL}`;

// Batch fast path, one statement: `Queued -> Running` for every listed task of a job without a
// concurrency cap. Rows are locked in task-id order so concurrent batch claimers never deadlock;
// a row another claimer took first no longer matches `status = 'Queued'` and is left out.
const CLAIM_BATCH_UNCAPPED = `
WITH pick AS (
  SELECT t.id FROM tasks t JOIN jobs j ON j.id = t.job_id
  WHERE t.id = ANY ($1::uuid[]) AND t.status = 'Queued' AND j.scaling->'max_concurrency' IS NULL
  ORDER BY t.id
  FOR UPDATE OF t
), c AS (
  UPDATE tasks t SET ${LEASE_COLUMNS}
  FROM pick
  WHERE t.id = pick.id AND t.status = 'Queued'
  RETURNING t.*
)${CLAIM_TAIL}`;

const TASK_STATUS = `
SELECT t.status, t.job_id, (j.scaling->>'max_concurrency')::int AS max_concurrency
FROM tasks t JOIN jobs j ON j.id = t.job_id WHERE t.id = $1`;

const LOCK_JOB = `SELECT id FROM jobs WHERE id = $1 FOR UPDATE`;

/**
 * The claim transition: one atomic `Queued -> Running` that sets lease_token,
 * lease_expires_at, worker_id and started_at and opens the attempt's history row. The lease
 * runs for the job's `heartbeat_timeout_seconds`, at most `leaseCeilingSeconds`.
 */
export async function claimTask(
  db: Db,
  taskId: string,
  workerId: string,
  leaseCeilingSeconds: number,
): Promise<{ claimed: ClaimedRow } | { reason: NotClaimedReason }> {
  const fast = await db.query<ClaimedRow>(CLAIM_UNCAPPED, [taskId, workerId, leaseCeilingSeconds]);
  if (fast.rows[0]) return { claimed: fast.rows[0] };
  return db.tx(async (q) => {
    const s = await q.query<{ status: string; job_id: string; max_concurrency: number | null }>(TASK_STATUS, [taskId]);
    const row = s.rows[0];
    if (!row) return { reason: 'NotFound' as const };
    if (row.status !== 'Queued') return { reason: reasonFor(row.status) };
    if (row.max_concurrency === null) {
      // Lost a race with another claimer between the two statements.
      return { reason: 'AlreadyRunning' as const };
    }
    await q.query(LOCK_JOB, [row.job_id]);
    const c = await q.query<ClaimedRow>(CLAIM_CAPPED, [taskId, workerId, leaseCeilingSeconds, row.max_concurrency]);
    if (c.rows[0]) return { claimed: c.rows[0] };
    const again = await q.query<{ status: string }>(`SELECT status FROM tasks WHERE id = $1`, [taskId]);
    const st = again.rows[0]?.status ?? 'NotFound';
    return { reason: st === 'Queued' ? ('Throttled' as const) : reasonFor(st) };
  });
}

/**
 * The claim transition for many tasks at once (`/internal/task-claim-batch`): the tasks of
 * uncapped jobs are leased by one statement; the others (a capped job, or a task that is not
 * claimable) go through `claimTask`, which takes the capped path or names the reason. Answers
 * in the order of `taskIds` (which must not repeat).
 */
export async function claimTasks(
  db: Db,
  taskIds: readonly string[],
  workerId: string,
  leaseCeilingSeconds: number,
): Promise<Array<{ claimed: ClaimedRow } | { reason: NotClaimedReason }>> {
  const fast = await db.query<ClaimedRow>(CLAIM_BATCH_UNCAPPED, [taskIds, workerId, leaseCeilingSeconds]);
  const byId = new Map(fast.rows.map((r) => [r.id, r]));
  const out: Array<{ claimed: ClaimedRow } | { reason: NotClaimedReason }> = [];
  for (const id of taskIds) {
    const row = byId.get(id);
    out.push(row ? { claimed: row } : await claimTask(db, id, workerId, leaseCeilingSeconds));
  }
  return out;
}

function reasonFor(status: string): NotClaimedReason {
  switch (status) {
    case 'Running': return 'AlreadyRunning';
    case 'Completed': return 'Completed';
    case 'Canceled': return 'Canceled';
    case 'Failed': return 'NotQueued';
    default: return 'NotFound';
  }
}

export type { Queryable };
