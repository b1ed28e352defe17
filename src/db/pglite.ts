import { PGlite } from '@electric-sql/pglite';
import type { Db, Queryable, QueryResult } from './db.js';

/**
 * Embedded Postgres (PGlite, PostgreSQL in WebAssembly). One instance is one connection:
 * queries and transactions are serialized by PGlite itself, so the embedded database belongs
 * to exactly one process. Pass a directory for durable storage or omit it for memory.
 */
export class PgliteDb implements Db {
  readonly kind = 'pglite' as const;
  private constructor(readonly pg: PGlite, readonly dataDir: string | undefined) {}

  static async open(dataDir?: string): Promise<PgliteDb> {
    const pg = dataDir ? await PGlite.create(dataDir) : await PGlite.create();
    return new PgliteDb(pg, dataDir);
  }

  async query<T>(sql: string, params: unknown[] = []): Promise<QueryResult<T>> {
    const r = await this.pg.query<T>(sql, params);
    return { rows: r.rows, rowCount: r.affectedRows ?? r.rows.length };
  }

  async exec(sql: string): Promise<void> {
    await this.pg.exec(sql);
  }

  async tx<T>(fn: (q: Queryable) => Promise<T>): Promise<T> {
    return this.pg.transaction(async (t) => {
      const q: Queryable = {
        query: async <R>(sql: string, params: unknown[] = []) => {
          const r = await t.query<R>(sql, params);
          return { rows: r.rows, rowCount: r.affectedRows ?? r.rows.length };
        },
        exec: async (sql: string) => {
          await t.exec(sql);
        },
      };
      return fn(q);
    });
  }

  async listen(channel: string, onNotify: (payload: string) => void): Promise<() => Promise<void>> {
    if (!/^[a-z_][a-z0-9_]*$/.test(channel)) throw new Error(`invalid channel name ${channel}`);
    return this.pg.listen(channel, onNotify);
  }

  async close(): Promise<void> {
    if (!this.pg.closed) await this.pg.close();
  }
}
