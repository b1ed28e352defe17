/**
 * `alert_deliveries` as a durable, leased work queue (containers/delivery_service.md,
 * data_model/alerting.md). Each statement below is one round trip; the lease makes a delivery
 * belong to one Delivery Service instance at a time, and every outcome write is fenced by
 * `(id, lease_owner, attempt)` so an instance whose lease ran out cannot overwrite a newer one.
 */
import type { Queryable } from '../../db/db.js';

/** NOTIFY channel the router signals when it created deliveries (a wake-up only). */
export const DELIVERY_CHANNEL = 'trace_deliveries';

export interface LeasedDelivery {
  id: string;
  org_id: string;
  alert_event_id: string;
  alert_definition_id: string;
  channel: string;
  /** This attempt's number (1-based; counted when leased, so a crash mid-send still counts). */
  attempt: number;
  max_attempts: number;
}

// Due rows, oldest first, skipping rows another instance holds; lease and count the attempt.
const LEASE = `
WITH due AS (
  SELECT id FROM alert_deliveries
  WHERE status = 'Pending' AND next_attempt_at <= now() AND (leased_until IS NULL OR leased_until < now()) AND attempt < max_attempts
  ORDER BY next_attempt_at, id
  LIMIT $1
  FOR UPDATE SKIP LOCKED
)
UPDATE alert_deliveries d
SET leased_until = now() + make_interval(secs => $2::float8), lease_owner = $3, attempt = d.attempt + 1, last_attempt_at = now(), updated_at = now()
FROM due WHERE d.id = due.id
RETURNING d.id, d.org_id, d.alert_event_id, d.alert_definition_id, d.channel, d.attempt, d.max_attempts`;

export async function leaseDue(q: Queryable, owner: string, limit: number, leaseSeconds: number): Promise<LeasedDelivery[]> {
  return (await q.query<LeasedDelivery>(LEASE, [limit, leaseSeconds, owner])).rows;
}

// A delivery whose last allowed attempt lost its lease (the instance died mid-send) is terminal.
const EXHAUSTED = `
UPDATE alert_deliveries SET status = 'Failed', leased_until = NULL, updated_at = now(),
  error_message = coalesce(error_message || '; ', '') || 'the final attempt did not report an outcome (lease expired)'
WHERE status = 'Pending' AND attempt >= max_attempts AND (leased_until IS NULL OR leased_until < now())`;

export async function failExhausted(q: Queryable): Promise<number> {
  return (await q.query(EXHAUSTED)).rowCount;
}

export interface ChannelConfig {
  name: string;
  type: string;
  url: string;
  headers?: Record<string, string>;
}

export interface SendContext {
  event: { id: string; severity: string; event_time: Date; dedupe_key: string; payload: Record<string, unknown> };
  definition: { id: string; name: string; enabled: boolean; deleted: boolean; channels: ChannelConfig[] } | null;
}

const CONTEXT = `
SELECT e.id, e.severity, e.event_time, e.dedupe_key, e.payload,
       d.id AS def_id, d.name AS def_name, d.enabled, d.deleted_at IS NOT NULL AS deleted, d.channels
FROM alert_events e
LEFT JOIN alert_definitions d ON d.id = $3 AND d.org_id = e.org_id
WHERE e.id = $2 AND e.org_id = $1`;

export async function sendContext(q: Queryable, d: LeasedDelivery): Promise<SendContext | undefined> {
  const r = await q.query<{
    id: string; severity: string; event_time: Date; dedupe_key: string; payload: Record<string, unknown>;
    def_id: string | null; def_name: string | null; enabled: boolean | null; deleted: boolean | null; channels: unknown;
  }>(CONTEXT, [d.org_id, d.alert_event_id, d.alert_definition_id]);
  const row = r.rows[0];
  if (!row) return undefined;
  return {
    event: { id: row.id, severity: row.severity, event_time: row.event_time, dedupe_key: row.dedupe_key, payload: row.payload },
    definition: row.def_id === null ? null : { id: row.def_id, name: row.def_name ?? '', enabled: row.enabled === true, deleted: row.deleted === true, channels: Array.isArray(row.channels) ? (row.channels as ChannelConfig[]) : [] },
  };
}

export type FinalStatus = 'Pending' | 'Delivered' | 'Failed' | 'Canceled';

export interface Outcome {
  status: FinalStatus;
  /** For Pending: when to try again. */
  next_attempt_at?: Date;
  status_code?: number | null;
  error?: string | null;
  /** The attempt audit row. */
  audit: { started_at: Date; outcome: 'delivered' | 'retryable' | 'terminal' | 'canceled'; address?: string | null; duration_ms?: number | null };
}

const RECORD = `
UPDATE alert_deliveries SET status = $4, next_attempt_at = coalesce($5, next_attempt_at), leased_until = NULL,
  last_status_code = $6, error_message = $7, delivered_at = CASE WHEN $4 = 'Delivered' THEN now() ELSE delivered_at END, updated_at = now()
WHERE id = $1 AND lease_owner = $2 AND attempt = $3 AND status = 'Pending'`;

const AUDIT = `
INSERT INTO alert_delivery_attempts (delivery_id, attempt, org_id, lease_owner, started_at, outcome, status_code, error, address, duration_ms)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
ON CONFLICT (delivery_id, attempt) DO NOTHING`;

/**
 * Records one attempt: the audit row always (every outbound request is attributable), the status
 * change only while this instance still holds the lease. Returns false when the lease was lost.
 */
export async function recordOutcome(q: Queryable, d: LeasedDelivery, owner: string, o: Outcome): Promise<boolean> {
  await q.query(AUDIT, [d.id, d.attempt, d.org_id, owner, o.audit.started_at, o.audit.outcome, o.status_code ?? null, o.error ?? null, o.audit.address ?? null, o.audit.duration_ms ?? null]);
  const r = await q.query(RECORD, [d.id, owner, d.attempt, o.status, o.next_attempt_at ?? null, o.status_code ?? null, o.error ?? null]);
  return r.rowCount > 0;
}
