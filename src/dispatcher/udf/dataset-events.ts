/**
 * Buffered datasets on the Dispatcher side (ADR 0006, contracts/buffered_datasets.md):
 *
 * - Registration: each buffered dataset (v1: `alert_events`) is a registry row of kind
 *   `buffered` with a deterministic id `uuidV5('dataset', org, 'buffered', name)` and one
 *   current version, so DAGs name it as an input (`from: {dataset: alert_events}`) and any
 *   number of jobs may publish into it (multi-writer). Idempotent; run at Dispatcher start.
 * - `POST /internal/dataset-events` (worker token; the trusted sink calls it after it committed
 *   a batch): records the event once in `dataset_events` and, when new, writes a `route_event`
 *   outbox row, exactly as task events are routed. The event is a partition event over the
 *   sink's commit range `[start, end)` (alert_events `seq` values), on the dataset's current
 *   version. Re-reporting the same range is a no-op. The report carries the storage ref of the
 *   sink's Parquet copy of the dataset (`src/sink/snapshot.ts`); it becomes the version's ref, so
 *   `POST /v1/query` reads every committed batch.
 */
import type { FastifyInstance } from 'fastify';
import { z } from 'zod';
import type { Db, Queryable } from '../../db/db.js';
import type { Logger } from '../../core/log.js';
import { TraceError, notFound } from '../../core/errors.js';
import { bufferedDatasetUuid, bufferedDatasetVersion } from '../../sink/ids.js';
import { header, parseInput } from '../../core/http.js';
import { checkWorkerToken } from '../../auth/worker-token.js';
import type { DispatcherContext } from '../service.js';
import { datasetNameParam, uuid } from '../http/schemas.js';
import { eventKey, type DatasetEvent } from '../tasks/types.js';
import { parseRefFor } from '../publication.js';

/** Buffered datasets this build's sink can write. */
export const BUFFERED_DATASETS: readonly string[] = ['alert_events'];

export { bufferedDatasetUuid, bufferedDatasetVersion };

const FIND = `SELECT id, kind, current_version FROM datasets WHERE org_id = $1 AND name = $2`;
const INSERT_DATASET = `
INSERT INTO datasets (id, org_id, name, kind, storage, read_roles) VALUES ($1, $2, $3, 'buffered', $4::jsonb, '{}')
ON CONFLICT DO NOTHING`;
const INSERT_VERSION = `INSERT INTO dataset_versions (id, dataset_uuid, config_hash) VALUES ($1, $2, 'buffered:v1') ON CONFLICT DO NOTHING`;
const SET_CURRENT = `UPDATE datasets SET current_version = $2, updated_at = now() WHERE id = $1 AND current_version IS NULL`;
const ATTACH_REF = `
UPDATE dataset_versions SET storage_ref = $2::jsonb, storage_location = $3 WHERE id = $1 AND storage_ref IS DISTINCT FROM $2::jsonb`;

/** Registers the buffered datasets of an org (idempotent). Names taken by another kind are skipped and reported. */
export async function ensureBufferedDatasets(db: Db, orgId: string, names: readonly string[] = BUFFERED_DATASETS, log?: Logger): Promise<string[]> {
  const skipped: string[] = [];
  for (const name of names) {
    await db.tx(async (q) => {
      await q.query('SELECT pg_advisory_xact_lock(hashtext($1))', [`buffered-dataset:${orgId}:${name}`]);
      const existing = (await q.query<{ id: string; kind: string }>(FIND, [orgId, name])).rows[0];
      if (existing && existing.kind !== 'buffered') {
        skipped.push(name);
        log?.warn({ dataset: name, kind: existing.kind }, 'a dataset of another kind already has the name of a buffered dataset; not registering it');
        return;
      }
      const id = existing?.id ?? bufferedDatasetUuid(orgId, name);
      const version = bufferedDatasetVersion(id);
      if (!existing) await q.query(INSERT_DATASET, [id, orgId, name, JSON.stringify({ kind: 'postgres_table', database: 'data', table: name })]);
      await q.query(INSERT_VERSION, [version, id]);
      await q.query(SET_CURRENT, [id, version]);
    });
  }
  return skipped;
}

const datasetEventBody = z.strictObject({
  org_id: uuid,
  dataset: datasetNameParam,
  publish_id: uuid,
  producer_task_id: uuid.optional(),
  start: z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER),
  end: z.number().int().positive().max(Number.MAX_SAFE_INTEGER),
  storage_ref: z.record(z.string(), z.unknown()).optional(),
}).refine((b) => b.end > b.start, { message: 'end must be greater than start', path: ['end'] });

export type DatasetEventReport = z.infer<typeof datasetEventBody>;

const RECORD = `
WITH ins AS (
  INSERT INTO dataset_events (org_id, dataset_uuid, event_key, event, publish_id, producer_task_id, routed)
  VALUES ($1, $2, $3, $4::jsonb, $5, $6, true)
  ON CONFLICT (dataset_uuid, event_key) DO NOTHING
  RETURNING id
), ob AS (
  INSERT INTO outbox (kind, payload)
  SELECT 'route_event', jsonb_build_object('org_id', $1::text, 'event', $4::jsonb, 'producer_task_id', $6::text) FROM ins
  RETURNING id
)
SELECT (SELECT count(*) FROM ins)::int AS accepted, (SELECT count(*) FROM ob)::int AS routed`;

/** Records and routes one buffered dataset event; idempotent by `(dataset_uuid, event_key)`. */
export async function recordBufferedEvent(q: Queryable, r: DatasetEventReport): Promise<{ accepted: number; routed: number; event: DatasetEvent }> {
  const ds = (await q.query<{ id: string; kind: string; current_version: string | null }>(FIND, [r.org_id, r.dataset])).rows[0];
  if (!ds || ds.kind !== 'buffered') throw notFound(`no buffered dataset named ${r.dataset}`, 'DATASET_NOT_FOUND');
  if (!ds.current_version) throw new TraceError(409, 'DATASET_NO_VERSION', `buffered dataset ${r.dataset} has no current version`);
  if (r.storage_ref !== undefined) {
    // The sink's Parquet copy of the dataset: the version's storage ref (the same ref again is a no-op).
    const ref = parseRefFor('storage_ref', r.storage_ref);
    await q.query(ATTACH_REF, [ds.current_version, JSON.stringify(r.storage_ref), ref.prefix]);
  }
  const event: DatasetEvent = { dataset_uuid: ds.id, dataset_version: ds.current_version, partition_key: `${r.start}-${r.end}`, start: r.start, end: r.end };
  const res = await q.query<{ accepted: number; routed: number }>(RECORD, [r.org_id, ds.id, eventKey(event), JSON.stringify(event), r.publish_id, r.producer_task_id ?? null]);
  const row = res.rows[0] ?? { accepted: 0, routed: 0 };
  return { ...row, event };
}

export function datasetEventRoutes(app: FastifyInstance, ctx: DispatcherContext): void {
  app.post('/internal/dataset-events', async (req) => {
    checkWorkerToken(ctx.deps.workerToken, header(req, 'x-trace-worker-token'));
    const body = parseInput(datasetEventBody, req.body);
    const r = await ctx.deps.state.tx((q) => recordBufferedEvent(q, body));
    if (r.routed > 0) ctx.kickOutbox();
    req.log.info({ org_id: body.org_id, dataset: body.dataset, publish_id: body.publish_id, partition_key: r.event.partition_key, accepted: r.accepted }, 'buffered dataset event');
    return { ok: true, accepted: r.accepted, routed: r.routed, event: r.event };
  });
}
