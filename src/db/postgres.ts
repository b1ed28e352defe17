import pg from 'pg';
import type { Db, Queryable, QueryResult } from './db.js';

// int8 -> number (block numbers, counters, ids stay well below 2^53).
pg.types.setTypeParser(20, (v: string) => Number(v));

export interface PostgresOptions {
  max?: number;
  applicationName?: string;
  /**
   * `off` for connections that only write what may be lost in a crash without harm (queue
   * receives and acks are wake-ups: a lost ack is a duplicate wake-up, which leasing absorbs).
   * Never for the state database's transitions.
   */
  synchronousCommit?: 'on' | 'off';
}

/** Real Postgres through a `pg` connection pool. */
export class PostgresDb implements Db {
  readonly kind = 'postgres' as const;
  readonly pool: pg.Pool;
  private listener: pg.Client | undefined;
  private listenerReady: Promise<pg.Client> | undefined;
  private readonly handlers = new Map<string, Set<(payload: string) => void>>();
  private closed = false;

  constructor(readonly url: string, opts: PostgresOptions = {}) {
    this.pool = new pg.Pool({
      connectionString: url,
      max: opts.max ?? 10,
      application_name: opts.applicationName ?? 'trace',
      ...(opts.synchronousCommit === 'off' ? { options: '-c synchronous_commit=off' } : {}),
    });
    // An idle client error must not crash the process; the next query reconnects.
    this.pool.on('error', () => undefined);
  }

  async query<T>(sql: string, params: unknown[] = []): Promise<QueryResult<T>> {
    const r = await this.pool.query(sql, params);
    return { rows: r.rows as T[], rowCount: r.rowCount ?? 0 };
  }

  async exec(sql: string): Promise<void> {
    await this.pool.query(sql);
  }

  async tx<T>(fn: (q: Queryable) => Promise<T>): Promise<T> {
    const client = await this.pool.connect();
    const q: Queryable = {
      query: async <R>(sql: string, params: unknown[] = []) => {
        const r = await client.query(sql, params);
        return { rows: r.rows as R[], rowCount: r.rowCount ?? 0 };
      },
      exec: async (sql: string) => {
        await client.query(sql);
      },
    };
    try {
      await client.query('BEGIN');
      const out = await fn(q);
      await client.query('COMMIT');
      return out;
    } catch (e) {
      await client.query('ROLLBACK').catch(() => undefined);
      throw e;
    } finally {
      client.release();
    }
  }

  private async listenerClient(): Promise<pg.Client> {
    if (this.listener) return this.listener;
    this.listenerReady ??= (async () => {
      const c = new pg.Client({ connectionString: this.url, application_name: 'trace-listen' });
      c.on('error', () => {
        // Connection lost: drop it and reconnect shortly, re-subscribing every channel.
        // Notifications are wake-ups only; callers poll as a fallback, so a gap is harmless.
        if (this.listener === c) this.listener = undefined;
        this.listenerReady = undefined;
        if (!this.closed) setTimeout(() => { void this.listenerClient().catch(() => undefined); }, 1000).unref();
      });
      c.on('notification', (n) => {
        for (const h of this.handlers.get(n.channel) ?? []) h(n.payload ?? '');
      });
      try {
        await c.connect();
        for (const channel of this.handlers.keys()) await c.query(`LISTEN ${channel}`);
      } catch (e) {
        this.listenerReady = undefined;
        await c.end().catch(() => undefined);
        if (!this.closed && this.handlers.size > 0) setTimeout(() => { void this.listenerClient().catch(() => undefined); }, 1000).unref();
        throw e;
      }
      this.listener = c;
      return c;
    })();
    return this.listenerReady;
  }

  async listen(channel: string, onNotify: (payload: string) => void): Promise<() => Promise<void>> {
    if (!/^[a-z_][a-z0-9_]*$/.test(channel)) throw new Error(`invalid channel name ${channel}`);
    const c = await this.listenerClient();
    let set = this.handlers.get(channel);
    if (!set) {
      set = new Set();
      this.handlers.set(channel, set);
      await c.query(`LISTEN ${channel}`);
    }
    set.add(onNotify);
    return async () => {
      set!.delete(onNotify);
    };
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.listener) await this.listener.end().catch(() => undefined);
    await this.pool.end();
  }
}
