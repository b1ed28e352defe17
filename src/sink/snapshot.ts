/**
 * The queryable copy of a buffered dataset: after the sink commits a batch to Postgres data, it
 * writes the rows that batch added as one Parquet object,
 * `datasets/buffered/{org_id}/{dataset}/seq-{start}-{end}.parquet` (zero-padded, so names sort
 * in commit order), and reports the prefix as the storage ref of the dataset's version. The Query
 * Service attaches every object below the prefix, so a query sees every committed batch. The
 * object's name derives from the commit's seq range alone: rewriting it is idempotent, and a
 * redelivered batch writes it again if it is missing.
 */
import { createReadStream } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DuckDBInstance } from '@duckdb/node-api';
import type { Queryable } from '../db/db.js';
import type { ObjectStore } from '../objectstore/objectstore.js';
import { storageRefFor, type StorageRefOut } from '../operators/cryo_ingest/store.js';
import type { BufferedDatasetSpec } from './types.js';

/** The key prefix of an org's copy of a buffered dataset. */
export const bufferedSnapshotPrefix = (orgId: string, dataset: string) => `datasets/buffered/${orgId}/${dataset}/`;

const pad = (n: number) => String(n).padStart(20, '0');

/** The object of one commit `[start, end)`. */
export const bufferedSnapshotKey = (orgId: string, dataset: string, start: number, end: number) =>
  `${bufferedSnapshotPrefix(orgId, dataset)}seq-${pad(start)}-${pad(end)}.parquet`;

/** The storage ref of an org's copy (what the dataset version records). */
export const bufferedStorageRef = (store: ObjectStore, orgId: string, dataset: string): StorageRefOut =>
  storageRefFor(store, bufferedSnapshotPrefix(orgId, dataset), '*.parquet');

const sqlString = (s: string) => `'${s.replace(/'/g, "''")}'`;

/**
 * Writes the Parquet copy of one commit (no-op when the object exists already). Reads the rows
 * back from Postgres data, converts them with DuckDB in a private temp folder, uploads the file.
 */
export async function writeBufferedSnapshot(
  data: Queryable,
  store: ObjectStore,
  spec: BufferedDatasetSpec<unknown>,
  orgId: string,
  range: { start: number; end: number },
): Promise<string | null> {
  if (!spec.snapshot) return null;
  const key = bufferedSnapshotKey(orgId, spec.name, range.start, range.end);
  if (await store.exists(key)) return key;
  const rows = (await data.query<Record<string, unknown>>(spec.snapshot.select, [orgId, range.start, range.end])).rows;
  const dir = await mkdtemp(join(tmpdir(), 'trace-sink-snapshot-'));
  try {
    const jsonl = join(dir, 'rows.jsonl');
    const out = join(dir, 'rows.parquet');
    await writeFile(jsonl, rows.map((r) => JSON.stringify(r)).join('\n') + (rows.length > 0 ? '\n' : ''));
    const cols = spec.snapshot.columns.map(([n, t]) => `${sqlString(n)}: ${sqlString(t)}`).join(', ');
    const names = spec.snapshot.columns.map(([n]) => `"${n.replace(/"/g, '""')}"`).join(', ');
    const instance = await DuckDBInstance.create(':memory:', { threads: '1', autoinstall_known_extensions: 'false', autoload_known_extensions: 'false' });
    const conn = await instance.connect();
    try {
      await conn.run(`COPY (SELECT ${names} FROM read_json(${sqlString(jsonl)}, format = 'newline_delimited', columns = {${cols}})) TO ${sqlString(out)} (FORMAT parquet)`);
    } finally {
      conn.closeSync();
      instance.closeSync();
    }
    await store.putStream(key, createReadStream(out));
    return key;
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
