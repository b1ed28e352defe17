/** Parquet fixtures the query tests write themselves with DuckDB. */
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DuckDBInstance } from '@duckdb/node-api';
import type { Db } from '../../src/db/db.js';
import { openDb } from '../../src/db/open.js';
import { migrate } from '../../src/db/migrate.js';
import { createPgDatabase } from '../support/db.js';

export interface TempDir {
  dir: string;
  cleanup(): void;
}

export function tempDir(prefix = 'trace-query-test-'): TempDir {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

/** Runs `COPY (<select>) TO '<path>' (FORMAT parquet)` for each entry, in a scratch instance. */
export async function writeParquet(files: Array<{ path: string; select: string }>): Promise<void> {
  const inst = await DuckDBInstance.create(':memory:');
  const conn = await inst.connect();
  try {
    for (const f of files) {
      mkdirSync(join(f.path, '..'), { recursive: true });
      await conn.run(`COPY (${f.select}) TO '${f.path.replace(/'/g, "''")}' (FORMAT parquet)`);
    }
  } finally {
    conn.closeSync();
    inst.closeSync();
  }
}

/** The deterministic three-row dataset of the acceptance criteria, split over two files. */
export const THREE_ROWS = {
  a: `SELECT * FROM (VALUES (1::BIGINT, 'alpha', 10.5::DECIMAL(10,2)), (2::BIGINT, 'beta', 20.25::DECIMAL(10,2))) t(id, name, amount)`,
  b: `SELECT * FROM (VALUES (3::BIGINT, 'gamma', 30.00::DECIMAL(10,2))) t(id, name, amount)`,
};

/** Writes THREE_ROWS as `<dir>/part-0.parquet` and `<dir>/part-1.parquet`; returns the paths. */
export async function writeThreeRows(dir: string): Promise<string[]> {
  const files = [join(dir, 'part-0.parquet'), join(dir, 'part-1.parquet')];
  await writeParquet([
    { path: files[0]!, select: THREE_ROWS.a },
    { path: files[1]!, select: THREE_ROWS.b },
  ]);
  return files;
}

/** A fresh, migrated data database alone (the Query Service never touches Postgres state). */
export async function freshDataDb(backend: 'postgres' | 'pglite'): Promise<{ db: Db; close(): Promise<void> }> {
  if (backend === 'pglite') {
    const db = await openDb('memory://');
    await migrate(db, 'data');
    return { db, close: () => db.close() };
  }
  const pg = await createPgDatabase('trace_tq');
  const db = await openDb(pg.url);
  await migrate(db, 'data');
  return {
    db,
    async close() {
      await db.close();
      await pg.drop();
    },
  };
}
