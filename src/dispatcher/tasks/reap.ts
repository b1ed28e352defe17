import type { Db } from '../../db/db.js';

// Running attempts whose lease expired, or that ran past timeout_seconds, are failed and
// scheduled for retry (or left terminally Failed at max_attempts). The lease token is kept so
// a late reply of the same attempt is still accepted until a newer attempt starts.
const REAP = `
WITH dead AS (
  SELECT id FROM tasks
  WHERE status = 'Running'
    AND (lease_expires_at < now() OR started_at + make_interval(secs => timeout_seconds) < now())
  ORDER BY lease_expires_at LIMIT $1
  FOR UPDATE SKIP LOCKED
), upd AS (
  UPDATE tasks t SET status = 'Failed', timed_out_at = now(), updated_at = now(),
         error_message = CASE WHEN t.started_at + make_interval(secs => t.timeout_seconds) < now()
                              THEN 'timed out after ' || t.timeout_seconds || ' s' ELSE 'lease expired (no heartbeat)' END,
         next_retry_at = CASE WHEN t.attempt - t.uncounted_attempts < t.max_attempts
           THEN now() + make_interval(secs => least($3::float8, $2::float8 * power(2, greatest(0, t.attempt - t.uncounted_attempts - 1))) * (0.5 + random()) / 1000.0)
           ELSE NULL END
  FROM dead WHERE t.id = dead.id
  RETURNING t.id, t.attempt, t.error_message, t.job_id
), hist AS (
  UPDATE task_attempts a SET status = 'TimedOut', finished_at = now(), error_message = upd.error_message
  FROM upd WHERE a.task_id = upd.id AND a.attempt = upd.attempt
), wake AS (
  -- a reaped attempt frees a slot of a capped job: wake that job's oldest queued tasks
  INSERT INTO outbox (kind, payload)
  SELECT CASE WHEN j.runtime IN ('lambda', 'dispatcher') THEN 'invoke_task' ELSE 'enqueue_task' END, jsonb_build_object('task_id', t.id)
  FROM tasks t JOIN jobs j ON j.id = t.job_id
  WHERE t.status = 'Queued' AND j.scaling->'max_concurrency' IS NOT NULL AND t.job_id IN (SELECT job_id FROM upd)
  ORDER BY t.created_at LIMIT 100
)
SELECT count(*)::int AS n FROM upd`;

export async function reapExpiredLeases(db: Db, batch: number, retryBaseMs: number, retryMaxMs: number): Promise<number> {
  const r = await db.query<{ n: number }>(REAP, [batch, retryBaseMs, retryMaxMs]);
  return r.rows[0]?.n ?? 0;
}

// Queued tasks with no activity for a while get a fresh wake-up: covers a queue that lost or
// never received a message (queues are wake-ups, never the truth). Leasing makes extras harmless.
const REQUEUE_STALE = `
WITH stale AS (
  SELECT t.id, t.job_id FROM tasks t
  WHERE t.status = 'Queued' AND t.updated_at < now() - make_interval(secs => $2)
  ORDER BY t.updated_at LIMIT $1
  FOR UPDATE SKIP LOCKED
), touch AS (
  UPDATE tasks t SET updated_at = now() FROM stale WHERE t.id = stale.id
), ob AS (
  INSERT INTO outbox (kind, payload)
  SELECT CASE WHEN j.runtime IN ('lambda', 'dispatcher') THEN 'invoke_task' ELSE 'enqueue_task' END, jsonb_build_object('task_id', stale.id)
  FROM stale JOIN jobs j ON j.id = stale.job_id
)
SELECT count(*)::int AS n FROM stale`;

export async function requeueStaleTasks(db: Db, batch: number, afterSeconds: number): Promise<number> {
  const r = await db.query<{ n: number }>(REQUEUE_STALE, [batch, afterSeconds]);
  return r.rows[0]?.n ?? 0;
}
