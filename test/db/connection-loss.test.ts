/**
 * The database layer under connection loss, through a TCP proxy the test owns (the shared
 * Postgres is never stopped): no crash when a connection dies under a transaction, errors that
 * name the database, bounded waits when the server freezes, recovery without a restart. The
 * embedded database has no connection to lose; its path is checked to behave as before.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { BACKENDS, createPgDatabase } from '../support/db.js';
import { pgTarget, startTcpProxy } from '../support/tcp-proxy.js';
import { PostgresDb } from '../../src/db/postgres.js';
import { openDb } from '../../src/db/open.js';
import { pingDb } from '../../src/db/db.js';
import { DependencyUnavailable, isConnectionFailure, unavailableDependency } from '../../src/core/dependency.js';
import { dbTimeoutsFromEnv } from '../../src/core/config.js';

const CHILD = new URL('./fixtures/tx-cut-child.ts', import.meta.url).pathname;

/** Runs the child in `mode`, cuts the proxy once it holds a transaction, returns its exit code and output. */
async function cutUnderTransaction(mode: 'trace' | 'raw'): Promise<{ code: number | null; out: string; err: string }> {
  const db = await createPgDatabase('trace_cut');
  const proxy = await startTcpProxy(pgTarget(db.url));
  try {
    const child = spawn(process.execPath, ['--import', 'tsx', CHILD, mode], {
      env: { PATH: process.env.PATH, NODE_ENV: 'test', CUT_DB_URL: proxy.urlFor(db.url) },
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    child.stderr.on('data', (c: Buffer) => { err += c.toString(); });
    const inTx = new Promise<void>((resolve) => child.stdout.on('data', (c: Buffer) => {
      out += c.toString();
      if (out.includes('in-tx')) resolve();
    }));
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    await Promise.race([inTx, exited]);
    proxy.cut();
    child.stdin.write('go\n');
    const code = await exited;
    return { code, out, err };
  } finally {
    await proxy.close();
    await db.drop();
  }
}

if (BACKENDS.includes('postgres')) {
  test('postgres: a connection cut under an open transaction does not crash the process', async () => {
    const safe = await cutUnderTransaction('trace');
    assert.equal(safe.code, 0, `the process died: ${safe.err.slice(-500)}`);
    assert.match(safe.out, /survived: STATE_DATABASE_UNAVAILABLE/);
    // The same cut kills a process whose checked-out client has no error listener (the old path).
    const unsafe = await cutUnderTransaction('raw');
    assert.notEqual(unsafe.code, 0, 'the unsafe mode survived: the test would not notice a missing listener');
    assert.match(unsafe.err, /Connection terminated unexpectedly|Unhandled 'error' event/);
  });

  test('postgres: connection failures name the database; queries work again once it is back', async () => {
    const db = await createPgDatabase('trace_cut');
    const proxy = await startTcpProxy(pgTarget(db.url));
    const data = new PostgresDb(proxy.urlFor(db.url), { role: 'data', max: 2, timeouts: { connectTimeoutMs: 1_000 } });
    try {
      await data.query('CREATE TABLE t (x int)');
      await data.tx(async (q) => { await q.query('INSERT INTO t VALUES (1)'); });
      proxy.cut();
      const e1 = await data.query('SELECT 1').catch((e: unknown) => e);
      assert.ok(e1 instanceof DependencyUnavailable, String(e1));
      assert.equal(e1.code, 'DATA_DATABASE_UNAVAILABLE');
      assert.equal(e1.status, 503);
      assert.match(e1.message, /^the data database is unreachable \(/);
      assert.equal(unavailableDependency(e1), 'data_database');
      const e2 = await data.tx(async (q) => q.query('SELECT 1')).catch((e: unknown) => e);
      assert.equal((e2 as DependencyUnavailable).code, 'DATA_DATABASE_UNAVAILABLE');
      // SQL errors are not connection failures and pass through unchanged.
      proxy.restore();
      const bad = await data.query('SELECT * FROM no_such_table').catch((e: unknown) => e);
      assert.ok(!(bad instanceof DependencyUnavailable));
      assert.equal((bad as { code?: string }).code, '42P01');
      assert.equal(isConnectionFailure(bad), false);
      // Back without a restart: the pool replaced its broken clients.
      assert.equal((await data.query<{ n: number }>('SELECT count(*)::int AS n FROM t')).rows[0]!.n, 1);
      await data.tx(async (q) => { await q.query('INSERT INTO t VALUES (2)'); });
    } finally {
      await data.close();
      await proxy.close();
      await db.drop();
    }
  });

  test('postgres: a frozen server cannot hold a request past its cap', async () => {
    const db = await createPgDatabase('trace_cut');
    const proxy = await startTcpProxy(pgTarget(db.url));
    const state = new PostgresDb(proxy.urlFor(db.url), { role: 'state', max: 2, timeouts: { connectTimeoutMs: 800, statementTimeoutMs: 1_000 } });
    try {
      await state.query('SELECT 1'); // a pooled connection exists
      proxy.freeze();
      const t0 = Date.now();
      const e = await state.query('SELECT 1').catch((err: unknown) => err);
      const took = Date.now() - t0;
      assert.ok(e instanceof DependencyUnavailable, String(e));
      assert.equal(e.code, 'STATE_DATABASE_UNAVAILABLE');
      assert.ok(took < 1_000 + 2_000 + 1_500, `the query waited ${took} ms`);
      // New connections are bounded by the connect timeout.
      const t1 = Date.now();
      const e2 = await state.tx(async (q) => q.query('SELECT 1')).catch((err: unknown) => err);
      assert.ok(e2 instanceof DependencyUnavailable, String(e2));
      assert.ok(Date.now() - t1 < 800 + 2_000, `connecting waited ${Date.now() - t1} ms`);
      // A readiness probe answers within its own short deadline.
      const t2 = Date.now();
      await assert.rejects(pingDb(state, 300));
      assert.ok(Date.now() - t2 < 1_000);
      proxy.restore();
      await state.query('SELECT 1');
    } finally {
      await state.close();
      await proxy.close();
      await db.drop();
    }
  });

  test('postgres: a server-side statement timeout ends a runaway statement', async () => {
    const db = await createPgDatabase('trace_cut');
    const state = new PostgresDb(db.url, { role: 'state', max: 1, timeouts: { statementTimeoutMs: 300 } });
    try {
      const e = await state.query('SELECT pg_sleep(5)').catch((err: unknown) => err);
      assert.ok(e instanceof DependencyUnavailable, String(e));
      assert.match(e.message, /statement timeout/);
    } finally {
      await state.close();
      await db.drop();
    }
  });

  test('postgres: LISTEN comes back by itself after a cut', async () => {
    const db = await createPgDatabase('trace_cut');
    const proxy = await startTcpProxy(pgTarget(db.url));
    const a = new PostgresDb(proxy.urlFor(db.url), { role: 'queue', timeouts: { connectTimeoutMs: 500 } });
    const b = new PostgresDb(db.url, { role: 'queue' });
    try {
      const got: string[] = [];
      await a.listen('trace_test', (p) => got.push(p));
      await b.query(`SELECT pg_notify('trace_test', 'one')`);
      const until = async (what: string, ok: () => boolean) => {
        const end = Date.now() + 10_000;
        while (!ok()) {
          if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
          await new Promise((r) => setTimeout(r, 50));
        }
      };
      await until('first notification', () => got.includes('one'));
      await proxy.cutFor(500);
      // The listener reconnects and LISTENs again without being asked; notify until it hears.
      await until('a notification after the cut', () => {
        void b.query(`SELECT pg_notify('trace_test', 'two')`);
        return got.includes('two');
      });
    } finally {
      await a.close();
      await b.close();
      await proxy.close();
      await db.drop();
    }
  });
}

test('timeouts come from the environment, with defaults and errors that name the variable', () => {
  assert.deepEqual(dbTimeoutsFromEnv({}), { connectTimeoutMs: 5_000, statementTimeoutMs: 30_000, idleTimeoutMs: 30_000 });
  assert.deepEqual(dbTimeoutsFromEnv({ TRACE_DB_CONNECT_TIMEOUT_MS: '700', TRACE_DB_STATEMENT_TIMEOUT_MS: '9000', TRACE_DB_IDLE_TIMEOUT_MS: '1000' }),
    { connectTimeoutMs: 700, statementTimeoutMs: 9_000, idleTimeoutMs: 1_000 });
  assert.throws(() => dbTimeoutsFromEnv({ TRACE_DB_STATEMENT_TIMEOUT_MS: 'soon' }), /TRACE_DB_STATEMENT_TIMEOUT_MS must be an integer/);
  assert.throws(() => dbTimeoutsFromEnv({ TRACE_DB_CONNECT_TIMEOUT_MS: '5' }), /TRACE_DB_CONNECT_TIMEOUT_MS must be an integer from 100/);
});

if (BACKENDS.includes('pglite')) {
  test('pglite: the embedded path is unaffected (transactions, ping, errors pass through)', async () => {
    const db = await openDb('memory://');
    try {
      await db.exec('CREATE TABLE t (x int)');
      await db.tx(async (q) => { await q.query('INSERT INTO t VALUES (1)'); });
      await assert.rejects(db.tx(async (q) => {
        await q.query('INSERT INTO t VALUES (2)');
        throw new Error('boom');
      }), /boom/);
      assert.equal((await db.query<{ n: number }>('SELECT count(*)::int AS n FROM t')).rows[0]!.n, 1);
      await pingDb(db, 1_000);
      const bad = await db.query('SELECT * FROM nope').catch((e: unknown) => e);
      assert.equal(isConnectionFailure(bad), false);
    } finally {
      await db.close();
    }
  });
}
