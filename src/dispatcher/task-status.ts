import type { Queryable } from '../db/db.js';

/** Task status as `trace tasks` shows it: tasks with their attempts, leases and last errors. */
export interface TaskStatusView {
  task_id: string;
  dag_name: string;
  job_name: string;
  dag_version_id: string;
  status: string;
  attempt: number;
  max_attempts: number;
  /** Attempts that did not count toward max_attempts (released on shutdown, infrastructure failures). */
  uncounted_attempts: number;
  /** The dependency a task failed by an infrastructure failure waits for. */
  waiting_on: string | null;
  worker_id: string | null;
  lease_expires_at: Date | null;
  next_retry_at: Date | null;
  error_message: string | null;
  trigger: Record<string, unknown>;
  inputs: unknown[];
  created_at: Date;
  started_at: Date | null;
  completed_at: Date | null;
  attempts: Array<{ attempt: number; status: string; worker_id: string | null; started_at: Date; finished_at: Date | null; error_message: string | null }>;
}

const LIST = `
SELECT t.id AS task_id, j.dag_name, j.name AS job_name, j.dag_version_id, t.status, t.attempt, t.max_attempts,
       t.uncounted_attempts, t.waiting_on, t.worker_id,
       t.lease_expires_at, t.next_retry_at, t.error_message, t.trigger, t.inputs, t.created_at, t.started_at, t.completed_at,
       (SELECT coalesce(json_agg(json_build_object('attempt', a.attempt, 'status', a.status, 'worker_id', a.worker_id,
                 'started_at', a.started_at, 'finished_at', a.finished_at, 'error_message', a.error_message) ORDER BY a.attempt), '[]'::json)
          FROM task_attempts a WHERE a.task_id = t.id) AS attempts
FROM tasks t JOIN jobs j ON j.id = t.job_id
WHERE t.org_id = $1
  AND ($2::text IS NULL OR j.dag_name = $2)
  AND ($3::text IS NULL OR j.name = $3)
  AND ($4::text IS NULL OR t.status = $4)
  AND ($5::uuid IS NULL OR t.id = $5)
ORDER BY t.created_at DESC, t.id
LIMIT $6`;

export async function listTasks(q: Queryable, orgId: string, f: { dag?: string | undefined; job?: string | undefined; status?: string | undefined; limit: number }): Promise<TaskStatusView[]> {
  const r = await q.query<TaskStatusView>(LIST, [orgId, f.dag ?? null, f.job ?? null, f.status ?? null, null, f.limit]);
  return r.rows;
}

export async function getTask(q: Queryable, orgId: string, id: string): Promise<TaskStatusView | undefined> {
  const r = await q.query<TaskStatusView>(LIST, [orgId, null, null, null, id, 1]);
  return r.rows[0];
}
