import { TraceError, notFound } from '../../core/errors.js';
import type { Queryable } from '../../db/db.js';
import type { TaskRef } from './types.js';
import { JOB_LEASE_SECONDS } from './claim.js';

// Extends the lease of the current attempt only, by the job's heartbeat_timeout_seconds (at most
// the Dispatcher's ceiling $4): a worker that stops heartbeating loses the task that long after
// its last beat. A heartbeat from an attempt the reaper timed
// out, while no newer attempt has started, revives it: the worker is alive, just late.
const HEARTBEAT = `
WITH h AS (
  UPDATE tasks SET status = 'Running', lease_expires_at = now() + make_interval(secs => ${JOB_LEASE_SECONDS('$4', 'tasks')}), last_heartbeat = now(),
         timed_out_at = NULL, next_retry_at = NULL, updated_at = now()
  WHERE id = $1 AND attempt = $2 AND lease_token = $3
    AND (status = 'Running' OR (status = 'Failed' AND timed_out_at IS NOT NULL))
  RETURNING id, attempt, lease_expires_at
), a AS (
  UPDATE task_attempts SET status = 'Running', finished_at = NULL, error_message = NULL
  FROM h WHERE task_attempts.task_id = h.id AND task_attempts.attempt = h.attempt AND task_attempts.status <> 'Running'
)
SELECT lease_expires_at FROM h`;

export async function heartbeatTask(db: Queryable, ref: TaskRef, leaseCeilingSeconds: number): Promise<{ lease_expires_at: Date }> {
  const r = await db.query<{ lease_expires_at: Date }>(HEARTBEAT, [ref.task_id, ref.attempt, ref.lease_token, leaseCeilingSeconds]);
  if (r.rows[0]) return r.rows[0];
  const s = await db.query<{ status: string; attempt: number; lease_token: string | null }>(
    `SELECT status, attempt, lease_token FROM tasks WHERE id = $1`, [ref.task_id]);
  const t = s.rows[0];
  if (!t) throw notFound('task not found', 'TASK_NOT_FOUND');
  if (t.attempt !== ref.attempt) throw new TraceError(403, 'STALE_ATTEMPT', `attempt ${ref.attempt} is not the current attempt of this task`);
  if (t.lease_token !== ref.lease_token) throw new TraceError(403, 'LEASE_MISMATCH', 'lease token does not match the current lease');
  if (t.status === 'Canceled') throw new TraceError(409, 'TASK_CANCELED', 'the task was canceled; stop and report status Canceled');
  throw new TraceError(409, 'TASK_NOT_RUNNING', `the task is ${t.status}; the attempt is over`);
}
