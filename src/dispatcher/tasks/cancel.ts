import type { Queryable } from '../../db/db.js';

// Cancels tasks that have not finished: Queued and retry-pending ones stop at once; Running ones
// are canceled cooperatively (their next heartbeat answers TASK_CANCELED and the worker reports
// Canceled). The lease token stays so that report is accepted.
const CANCEL_TASKS = `
WITH c AS (
  UPDATE tasks SET status = 'Canceled', completed_at = now(), next_retry_at = NULL, updated_at = now(),
         error_message = coalesce(error_message, $2)
  WHERE id = ANY ($1::uuid[]) AND status IN ('Queued', 'Running', 'Failed')
    AND (status <> 'Failed' OR next_retry_at IS NOT NULL OR timed_out_at IS NOT NULL)
  RETURNING id, attempt
), h AS (
  UPDATE task_attempts a SET status = 'Canceled', finished_at = now() FROM c
  WHERE a.task_id = c.id AND a.attempt = c.attempt AND a.status = 'Running'
)
SELECT id FROM c`;

export async function cancelTasks(q: Queryable, taskIds: string[], reason: string): Promise<string[]> {
  if (taskIds.length === 0) return [];
  const r = await q.query<{ id: string }>(CANCEL_TASKS, [taskIds, reason]);
  return r.rows.map((x) => x.id);
}
