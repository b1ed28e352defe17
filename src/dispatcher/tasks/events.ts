import { TraceError } from '../../core/errors.js';
import type { Queryable } from '../../db/db.js';
import type { JobRow } from '../jobs.js';
import { type DatasetEvent, eventKey } from './types.js';

const CURRENT_VERSIONS = `SELECT id, current_version FROM datasets WHERE id = ANY ($1::uuid[])`;

// Records each event once per producing task; only new events for the dataset's current
// version get a route_event outbox row (older generations are kept for audit, not routed).
const RECORD_EVENTS = `
WITH x AS (
  SELECT * FROM unnest($3::text[], $4::text[], $5::boolean[]) AS x(event_key, event, routed)
), ins AS (
  INSERT INTO task_events (task_id, attempt, event_key, event, routed)
  SELECT $1, $2, x.event_key, x.event::jsonb, x.routed FROM x
  ON CONFLICT (task_id, event_key) DO NOTHING
  RETURNING event_key, event, routed
), ob AS (
  INSERT INTO outbox (kind, payload)
  SELECT 'route_event', jsonb_build_object('org_id', $6::text, 'event', ins.event, 'producer_task_id', $1::text)
  FROM ins WHERE ins.routed
  RETURNING id
)
SELECT (SELECT count(*) FROM ins)::int AS accepted, (SELECT count(*) FROM ob)::int AS routed`;

/**
 * Accepts events from a fenced task: each must name one of the task's own outputs (a task can
 * never emit on a dataset it does not produce). Duplicates are no-ops.
 */
export async function recordEvents(
  q: Queryable,
  task: { id: string; attempt: number; org_id: string },
  job: JobRow,
  events: DatasetEvent[],
): Promise<{ accepted: number; routed: number }> {
  if (events.length === 0) return { accepted: 0, routed: 0 };
  const owned = new Set(job.outputs.map((o) => o.dataset_uuid));
  events.forEach((e, i) => {
    if (!owned.has(e.dataset_uuid)) {
      throw new TraceError(403, 'EVENT_NOT_OWNED', `events[${i}].dataset_uuid is not an output of this task's job`);
    }
  });
  const cur = await q.query<{ id: string; current_version: string | null }>(CURRENT_VERSIONS, [[...new Set(events.map((e) => e.dataset_uuid))]]);
  const current = new Map(cur.rows.map((r) => [r.id, r.current_version]));
  const r = await q.query<{ accepted: number; routed: number }>(RECORD_EVENTS, [
    task.id,
    task.attempt,
    events.map(eventKey),
    events.map((e) => JSON.stringify(e)),
    events.map((e) => current.get(e.dataset_uuid) === e.dataset_version),
    task.org_id,
  ]);
  return r.rows[0] ?? { accepted: 0, routed: 0 };
}
