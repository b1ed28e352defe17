import type { Queryable } from '../../db/db.js';

/** A task the Dispatcher wants to exist. Created idempotently by `(job_id, dedupe_key)`. */
export interface NewTask {
  job_id: string;
  /** Identity of what caused the task; a second create with the same key is a no-op. */
  dedupe_key: string;
  inputs: unknown[];
  trigger: Record<string, unknown>;
}

// One statement: insert the tasks, skip duplicates, record their inputs, and write the side
// effect (wake-up or invocation) to the outbox, all atomically.
const CREATE_TASKS = `
WITH x AS (
  SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[]) AS x(job_id, dedupe_key, inputs, trigger)
), ins AS (
  INSERT INTO tasks (id, org_id, job_id, dedupe_key, status, attempt, max_attempts, timeout_seconds, inputs, trigger, partitions)
  SELECT gen_random_uuid(), j.org_id, j.id, x.dedupe_key, 'Queued', 1, j.max_attempts, j.timeout_seconds,
         x.inputs::jsonb, x.trigger::jsonb,
         ARRAY(SELECT e->>'partition_key' FROM jsonb_array_elements(x.inputs::jsonb) e WHERE e ? 'partition_key')
  FROM x JOIN jobs j ON j.id = x.job_id
  ON CONFLICT (job_id, dedupe_key) DO NOTHING
  RETURNING id, job_id, inputs
), inputs AS (
  INSERT INTO task_inputs (task_id, input_dataset_uuid, input_partition_key, input_dataset_version)
  SELECT ins.id, (e->>'dataset_uuid')::uuid, coalesce(e->>'partition_key', e->>'cursor', ''), (e->>'dataset_version')::uuid
  FROM ins, jsonb_array_elements(ins.inputs) e
  WHERE e ? 'dataset_uuid'
  ON CONFLICT DO NOTHING
), ob AS (
  INSERT INTO outbox (kind, payload)
  SELECT CASE WHEN j.runtime IN ('lambda', 'dispatcher') THEN 'invoke_task' ELSE 'enqueue_task' END,
         jsonb_build_object('task_id', ins.id)
  FROM ins JOIN jobs j ON j.id = ins.job_id
)
SELECT id, job_id FROM ins`;

/** Creates tasks idempotently; returns only the ones that were new. */
export async function createTasks(q: Queryable, tasks: NewTask[]): Promise<Array<{ id: string; job_id: string }>> {
  if (tasks.length === 0) return [];
  const r = await q.query<{ id: string; job_id: string }>(CREATE_TASKS, [
    tasks.map((t) => t.job_id),
    tasks.map((t) => t.dedupe_key),
    tasks.map((t) => JSON.stringify(t.inputs)),
    tasks.map((t) => JSON.stringify(t.trigger)),
  ]);
  return r.rows;
}
