import { randomBytes } from 'node:crypto';
import pg from 'pg';
import type { Db } from '../../src/db/db.js';
import { openDb } from '../../src/db/open.js';
import { migrate } from '../../src/db/migrate.js';

/** Admin URL of the real Postgres the tests use (CI starts it; trust auth). */
export const TEST_PG_URL = process.env.TRACE_TEST_PG_URL ?? 'postgres://postgres@127.0.0.1:5432/test';

export interface TestDbs {
  backend: 'postgres' | 'pglite';
  state: Db;
  data: Db;
  stateUrl: string;
  dataUrl: string;
  close(): Promise<void>;
}

function dbUrl(name: string): string {
  const u = new URL(TEST_PG_URL);
  u.pathname = `/${name}`;
  return u.toString();
}

/** Creates a fresh empty database on the test Postgres; returns its URL and a dropper. */
export async function createPgDatabase(prefix = 'trace_t'): Promise<{ url: string; drop(): Promise<void> }> {
  const name = `${prefix}_${randomBytes(6).toString('hex')}`;
  const admin = new pg.Client({ connectionString: TEST_PG_URL });
  await admin.connect();
  await admin.query(`CREATE DATABASE ${name}`);
  await admin.end();
  return {
    url: dbUrl(name),
    async drop() {
      const a = new pg.Client({ connectionString: TEST_PG_URL });
      await a.connect();
      await a.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
      await a.end();
    },
  };
}

/** Fresh, migrated state and data databases on the chosen backend. */
export async function freshDbs(backend: 'postgres' | 'pglite' = 'postgres', opts: { poolMax?: number } = {}): Promise<TestDbs> {
  if (backend === 'pglite') {
    const state = await openDb('memory://');
    const data = await openDb('memory://');
    await migrate(state, 'state');
    await migrate(data, 'data');
    return { backend, state, data, stateUrl: 'memory://', dataUrl: 'memory://', async close() { await state.close(); await data.close(); } };
  }
  const s = await createPgDatabase('trace_ts');
  const d = await createPgDatabase('trace_td');
  const o = opts.poolMax === undefined ? {} : { max: opts.poolMax };
  const state = await openDb(s.url, o);
  const data = await openDb(d.url, o);
  await migrate(state, 'state');
  await migrate(data, 'data');
  return {
    backend, state, data, stateUrl: s.url, dataUrl: d.url,
    async close() {
      await state.close();
      await data.close();
      await s.drop();
      await d.drop();
    },
  };
}

/** Backends to run a suite on: both by default; TRACE_TEST_BACKENDS=postgres narrows it. */
export const BACKENDS: Array<'postgres' | 'pglite'> = (process.env.TRACE_TEST_BACKENDS ?? 'postgres,pglite')
  .split(',').map((s) => s.trim()).filter((s): s is 'postgres' | 'pglite' => s === 'postgres' || s === 'pglite');
