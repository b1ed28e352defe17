/**
 * Object-store plumbing shared by cryo_ingest and the chain_sync planner: the default store
 * (`TRACE_OBJECT_STORE_URL`, else `$TRACE_HOME/objects`, via `openObjectStore`), the local
 * directory of a key prefix when the store is a local folder (the operator then writes in
 * place, no upload), and the storage_ref a Query Service attaches for a key prefix.
 */
import { readEnv } from '../../core/config.js';
import { TraceError } from '../../core/errors.js';
import { FileObjectStore } from '../../objectstore/file.js';
import type { ObjectInfo, ObjectStore } from '../../objectstore/objectstore.js';

export type { ObjectStore, ObjectInfo };

/** Opens the store named by the environment (loaded lazily: the S3 client is heavy). */
export async function openDefaultObjectStore(env: NodeJS.ProcessEnv = process.env): Promise<ObjectStore> {
  const e = readEnv(env);
  const { openObjectStore } = await import('../../objectstore/open.js');
  return openObjectStore(e.objectStoreUrl, e.home, { env });
}

/** The local directory of a key prefix when the store is a local folder, else undefined. */
export function localDir(store: ObjectStore, keyPrefix: string): string | undefined {
  return store instanceof FileObjectStore ? store.localDir(keyPrefix) : undefined;
}

export type StorageRefOut = { scheme: 'file'; prefix: string; glob: string } | { scheme: 's3'; bucket: string; prefix: string; glob: string };

/** A storage_ref a Query Service can attach: `{scheme:'file', prefix:'/abs/dir/', glob}` or the s3 form. */
export function storageRefFor(store: ObjectStore, keyPrefix: string, glob = '*.parquet'): StorageRefOut {
  if (store instanceof FileObjectStore) {
    const dir = store.localDir(keyPrefix);
    return { scheme: 'file', prefix: dir.endsWith('/') ? dir : `${dir}/`, glob };
  }
  const m = /^s3:\/\/([^/]+)\/(.*)$/.exec(store.rootUrl);
  if (!m) throw new TraceError(500, 'OBJECT_STORE_UNSUPPORTED', 'the object store URL has an unknown scheme');
  const full = `${m[2]!}${keyPrefix}`;
  return { scheme: 's3', bucket: m[1]!, prefix: full === '' || full.endsWith('/') ? full : `${full}/`, glob };
}
