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

/**
 * One round trip with a short deadline: is the database answering right now? Rejects with the
 * database's own error (a DependencyUnavailable for a Postgres pool with a role) or, past the
 * deadline, with an error whose code is ETIMEDOUT. Readiness checks and dependency monitors use it.
 */
export async function pingDb(db: Queryable, timeoutMs: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(Object.assign(new Error(`no answer within ${timeoutMs} ms`), { code: 'ETIMEDOUT' })), timeoutMs);
  });
  const probe = db.query('SELECT 1');
  probe.catch(() => undefined); // a late failure after the deadline is not an unhandled rejection
  try {
    await Promise.race([probe, timeout]);
  } finally {
    clearTimeout(timer);
  }
}
