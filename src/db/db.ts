/**
 * The one database interface. Two implementations run the same SQL: real Postgres (`pg`)
 * and embedded Postgres (PGlite). Conventions every caller follows so both behave alike:
 * - jsonb parameters are passed as JSON strings (`JSON.stringify(x)`) and cast (`$1::jsonb`);
 * - int8 columns come back as JS numbers (both adapters), numeric as strings;
 * - timestamptz come back as Date.
 */
export interface QueryResult<T> {
  rows: T[];
  rowCount: number;
}

export interface Queryable {
  query<T = Record<string, unknown>>(sql: string, params?: unknown[]): Promise<QueryResult<T>>;
  /** Runs a multi-statement script without parameters (migrations). */
  exec(sql: string): Promise<void>;
}

export interface Db extends Queryable {
  readonly kind: 'postgres' | 'pglite';
  /** Runs `fn` in one transaction (READ COMMITTED); commits on success, rolls back on throw. */
  tx<T>(fn: (q: Queryable) => Promise<T>): Promise<T>;
  /** LISTEN on a channel; returns an unsubscribe function. Notifications are wake-ups only. */
  listen(channel: string, onNotify: (payload: string) => void): Promise<() => Promise<void>>;
  close(): Promise<void>;
}

export async function notify(q: Queryable, channel: string, payload = ''): Promise<void> {
  await q.query('SELECT pg_notify($1, $2)', [channel, payload]);
}
