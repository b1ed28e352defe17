import type { Queryable } from '../db/db.js';
import { dependentJobs } from './jobs.js';
import { createTasks } from './tasks/create.js';
import { type DatasetEvent, eventKey } from './tasks/types.js';

const CURRENT_VERSION = `SELECT current_version FROM datasets WHERE id = $1`;

/**
 * Routes one event: if it is for the dataset's current version, create one task per dependent
 * reactive job of the active DAG versions (no coalescing), idempotent by the event's identity.
 */
export async function routeEvent(q: Queryable, orgId: string, event: DatasetEvent, producerTaskId: string | null): Promise<number> {
  const cur = await q.query<{ current_version: string | null }>(CURRENT_VERSION, [event.dataset_uuid]);
  if (cur.rows[0]?.current_version !== event.dataset_version) return 0;
  const jobs = await dependentJobs(q, orgId, event.dataset_uuid);
  if (jobs.length === 0) return 0;
  const key = `ev:${eventKey(event)}`;
  const created = await createTasks(q, jobs.map((j) => {
    const edge = j.inputs.find((i) => i.dataset_uuid === event.dataset_uuid);
    return {
      job_id: j.id,
      dedupe_key: key,
      inputs: [{ ...event, ...(edge?.where ? { where: edge.where } : {}) }],
      trigger: { kind: 'event', ...(producerTaskId ? { producer_task_id: producerTaskId } : {}) },
    };
  }));
  return created.length;
}
