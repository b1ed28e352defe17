/**
 * `alert_events` as a buffered dataset (specs/alerting.md "Alert event batch artifact format",
 * ADR 0004, ADR 0006): the row schema the sink validates every JSONL line against, and the
 * idempotent upsert.
 *
 * Row schema v1, exactly these top-level fields (unknown ones are refused; `payload` is the
 * extension point): `alert_definition_id` (UUID), `dedupe_key` (1..512 characters, no control
 * characters), `event_time` (RFC 3339 with `Z` or an offset), `severity` (`info|warning|critical`),
 * `payload` (a JSON object, at most 64 KiB serialized, no NUL characters anywhere).
 *
 * Attribution (`org_id`, producer job, task, attempt, publish id) comes from the trusted buffer
 * message. Conventional chain context keys of `payload` (`chain_id`, `block_number`,
 * `block_hash`, `tx_hash`) are projected into their columns when they have the right type
 * (integers, 0x-prefixed 32-byte hex), so routing can filter on `chain_id`; otherwise the columns
 * stay NULL (the payload is producer-defined and is never rejected for them).
 *
 * Ids are deterministic: `id = uuidV5('alert_event', org_id, dedupe_key)`.
 */
import { z } from 'zod';
import { formatPath } from '../core/errors.js';
import { uuidV5, UUID_RE } from '../core/ids.js';
import type { Queryable } from '../db/db.js';
import type { BatchAttribution, BufferedDatasetSpec, RowCheck } from '../sink/types.js';
import { SEVERITIES, type Severity } from './schemas.js';

export const ALERT_EVENTS = 'alert_events';
export const MAX_PAYLOAD_BYTES = 64 * 1024;

// eslint-disable-next-line no-control-regex
const CONTROL = /[\u0000-\u001f\u007f-\u009f]/;
const HASH_RE = /^0x[0-9a-fA-F]{64}$/;
const MIN_TIME = Date.UTC(1970, 0, 1);
const MAX_TIME = Date.UTC(9999, 11, 31);

const rowSchema = z.strictObject({
  alert_definition_id: z.string().regex(UUID_RE, 'must be a UUID'),
  dedupe_key: z.string().min(1).max(512).refine((s) => !CONTROL.test(s), 'must not contain control characters'),
  event_time: z.iso.datetime({ offset: true, error: 'must be an RFC 3339 timestamp with Z or an offset' })
    .refine((s) => { const t = Date.parse(s); return t >= MIN_TIME && t <= MAX_TIME; }, 'must be between 1970 and 9999'),
  severity: z.enum(SEVERITIES),
  payload: z.record(z.string(), z.unknown()).superRefine((p, ctx) => {
    const text = JSON.stringify(p);
    if (text.length > MAX_PAYLOAD_BYTES) ctx.addIssue({ code: 'custom', message: `must be at most ${MAX_PAYLOAD_BYTES} bytes of JSON` });
    if (text.includes('\\u0000')) ctx.addIssue({ code: 'custom', message: 'must not contain NUL characters' });
  }),
});

export interface AlertEventRow {
  alert_definition_id: string;
  dedupe_key: string;
  event_time: string;
  severity: Severity;
  payload: Record<string, unknown>;
}

const safeInt = (v: unknown): number | null => (typeof v === 'number' && Number.isSafeInteger(v) && v >= 0 ? v : null);
const hash = (v: unknown): string | null => (typeof v === 'string' && HASH_RE.test(v) ? v.toLowerCase() : null);

export const alertEventId = (orgId: string, dedupeKey: string) => uuidV5('alert_event', orgId, dedupeKey);

const UPSERT = `
WITH r AS (
  SELECT * FROM unnest($6::uuid[], $7::uuid[], $8::text[], $9::timestamptz[], $10::text[], $11::text[], $12::bigint[], $13::bigint[], $14::text[], $15::text[])
    WITH ORDINALITY AS r(id, alert_definition_id, dedupe_key, event_time, severity, payload, chain_id, block_number, block_hash, tx_hash, ord)
)
INSERT INTO alert_events (id, org_id, alert_definition_id, producer_job_id, producer_task_id, producer_attempt, publish_id, severity,
  chain_id, block_number, block_hash, tx_hash, payload, dedupe_key, event_time)
SELECT r.id, $1, r.alert_definition_id, $2, $3, $4, $5, r.severity, r.chain_id, r.block_number, r.block_hash, r.tx_hash, r.payload::jsonb,
  r.dedupe_key, r.event_time
FROM r ORDER BY r.ord
ON CONFLICT (org_id, dedupe_key) DO NOTHING
RETURNING seq`;

// The Parquet copy the Query Service reads: every column but org_id (the copy lives under the
// org's own prefix), ids and times as text in a stable form, payload as its JSON text (VARCHAR).
const SNAPSHOT_SELECT = `
SELECT id::text, seq, alert_definition_id::text, producer_job_id::text, producer_task_id::text, producer_attempt, publish_id::text,
  severity, chain_id, block_hash, tx_hash, block_number, source_dataset_uuid::text, partition_key, cursor_value, payload::text AS payload,
  dedupe_key, to_char(event_time AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS event_time,
  to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS created_at
FROM alert_events WHERE org_id = $1 AND seq >= $2 AND seq < $3 ORDER BY seq`;

export const alertEventsDataset: BufferedDatasetSpec<AlertEventRow> = {
  name: ALERT_EVENTS,
  snapshot: {
    select: SNAPSHOT_SELECT,
    columns: [
      ['id', 'UUID'], ['seq', 'BIGINT'], ['alert_definition_id', 'UUID'], ['producer_job_id', 'UUID'], ['producer_task_id', 'UUID'],
      ['producer_attempt', 'INTEGER'], ['publish_id', 'UUID'], ['severity', 'VARCHAR'], ['chain_id', 'BIGINT'], ['block_hash', 'VARCHAR'],
      ['tx_hash', 'VARCHAR'], ['block_number', 'BIGINT'], ['source_dataset_uuid', 'UUID'], ['partition_key', 'VARCHAR'],
      ['cursor_value', 'VARCHAR'], ['payload', 'VARCHAR'], ['dedupe_key', 'VARCHAR'], ['event_time', 'TIMESTAMPTZ'], ['created_at', 'TIMESTAMPTZ'],
    ],
  },
  checkRow(value: unknown): RowCheck<AlertEventRow> {
    const r = rowSchema.safeParse(value);
    if (r.success) return { ok: true, row: r.data as AlertEventRow };
    return { ok: false, problems: r.error.issues.map((i) => ({ path: formatPath(i.path), message: i.message })) };
  },
  async write(q: Queryable, rows: AlertEventRow[], a: BatchAttribution) {
    if (rows.length === 0) return { inserted: 0, seqStart: null, seqEnd: null };
    const res = await q.query<{ seq: number | string }>(UPSERT, [
      a.org_id, a.job_id, a.task_id, a.attempt, a.publish_id,
      rows.map((r) => alertEventId(a.org_id, r.dedupe_key)),
      rows.map((r) => r.alert_definition_id),
      rows.map((r) => r.dedupe_key),
      rows.map((r) => r.event_time),
      rows.map((r) => r.severity),
      rows.map((r) => JSON.stringify(r.payload)),
      rows.map((r) => safeInt(r.payload.chain_id)),
      rows.map((r) => safeInt(r.payload.block_number)),
      rows.map((r) => hash(r.payload.block_hash)),
      rows.map((r) => hash(r.payload.tx_hash)),
    ]);
    if (res.rows.length === 0) return { inserted: 0, seqStart: null, seqEnd: null };
    let lo = Infinity;
    let hi = -Infinity;
    for (const x of res.rows) {
      const s = Number(x.seq);
      if (s < lo) lo = s;
      if (s > hi) hi = s;
    }
    return { inserted: res.rows.length, seqStart: lo, seqEnd: hi + 1 };
  },
};
