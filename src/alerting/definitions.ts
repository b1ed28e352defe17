/**
 * `alert_definitions` and the delivery listing, org scoped (Postgres data). Deleting is soft:
 * the row stays for the audit trail of its events, disappears from the API, stops routing, and
 * its pending deliveries are canceled.
 */
import type { Db, Queryable } from '../db/db.js';
import { newId, UUID_RE } from '../core/ids.js';
import type { NormalizedDefinition, StoredChannel } from './schemas.js';

export interface DefinitionRow {
  id: string;
  org_id: string;
  user_id: string | null;
  name: string;
  condition: Record<string, unknown>;
  channels: StoredChannel[];
  visibility: string;
  enabled: boolean;
  created_at: Date;
  updated_at: Date;
}

/** Who is asking: the identity context of a user route. */
export interface Viewer {
  org_id: string;
  user_id: string;
  roles: string[];
}

const COLUMNS = 'id, org_id, user_id, name, condition, channels, visibility, enabled, created_at, updated_at';

/** May this viewer see the definition? private: its creator; role:x: members of x; admins see all. */
export function canView(v: Viewer, d: Pick<DefinitionRow, 'user_id' | 'visibility'>): boolean {
  if (v.roles.includes('admin') || d.user_id === v.user_id) return true;
  if (d.visibility === 'org') return true;
  if (d.visibility.startsWith('role:')) return v.roles.includes(d.visibility.slice(5));
  return false;
}

/** May this viewer change or delete it? Its creator and admins. */
export function canModify(v: Viewer, d: Pick<DefinitionRow, 'user_id'>): boolean {
  return v.roles.includes('admin') || d.user_id === v.user_id;
}

/** The API view: destinations stay visible to whoever may see the definition, header values never. */
export function definitionView(d: DefinitionRow): Record<string, unknown> {
  return {
    id: d.id,
    name: d.name,
    condition: d.condition,
    channels: d.channels.map((c) => ({ name: c.name, type: c.type, url: c.url, header_names: Object.keys(c.headers ?? {}) })),
    visibility: d.visibility,
    enabled: d.enabled,
    created_by: d.user_id,
    created_at: new Date(d.created_at).toISOString(),
    updated_at: new Date(d.updated_at).toISOString(),
  };
}

export async function createDefinition(db: Queryable, v: Viewer, d: NormalizedDefinition): Promise<DefinitionRow> {
  const r = await db.query<DefinitionRow>(
    `INSERT INTO alert_definitions (id, org_id, user_id, name, condition, channels, visibility, enabled)
     VALUES ($1, $2, $3, $4, $5::jsonb, $6::jsonb, $7, $8) RETURNING ${COLUMNS}`,
    [newId(), v.org_id, v.user_id, d.name, JSON.stringify(d.condition), JSON.stringify(d.channels), d.visibility, d.enabled],
  );
  return r.rows[0]!;
}

export async function getDefinition(db: Queryable, orgId: string, id: string): Promise<DefinitionRow | undefined> {
  if (!UUID_RE.test(id)) return undefined;
  const r = await db.query<DefinitionRow>(`SELECT ${COLUMNS} FROM alert_definitions WHERE id = $1 AND org_id = $2 AND deleted_at IS NULL`, [id, orgId]);
  return r.rows[0];
}

export async function listDefinitions(db: Queryable, v: Viewer, limit = 500): Promise<DefinitionRow[]> {
  const r = await db.query<DefinitionRow>(
    `SELECT ${COLUMNS} FROM alert_definitions WHERE org_id = $1 AND deleted_at IS NULL ORDER BY created_at, id LIMIT $2`, [v.org_id, limit]);
  return r.rows.filter((d) => canView(v, d));
}

export async function updateDefinition(db: Queryable, orgId: string, id: string, d: NormalizedDefinition): Promise<DefinitionRow | undefined> {
  const r = await db.query<DefinitionRow>(
    `UPDATE alert_definitions SET name = $3, condition = $4::jsonb, channels = $5::jsonb, visibility = $6, enabled = $7, updated_at = now()
     WHERE id = $1 AND org_id = $2 AND deleted_at IS NULL RETURNING ${COLUMNS}`,
    [id, orgId, d.name, JSON.stringify(d.condition), JSON.stringify(d.channels), d.visibility, d.enabled],
  );
  return r.rows[0];
}

/** Soft delete; cancels the definition's pending deliveries in the same transaction. */
export async function deleteDefinition(db: Db, orgId: string, id: string): Promise<{ deleted: boolean; canceled_deliveries: number }> {
  return db.tx(async (q) => {
    const r = await q.query(`UPDATE alert_definitions SET deleted_at = now(), enabled = false, updated_at = now() WHERE id = $1 AND org_id = $2 AND deleted_at IS NULL`, [id, orgId]);
    if (r.rowCount === 0) return { deleted: false, canceled_deliveries: 0 };
    const c = await q.query(
      `UPDATE alert_deliveries SET status = 'Canceled', error_message = 'the alert definition was deleted', leased_until = NULL, updated_at = now()
       WHERE org_id = $1 AND alert_definition_id = $2 AND status = 'Pending'`, [orgId, id]);
    return { deleted: true, canceled_deliveries: c.rowCount };
  });
}

export interface DeliveryView {
  delivery_id: string;
  alert_event_id: string;
  channel: string;
  status: string;
  attempt: number;
  max_attempts: number;
  next_attempt_at: string | null;
  last_attempt_at: string | null;
  last_status_code: number | null;
  error_message: string | null;
  delivered_at: string | null;
  created_at: string;
  event: { severity: string; event_time: string; dedupe_key: string };
}

const iso = (d: Date | null) => (d ? new Date(d).toISOString() : null);

export async function listDeliveries(db: Queryable, orgId: string, definitionId: string, opts: { status?: string; limit?: number } = {}): Promise<DeliveryView[]> {
  const r = await db.query<{
    id: string; alert_event_id: string; channel: string; status: string; attempt: number; max_attempts: number; next_attempt_at: Date | null;
    last_attempt_at: Date | null; last_status_code: number | null; error_message: string | null; delivered_at: Date | null; created_at: Date;
    severity: string; event_time: Date; dedupe_key: string;
  }>(
    `SELECT d.id, d.alert_event_id, d.channel, d.status, d.attempt, d.max_attempts, d.next_attempt_at, d.last_attempt_at, d.last_status_code,
            d.error_message, d.delivered_at, d.created_at, e.severity, e.event_time, e.dedupe_key
     FROM alert_deliveries d JOIN alert_events e ON e.id = d.alert_event_id AND e.org_id = d.org_id
     WHERE d.org_id = $1 AND d.alert_definition_id = $2 AND ($3::text IS NULL OR d.status = $3)
     ORDER BY d.created_at DESC, d.id LIMIT $4`,
    [orgId, definitionId, opts.status ?? null, opts.limit ?? 100],
  );
  return r.rows.map((x) => ({
    delivery_id: x.id,
    alert_event_id: x.alert_event_id,
    channel: x.channel,
    status: x.status,
    attempt: x.attempt,
    max_attempts: x.max_attempts,
    next_attempt_at: x.status === 'Pending' ? iso(x.next_attempt_at) : null,
    last_attempt_at: iso(x.last_attempt_at),
    last_status_code: x.last_status_code,
    error_message: x.error_message,
    delivered_at: iso(x.delivered_at),
    created_at: iso(x.created_at)!,
    event: { severity: x.severity, event_time: iso(x.event_time)!, dedupe_key: x.dedupe_key },
  }));
}
