import { TraceError } from '../../core/errors.js';
import type { Queryable } from '../../db/db.js';
import type { JobRow } from '../jobs.js';
import { lockFenced } from './fence.js';
import { WAKE_THROTTLED } from './complete.js';
import { countedAttempt, type TaskRef, type TaskRow } from './types.js';

/**
 * The release transition: a trusted runner gives its lease back without finishing the work, and
 * the attempt does not use up `max_attempts`. Fenced by `(task_id, attempt, lease_token)` like
 * every mutation; only the worker-only surface offers it (`/internal/task-release`), so untrusted
 * code holding just a capability token cannot buy itself endless retries.
 *
 * - `shutdown`: the runner is stopping (SIGTERM, Ctrl-C) and could not finish within its grace
 *   period. The task is `Queued` again at once with `attempt + 1` and a fresh wake-up, so the next
 *   runner retries it without waiting for the lease to expire.
 * - `infrastructure`: the work could not run because a dependency was unreachable (a database,
 *   the queue, the object store, ...). The task is `Failed` with `waiting_on` naming the
 *   dependency and `next_retry_at` after a short backoff; the retry scheduler holds it while the
 *   Dispatcher sees that dependency down and re-drives it as soon as it is back.
 *
 * Either way the attempt's history row says `Released` with the reason. A repeat of an accepted
 * release is a no-op. Past `maxUncounted` uncounted attempts a release counts like a failed
 * attempt, so a misclassified error cannot retry forever.
 */
export type ReleaseReason = 'shutdown' | 'infrastructure';

export interface Release {
  reason: ReleaseReason;
  dependency?: string;
  error_message?: string;
}

export interface ReleaseResult {
  status: 'Queued' | 'Failed';
  applied: boolean;
  retry_at: Date | null;
  woke: boolean;
}

export interface ReleasePolicy {
  /** Uncounted attempts a task may accumulate before a release counts. */
  maxUncounted: number;
  /** Delay before retrying after the k-th uncounted infrastructure failure (k from 0). */
  infraDelayMs(k: number): number;
  /** Delay of an ordinary retry after counted attempt n (used past maxUncounted). */
  retryDelayMs(attempt: number): number;
}

const RELEASED_BEFORE = `
SELECT t.status, t.next_retry_at FROM task_attempts a JOIN tasks t ON t.id = a.task_id
WHERE a.task_id = $1 AND a.attempt = $2 AND a.lease_token = $3 AND a.status = 'Released'`;

// Shutdown: back to Queued with attempt + 1 and a wake-up, in one statement.
const REQUEUE = `
WITH t AS (
  UPDATE tasks SET status = 'Queued', attempt = attempt + 1, uncounted_attempts = uncounted_attempts + 1,
         lease_token = NULL, lease_expires_at = NULL, worker_id = NULL, timed_out_at = NULL, next_retry_at = NULL,
         waiting_on = NULL, error_message = $2, updated_at = now()
  WHERE id = $1
  RETURNING id, job_id
), ob AS (
  INSERT INTO outbox (kind, payload)
  SELECT CASE WHEN j.runtime IN ('lambda', 'dispatcher') THEN 'invoke_task' ELSE 'enqueue_task' END, jsonb_build_object('task_id', t.id)
  FROM t JOIN jobs j ON j.id = t.job_id
)
SELECT id FROM t`;

// Infrastructure (or a release past the cap): Failed, retried later by the retry scheduler.
const FAIL = `
UPDATE tasks SET status = 'Failed', completed_at = NULL, timed_out_at = NULL, next_retry_at = $2, waiting_on = $3,
       uncounted_attempts = uncounted_attempts + $4::int, error_message = $5, updated_at = now()
WHERE id = $1`;

const ATTEMPT = `
UPDATE task_attempts SET status = 'Released', finished_at = now(), error_message = $3 WHERE task_id = $1 AND attempt = $2`;

export async function releaseTask(q: Queryable, ref: TaskRef, r: Release, getJob: (id: string) => Promise<JobRow>, policy: ReleasePolicy): Promise<ReleaseResult> {
  const before = await q.query<{ status: string; next_retry_at: Date | null }>(RELEASED_BEFORE, [ref.task_id, ref.attempt, ref.lease_token]);
  if (before.rows[0]) {
    const st = before.rows[0].status === 'Failed' ? 'Failed' : 'Queued';
    return { status: st, applied: false, retry_at: before.rows[0].next_retry_at, woke: false };
  }
  const { task, mode } = await lockFenced(q, ref);
  if (mode === 'finished') {
    if (task.status === 'Canceled') throw new TraceError(409, 'TASK_CANCELED', 'the task was canceled; there is no lease to release');
    throw new TraceError(409, 'ALREADY_FINISHED', `this attempt already finished as ${task.status}`);
  }
  const job = await getJob(task.job_id);
  const counts = task.uncounted_attempts >= policy.maxUncounted;
  const detail = r.error_message ? `: ${r.error_message}` : '';
  const message = (r.reason === 'shutdown'
    ? `released: the runner shut down before the attempt finished${detail}`
    : `released: ${r.dependency} unreachable${detail}`).slice(0, 2000);
  await q.query(ATTEMPT, [task.id, task.attempt, message]);

  let result: ReleaseResult;
  if (r.reason === 'shutdown' && !counts) {
    await q.query(REQUEUE, [task.id, message]);
    result = { status: 'Queued', applied: true, retry_at: null, woke: true };
  } else {
    let retryAt: Date | null;
    if (!counts) retryAt = new Date(Date.now() + policy.infraDelayMs(task.uncounted_attempts));
    else retryAt = countedAttempt(task) < task.max_attempts ? new Date(Date.now() + policy.retryDelayMs(countedAttempt(task))) : null;
    const final = counts ? `${message} (counted: ${task.uncounted_attempts} attempts were already released)` : message;
    await q.query(FAIL, [task.id, retryAt, r.reason === 'infrastructure' ? r.dependency ?? null : null, counts ? 0 : 1, final.slice(0, 2000)]);
    result = { status: 'Failed', applied: true, retry_at: retryAt, woke: false };
  }
  // The attempt freed a slot of a capped job.
  const cap = job.scaling?.max_concurrency;
  if (cap !== undefined) {
    await q.query(WAKE_THROTTLED, [task.job_id, cap]);
    result.woke = true;
  }
  return result;
}

export type { TaskRow };
