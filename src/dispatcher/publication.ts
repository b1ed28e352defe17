/**
 * What makes a storage reference publishable: the Dispatcher checks that the platform can read
 * Parquet there before it records the reference on a dataset version (a task's
 * `datasets_published`, `POST /v1/datasets/{name}/register`). A reference that passes is one the
 * Query Service can attach; one that does not is refused with 400 naming the field, and nothing
 * is recorded.
 *
 * - Task publications (`checkPublishedRef`): the reference must lie in the platform's object
 *   store, inside the completing attempt's own write prefix (`scratch/{task_id}/{attempt}/`, the
 *   prefix its capability token may write), must match at least one object, and every matched
 *   object must be Parquet (the `PAR1` magic at both ends; S3 objects: at the start).
 * - Registrations (`checkRegisteredFiles`): `file` sources must lie under one of the allowed
 *   dataset roots (`TRACE_DATASET_ROOTS`, default: the object store folder and the Trace home);
 *   `s3` sources must name the configured S3 object store (else 400 OBJECT_STORE_NOT_CONFIGURED);
 *   every file must be Parquet and DuckDB must read the set's schema.
 */
import { open, realpath } from 'node:fs/promises';
import { delimiter, isAbsolute, join, resolve } from 'node:path';
import { DuckDBInstance } from '@duckdb/node-api';
import { TraceError, badRequest } from '../core/errors.js';
import type { ObjectStore } from '../objectstore/objectstore.js';
import { FileObjectStore } from '../objectstore/file.js';
import {
  DEFAULT_GLOB, STORAGE_LIMITS, globToRegExp, parseStorageRef, resolveStorageFiles, storagePrefixUrl, urlWithin, type StorageRefInput,
} from '../query/storage.js';
import { attemptPrefixKeys, prefixUrl } from './udf/scopes.js';

const MAGIC = Buffer.from('PAR1', 'ascii');

/** Where datasets may come from: the platform's object store and the roots registrations may name. */
export interface DatasetStorage {
  /** The platform's object store (task publications must lie in it). */
  store?: ObjectStore;
  /** Absolute directories `file` registrations may point into (real paths). */
  roots: string[];
}

/**
 * The allowed registration roots: `TRACE_DATASET_ROOTS` (absolute directories separated by `:`),
 * else the object store folder (when the store is a local folder) and the Trace home.
 */
export function datasetRootsFromEnv(env: NodeJS.ProcessEnv, store: ObjectStore | undefined, home: string): string[] {
  const raw = env.TRACE_DATASET_ROOTS?.trim();
  if (raw) {
    const roots = raw.split(delimiter).map((s) => s.trim()).filter((s) => s !== '');
    for (const r of roots) {
      if (!isAbsolute(r)) throw new TraceError(500, 'CONFIG_INVALID', 'TRACE_DATASET_ROOTS must list absolute directories separated by ":"');
    }
    return roots.map((r) => resolve(r));
  }
  const out = [resolve(home)];
  if (store instanceof FileObjectStore) out.unshift(store.rootDir);
  return out;
}

const within = (root: string, p: string) => p === root || p.startsWith(root === '/' ? '/' : `${root}/`);

async function realRoots(roots: readonly string[]): Promise<string[]> {
  const out: string[] = [];
  for (const r of roots) {
    try {
      out.push(await realpath(r));
    } catch {
      // a root that does not exist admits nothing
    }
  }
  return out;
}

/** True when the local file starts and ends with the Parquet magic (and is long enough for a footer). */
async function isParquetFile(path: string): Promise<boolean> {
  let fh;
  try {
    fh = await open(path, 'r');
    const { size } = await fh.stat();
    if (size < 12) return false;
    const head = Buffer.alloc(4);
    const tail = Buffer.alloc(4);
    await fh.read(head, 0, 4, 0);
    await fh.read(tail, 0, 4, size - 4);
    return head.equals(MAGIC) && tail.equals(MAGIC);
  } catch {
    return false;
  } finally {
    await fh?.close();
  }
}

/** True when the store object starts with the Parquet magic. */
async function objectStartsWithMagic(store: ObjectStore, key: string): Promise<boolean> {
  let stream;
  try {
    stream = await store.getStream(key);
    const chunks: Buffer[] = [];
    let n = 0;
    for await (const c of stream) {
      const b = Buffer.isBuffer(c) ? c : Buffer.from(c as Uint8Array);
      chunks.push(b);
      n += b.length;
      if (n >= 4) break;
    }
    return Buffer.concat(chunks).subarray(0, 4).equals(MAGIC);
  } catch {
    return false;
  } finally {
    stream?.destroy();
  }
}

const unreadable = (field: string, why: string, code = 'STORAGE_REF_UNREADABLE') => badRequest(`${field}: ${why}`, code);

/** Keys of `store` below the ref's prefix that match its glob (hidden segments skipped). */
async function listStoreRef(store: ObjectStore, keyPrefix: string, glob: string): Promise<string[]> {
  const re = globToRegExp(glob);
  const out: string[] = [];
  for (const o of await store.list(keyPrefix)) {
    const rel = o.key.slice(keyPrefix.length);
    if (rel.split('/').some((seg) => seg.startsWith('.')) || !re.test(rel)) continue;
    out.push(o.key);
    if (out.length > STORAGE_LIMITS.maxFiles) throw new TraceError(422, 'DATASET_TOO_LARGE', `the dataset has more than ${STORAGE_LIMITS.maxFiles} files`);
  }
  return out;
}

/** Parses a storage ref for a 400 that names `field` (the Query Service answers 403 for the same shapes). */
export function parseRefFor(field: string, ref: unknown): StorageRefInput {
  try {
    return parseStorageRef(ref);
  } catch {
    throw unreadable(field, 'is not a storage reference ({scheme: "file", prefix: "/abs/dir/", glob?} or {scheme: "s3", bucket, prefix, glob?})', 'STORAGE_REF_INVALID');
  }
}

/** Checks that every file of a resolved local list is Parquet; returns nothing or throws 400 naming `field`. */
async function checkLocalParquet(field: string, files: readonly string[]): Promise<void> {
  if (files.length === 0) throw unreadable(field, 'no objects match the reference (expected Parquet files)');
  for (const f of files) {
    if (!(await isParquetFile(f))) throw unreadable(field, 'an object it names is not a Parquet file');
  }
}

/**
 * Checks a task's published storage ref (see the module comment). Returns the parsed ref; throws
 * 400 (`STORAGE_REF_INVALID`, `STORAGE_REF_OUTSIDE_ATTEMPT`, `STORAGE_REF_UNREADABLE`) naming
 * `field`, or 400 OBJECT_STORE_NOT_CONFIGURED when this Dispatcher has no object store.
 */
export async function checkPublishedRef(
  field: string,
  raw: unknown,
  task: { task_id: string; attempt: number },
  store: ObjectStore | undefined,
): Promise<StorageRefInput> {
  const ref = parseRefFor(field, raw);
  if (!store) throw unreadable(field, 'this Dispatcher has no object store configured, so it cannot accept publications', 'OBJECT_STORE_NOT_CONFIGURED');
  let url: string;
  try {
    url = storagePrefixUrl(ref);
  } catch {
    throw unreadable(field, 'the prefix must be an absolute directory without . or .. segments', 'STORAGE_REF_INVALID');
  }
  const own = prefixUrl(store.rootUrl, attemptPrefixKeys(task.task_id, task.attempt).scratch);
  if (!urlWithin(url, own)) {
    throw unreadable(field, `must lie inside this attempt's own prefix ${own}`, 'STORAGE_REF_OUTSIDE_ATTEMPT');
  }
  if (ref.scheme === 'file') {
    await checkLocalParquet(field, await resolveStorageFiles(ref));
    return ref;
  }
  if (ref.manifest !== undefined) throw unreadable(field, 'S3 manifests are not accepted in publications; name the objects with a glob', 'STORAGE_REF_INVALID');
  const root = store.rootUrl.endsWith('/') ? store.rootUrl : `${store.rootUrl}/`;
  const keys = await listStoreRef(store, url.slice(root.length), ref.glob ?? DEFAULT_GLOB);
  if (keys.length === 0) throw unreadable(field, 'no objects match the reference (expected Parquet files)');
  for (const k of keys) if (!(await objectStartsWithMagic(store, k))) throw unreadable(field, 'an object it names is not a Parquet file');
  return ref;
}

/**
 * DuckDB reads the schema of the whole set (the relation the Query Service will attach); its
 * columns as `[name, DuckDB type]`, which deploy checks input `where` filters against.
 */
async function checkDuckdbSchema(field: string, files: readonly string[]): Promise<Array<[string, string]>> {
  const instance = await DuckDBInstance.create(':memory:', { threads: '1', autoinstall_known_extensions: 'false', autoload_known_extensions: 'false' });
  const conn = await instance.connect();
  try {
    const list = files.map((f) => `'${f.replace(/'/g, "''")}'`).join(', ');
    const r = await conn.runAndReadAll(`DESCRIBE SELECT * FROM read_parquet([${list}])`);
    const columns = r.getRowObjects().map((row): [string, string] => [String(row.column_name), String(row.column_type)]);
    if (columns.length === 0) throw new Error('no columns');
    return columns;
  } catch {
    throw unreadable(field, 'DuckDB cannot read a schema from these Parquet files', 'SOURCE_NOT_PARQUET');
  } finally {
    conn.closeSync();
    instance.closeSync();
  }
}

/**
 * Checks a registration's source (after `from` was parsed to a ref): allowed root or configured
 * object store, Parquet files, a schema DuckDB reads. Returns the columns DuckDB read (`file`
 * sources; `s3` sources are not read here, so their schema stays unknown).
 */
export async function checkRegisteredSource(ref: StorageRefInput, storage: DatasetStorage): Promise<{ columns?: Array<[string, string]> }> {
  if (ref.scheme === 's3') {
    const store = storage.store;
    const root = store?.rootUrl.startsWith('s3://') ? (store.rootUrl.endsWith('/') ? store.rootUrl : `${store.rootUrl}/`) : undefined;
    const url = storagePrefixUrl(ref);
    if (!store || !root || !urlWithin(url, root)) {
      throw badRequest(`from: ${url} is not in the configured object store (${store ? store.rootUrl : 'none'}); s3:// sources must lie in the S3 object store this deployment is configured with`, 'OBJECT_STORE_NOT_CONFIGURED');
    }
    const keys = await listStoreRef(store, url.slice(root.length), ref.glob ?? DEFAULT_GLOB);
    if (keys.length === 0) throw new TraceError(422, 'NO_FILES', `no objects under from match the glob ${JSON.stringify(ref.glob ?? DEFAULT_GLOB)}`);
    for (const k of keys) if (!(await objectStartsWithMagic(store, k))) throw badRequest('from: an object it names is not a Parquet file', 'SOURCE_NOT_PARQUET');
    return {};
  }
  const dir = ref.prefix.replace(/\/+$/, '');
  const roots = await realRoots(storage.roots);
  if (!roots.some((r) => within(r, dir))) {
    throw badRequest(`from: ${ref.prefix} is outside the allowed dataset roots (${storage.roots.join(', ') || 'none'}; set TRACE_DATASET_ROOTS)`, 'SOURCE_OUTSIDE_ROOTS');
  }
  const files = await resolveStorageFiles(ref);
  if (files.length === 0) throw new TraceError(422, 'NO_FILES', `no files under from match the glob ${JSON.stringify(ref.glob ?? DEFAULT_GLOB)}`);
  for (const f of files) {
    if (!roots.some((r) => within(r, f))) throw badRequest('from: a file resolves outside the allowed dataset roots', 'SOURCE_OUTSIDE_ROOTS');
    if (!(await isParquetFile(f))) throw badRequest(`from: ${join('.', f.slice(dir.length))} is not a Parquet file`, 'SOURCE_NOT_PARQUET');
  }
  return { columns: await checkDuckdbSchema('from', files) };
}
