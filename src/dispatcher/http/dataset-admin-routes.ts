/**
 * Registering existing Parquet as an `external` dataset (admin): `POST /v1/datasets/{name}/register`
 * with `{from: "file:///abs/dir/" | "s3://bucket/prefix/", glob?: "*.parquet"}`.
 *
 * A registration records the resolved file set as a dataset version. For `file` sources the set
 * is listed with the Query Service's own resolver (same glob rules, same symlink and size
 * limits) and hashed over `(relative path, size, mtime)` together with the storage ref; the
 * version id is derived from that hash. Same hash as the current version: a no-op (200, same
 * version). A different hash: that version becomes current (201), created unless the exact
 * same file set was registered before, in which case its earlier version row is reused.
 * `s3` sources are recorded without listing (listing needs S3 credentials, which the Query
 * Service uses at query time); their version changes only when the URL or glob changes.
 *
 * A registration that changes the current version is a dataset update: in the same transaction
 * it records one `dataset_events` row (a cursor event on the new current version, the cursor
 * being the registration time in epoch milliseconds) and a `route_event` outbox row, so every
 * reactive job of an active DAG that reads the dataset gets one task for it, exactly as for a
 * job's output. An unchanged registration emits nothing.
 *
 * What is stored: `datasets` row `kind = 'external'`, no producer, `dataset_uuid =
 * uuidV5('external_dataset', org_id, name)`; `dataset_versions.storage_ref` is the capability
 * token StorageRef shape (`{scheme:'file', prefix:'/abs/dir/', glob}` or `{scheme:'s3', bucket,
 * prefix, glob}`), `storage_location` the canonical URL, `config_hash` the file-set hash.
 */
import { realpath, stat } from 'node:fs/promises';
import { isAbsolute, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { FastifyInstance } from 'fastify';
import { z } from 'zod';
import { TraceError, badRequest, conflict } from '../../core/errors.js';
import { canonicalJson, sha256Hex, uuidV5 } from '../../core/ids.js';
import { parseInput } from '../../core/http.js';
import type { Db } from '../../db/db.js';
import type { StorageRef } from '../../auth/capability-claims.js';
import { DEFAULT_GLOB, resolveStorageFiles } from '../../query/storage.js';
import type { DispatcherContext } from '../service.js';
import { checkRegisteredSource, type DatasetStorage } from '../publication.js';
import { requireAdmin } from '../identity.js';
import { eventKey, type DatasetEvent } from '../tasks/types.js';
import { DATASET_NAME_RULE, datasetNameParam } from './schemas.js';
import { userAuth } from './user-routes.js';

export interface ExternalRegistration {
  name: string;
  dataset_uuid: string;
  dataset_version: string;
  kind: 'external';
  /** The dataset row was created by this call. */
  created: boolean;
  /** The current version changed (a new or an earlier file set became current). */
  changed: boolean;
  storage_ref: StorageRef;
  /** Reactive consumers were told (a dataset event was recorded and queued for routing). */
  routed: boolean;
  /** `file` sources: files and bytes in the registered set; null for `s3` (not listed). */
  files: number | null;
  bytes: number | null;
}

const noDotSegments = (s: string) => !s.includes('\0') && !s.includes('\\') && !s.split('/').some((seg) => seg === '.' || seg === '..');

const globSchema = z
  .string()
  .min(1)
  .max(256)
  .refine((s) => !s.startsWith('/') && noDotSegments(s), 'must be a relative glob without . or .. segments');

export const registerBody = z.strictObject({
  from: z.string().min(1).max(1024),
  glob: globSchema.optional(),
});

const S3_BUCKET_RE = /^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/;

const invalidSource = (why: string) => badRequest(`invalid from: ${why}`, 'INVALID_SOURCE');

/** Parses and checks `from`; a `file` source must be an existing directory (not the root). */
async function storageRefFor(from: string, glob: string): Promise<{ ref: StorageRef; location: string }> {
  if (/[\0\r\n\\]/.test(from)) throw invalidSource('control characters and backslashes are not allowed');
  if (from.startsWith('s3://')) {
    const rest = from.slice('s3://'.length);
    const slash = rest.indexOf('/');
    const bucket = slash < 0 ? rest : rest.slice(0, slash);
    let prefix = slash < 0 ? '' : rest.slice(slash + 1);
    if (!S3_BUCKET_RE.test(bucket)) throw invalidSource('not a valid S3 bucket name');
    if (/[?#%]/.test(prefix)) throw invalidSource('the S3 prefix must be a plain key prefix (no ?, # or % escapes)');
    if (prefix !== '' && !prefix.endsWith('/')) prefix += '/';
    if (prefix === '' || prefix.startsWith('/') || !noDotSegments(prefix) || prefix.includes('//')) {
      throw invalidSource('expected s3://bucket/prefix/ with a non-empty key prefix and no . or .. segments');
    }
    return { ref: { scheme: 's3', bucket, prefix, glob }, location: `s3://${bucket}/${prefix}` };
  }
  if (!from.startsWith('file://')) throw invalidSource('expected a file:///abs/dir/ or s3://bucket/prefix/ URL');
  // Check the raw path (before URL normalisation folds `..` away), encoded dots included.
  const rawPath = from.slice('file://'.length);
  let decoded: string;
  try {
    decoded = decodeURIComponent(rawPath);
  } catch {
    throw invalidSource('malformed percent-encoding');
  }
  if (!rawPath.startsWith('/')) throw invalidSource('a file URL needs an absolute path (file:///abs/dir/)');
  if (!noDotSegments(decoded) || /[?#]/.test(rawPath)) throw invalidSource('the path must not contain . or .. segments, ? or #');
  let dir: string;
  try {
    dir = fileURLToPath(from);
  } catch {
    throw invalidSource('not a valid local file URL');
  }
  if (!isAbsolute(dir)) throw invalidSource('a file URL needs an absolute path');
  let real: string;
  try {
    real = await realpath(dir);
    if (!(await stat(real)).isDirectory()) throw new Error('not a directory');
  } catch {
    throw new TraceError(422, 'SOURCE_UNAVAILABLE', 'from does not name an existing directory on the Dispatcher host');
  }
  if (real === '/') throw invalidSource('the filesystem root cannot be a dataset');
  const prefix = `${real}/`;
  return { ref: { scheme: 'file', prefix, glob }, location: `file://${prefix}` };
}

/** Lists a file source and hashes `(relative path, size, mtime)` of every file with the ref. */
async function fileSetHash(ref: Extract<StorageRef, { scheme: 'file' }>): Promise<{ hash: string; files: number; bytes: number }> {
  const paths = await resolveStorageFiles(ref);
  if (paths.length === 0) throw new TraceError(422, 'NO_FILES', `no files under from match the glob ${JSON.stringify(ref.glob)}`);
  const root = ref.prefix.replace(/\/+$/, '');
  const entries: Array<[string, number, number]> = [];
  let bytes = 0;
  for (const p of paths) {
    let s;
    try {
      s = await stat(p);
    } catch {
      throw new TraceError(409, 'SOURCE_CHANGED', 'a file disappeared while the source was being listed; retry');
    }
    entries.push([relative(root, p), s.size, Math.trunc(s.mtimeMs)]);
    bytes += s.size;
  }
  entries.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
  return { hash: sha256Hex(canonicalJson({ ref, files: entries })), files: entries.length, bytes };
}

const LOCK_DATASET = `SELECT id, kind, current_version FROM datasets WHERE org_id = $1 AND name = $2 FOR UPDATE`;
const INSERT_DATASET = `
INSERT INTO datasets (id, org_id, name, kind, storage, read_roles)
VALUES ($1, $2, $3, 'external', '{}'::jsonb, '{}')
ON CONFLICT DO NOTHING`;
const CURRENT_HASH = `SELECT config_hash FROM dataset_versions WHERE id = $1`;
const INSERT_VERSION = `
INSERT INTO dataset_versions (id, dataset_uuid, storage_location, storage_ref, config_hash)
VALUES ($1, $2, $3, $4::jsonb, $5)
ON CONFLICT DO NOTHING`;
const FIND_VERSION = `
SELECT id FROM dataset_versions
WHERE dataset_uuid = $1 AND config_hash = $2 AND range_start IS NULL AND range_end IS NULL`;
const SET_CURRENT = `UPDATE datasets SET current_version = $2, updated_at = now() WHERE id = $1`;
const SET_COLUMNS = `
UPDATE datasets SET storage = CASE WHEN $2::jsonb IS NULL THEN storage - 'columns' ELSE jsonb_set(storage, '{columns}', $2::jsonb) END
WHERE id = $1 AND storage -> 'columns' IS DISTINCT FROM $2::jsonb`;
/** The update a changed registration is: recorded once, then routed by the outbox like a task's events. */
const RECORD_EVENT = `
WITH ins AS (
  INSERT INTO dataset_events (org_id, dataset_uuid, event_key, event, routed)
  VALUES ($1, $2, $3, $4::jsonb, true)
  ON CONFLICT (dataset_uuid, event_key) DO NOTHING
  RETURNING id
)
INSERT INTO outbox (kind, payload)
SELECT 'route_event', jsonb_build_object('org_id', $1::text, 'event', $4::jsonb, 'producer_task_id', NULL) FROM ins`;

/**
 * Registers (or refreshes) the external dataset `name` of `orgId` from `from`. Throws 409
 * DATASET_NAME_TAKEN when the name belongs to a job-output or buffered dataset, 400
 * INVALID_SOURCE / 422 SOURCE_UNAVAILABLE / 422 NO_FILES for unusable sources, 400
 * SOURCE_OUTSIDE_ROOTS for a folder outside `storage.roots`, 400 OBJECT_STORE_NOT_CONFIGURED for
 * an `s3://` source outside the configured S3 object store, 400 SOURCE_NOT_PARQUET when a file
 * is not Parquet or DuckDB cannot read the set's schema.
 */
export async function registerExternalDataset(db: Db, orgId: string, name: string, from: string, glob: string | undefined, storage: DatasetStorage): Promise<ExternalRegistration> {
  const n = datasetNameParam.safeParse(name);
  if (!n.success) throw badRequest(`invalid dataset name: ${DATASET_NAME_RULE}`, 'INVALID_REQUEST');
  const g = globSchema.safeParse(glob ?? DEFAULT_GLOB);
  if (!g.success) throw badRequest('invalid glob: must be a relative glob without . or .. segments', 'INVALID_REQUEST');
  const { ref, location } = await storageRefFor(from, g.data);
  const { columns } = await checkRegisteredSource(ref, storage);
  let listed: { hash: string; files: number | null; bytes: number | null };
  if (ref.scheme === 'file') listed = await fileSetHash(ref);
  else listed = { hash: sha256Hex(canonicalJson({ ref })), files: null, bytes: null };
  const datasetUuid = uuidV5('external_dataset', orgId, name);

  return db.tx(async (q) => {
    let created = false;
    let row = (await q.query<{ id: string; kind: string; current_version: string | null }>(LOCK_DATASET, [orgId, name])).rows[0];
    if (!row) {
      created = (await q.query(INSERT_DATASET, [datasetUuid, orgId, name])).rowCount > 0;
      row = (await q.query<{ id: string; kind: string; current_version: string | null }>(LOCK_DATASET, [orgId, name])).rows[0];
      if (!row) throw new TraceError(409, 'DATASET_NAME_TAKEN', `the dataset name ${name} could not be claimed; retry`);
    }
    if (row.kind !== 'external') {
      throw conflict(`the dataset name ${name} belongs to a ${row.kind === 'job_output' ? 'job output' : `${row.kind} dataset`}; choose another name`, 'DATASET_NAME_TAKEN');
    }
    // The schema DuckDB read is kept with the dataset (or dropped when unknown): deploy checks
    // input `where` filters on this dataset against it.
    await q.query(SET_COLUMNS, [row.id, columns ? JSON.stringify(columns) : null]);
    const base = { name, dataset_uuid: row.id, kind: 'external' as const, created, storage_ref: ref, files: listed.files, bytes: listed.bytes };
    if (row.current_version) {
      const cur = (await q.query<{ config_hash: string | null }>(CURRENT_HASH, [row.current_version])).rows[0];
      if (cur?.config_hash === listed.hash) return { ...base, dataset_version: row.current_version, changed: false, routed: false };
    }
    const version = uuidV5('external_dataset_version', row.id, listed.hash);
    await q.query(INSERT_VERSION, [version, row.id, location, JSON.stringify(ref), listed.hash]);
    const found = (await q.query<{ id: string }>(FIND_VERSION, [row.id, listed.hash])).rows[0];
    const current = found?.id ?? version;
    await q.query(SET_CURRENT, [row.id, current]);
    const event: DatasetEvent = { dataset_uuid: row.id, dataset_version: current, cursor: Date.now() };
    const routed = (await q.query(RECORD_EVENT, [orgId, row.id, eventKey(event), JSON.stringify(event)])).rowCount > 0;
    return { ...base, dataset_version: current, changed: true, routed };
  });
}

/** `POST /v1/datasets/{name}/register` (admin role). 201 when created or a new version is current, 200 when unchanged. */
export function datasetAdminRoutes(app: FastifyInstance, ctx: DispatcherContext): void {
  const auth = userAuth(ctx);
  app.post('/v1/datasets/:name/register', async (req, reply) => {
    const p = await auth(req);
    requireAdmin(p);
    const { name } = parseInput(z.strictObject({ name: datasetNameParam }), req.params, 'route');
    const body = parseInput(registerBody, req.body);
    const r = await registerExternalDataset(ctx.deps.state, p.org_id, name, body.from, body.glob, ctx.deps.datasetStorage ?? { roots: [] });
    if (r.routed) ctx.kickOutbox();
    req.log.info({ org_id: p.org_id, dataset: name, dataset_uuid: r.dataset_uuid, dataset_version: r.dataset_version, created: r.created, changed: r.changed, routed: r.routed, scheme: r.storage_ref.scheme }, 'external dataset registered');
    return reply.status(r.created || r.changed ? 201 : 200).send(r);
  });
}
