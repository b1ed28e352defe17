import pg from 'pg';
import type { Db, Queryable, QueryResult } from './db.js';
import { DB_TIMEOUT_DEFAULTS, type DbTimeouts } from '../core/config.js';
import { DependencyUnavailable, connectionFailureReason, isConnectionFailure, type Dependency } from '../core/dependency.js';

// int8 -> number (block numbers, counters, ids stay well below 2^53).
pg.types.setTypeParser(20, (v: string) => Number(v));

/** Which database a pool talks to; names the dependency in errors when it is unreachable. */
export type DbRole = 'state' | 'data' | 'queue';

const DEPENDENCY: Record<DbRole, Dependency> = { state: 'state_database', data: 'data_database', queue: 'queue' };

export interface PostgresOptions {
  max?: number;
  applicationName?: string;
  /**
   * `off` for connections that only write what may be lost in a crash without harm (queue
   * receives and acks are wake-ups: a lost ack is a duplicate wake-up, which leasing absorbs).
   * Never for the state database's transitions.
   */
  synchronousCommit?: 'on' | 'off';
  /** Turns connection losses and timeouts into DependencyUnavailable naming this database. */
  role?: DbRole;
  /** Connect, statement and idle timeouts (default DB_TIMEOUT_DEFAULTS). */
  timeouts?: Partial<DbTimeouts>;
}

/** How often the LISTEN connection proves it is still alive (a dead peer sends nothing). */
const LISTENER_PING_MS = 15_000;

/**
 * Real Postgres through a `pg` connection pool.
 *
 * Connection losses never crash the process: idle clients are covered by the pool's error
 * listener, and a client checked out for a transaction gets its own listener for as long as it
 * is out (node-postgres emits 'error' on it when the server goes away, and an unhandled 'error'
 * event ends the process). A client that failed is destroyed, not returned to the pool.
 *
 * Every statement is bounded: `statement_timeout` on the server, the same plus 2 s on the client
 * (a frozen server that never answers), a connect timeout that also bounds the wait for a free
 * pooled client, TCP keepalive, and `idle_in_transaction_session_timeout`. With a `role`,
 * failures of that kind surface as DependencyUnavailable (HTTP 503 with a code that names the
 * database); every other error (SQL, constraints) passes through unchanged.
 */
export class PostgresDb implements Db {
  readonly kind = 'postgres' as const;
  readonly pool: pg.Pool;
  readonly dependency: Dependency | undefined;
  private readonly timeouts: DbTimeouts;
  private listener: pg.Client | undefined;
  private listenerReady: Promise<pg.Client> | undefined;
  private listenerPing: NodeJS.Timeout | undefined;
  private readonly handlers = new Map<string, Set<(payload: string) => void>>();
  private closed = false;

  constructor(readonly url: string, opts: PostgresOptions = {}) {
    this.dependency = opts.role ? DEPENDENCY[opts.role] : undefined;
    this.timeouts = { ...DB_TIMEOUT_DEFAULTS, ...opts.timeouts };
    const t = this.timeouts;
    this.pool = new pg.Pool({
      connectionString: url,
      max: opts.max ?? 10,
      application_name: opts.applicationName ?? 'trace',
      connectionTimeoutMillis: t.connectTimeoutMs,
      idleTimeoutMillis: t.idleTimeoutMs,
      statement_timeout: t.statementTimeoutMs,
      query_timeout: t.statementTimeoutMs + 2_000,
      idle_in_transaction_session_timeout: t.statementTimeoutMs * 2,
      keepAlive: true,
      keepAliveInitialDelayMillis: 10_000,
      ...(opts.synchronousCommit === 'off' ? { options: '-c synchronous_commit=off' } : {}),
    });
    // An idle client error must not crash the process; the next query reconnects.
    this.pool.on('error', () => undefined);
  }

  /** Rethrows connection failures as DependencyUnavailable (when this pool has a role). */
  private wrap(e: unknown): never {
    if (this.dependency && !(e instanceof DependencyUnavailable) && isConnectionFailure(e)) {
      throw new DependencyUnavailable(this.dependency, connectionFailureReason(e), { cause: e });
    }
    throw e;
  }

  async query<T>(sql: string, params: unknown[] = []): Promise<QueryResult<T>> {
    try {
      const r = await this.pool.query(sql, params);
      return { rows: r.rows as T[], rowCount: r.rowCount ?? 0 };
    } catch (e) {
      return this.wrap(e);
    }
  }

  async exec(sql: string): Promise<void> {
    try {
      await this.pool.query(sql);
    } catch (e) {
      this.wrap(e);
    }
  }

  async tx<T>(fn: (q: Queryable) => Promise<T>): Promise<T> {
    let client: pg.PoolClient;
    try {
      client = await this.pool.connect();
    } catch (e) {
      return this.wrap(e);
    }
    // While checked out the pool's idle listener is detached: without this one, a connection
    // lost between two statements would be an unhandled 'error' event.
    let broken: unknown;
    const onError = (err: unknown) => {
      broken ??= err;
    };
    client.on('error', onError);
    const run = async (sql: string, params?: unknown[]) => {
      try {
        return await client.query(sql, params);
      } catch (e) {
        if (isConnectionFailure(e)) broken ??= e;
        throw e;
      }
    };
    const q: Queryable = {
      query: async <R>(sql: string, params: unknown[] = []) => {
        const r = await run(sql, params);
        return { rows: r.rows as R[], rowCount: r.rowCount ?? 0 };
      },
      exec: async (sql: string) => {
        await run(sql);
      },
    };
    try {
      await run('BEGIN');
      const out = await fn(q);
      await run('COMMIT');
      return out;
    } catch (e) {
      if (broken === undefined) await client.query('ROLLBACK').catch((re: unknown) => { broken = re; });
      return this.wrap(e);
    } finally {
      client.removeListener('error', onError);
      // A client whose connection failed is destroyed instead of going back to the pool.
      client.release(broken === undefined ? undefined : (broken instanceof Error ? broken : new Error('connection failed')));
    }
  }

  private async listenerClient(): Promise<pg.Client> {
    if (this.listener) return this.listener;
    this.listenerReady ??= (async () => {
      const c = new pg.Client({
        connectionString: this.url,
        application_name: 'trace-listen',
        connectionTimeoutMillis: this.timeouts.connectTimeoutMs,
        query_timeout: this.timeouts.connectTimeoutMs,
        keepAlive: true,
        keepAliveInitialDelayMillis: 10_000,
      });
      let dropped = false;
      const drop = () => {
        // Connection lost: drop it and reconnect shortly, re-subscribing every channel.
        // Notifications are wake-ups only; callers poll as a fallback, so a gap is harmless.
        if (dropped) return;
        dropped = true;
        if (this.listener === c) {
          this.listener = undefined;
          clearInterval(this.listenerPing);
        }
        this.listenerReady = undefined;
        void c.end().catch(() => undefined);
        if (!this.closed) setTimeout(() => { void this.listenerClient().catch(() => undefined); }, 1000).unref();
      };
      c.on('error', drop);
      c.on('end', drop);
      c.on('notification', (n) => {
        for (const h of this.handlers.get(n.channel) ?? []) h(n.payload ?? '');
      });
      try {
        await c.connect();
        for (const channel of this.handlers.keys()) await c.query(`LISTEN ${channel}`);
      } catch (e) {
        dropped = true;
        this.listenerReady = undefined;
        await c.end().catch(() => undefined);
        if (!this.closed && this.handlers.size > 0) setTimeout(() => { void this.listenerClient().catch(() => undefined); }, 1000).unref();
        return this.wrap(e);
      }
      if (this.closed) {
        await c.end().catch(() => undefined);
        throw new Error('the database was closed');
      }
      this.listener = c;
      // A silent peer (a frozen server, a cut that sends no reset) is found by asking.
      clearInterval(this.listenerPing);
      this.listenerPing = setInterval(() => {
        c.query('SELECT 1').catch(drop);
      }, LISTENER_PING_MS);
      this.listenerPing.unref();
      return c;
    })();
    return this.listenerReady;
  }

  async listen(channel: string, onNotify: (payload: string) => void): Promise<() => Promise<void>> {
    if (!/^[a-z_][a-z0-9_]*$/.test(channel)) throw new Error(`invalid channel name ${channel}`);
    let c: pg.Client;
    try {
      c = await this.listenerClient();
    } catch (e) {
      return this.wrap(e);
    }
    let set = this.handlers.get(channel);
    if (!set) {
      set = new Set();
      this.handlers.set(channel, set);
      try {
        await c.query(`LISTEN ${channel}`);
      } catch (e) {
        this.handlers.delete(channel);
        return this.wrap(e);
      }
    }
    set.add(onNotify);
    return async () => {
      set.delete(onNotify);
    };
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.listenerPing);
    if (this.listener) await this.listener.end().catch(() => undefined);
    await this.pool.end();
  }
}
