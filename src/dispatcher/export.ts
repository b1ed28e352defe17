/**
 * Exports: a dataset version as a plain folder of Cryo-named Parquet files, the folder a Cryo
 * user would have written. The store keeps a chain sync range under its attempt prefix
 * (`{task_id}/{attempt}/`) and keeps superseded files for a while, so a glob over it can see a
 * block twice; the export plan lists exactly the files the version reads (for a chain sync
 * view, the view manifest's: one file set per range, compacted windows instead of the small
 * ranges they replaced), each under its own Cryo file name
 * (`{network}__{dataset}__{first:08}_to_{last:08}.parquet`, see cryo_ingest/README.md).
 *
 * Read authorization is the query path's: a dataset of the caller's org, and a role in its
 * `read_roles` (or `admin`) when it has any.
 */
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { basename } from 'node:path';
import type { Readable } from 'node:stream';
import type { Queryable } from '../db/db.js';
import { TraceError, forbidden, notFound } from '../core/errors.js';
import type { ObjectStore } from '../objectstore/objectstore.js';
import { DEFAULT_GLOB, STORAGE_LIMITS, filePrefixDir, globToRegExp, parseStorageRef, resolveStorageFiles } from '../query/storage.js';
import { parseCryoFileName } from '../operators/cryo_ingest/parquet.js';
import { manifestKeys, refKeyPrefix } from './gc.js';
import { canRead } from './registry.js';
import type { Principal } from './identity.js';

export interface ExportFile {
  /** The file's name in the exported folder. */
  name: string;
  bytes: number;
  /** `[range_start, range_end)` when the name is a Cryo name. */
  range_start: number | null;
  range_end: number | null;
}

export interface ExportPlan {
  dataset: string;
  dataset_uuid: string;
  version: string;
  current: boolean;
  files: ExportFile[];
  file_count: number;
  total_bytes: number;
}

interface Source extends ExportFile {
  open(): Promise<Readable>;
}

const DATASET = `SELECT id, read_roles, current_version FROM datasets WHERE org_id = $1 AND name = $2`;
const VERSION = `SELECT storage_ref FROM dataset_versions WHERE id = $1 AND dataset_uuid = $2`;

/** Each file's name in the folder: its own (Cryo) name, or its path below the prefix with `/` as `__` when two share a name. */
function names(paths: Array<{ rel: string }>): string[] {
  const base = paths.map((p) => basename(p.rel));
  const seen = new Map<string, number>();
  for (const b of base) seen.set(b, (seen.get(b) ?? 0) + 1);
  return paths.map((p, i) => (seen.get(base[i]!)! > 1 ? p.rel.split('/').join('__') : base[i]!));
}

async function sources(ref: ReturnType<typeof parseStorageRef>, store: ObjectStore | undefined): Promise<Source[]> {
  if (ref.scheme === 'file') {
    const files = await resolveStorageFiles(ref);
    const n = names(files.map((f) => ({ rel: relTo(ref.prefix, f) ?? basename(f) })));
    return Promise.all(files.map(async (f, i) => ({ ...cryoRange(n[i]!), bytes: (await stat(f)).size, open: async () => createReadStream(f) })));
  }
  const kp = store ? refKeyPrefix(store, ref) : undefined;
  if (!store || kp === undefined) {
    throw new TraceError(501, 'EXPORT_UNSUPPORTED', 'this dataset lies in S3 outside the platform object store; it cannot be exported through Trace');
  }
  let keys: string[];
  if (ref.manifest) {
    const listed = await manifestKeys(store, kp, ref.manifest);
    if (!listed) throw forbidden('the dataset version manifest cannot be read', 'STORAGE_REF_INVALID');
    keys = listed;
  } else {
    const re = globToRegExp(ref.glob ?? DEFAULT_GLOB);
    keys = (await store.list(kp)).map((o) => o.key).filter((k) => re.test(k.slice(kp.length)));
  }
  if (keys.length > STORAGE_LIMITS.maxFiles) throw new TraceError(422, 'TOO_MANY_FILES', `the dataset version has more than ${STORAGE_LIMITS.maxFiles} files`);
  const n = names(keys.map((k) => ({ rel: k.slice(kp.length) })));
  return Promise.all(keys.map(async (k, i) => {
    const st = await store.stat(k);
    if (!st) throw new TraceError(410, 'EXPORT_FILE_GONE', `a file of this version is no longer stored (${n[i]})`);
    return { ...cryoRange(n[i]!), bytes: st.size, open: () => store.getStream(k) };
  }));
}

function relTo(prefix: string, file: string): string | undefined {
  const d = `${filePrefixDir(prefix)}/`;
  return file.startsWith(d) ? file.slice(d.length) : undefined;
}

function cryoRange(name: string): Omit<ExportFile, 'bytes'> {
  const c = parseCryoFileName(name);
  return { name, range_start: c ? c.start : null, range_end: c ? c.end : null };
}

async function resolve(q: Queryable, store: ObjectStore | undefined, p: Principal, name: string, version?: string) {
  const d = (await q.query<{ id: string; read_roles: string[]; current_version: string | null }>(DATASET, [p.org_id, name])).rows[0];
  if (!d) throw notFound(`no dataset named ${name}`, 'DATASET_NOT_FOUND');
  if (!canRead(p, d.read_roles)) throw forbidden(`you do not have a role that may read dataset ${name}`, 'DATASET_FORBIDDEN');
  const v = version ?? d.current_version;
  if (!v) throw new TraceError(409, 'DATASET_HAS_NO_VERSION', `dataset ${name} has no version yet`);
  const row = (await q.query<{ storage_ref: unknown }>(VERSION, [v, d.id])).rows[0];
  if (!row) throw notFound(`dataset ${name} has no version ${v}`, 'VERSION_NOT_FOUND');
  let files: Source[];
  try {
    files = await sources(parseStorageRef(row.storage_ref), store);
  } catch (e) {
    // An older version whose files garbage collection removed.
    if (v !== d.current_version && e instanceof TraceError && (e.status === 404 || e.status === 410 || e.code === 'DATASET_UNAVAILABLE')) {
      throw new TraceError(410, 'EXPORT_VERSION_GONE', `version ${v} of dataset ${name} is no longer stored; export the current version`);
    }
    throw e;
  }
  files.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  return { dataset_uuid: d.id, version: v, current: v === d.current_version, files };
}

/** The export plan of a dataset's current version (or of `version`). */
export async function exportPlan(q: Queryable, store: ObjectStore | undefined, p: Principal, name: string, version?: string): Promise<ExportPlan> {
  const r = await resolve(q, store, p, name, version);
  const files = r.files.map(({ name: n, bytes, range_start, range_end }) => ({ name: n, bytes, range_start, range_end }));
  return { dataset: name, dataset_uuid: r.dataset_uuid, version: r.version, current: r.current, files, file_count: files.length, total_bytes: files.reduce((a, f) => a + f.bytes, 0) };
}

/** One file of a version's export plan, to stream; 404 EXPORT_FILE_NOT_FOUND for a name the plan does not list. */
export async function exportFile(q: Queryable, store: ObjectStore | undefined, p: Principal, name: string, version: string, file: string): Promise<{ bytes: number; stream: Readable }> {
  const r = await resolve(q, store, p, name, version);
  const f = r.files.find((x) => x.name === file);
  if (!f) throw notFound(`the export of ${name} version ${version} has no file ${file}`, 'EXPORT_FILE_NOT_FOUND');
  return { bytes: f.bytes, stream: await f.open() };
}
