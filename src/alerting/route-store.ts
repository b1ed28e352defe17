/**
 * The trusted database half of the `alert_route` operator (specs/operators/alert_route.md): reads
 * `alert_events` and `alert_definitions`, writes `alert_deliveries`, all in Postgres data and all
 * scoped to the task's org. One statement per routing run:
 *
 * 1. events of the org in the commit range `[start, end)` (the `seq` range of the triggering
 *    `alert_events` dataset event; no range routes every event, for repair or replay),
 * 2. filtered by the input edge's `where` map (ADR 0007: AND across keys, list = membership; on
 *    this dataset `severity`, `chain_id` and `alert_definition_id`, as parameters, never SQL),
 * 3. staleness gate: `event_time >= now() - max_delivery_age`,
 * 4. joined to the org's enabled, not deleted definition of each event, one target per channel
 *    of it (or only the channel named/typed `config.channel`),
 * 5. `INSERT ... ON CONFLICT (org_id, alert_event_id, channel) DO NOTHING`: re-runs add nothing.
 */
import type { Db } from '../db/db.js';
import { TraceError } from '../core/errors.js';
import { UUID_RE } from '../core/ids.js';
import type { AlertRouteRequest, AlertRouteResult, AlertRouteStore } from '../operators/alert_route/index.js';
import { SEVERITIES } from './schemas.js';
import { DELIVERY_CHANNEL } from '../delivery/service/store.js';

type Scalar = string | number | boolean;

function whereClauses(where: Record<string, Scalar | Scalar[]> | undefined, firstParam: number): { sql: string; params: unknown[] } {
  const parts: string[] = [];
  const params: unknown[] = [];
  for (const [field, raw] of Object.entries(where ?? {})) {
    const values = Array.isArray(raw) ? raw : [raw];
    const n = firstParam + params.length;
    switch (field) {
      case 'severity':
        if (!values.every((v) => typeof v === 'string' && (SEVERITIES as readonly string[]).includes(v))) throw badWhere('severity must be info, warning or critical');
        parts.push(`AND e.severity = ANY ($${n}::text[])`);
        params.push(values);
        break;
      case 'chain_id':
        if (!values.every((v) => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0)) throw badWhere('chain_id must be a non-negative integer');
        parts.push(`AND e.chain_id = ANY ($${n}::bigint[])`);
        params.push(values);
        break;
      case 'alert_definition_id':
        if (!values.every((v) => typeof v === 'string' && UUID_RE.test(v))) throw badWhere('alert_definition_id must be a UUID');
        parts.push(`AND e.alert_definition_id = ANY ($${n}::uuid[])`);
        params.push(values);
        break;
      default:
        throw badWhere(`'${field.slice(0, 64)}' is not a filterable field of alert_events (severity, chain_id, alert_definition_id)`);
    }
  }
  return { sql: parts.join('\n    '), params };
}

function badWhere(message: string): TraceError {
  return new TraceError(422, 'WHERE_UNSUPPORTED', `input where filter: ${message}`);
}

export function createAlertRouteStore(data: Db): AlertRouteStore {
  return {
    async route(req: AlertRouteRequest): Promise<AlertRouteResult> {
      const w = whereClauses(req.where, 7);
      const sql = `
WITH ev AS (
  SELECT e.id, e.org_id, e.alert_definition_id, e.event_time FROM alert_events e
  WHERE e.org_id = $1 AND ($2::bigint IS NULL OR e.seq >= $2) AND ($3::bigint IS NULL OR e.seq < $3)
    ${w.sql}
), fresh AS (
  SELECT * FROM ev WHERE $4::float8 IS NULL OR ev.event_time >= now() - make_interval(secs => $4::float8)
), targets AS (
  SELECT f.id AS alert_event_id, f.org_id, f.alert_definition_id, ch->>'name' AS channel
  FROM fresh f
  JOIN alert_definitions d ON d.id = f.alert_definition_id AND d.org_id = f.org_id AND d.enabled AND d.deleted_at IS NULL
  CROSS JOIN LATERAL jsonb_array_elements(d.channels) ch
  WHERE $5::text IS NULL OR ch->>'name' = $5 OR ch->>'type' = $5
), ins AS (
  INSERT INTO alert_deliveries (id, org_id, alert_event_id, alert_definition_id, channel, created_by_task_id)
  SELECT gen_random_uuid(), t.org_id, t.alert_event_id, t.alert_definition_id, t.channel, $6 FROM targets t
  ON CONFLICT (org_id, alert_event_id, channel) DO NOTHING
  RETURNING id
), wake AS (
  SELECT pg_notify('${DELIVERY_CHANNEL}', '') FROM (SELECT 1 FROM ins LIMIT 1) x
)
SELECT (SELECT count(*) FROM wake)::int AS woke,
       (SELECT count(*) FROM ev)::int AS events,
       (SELECT count(*) FROM ev)::int - (SELECT count(*) FROM fresh)::int AS stale,
       (SELECT count(*) FROM targets)::int AS targets,
       (SELECT count(*) FROM ins)::int AS created`;
      const r = await data.query<{ events: number; stale: number; targets: number; created: number }>(sql, [
        req.org_id,
        req.range?.start ?? null,
        req.range?.end ?? null,
        req.max_age_seconds ?? null,
        req.channel ?? null,
        req.task_id,
        ...w.params,
      ]);
      const row = r.rows[0]!;
      return { events: row.events, stale: row.stale, targets: row.targets, created: row.created };
    },
  };
}
