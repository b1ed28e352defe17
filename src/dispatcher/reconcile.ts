import type { Db } from '../db/db.js';
import type { Logger } from '../core/log.js';
import { isConnectionFailure, unavailableDependency } from '../core/dependency.js';
import { routeEvent } from './routing.js';
import type { DatasetEvent } from './tasks/types.js';

/**
 * The reconcile loop's pass: events that were recorded to be routed (`task_events` and
 * `dataset_events` rows with `routed`) but never were (`routed_at` still NULL: the process
 * crashed after recording, or the `route_event` outbox row was lost) are routed here. Only
 * events older than the grace period (the outbox gets the first go) and younger than the
 * lookback are looked at. Routing is keyed by the event's identity, so an event the outbox
 * routes at the same time, or a second pass, creates nothing twice.
 */
export interface ReconcileOptions {
  graceSeconds: number;
  lookbackSeconds: number;
  batchSize: number;
}

export interface ReconcileResult {
  /** Unrouted events found. */
  events: number;
  /** Tasks their routing created. */
  tasks: number;
  /** Events whose routing failed (retried at the next pass). */
  failed: number;
}

interface Unrouted {
  id: string;
  org_id: string;
  event: DatasetEvent;
  producer_task_id: string | null;
}

// Each query walks its table's partial index of unrouted rows by id (keyset), within the window.
const UNROUTED_TASK_EVENTS = `
SELECT e.id::text AS id, t.org_id::text AS org_id, e.event, e.task_id::text AS producer_task_id
FROM task_events e JOIN tasks t ON t.id = e.task_id
WHERE e.routed AND e.routed_at IS NULL AND e.id > $1
  AND e.created_at <= now() - make_interval(secs => $2) AND e.created_at > now() - make_interval(secs => $3)
ORDER BY e.id LIMIT $4`;

const UNROUTED_DATASET_EVENTS = `
SELECT e.id::text AS id, e.org_id::text AS org_id, e.event, e.producer_task_id::text AS producer_task_id
FROM dataset_events e
WHERE e.routed AND e.routed_at IS NULL AND e.id > $1
  AND e.created_at <= now() - make_interval(secs => $2) AND e.created_at > now() - make_interval(secs => $3)
ORDER BY e.id LIMIT $4`;

/** One pass over both event tables. */
export async function reconcileEvents(db: Db, o: ReconcileOptions, log: Logger): Promise<ReconcileResult> {
  const total: ReconcileResult = { events: 0, tasks: 0, failed: 0 };
  for (const [table, sql] of [['task_events', UNROUTED_TASK_EVENTS], ['dataset_events', UNROUTED_DATASET_EVENTS]] as const) {
    let after = '0';
    for (;;) {
      const rows = (await db.query<Unrouted>(sql, [after, o.graceSeconds, o.lookbackSeconds, o.batchSize])).rows;
      for (const row of rows) {
        total.events++;
        try {
          // Its own transaction: one bad event does not hold the others back.
          total.tasks += await db.tx((q) => routeEvent(q, row.org_id, row.event, row.producer_task_id));
        } catch (e) {
          // An unreachable database fails the whole pass (the loop logs it once per outage).
          if (unavailableDependency(e) !== undefined || isConnectionFailure(e)) throw e;
          total.failed++;
          log.warn({ table, event_id: row.id, err: e instanceof Error ? e.message : String(e) }, 'reconcile could not route an event; it is tried again at the next pass');
        }
      }
      if (rows.length < o.batchSize) break;
      after = rows[rows.length - 1]!.id;
    }
  }
  if (total.events > 0) {
    log.warn({ events: total.events, tasks_created: total.tasks, failed: total.failed }, 'reconcile routed events that had been recorded but not routed');
  }
  return total;
}
