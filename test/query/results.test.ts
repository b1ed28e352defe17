/**
 * Batch queries and query results (ADR 0005) over real HTTP, a real data database (Postgres and
 * PGlite), real DuckDB executors and a file object store: `POST /v1/query` with `mode: "batch"`,
 * `GET /v1/query-results/{id}` (status and pages) and `GET /v1/query-results/{id}/export`.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { randomUUID } from 'node:crypto';
import type { FastifyInstance } from 'fastify';
import { DuckDBInstance } from '@duckdb/node-api';
import { unauthorized } from '../../src/core/errors.js';
import { listen } from '../../src/core/http.js';
import type { Db } from '../../src/db/db.js';
import { FileObjectStore } from '../../src/objectstore/file.js';
import { buildQueryApp, sweepResultsOf, type ResolvedDataset, type UserPrincipal } from '../../src/query/service.js';
import { resultKey } from '../../src/query/results.js';
import { BACKENDS } from '../support/db.js';
import { freshDataDb, tempDir, writeParquet, type TempDir } from './support.js';

const ORG = randomUUID();
const OTHER_ORG = randomUUID();
const ALICE = randomUUID();
const BOB = randomUUID();
const CAROL = randomUUID();
const ROWS = 2_345;

const USERS: Record<string, UserPrincipal> = {
  'Bearer alice': { org_id: ORG, user_id: ALICE, roles: [] },
  'Bearer bob': { org_id: ORG, user_id: BOB, roles: [] },
  'Bearer carol': { org_id: OTHER_ORG, user_id: CAROL, roles: [] },
};
const ALICE_H = { authorization: 'Bearer alice' };

interface Reply {
  status: number;
  body: any;
  text: string;
}

async function call(base: string, method: string, path: string, body?: unknown, headers: Record<string, string> = ALICE_H): Promise<Reply> {
  const res = await fetch(`${base}${path}`, {
    method,
    headers: { ...(body !== undefined ? { 'content-type': 'application/json' } : {}), ...headers },
    ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
  });
  const text = await res.text();
  let parsed: unknown = text;
  try { parsed = JSON.parse(text); } catch { /* not JSON */ }
  return { status: res.status, body: parsed, text };
}

function assertError(r: Reply, status: number, code: string, path?: string): void {
  assert.equal(r.status, status, r.text);
  assert.equal(r.body.code, code, r.text);
  assert.equal(typeof r.body.error, 'string', r.text);
  if (path !== undefined) assert.ok((r.body.problems as Array<{ path: string }>).some((p) => p.path === path), `no problem at ${path}: ${r.text}`);
}

/** Polls the result until it leaves queued/running (generous deadline: the machine is loaded). */
async function finished(base: string, id: string): Promise<any> {
  const deadline = Date.now() + 120_000;
  for (;;) {
    const r = await call(base, 'GET', `/v1/query-results/${id}?limit=1`);
    assert.equal(r.status, 200, r.text);
    if (r.body.status !== 'queued' && r.body.status !== 'running') return r.body;
    if (Date.now() > deadline) assert.fail(`result ${id} still ${r.body.status}`);
    await new Promise((res) => setTimeout(res, 50));
  }
}

const SQL = 'SELECT n, label, amount, ts, flag, maybe FROM dataset ORDER BY n';

for (const backend of BACKENDS) {
  describe(`query results (${backend})`, () => {
    let tmp: TempDir;
    let store: FileObjectStore;
    let data: { db: Db; close(): Promise<void> };
    let app: FastifyInstance;
    let base: string;

    before(async () => {
      tmp = tempDir();
      const dir = join(tmp.dir, 'ds');
      await writeParquet([
        {
          path: join(dir, 'part-0.parquet'),
          select: `SELECT range::BIGINT AS n, 'row-' || range AS label, (range * 1.25)::DECIMAL(12,2) AS amount,
                   TIMESTAMP '2024-01-01 00:00:00' + INTERVAL (range) SECOND AS ts, range % 2 = 0 AS flag,
                   CASE WHEN range % 7 = 0 THEN NULL ELSE range / 3.0 END AS maybe
                   FROM range(${ROWS})`,
        },
      ]);
      store = new FileObjectStore(join(tmp.dir, 'objects'));
      const registry: Record<string, ResolvedDataset> = {
        numbers: { dataset_uuid: randomUUID(), dataset_version: randomUUID(), storage_ref: { scheme: 'file', prefix: `${dir}/`, glob: '*.parquet' }, read_roles: [] },
        secret: { dataset_uuid: randomUUID(), dataset_version: randomUUID(), storage_ref: { scheme: 'file', prefix: `${dir}/`, glob: '*.parquet' }, read_roles: ['finance'] },
      };
      data = await freshDataDb(backend);
      app = buildQueryApp({
        dataDb: data.db,
        verifyTaskToken: () => { throw unauthorized(); },
        checkTaskLease: async () => {},
        authenticateUser: (a) => {
          const u = USERS[a];
          if (!u) throw unauthorized('invalid user token');
          return u;
        },
        resolveDataset: (orgId, name) => (orgId === ORG || orgId === OTHER_ORG ? (registry[name] ?? null) : null),
        results: store,
        config: { maxConcurrent: 2, resultSweepMs: 0 },
      });
      base = await listen(app, '127.0.0.1', 0);
    });
    after(async () => {
      await app.close();
      await data.close();
      tmp.cleanup();
    });

    let batchId = '';
    let interactive: any;

    it('batch: answers 202 at once with a query id; the result equals the interactive answer row for row, and pages cover every row once', async () => {
      interactive = await call(base, 'POST', '/v1/query', { dataset: 'numbers', sql: SQL });
      assert.equal(interactive.status, 200, interactive.text);
      // mode interactive is the default, answered as before.
      const explicit = await call(base, 'POST', '/v1/query', { dataset: 'numbers', sql: SQL, mode: 'interactive' });
      assert.equal(explicit.status, 200, explicit.text);
      assert.deepEqual(explicit.body, interactive.body);
      assert.deepEqual(Object.keys(interactive.body).sort(), ['columns', 'dataset_versions', 'rows', 'truncated']);
      assert.equal(interactive.body.rows.length, ROWS);
      assert.equal(interactive.body.truncated, false);

      const accepted = await call(base, 'POST', '/v1/query', { dataset: 'numbers', sql: SQL, mode: 'batch' });
      assert.equal(accepted.status, 202, accepted.text);
      assert.equal(accepted.body.mode, 'batch');
      assert.match(accepted.body.query_id, /^[0-9a-f-]{36}$/);
      assert.ok(['queued', 'running', 'succeeded'].includes(accepted.body.status));
      assert.deepEqual(accepted.body.dataset_versions, interactive.body.dataset_versions, 'the batch reads the version the interactive query read');
      assert.equal(accepted.body.output_location, `${store.url(`results/${ORG}/${accepted.body.query_id}`)}/`);
      batchId = accepted.body.query_id;

      const done = await finished(base, batchId);
      assert.equal(done.status, 'succeeded', JSON.stringify(done));
      assert.equal(done.row_count, ROWS);
      assert.ok(done.bytes > 0);
      assert.match(done.sql_hash, /^sha256:[0-9a-f]{64}$/);
      assert.ok(await store.exists(resultKey(ORG, batchId)));

      // The row: hash only, no SQL text anywhere in it.
      const row = (await data.db.query<Record<string, unknown>>('SELECT * FROM query_results WHERE id = $1', [batchId])).rows[0]!;
      assert.equal(row.mode, 'batch');
      assert.equal(row.user_id, ALICE);
      assert.ok(!JSON.stringify(row).includes('ORDER BY'));
      // Default retention: 7 days.
      const retention = (new Date(row.expires_at as string).getTime() - new Date(row.created_at as string).getTime()) / 1000;
      assert.ok(Math.abs(retention - 7 * 24 * 3600) < 5, `retention ${retention}`);

      const seen: unknown[][] = [];
      let cursor: string | null = null;
      let pages = 0;
      do {
        const r: Reply = await call(base, 'GET', `/v1/query-results/${batchId}?limit=700${cursor ? `&cursor=${cursor}` : ''}`);
        assert.equal(r.status, 200, r.text);
        assert.deepEqual(r.body.columns, interactive.body.columns);
        assert.ok(r.body.rows.length <= 700);
        seen.push(...r.body.rows);
        cursor = r.body.next_cursor;
        pages++;
      } while (cursor);
      assert.equal(pages, Math.ceil(ROWS / 700));
      assert.equal(seen.length, ROWS);
      assert.equal(new Set(seen.map((r) => r[0])).size, ROWS, 'a row came twice');
      assert.deepEqual(seen, interactive.body.rows);
    });

    it('export: parquet reads back in DuckDB and csv parses back, both the whole result', async () => {
      const pq = await fetch(`${base}/v1/query-results/${batchId}/export?format=parquet`, { headers: ALICE_H });
      assert.equal(pq.status, 200);
      const bytes = Buffer.from(await pq.arrayBuffer());
      assert.equal(bytes.subarray(0, 4).toString(), 'PAR1');
      const file = join(tmp.dir, 'export.parquet');
      writeFileSync(file, bytes);
      const inst = await DuckDBInstance.create(':memory:');
      const conn = await inst.connect();
      try {
        const r = await conn.runAndReadAll(`SELECT count(*)::INTEGER, sum(n)::BIGINT, count(maybe)::INTEGER, min(label) FROM read_parquet('${file}')`);
        const [count, sum, nonNull, minLabel] = r.getRowsJson()[0]!;
        assert.equal(count, ROWS);
        assert.equal(String(sum), String((ROWS * (ROWS - 1)) / 2));
        assert.equal(nonNull, ROWS - Math.ceil(ROWS / 7));
        assert.equal(minLabel, 'row-0');
      } finally {
        conn.closeSync();
        inst.closeSync();
      }

      const csv = await fetch(`${base}/v1/query-results/${batchId}/export?format=csv`, { headers: ALICE_H });
      assert.equal(csv.status, 200);
      assert.match(csv.headers.get('content-type') ?? '', /text\/csv/);
      const lines = (await csv.text()).trim().split('\n');
      assert.equal(lines[0], 'n,label,amount,ts,flag,maybe');
      assert.equal(lines.length, ROWS + 1);
      const ns = lines.slice(1).map((l) => l.split(',')[0]);
      assert.deepEqual(ns, interactive.body.rows.map((r: unknown[]) => r[0]));
      assert.equal(lines[1]!.split(',')[1], 'row-0');
    });

    it('another org, another user and an unknown id get 404', async () => {
      for (const h of [{ authorization: 'Bearer carol' }, { authorization: 'Bearer bob' }]) {
        assertError(await call(base, 'GET', `/v1/query-results/${batchId}`, undefined, h), 404, 'QUERY_RESULT_NOT_FOUND');
        assertError(await call(base, 'GET', `/v1/query-results/${batchId}/export?format=parquet`, undefined, h), 404, 'QUERY_RESULT_NOT_FOUND');
      }
      assertError(await call(base, 'GET', `/v1/query-results/${randomUUID()}`), 404, 'QUERY_RESULT_NOT_FOUND');
      assertError(await call(base, 'GET', `/v1/query-results/${batchId}`, undefined, {}), 401, 'UNAUTHORIZED');
    });

    it('bad input is refused with the stable error shape and the field path', async () => {
      assertError(await call(base, 'POST', '/v1/query', { dataset: 'numbers', sql: SQL, mode: 'fast' }), 400, 'INVALID_REQUEST', 'mode');
      assertError(await call(base, 'GET', `/v1/query-results/${batchId}/export?format=xml`), 400, 'INVALID_REQUEST', 'format');
      assertError(await call(base, 'GET', '/v1/query-results/not-a-uuid'), 400, 'INVALID_REQUEST', 'id');
      assertError(await call(base, 'GET', '/v1/query-results/not-a-uuid/export'), 400, 'INVALID_REQUEST', 'id');
      for (const limit of ['0', '10001', '-3', '1.5', 'x']) {
        assertError(await call(base, 'GET', `/v1/query-results/${batchId}?limit=${limit}`), 400, 'INVALID_REQUEST', 'limit');
      }
      assertError(await call(base, 'GET', `/v1/query-results/${batchId}?cursor=bogus`), 400, 'INVALID_REQUEST', 'cursor');
    });

    it('hostile SQL in batch mode is refused exactly like interactive, and records nothing', async () => {
      const before = (await data.db.query<{ n: number }>('SELECT count(*)::int AS n FROM query_results')).rows[0]!.n;
      const hostile = [
        "SELECT * FROM read_csv('/etc/passwd')",
        "COPY (SELECT 1) TO '/tmp/x.csv'",
        'SELECT 1; SELECT 2',
        "ATTACH '/tmp/evil.db' AS evil",
        "SELECT current_setting('allowed_paths')",
        "SELECT * FROM read_parquet('/etc/shadow')",
        'INSERT INTO dataset VALUES (1)',
        'SELECT * FROM dataset UNION ALL SELECT * FROM glob(\'/*\')',
        "SET enable_external_access = true",
        'SELECT * FROM other_table',
      ];
      for (const sql of hostile) {
        const i = await call(base, 'POST', '/v1/query', { dataset: 'numbers', sql });
        const b = await call(base, 'POST', '/v1/query', { dataset: 'numbers', sql, mode: 'batch' });
        assert.ok(i.status >= 400, `${sql}: interactive ${i.text}`);
        assert.equal(b.status, i.status, `${sql}: ${b.text} vs ${i.text}`);
        assert.deepEqual(b.body, i.body, sql);
      }
      // Dataset authorization is the interactive path's too.
      const i = await call(base, 'POST', '/v1/query', { dataset: 'secret', sql: 'SELECT 1' });
      const b = await call(base, 'POST', '/v1/query', { dataset: 'secret', sql: 'SELECT 1', mode: 'batch' });
      assertError(i, 403, 'DATASET_FORBIDDEN');
      assert.deepEqual(b.body, i.body);
      assert.equal(b.status, 403);
      const afterN = (await data.db.query<{ n: number }>('SELECT count(*)::int AS n FROM query_results')).rows[0]!.n;
      assert.equal(afterN, before);
    });

    it('a batch query that fails in the engine records failed with its error; export answers 409', async () => {
      const accepted = await call(base, 'POST', '/v1/query', { dataset: 'numbers', sql: "SELECT CAST(label AS INTEGER) FROM dataset", mode: 'batch' });
      assert.equal(accepted.status, 202, accepted.text);
      const done = await finished(base, accepted.body.query_id);
      assert.equal(done.status, 'failed');
      assert.equal(done.error.code, 'QUERY_INVALID');
      assertError(await call(base, 'GET', `/v1/query-results/${accepted.body.query_id}/export`), 409, 'QUERY_RESULT_FAILED');
      assert.equal(await store.exists(resultKey(ORG, accepted.body.query_id)), false);
    });

    it('an expired result answers 410 and the sweep removes its objects', async () => {
      const accepted = await call(base, 'POST', '/v1/query', { dataset: 'numbers', sql: 'SELECT n FROM dataset WHERE n < 10', mode: 'batch' });
      assert.equal(accepted.status, 202, accepted.text);
      const id = accepted.body.query_id as string;
      assert.equal((await finished(base, id)).status, 'succeeded');
      assert.ok(await store.exists(resultKey(ORG, id)));
      await data.db.query(`UPDATE query_results SET expires_at = now() - interval '1 second' WHERE id = $1`, [id]);
      // Past expiry answers 410 at once, before any sweep.
      assertError(await call(base, 'GET', `/v1/query-results/${id}`), 410, 'QUERY_RESULT_EXPIRED');
      assertError(await call(base, 'GET', `/v1/query-results/${id}/export?format=csv`), 410, 'QUERY_RESULT_EXPIRED');
      const swept = await sweepResultsOf(app)!();
      assert.ok(swept.includes(id));
      assert.ok(!swept.includes(batchId), 'a live result was swept');
      assert.equal(await store.exists(resultKey(ORG, id)), false);
      assert.deepEqual(await store.list(`results/${ORG}/${id}`), []);
      const row = (await data.db.query<{ status: string }>('SELECT status FROM query_results WHERE id = $1', [id])).rows[0]!;
      assert.equal(row.status, 'expired');
      assertError(await call(base, 'GET', `/v1/query-results/${id}`), 410, 'QUERY_RESULT_EXPIRED');
      // Other users still get 404 for it, never 410.
      assertError(await call(base, 'GET', `/v1/query-results/${id}`, undefined, { authorization: 'Bearer carol' }), 404, 'QUERY_RESULT_NOT_FOUND');
      // The live result is untouched.
      assert.ok(await store.exists(resultKey(ORG, batchId)));
    });

    it('a batch query whose runner stopped is marked failed (QUERY_ABANDONED) by the sweep; a fresh one is left alone', async () => {
      const accepted = await call(base, 'POST', '/v1/query', { dataset: 'numbers', sql: 'SELECT 1 AS one FROM dataset LIMIT 1', mode: 'batch' });
      assert.equal(accepted.status, 202, accepted.text);
      const id = accepted.body.query_id as string;
      assert.equal((await finished(base, id)).status, 'succeeded');
      // Two rows as a stopped service leaves them: one running for an hour, one queued recently.
      const stale = randomUUID();
      const fresh = randomUUID();
      for (const [qid, status, age] of [[stale, 'running', '1 hour'], [fresh, 'queued', '1 second']] as const) {
        await data.db.query(
          `INSERT INTO query_results (id, org_id, user_id, mode, status, sql_hash, expires_at, updated_at)
           VALUES ($1, $2, $3, 'batch', $4, 'sha256:x', now() + interval '1 day', now() - $5::interval)`,
          [qid, ORG, ALICE, status, age],
        );
      }
      await sweepResultsOf(app)!();
      const v = await call(base, 'GET', `/v1/query-results/${stale}`);
      assert.equal(v.status, 200, v.text);
      assert.equal(v.body.status, 'failed');
      assert.equal(v.body.error.code, 'QUERY_ABANDONED');
      assert.equal((await call(base, 'GET', `/v1/query-results/${fresh}`)).body.status, 'queued');
      assert.equal((await call(base, 'GET', `/v1/query-results/${id}`)).body.status, 'succeeded');
    });

    it('the periodic sweep expires results by itself', async () => {
      const id = randomUUID();
      await data.db.query(
        `INSERT INTO query_results (id, org_id, user_id, mode, status, sql_hash, row_count, expires_at)
         VALUES ($1, $2, $3, 'batch', 'succeeded', 'sha256:x', 1, now() - interval '1 second')`,
        [id, ORG, ALICE],
      );
      await store.put(resultKey(ORG, id), 'PAR1');
      const swept = buildQueryApp({
        dataDb: data.db,
        verifyTaskToken: () => { throw unauthorized(); },
        checkTaskLease: async () => {},
        authenticateUser: () => { throw unauthorized(); },
        resolveDataset: () => null,
        results: store,
        config: { maxConcurrent: 1, resultSweepMs: 100 },
      });
      try {
        const deadline = Date.now() + 60_000;
        for (;;) {
          const st = (await data.db.query<{ status: string }>('SELECT status FROM query_results WHERE id = $1', [id])).rows[0]!.status;
          if (st === 'expired') break;
          if (Date.now() > deadline) assert.fail(`still ${st}`);
          await new Promise((res) => setTimeout(res, 50));
        }
        assert.equal(await store.exists(resultKey(ORG, id)), false);
      } finally {
        await swept.close();
      }
    });
  });
}
