import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import type { Db } from './db.js';
import { PostgresDb, type DbRole } from './postgres.js';
import { dbTimeoutsFromEnv, type DbTimeouts } from '../core/config.js';
import { PgliteDb } from './pglite.js';

export interface OpenDbOptions {
  max?: number;
  applicationName?: string;
  synchronousCommit?: 'on' | 'off';
  /** Names the database in errors when it is unreachable (HTTP 503 `STATE_DATABASE_UNAVAILABLE`, ...). */
  role?: DbRole;
  /** Default: TRACE_DB_CONNECT_TIMEOUT_MS, TRACE_DB_STATEMENT_TIMEOUT_MS, TRACE_DB_IDLE_TIMEOUT_MS or their defaults. */
  timeouts?: Partial<DbTimeouts>;
}

/**
 * Opens a database by URL: `postgres://...` for real Postgres, `pglite://<dir>` or `memory://`
 * for embedded. Postgres pools are bounded by the connect, statement and idle timeouts; the
 * embedded database runs in process and cannot lose a connection.
 */
export async function openDb(url: string, opts: OpenDbOptions = {}): Promise<Db> {
  if (url.startsWith('postgres://') || url.startsWith('postgresql://')) {
    return new PostgresDb(url, { ...opts, timeouts: { ...dbTimeoutsFromEnv(), ...opts.timeouts } });
  }
  if (url === 'memory://') return PgliteDb.open();
  if (url.startsWith('pglite://')) {
    const dir = url.slice('pglite://'.length);
    await mkdir(dir, { recursive: true });
    return PgliteDb.open(dir);
  }
  throw new Error(`unsupported database URL scheme (expected postgres://, pglite:// or memory://)`);
}

export interface Databases {
  state: Db;
  data: Db;
  /** The queue database; the state database unless TRACE_QUEUE_DATABASE_URL says otherwise. */
  queue: Db;
  close(): Promise<void>;
}

/** Resolves the state/data/queue databases for a profile: real Postgres when URLs are set, else PGlite under home. */
export async function openDatabases(opts: { home: string; stateUrl?: string; dataUrl?: string; queueUrl?: string; poolMax?: number }): Promise<Databases> {
  const stateUrl = opts.stateUrl ?? `pglite://${join(opts.home, 'pg', 'state')}`;
  const dataUrl = opts.dataUrl ?? (opts.stateUrl ? undefined : `pglite://${join(opts.home, 'pg', 'data')}`);
  if (!dataUrl) throw new Error('TRACE_DATA_DATABASE_URL must be set when TRACE_STATE_DATABASE_URL is set (the data database is separate)');
  const poolOpts = opts.poolMax === undefined ? {} : { max: opts.poolMax };
  const state = await openDb(stateUrl, { ...poolOpts, role: 'state' });
  const data = await openDb(dataUrl, { ...poolOpts, role: 'data' });
  const queue = opts.queueUrl && opts.queueUrl !== stateUrl ? await openDb(opts.queueUrl, { ...poolOpts, role: 'queue' }) : state;
  return {
    state,
    data,
    queue,
    async close() {
      if (queue !== state) await queue.close();
      await data.close();
      await state.close();
    },
  };
}
