import type { Queryable } from '../db/db.js';
import { dependentJobs } from './jobs.js';
import { createTasks } from './tasks/create.js';
import { type DatasetEvent, eventKey } from './tasks/types.js';

const CURRENT_VERSION = `SELECT current_version FROM datasets WHERE id = $1`;

// The recorded event rows this routing stands for (a task's event by its producing task, a sink's
// or a registration's by its dataset): the reconcile loop skips them from now on.
const MARK_ROUTED = `
WITH te AS (
  UPDATE task_events SET routed_at = now()
  WHERE $3::uuid IS NOT NULL AND task_id = $3::uuid AND event_key = $2 AND routed_at IS NULL
)
UPDATE dataset_events SET routed_at = now()
WHERE dataset_uuid = $1 AND event_key = $2 AND routed_at IS NULL`;

/**
 * Routes one event: if it is for the dataset's current version, create one task per dependent
 * reactive job of the active DAG versions (no coalescing), idempotent by the event's identity,
 * and mark the recorded event routed. Routing the same event again creates nothing.
 */
export async function routeEvent(q: Queryable, orgId: string, event: DatasetEvent, producerTaskId: string | null): Promise<number> {
  const key = eventKey(event);
  await q.query(MARK_ROUTED, [event.dataset_uuid, key, producerTaskId]);
  const cur = await q.query<{ current_version: string | null }>(CURRENT_VERSION, [event.dataset_uuid]);
  if (cur.rows[0]?.current_version !== event.dataset_version) return 0;
  const jobs = await dependentJobs(q, orgId, event.dataset_uuid);
  if (jobs.length === 0) return 0;
  const created = await createTasks(q, jobs.map((j) => {
    const edge = j.inputs.find((i) => i.dataset_uuid === event.dataset_uuid);
    return {
      job_id: j.id,
      dedupe_key: `ev:${key}`,
      inputs: [{ ...event, ...(edge?.where ? { where: edge.where } : {}) }],
      trigger: { kind: 'event', ...(producerTaskId ? { producer_task_id: producerTaskId } : {}) },
    };
  }));
  return created.length;
}
