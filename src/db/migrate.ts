import { createHash } from 'node:crypto';
import type { Db } from './db.js';
import type { Migration } from './migrations/types.js';
import { stateMigrations } from './migrations/state.js';
import { dataMigrations } from './migrations/data.js';
import { queueMigrations } from './migrations/queue.js';

export type MigrationSet = 'state' | 'data' | 'queue';

export interface MigrationReport {
  database: MigrationSet;
  applied: Array<{ version: number; name: string }>;
  current: number;
}

const LOCK_KEY = 7_365_120_011; // pg_advisory_xact_lock key shared by every migrator

const checksum = (m: Migration) => createHash('sha256').update(m.sql).digest('hex');

/**
 * Applies pending migrations in order, each in its own transaction, recording version,
 * name and checksum in schema_migrations. Idempotent; safe to run from several processes
 * at once (an advisory lock serializes them). Refuses to run if an applied migration changed.
 */
export async function migrate(db: Db, which: MigrationSet): Promise<MigrationReport> {
  const list = which === 'state' ? stateMigrations : which === 'data' ? dataMigrations : queueMigrations;
  // The queue's history is kept apart so the queue tables can live in any database.
  const table = which === 'queue' ? 'queue_schema_migrations' : 'schema_migrations';
  await db.query(`CREATE TABLE IF NOT EXISTS ${table} (
    version int PRIMARY KEY,
    name text NOT NULL,
    checksum text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
  )`).catch(async (e: unknown) => {
    // Two processes racing on CREATE TABLE IF NOT EXISTS can collide on the catalog; re-check.
    const r = await db.query(`SELECT to_regclass('${table}') AS t`);
    if (!(r.rows[0] as { t: unknown } | undefined)?.t) throw e;
  });
  const applied: MigrationReport['applied'] = [];
  for (const m of [...list].sort((a, b) => a.version - b.version)) {
    await db.tx(async (q) => {
      await q.query('SELECT pg_advisory_xact_lock($1)', [LOCK_KEY]);
      const r = await q.query<{ checksum: string }>(`SELECT checksum FROM ${table} WHERE version = $1`, [m.version]);
      if (r.rows[0]) {
        if (r.rows[0].checksum !== checksum(m)) {
          throw new Error(`${which} migration ${m.version} (${m.name}) was changed after it was applied; add a new migration instead`);
        }
        return;
      }
      await q.exec(m.sql);
      await q.query(`INSERT INTO ${table} (version, name, checksum) VALUES ($1, $2, $3)`, [m.version, m.name, checksum(m)]);
      applied.push({ version: m.version, name: m.name });
    });
  }
  const cur = await db.query<{ v: number | null }>(`SELECT max(version) AS v FROM ${table}`);
  return { database: which, applied, current: cur.rows[0]?.v ?? 0 };
}
