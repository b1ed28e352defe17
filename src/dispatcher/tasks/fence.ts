import { TraceError, notFound } from '../../core/errors.js';
import type { Queryable } from '../../db/db.js';
import type { TaskRef, TaskRow } from './types.js';

/**
 * How a fenced call relates to the task's current attempt:
 * - `live`: the attempt is Running under this lease;
 * - `late`: the reaper timed this attempt out but no newer attempt has started, so its reply
 *   is still accepted (task_lifecycle.md);
 * - `finished`: this attempt already finished (Completed, Failed or Canceled); a repeat.
 */
export type FenceMode = 'live' | 'late' | 'finished';

const LOCK_TASK = `
SELECT id, org_id, job_id, dedupe_key, status, attempt, max_attempts, uncounted_attempts, waiting_on, timeout_seconds, inputs, trigger,
       worker_id, lease_token, lease_expires_at, started_at, completed_at, next_retry_at, timed_out_at,
       error_message, created_at
FROM tasks WHERE id = $1 FOR UPDATE`;

/**
 * Locks the task row and checks `(task_id, attempt, lease_token)` against the current attempt.
 * Stale attempts and foreign leases are refused with 403 and change nothing.
 */
export async function lockFenced(q: Queryable, ref: TaskRef): Promise<{ task: TaskRow; mode: FenceMode }> {
  const r = await q.query<TaskRow>(LOCK_TASK, [ref.task_id]);
  const task = r.rows[0];
  if (!task) throw notFound('task not found', 'TASK_NOT_FOUND');
  if (task.attempt !== ref.attempt) {
    throw new TraceError(403, 'STALE_ATTEMPT', `attempt ${ref.attempt} is not the current attempt of this task`);
  }
  if (task.lease_token === null || task.lease_token !== ref.lease_token) {
    throw new TraceError(403, 'LEASE_MISMATCH', 'lease token does not match the current lease');
  }
  if (task.status === 'Running') return { task, mode: 'live' };
  if (task.status === 'Failed' && task.timed_out_at !== null) return { task, mode: 'late' };
  return { task, mode: 'finished' };
}
