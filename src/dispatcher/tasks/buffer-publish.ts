import type { Queryable } from '../../db/db.js';
import { TraceError } from '../../core/errors.js';
import { lockFenced } from './fence.js';
import type { TaskRef } from './types.js';

export interface BufferPublish {
  batch_uri: string;
  content_type: string;
  batch_size_bytes: number;
  dedupe_scope: string;
}

// The publish record and its buffer-queue message commit together (outbox).
const PUBLISH = `
WITH ins AS (
  INSERT INTO buffer_publishes (id, org_id, task_id, attempt, job_id, batch_uri, content_type, batch_size_bytes, dedupe_scope)
  VALUES (gen_random_uuid(), $1, $2, $3, $4, $5, $6, $7, $8)
  ON CONFLICT (task_id, attempt, batch_uri) DO NOTHING
  RETURNING *
), ob AS (
  INSERT INTO outbox (kind, payload)
  SELECT 'buffer_publish', jsonb_build_object(
    'publish_id', id, 'org_id', org_id, 'task_id', task_id, 'attempt', attempt, 'job_id', job_id,
    'batch_uri', batch_uri, 'content_type', content_type, 'batch_size_bytes', batch_size_bytes, 'dedupe_scope', dedupe_scope)
  FROM ins
)
SELECT id FROM ins
UNION ALL
SELECT id FROM buffer_publishes WHERE task_id = $2 AND attempt = $3 AND batch_uri = $5 AND NOT EXISTS (SELECT 1 FROM ins)`;

/** Fenced buffer publish; a duplicate `(task_id, attempt, batch_uri)` is the same record. */
export async function publishBuffer(q: Queryable, ref: TaskRef, p: BufferPublish): Promise<{ publish_id: string }> {
  const { task, mode } = await lockFenced(q, ref);
  if (mode === 'finished') throw new TraceError(409, 'TASK_NOT_RUNNING', `the task is ${task.status}; the attempt is over`);
  const r = await q.query<{ id: string }>(PUBLISH, [task.org_id, task.id, task.attempt, task.job_id, p.batch_uri, p.content_type, p.batch_size_bytes, p.dedupe_scope]);
  return { publish_id: r.rows[0]!.id };
}
