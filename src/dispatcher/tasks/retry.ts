import type { Db } from '../../db/db.js';

// Failed -> Queued for due retries: same task row, attempt + 1, and a fresh side effect. A task
// that failed because a dependency was unreachable stays put while the Dispatcher sees that
// dependency down ($2): retrying it then would only fail again.
const RETRY_DUE = `
WITH due AS (
  SELECT id FROM tasks
  WHERE status = 'Failed' AND next_retry_at IS NOT NULL AND next_retry_at <= now()
    AND (waiting_on IS NULL OR waiting_on <> ALL ($2::text[]))
  ORDER BY next_retry_at LIMIT $1
  FOR UPDATE SKIP LOCKED
), upd AS (
  UPDATE tasks t SET status = 'Queued', attempt = t.attempt + 1, next_retry_at = NULL, timed_out_at = NULL,
         lease_token = NULL, lease_expires_at = NULL, worker_id = NULL, waiting_on = NULL, updated_at = now()
  FROM due WHERE t.id = due.id
  RETURNING t.id, t.job_id
), ob AS (
  INSERT INTO outbox (kind, payload)
  SELECT CASE WHEN j.runtime IN ('lambda', 'dispatcher') THEN 'invoke_task' ELSE 'enqueue_task' END, jsonb_build_object('task_id', upd.id)
  FROM upd JOIN jobs j ON j.id = upd.job_id
)
SELECT count(*)::int AS n FROM upd`;

/** Queues the retries that are due; `holding` lists dependencies seen unreachable right now. */
export async function retryDueTasks(db: Db, batch: number, holding: readonly string[] = []): Promise<number> {
  const r = await db.query<{ n: number }>(RETRY_DUE, [batch, [...holding]]);
  return r.rows[0]?.n ?? 0;
}

// A dependency is back: tasks that failed waiting for it retry now instead of at their backoff.
const REDRIVE = `
UPDATE tasks SET next_retry_at = now(), updated_at = now()
WHERE status = 'Failed' AND waiting_on = $1 AND next_retry_at IS NOT NULL AND next_retry_at > now()`;

export async function redriveWaiting(db: Db, dependency: string): Promise<number> {
  return (await db.query(REDRIVE, [dependency])).rowCount;
}
