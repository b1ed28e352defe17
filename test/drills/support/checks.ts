/**
 * What "every item completed exactly once" means in the drills, as queries on the databases.
 *
 * A work item (a manual trigger of work, work_long, inproc or inproc_long with a unique cursor) is
 * done when its task is Completed with exactly one Completed attempt, and exactly one downstream
 * task exists for its cursor and is Completed (a duplicate output would route a second one).
 *
 * An alert item (a `ticks` cursor) is done when its alert event exists once, has exactly one
 * delivery, that delivery is Delivered, and the receiver answered 2xx to it exactly once.
 */
import type { Cluster } from './cluster.js';

export interface WorkRow {
  id: string;
  job: string;
  cursor: string;
  status: string;
  attempt: number;
  uncounted_attempts: number;
  completed: number;
  history: string[];
  errors: Array<string | null>;
  downstream: number;
  downstream_done: number;
}

const WORK = `
SELECT t.id, j.name AS job, t.trigger->>'cursor' AS cursor, t.status, t.attempt, t.uncounted_attempts,
  (SELECT count(*)::int FROM task_attempts a WHERE a.task_id = t.id AND a.status = 'Completed') AS completed,
  (SELECT coalesce(json_agg(a.status ORDER BY a.attempt), '[]'::json) FROM task_attempts a WHERE a.task_id = t.id) AS history,
  (SELECT coalesce(json_agg(a.error_message ORDER BY a.attempt), '[]'::json) FROM task_attempts a WHERE a.task_id = t.id) AS errors,
  (SELECT count(*)::int FROM tasks d JOIN jobs dj ON dj.id = d.job_id
    WHERE dj.name = 'after_' || j.name AND d.inputs->0->>'cursor' = t.trigger->>'cursor') AS downstream,
  (SELECT count(*)::int FROM tasks d JOIN jobs dj ON dj.id = d.job_id
    WHERE dj.name = 'after_' || j.name AND d.inputs->0->>'cursor' = t.trigger->>'cursor' AND d.status = 'Completed') AS downstream_done
FROM tasks t JOIN jobs j ON j.id = t.job_id WHERE t.id = ANY ($1::uuid[])`;

export async function workRows(c: Cluster, ids: string[]): Promise<WorkRow[]> {
  return (await c.db.state.query<WorkRow>(WORK, [ids])).rows;
}

/** Problems that make a work item not (yet) done exactly once; empty when all are. */
export async function workProblems(c: Cluster, ids: string[]): Promise<string[]> {
  const rows = await workRows(c, ids);
  const out: string[] = [];
  if (rows.length !== ids.length) out.push(`${ids.length - rows.length} tasks missing`);
  for (const r of rows) {
    if (r.status !== 'Completed') out.push(`${r.job}#${r.cursor} is ${r.status} (${r.history.join(',')})`);
    else if (r.completed !== 1) out.push(`${r.job}#${r.cursor} has ${r.completed} completed attempts`);
    else if (r.downstream !== 1) out.push(`${r.job}#${r.cursor} has ${r.downstream} downstream tasks`);
    else if (r.downstream_done !== 1) out.push(`${r.job}#${r.cursor} downstream not completed yet`);
  }
  return out;
}

export interface AlertRow {
  dedupe_key: string;
  events: number;
  deliveries: number;
  delivered: number;
  delivery_ids: string[];
  attempts: number;
}

const ALERTS = `
SELECT e.dedupe_key, count(DISTINCT e.id)::int AS events, count(d.id)::int AS deliveries,
  (count(d.id) FILTER (WHERE d.status = 'Delivered'))::int AS delivered,
  coalesce(json_agg(d.id) FILTER (WHERE d.id IS NOT NULL), '[]'::json) AS delivery_ids,
  coalesce(max(d.attempt), 0)::int AS attempts
FROM alert_events e LEFT JOIN alert_deliveries d ON d.alert_event_id = e.id
WHERE e.org_id = $1 AND e.dedupe_key = ANY ($2::text[])
GROUP BY e.dedupe_key`;

export const alertKey = (c: Cluster, cursor: number) => `drill:${c.alertId}:${cursor}`;

export async function alertRows(c: Cluster, cursors: number[]): Promise<AlertRow[]> {
  return (await c.db.data.query<AlertRow>(ALERTS, [c.orgId, cursors.map((x) => alertKey(c, x))])).rows;
}

export async function alertProblems(c: Cluster, cursors: number[]): Promise<string[]> {
  const rows = new Map((await alertRows(c, cursors)).map((r) => [r.dedupe_key, r]));
  const sent = c.receiver.delivered();
  const out: string[] = [];
  for (const cur of cursors) {
    const r = rows.get(alertKey(c, cur));
    if (!r) { out.push(`alert #${cur}: no event yet`); continue; }
    if (r.deliveries !== 1) out.push(`alert #${cur}: ${r.deliveries} deliveries`);
    else if (r.delivered !== 1) out.push(`alert #${cur}: not delivered yet`);
    else if ((sent.get(r.delivery_ids[0]!) ?? 0) !== 1) out.push(`alert #${cur}: the receiver accepted it ${sent.get(r.delivery_ids[0]!) ?? 0} times`);
  }
  return out;
}

/** Tasks that gave up for good, and outbox rows that did: there must be none after a drill. */
export async function terminalFailures(c: Cluster): Promise<string[]> {
  const t = await c.db.state.query<{ job: string; error_message: string | null }>(
    `SELECT j.name AS job, t.error_message FROM tasks t JOIN jobs j ON j.id = t.job_id WHERE t.status = 'Failed' AND t.next_retry_at IS NULL`);
  const o = await c.db.state.query<{ kind: string; last_error: string | null }>(`SELECT kind, last_error FROM outbox WHERE status = 'Failed'`);
  return [
    ...t.rows.map((r) => `task ${r.job} Failed for good: ${r.error_message ?? ''}`),
    ...o.rows.map((r) => `outbox ${r.kind} Failed: ${r.last_error ?? ''}`),
  ];
}
