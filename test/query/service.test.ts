/**
 * The Query Service over real HTTP (127.0.0.1, ephemeral port), a real data database (Postgres
 * and PGlite) and real DuckDB. Authentication and the registry are injected fakes: the service
 * only sees their interfaces.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { randomUUID } from 'node:crypto';
import type { FastifyInstance } from 'fastify';
import { TraceError, forbidden, unauthorized } from '../../src/core/errors.js';
import { listen } from '../../src/core/http.js';
import type { Db } from '../../src/db/db.js';
import { buildQueryApp, type QueryServiceDeps, type ResolvedDataset, type TaskQueryClaims, type UserPrincipal } from '../../src/query/service.js';
import { executorsOf } from '../../src/query/service.js';
import { BACKENDS } from '../support/db.js';
import { freshDataDb, tempDir, writeParquet, writeThreeRows, type TempDir } from './support.js';

const ORG = randomUUID();
const TASK = randomUUID();
const ALICE = randomUUID();
const BOB = randomUUID();
const DS_A = randomUUID();
const DS_PII = randomUUID();
const DS_NOREF = randomUUID();
const DS_ESCAPE = randomUUID();
const DS_S3_OUT = randomUUID();
const DS_S3_IN = randomUUID();
const DS_EMPTY = randomUUID();
const DS_BIG = randomUUID();
const DS_OTHER = randomUUID();
const DS_TAGS = randomUUID();
const VERSION = randomUUID();
const MARKER = 'ZZ_SQL_MARKER_7';

interface Fixture {
  tmp: TempDir;
  dirA: string;
  dirBig: string;
  dirEmpty: string;
  dirEscape: string;
  dirTags: string;
}

async function makeFixture(): Promise<Fixture> {
  const tmp = tempDir();
  const dirA = join(tmp.dir, 'objects', 'a');
  const dirBig = join(tmp.dir, 'objects', 'big');
  const dirEmpty = join(tmp.dir, 'objects', 'empty');
  const dirEscape = join(tmp.dir, 'objects', 'escape');
  const dirTags = join(tmp.dir, 'objects', 'tags');
  await writeThreeRows(dirA);
  await writeParquet([
    { path: join(dirBig, 'big.parquet'), select: 'SELECT range AS n FROM range(20000)' },
    { path: join(tmp.dir, 'objects', 'secret', 'secret.parquet'), select: "SELECT 'top-secret' AS s" },
  ]);
  mkdirSync(dirEmpty, { recursive: true });
  mkdirSync(dirEscape, { recursive: true });
  writeFileSync(join(dirEscape, '_manifest.json'), JSON.stringify({ parquet_objects: ['../secret/secret.parquet'] }));
  await writeParquet([{ path: join(dirTags, 'tags.parquet'), select: `SELECT * FROM (VALUES (1::BIGINT, 'x'), (1::BIGINT, 'y'), (3::BIGINT, 'z')) t(id, tag)` }]);
  return { tmp, dirA, dirBig, dirEmpty, dirEscape, dirTags };
}

function claimsFor(fx: Fixture): TaskQueryClaims {
  const file = (dir: string, extra: Record<string, unknown> = {}) => ({ scheme: 'file', prefix: `${dir}/`, glob: '*.parquet', ...extra });
  return {
    org_id: ORG,
    task_id: TASK,
    attempt: 2,
    datasets: [
      { dataset_uuid: DS_A, dataset_version: VERSION, storage_ref: file(fx.dirA) },
      { dataset_uuid: DS_PII, dataset_version: VERSION, storage_ref: file(fx.dirA), pii_columns: ['name'] },
      { dataset_uuid: DS_NOREF, dataset_version: VERSION },
      { dataset_uuid: DS_ESCAPE, dataset_version: VERSION, storage_ref: file(fx.dirEscape, { manifest: '_manifest.json' }) },
      { dataset_uuid: DS_S3_OUT, dataset_version: VERSION, storage_ref: { scheme: 's3', bucket: 'bkt', prefix: 'other/ds/', glob: '*.parquet' } },
      { dataset_uuid: DS_S3_IN, dataset_version: VERSION, storage_ref: { scheme: 's3', bucket: 'bkt', prefix: 'allowed/ds/', glob: '*.parquet' } },
      { dataset_uuid: DS_EMPTY, dataset_version: VERSION, storage_ref: file(fx.dirEmpty) },
      { dataset_uuid: DS_BIG, dataset_version: VERSION, storage_ref: file(fx.dirBig) },
      { dataset_uuid: DS_TAGS, dataset_version: VERSION, storage_ref: file(fx.dirTags) },
    ],
    s3: { read_prefixes: ['s3://bkt/allowed/'] },
  };
}

/** Attempts whose lease the fake Dispatcher no longer considers live, by `task_id:attempt`. */
const ENDED = new Set<string>();

function depsFor(fx: Fixture, dataDb: Db, config: QueryServiceDeps['config'] = {}): QueryServiceDeps {
  const claims = claimsFor(fx);
  const single: TaskQueryClaims = { ...claims, datasets: [claims.datasets[0]!] };
  const users: Record<string, UserPrincipal> = {
    'Bearer alice': { org_id: ORG, user_id: ALICE, roles: ['analyst'], sub: 'alice@example' },
    'Bearer bob': { org_id: ORG, user_id: BOB, roles: [] },
  };
  const registry: Record<string, ResolvedDataset> = {
    blocks: { dataset_uuid: DS_A, dataset_version: VERSION, storage_ref: { scheme: 'file', prefix: `${fx.dirA}/`, glob: '*.parquet' }, read_roles: [] },
    finance: { dataset_uuid: DS_A, dataset_version: VERSION, storage_ref: { scheme: 'file', prefix: `${fx.dirA}/`, glob: '*.parquet' }, read_roles: ['role:finance'] },
    analytics: { dataset_uuid: DS_A, dataset_version: VERSION, storage_ref: { scheme: 'file', prefix: `${fx.dirA}/`, glob: '*.parquet' }, read_roles: ['analyst'] },
    people: { dataset_uuid: DS_PII, dataset_version: VERSION, storage_ref: { scheme: 'file', prefix: `${fx.dirA}/`, glob: '*.parquet' }, read_roles: [], pii_columns: ['name'] },
    broken: { dataset_uuid: DS_OTHER, dataset_version: null, storage_ref: undefined, read_roles: [] },
    tags: { dataset_uuid: DS_TAGS, dataset_version: VERSION, storage_ref: { scheme: 'file', prefix: `${fx.dirTags}/`, glob: '*.parquet' }, read_roles: [] },
    escape: { dataset_uuid: DS_ESCAPE, dataset_version: VERSION, storage_ref: { scheme: 'file', prefix: `${fx.dirEscape}/`, glob: '*.parquet', manifest: '_manifest.json' }, read_roles: [] },
  };
  return {
    dataDb,
    verifyTaskToken: (token) => {
      if (token === 'task-token') return claims;
      if (token === 'single-token') return single;
      if (token === 'explode') throw new Error('verifier crashed');
      throw unauthorized('invalid task capability token');
    },
    authenticateUser: async (authorization) => {
      if (authorization === 'Bearer banned') throw forbidden('user disabled', 'USER_DISABLED');
      const u = users[authorization];
      if (!u) throw unauthorized('invalid user token');
      return u;
    },
    resolveDataset: (orgId, name) => (orgId === ORG ? (registry[name] ?? null) : null),
    checkTaskLease: async (_token, ref) => {
      if (ENDED.has(`${ref.task_id}:${ref.attempt}`)) throw new TraceError(403, 'ATTEMPT_NOT_LIVE', 'the attempt is over (the task is Completed)');
    },
    config: { maxConcurrent: 2, ...config },
  };
}

/** Waits until `cond` holds (checked every 10 ms), failing after 20 s. */
async function until(cond: () => boolean, what = 'condition'): Promise<void> {
  const deadline = Date.now() + 20_000;
  while (!cond()) {
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

interface Reply {
  status: number;
  body: Record<string, unknown>;
  text: string;
}

async function post(base: string, path: string, body: unknown, headers: Record<string, string> = {}): Promise<Reply> {
  const res = await fetch(`${base}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
  const text = await res.text();
  return { status: res.status, body: JSON.parse(text) as Record<string, unknown>, text };
}

function assertError(r: Reply, status: number, code: string): void {
  assert.equal(r.status, status, r.text);
  assert.equal(r.body.code, code, r.text);
  assert.equal(typeof r.body.error, 'string');
  assert.ok(!r.text.includes(MARKER), `error echoes SQL: ${r.text}`);
}

const task = (extra: Record<string, unknown> = {}) => ({ task_id: TASK, attempt: 2, dataset_uuid: DS_A, sql: 'SELECT id, name FROM dataset ORDER BY id', ...extra });
const TASK_H = { 'x-trace-task-capability': 'task-token' };

for (const backend of BACKENDS) {
  describe(`query service over HTTP (${backend})`, () => {
    let fx: Fixture;
    let data: { db: Db; close(): Promise<void> };
    let app: FastifyInstance;
    let base: string;

    before(async () => {
      fx = await makeFixture();
      data = await freshDataDb(backend);
      app = buildQueryApp(depsFor(fx, data.db));
      base = await listen(app, '127.0.0.1', 0);
    });
    after(async () => {
      await app.close();
      await data.close();
      fx.tmp.cleanup();
    });

    describe('POST /v1/task/query', () => {
      it('200: runs the query on the granted dataset and writes an audit row without SQL', async () => {
        const r = await post(base, '/v1/task/query', task({ sql: `SELECT id, name FROM dataset WHERE name <> '${MARKER}' ORDER BY id` }), TASK_H);
        assert.equal(r.status, 200, r.text);
        assert.deepEqual(r.body, {
          columns: [
            { name: 'id', type: 'BIGINT' },
            { name: 'name', type: 'VARCHAR' },
          ],
          rows: [
            ['1', 'alpha'],
            ['2', 'beta'],
            ['3', 'gamma'],
          ],
          truncated: false,
        });
        const a = await data.db.query<Record<string, unknown>>('SELECT * FROM query_audit WHERE task_id = $1', [TASK]);
        assert.equal(a.rows.length, 1);
        const row = a.rows[0]!;
        assert.equal(row.org_id, ORG);
        assert.equal(row.task_id, TASK);
        assert.equal(row.attempt, 2);
        assert.equal(row.dataset_id, DS_A);
        assert.equal(row.dataset_version, VERSION);
        assert.equal(Number(row.result_row_count), 3);
        assert.deepEqual(row.result_columns, ['id', 'name']);
        assert.equal(row.truncated, false);
        assert.ok(Number(row.duration_ms) >= 0);
        assert.ok(!JSON.stringify(row).includes(MARKER), 'audit row holds no SQL');
        const pii = await data.db.query('SELECT * FROM pii_access_log');
        assert.equal(pii.rows.length, 0, 'no PII columns, no PII log');
      });

      it('accepts dataset_id (the spec name) and defaults to the only granted dataset', async () => {
        assert.equal((await post(base, '/v1/task/query', { task_id: TASK, attempt: 2, dataset_id: DS_A, sql: 'SELECT 1 FROM dataset' }, TASK_H)).status, 200);
        const r = await post(base, '/v1/task/query', { task_id: TASK, attempt: 2, sql: 'SELECT count(*) AS n FROM dataset' }, { 'x-trace-task-capability': 'single-token' });
        assert.equal(r.status, 200, r.text);
        assert.deepEqual(r.body.rows, [['3']]);
        assertError(await post(base, '/v1/task/query', { task_id: TASK, attempt: 2, sql: 'SELECT 1' }, TASK_H), 400, 'INVALID_REQUEST');
      });

      it('clamps limit and reports truncated', async () => {
        const r = await post(base, '/v1/task/query', task({ limit: 2 }), TASK_H);
        assert.equal(r.status, 200);
        assert.deepEqual(r.body.rows, [['1', 'alpha'], ['2', 'beta']]);
        assert.equal(r.body.truncated, true);
        const z = await post(base, '/v1/task/query', task({ limit: -3 }), TASK_H);
        assert.deepEqual(z.body.rows, [['1', 'alpha']]);
        assert.equal(z.body.truncated, true);
        const big = await post(base, '/v1/task/query', task({ dataset_uuid: DS_BIG, sql: 'SELECT n FROM dataset', limit: 1_000_000 }), TASK_H);
        assert.equal((big.body.rows as unknown[]).length, 10_000);
        assert.equal(big.body.truncated, true);
      });

      it('records PII access for a dataset with PII columns', async () => {
        const r = await post(base, '/v1/task/query', task({ dataset_uuid: DS_PII }), TASK_H);
        assert.equal(r.status, 200, r.text);
        const pii = await data.db.query<Record<string, unknown>>('SELECT * FROM pii_access_log WHERE task_id = $1', [TASK]);
        assert.equal(pii.rows.length, 1);
        assert.equal(pii.rows[0]!.org_id, ORG);
        assert.equal(pii.rows[0]!.user_id, null);
        assert.equal(pii.rows[0]!.dataset, DS_PII);
        assert.equal(pii.rows[0]!.column_name, null);
        assert.equal(pii.rows[0]!.action, 'query');
      });

      it('401 without or with an invalid token', async () => {
        assertError(await post(base, '/v1/task/query', task()), 401, 'UNAUTHORIZED');
        assertError(await post(base, '/v1/task/query', task(), { 'x-trace-task-capability': 'forged' }), 401, 'UNAUTHORIZED');
        assertError(await post(base, '/v1/task/query', task(), { 'x-trace-task-capability': 'explode' }), 401, 'UNAUTHORIZED');
        // auth comes before body parsing: a bad body without a token is still 401
        assertError(await post(base, '/v1/task/query', '{not json'), 401, 'UNAUTHORIZED');
      });

      it('403 when task_id or attempt differ from the token', async () => {
        assertError(await post(base, '/v1/task/query', task({ task_id: randomUUID() }), TASK_H), 403, 'CAPABILITY_MISMATCH');
        assertError(await post(base, '/v1/task/query', task({ attempt: 1 }), TASK_H), 403, 'CAPABILITY_MISMATCH');
      });

      it('403 when the dataset is not granted or its storage is not authorized', async () => {
        assertError(await post(base, '/v1/task/query', task({ dataset_uuid: DS_OTHER }), TASK_H), 403, 'DATASET_NOT_GRANTED');
        assertError(await post(base, '/v1/task/query', task({ dataset_uuid: DS_NOREF }), TASK_H), 403, 'STORAGE_REF_MISSING');
        assertError(await post(base, '/v1/task/query', task({ dataset_uuid: DS_ESCAPE, sql: 'SELECT * FROM dataset' }), TASK_H), 403, 'STORAGE_OUTSIDE_GRANT');
        assertError(await post(base, '/v1/task/query', task({ dataset_uuid: DS_S3_OUT }), TASK_H), 403, 'STORAGE_OUTSIDE_GRANT');
      });

      it('400 for gate rejections, never echoing the SQL', async () => {
        for (const sql of [
          'INSTALL httpfs',
          'LOAD httpfs',
          `ATTACH '/tmp/${MARKER}.db'`,
          `SELECT * FROM read_csv('/etc/${MARKER}')`,
          `SELECT * FROM '/etc/${MARKER}.parquet'`,
          `SELECT 1; SELECT '${MARKER}'`,
          'SELECT 1;;',
        ]) {
          const r = await post(base, '/v1/task/query', task({ sql }), TASK_H);
          assertError(r, 400, 'SQL_REJECTED');
          assert.equal(typeof r.body.rule, 'string');
        }
      });

      it('400 for malformed bodies', async () => {
        assertError(await post(base, '/v1/task/query', '{not json', TASK_H), 400, 'MALFORMED_BODY');
        assertError(await post(base, '/v1/task/query', { task_id: TASK, attempt: 2, dataset_uuid: DS_A }, TASK_H), 400, 'INVALID_REQUEST');
        assertError(await post(base, '/v1/task/query', task({ attempt: 'two' }), TASK_H), 400, 'INVALID_REQUEST');
        assertError(await post(base, '/v1/task/query', task({ dataset_uuid: 'not-a-uuid' }), TASK_H), 400, 'INVALID_REQUEST');
        assertError(await post(base, '/v1/task/query', task({ limit: 1.5 }), TASK_H), 400, 'INVALID_REQUEST');
        assertError(await post(base, '/v1/task/query', task({ dataset_id: DS_PII }), TASK_H), 400, 'INVALID_REQUEST');
        assertError(await post(base, '/v1/task/query', task({ sql: `SELECT '${MARKER}' FROM dataset WHERE no_such_col = 1` }), TASK_H), 400, 'QUERY_INVALID');
      });

      it('404 when the dataset has no files; 501 for S3 without a client', async () => {
        assertError(await post(base, '/v1/task/query', task({ dataset_uuid: DS_EMPTY }), TASK_H), 404, 'DATASET_EMPTY');
        assertError(await post(base, '/v1/task/query', task({ dataset_uuid: DS_S3_IN }), TASK_H), 501, 'S3_UNSUPPORTED');
      });

      it('413 for oversized bodies, 415 for non-JSON, 404 for unknown routes', async () => {
        assertError(await post(base, '/v1/task/query', task({ sql: `SELECT '${'x'.repeat(300 * 1024)}'` }), TASK_H), 413, 'PAYLOAD_TOO_LARGE');
        const r = await fetch(`${base}/v1/task/query`, { method: 'POST', headers: { ...TASK_H, 'content-type': 'text/csv' }, body: 'a,b' });
        assert.equal(r.status, 415);
        assert.equal(((await r.json()) as { code: string }).code, 'UNSUPPORTED_MEDIA_TYPE');
        const nf = await fetch(`${base}/v1/nothing`, { method: 'POST' });
        assert.equal(nf.status, 404);
        assert.equal(((await nf.json()) as { code: string }).code, 'NOT_FOUND');
      });
    });

    describe('POST /v1/task/query: the lease', () => {
      it('403 ATTEMPT_NOT_LIVE once the attempt is over; nothing runs and nothing is audited', async () => {
        const other = randomUUID();
        ENDED.add(`${TASK}:2`);
        try {
          const before = (await data.db.query<{ n: number }>('SELECT count(*)::int AS n FROM query_audit')).rows[0]!.n;
          const r = await post(base, '/v1/task/query', task({ sql: `SELECT '${MARKER}' FROM dataset` }), TASK_H);
          assertError(r, 403, 'ATTEMPT_NOT_LIVE');
          assert.equal((await data.db.query<{ n: number }>('SELECT count(*)::int AS n FROM query_audit')).rows[0]!.n, before);
          // the lease is asked for whatever the statement is
          assertError(await post(base, '/v1/task/query', task({ sql: 'SELECT 1;;' }), TASK_H), 403, 'ATTEMPT_NOT_LIVE');
        } finally {
          ENDED.delete(`${TASK}:2`);
        }
        assert.equal((await post(base, '/v1/task/query', task({ lease_token: other }), TASK_H)).status, 200, 'live again');
        assertError(await post(base, '/v1/task/query', task({ lease_token: 'nope' }), TASK_H), 400, 'INVALID_REQUEST');
      });
    });

    describe('POST /v1/query', () => {
      const ALICE_H = { authorization: 'Bearer alice' };

      it('200: queries a registry dataset by name and audits it', async () => {
        const r = await post(base, '/v1/query', { dataset: 'blocks', sql: "SELECT 'https://example.com' AS url, count(*) AS n FROM dataset" }, ALICE_H);
        assert.equal(r.status, 200, r.text);
        assert.deepEqual(r.body, { columns: [{ name: 'url', type: 'VARCHAR' }, { name: 'n', type: 'BIGINT' }], rows: [['https://example.com', '3']], truncated: false, dataset_versions: { dataset: VERSION } });
        const a = await data.db.query<Record<string, unknown>>('SELECT * FROM user_query_audit WHERE user_sub = $1', ['alice@example']);
        assert.equal(a.rows.length, 1);
        assert.equal(a.rows[0]!.org_id, ORG);
        assert.equal(a.rows[0]!.dataset_id, DS_A);
        assert.equal(a.rows[0]!.dataset_name, 'blocks');
        assert.equal(a.rows[0]!.dataset_version, VERSION);
        assert.equal(Number(a.rows[0]!.result_row_count), 1);
        assert.deepEqual(a.rows[0]!.result_columns, ['url', 'n']);
        assert.ok(!JSON.stringify(a.rows[0]).includes('example.com'), 'audit row holds no SQL');
      });

      it('enforces read_roles (empty = any member)', async () => {
        assert.equal((await post(base, '/v1/query', { dataset: 'blocks', sql: 'SELECT 1' }, { authorization: 'Bearer bob' })).status, 200);
        assert.equal((await post(base, '/v1/query', { dataset: 'analytics', sql: 'SELECT 1' }, ALICE_H)).status, 200);
        assertError(await post(base, '/v1/query', { dataset: 'analytics', sql: 'SELECT 1' }, { authorization: 'Bearer bob' }), 403, 'DATASET_FORBIDDEN');
        assertError(await post(base, '/v1/query', { dataset: 'finance', sql: 'SELECT 1' }, ALICE_H), 403, 'DATASET_FORBIDDEN');
      });

      it('records PII access with the user as principal', async () => {
        assert.equal((await post(base, '/v1/query', { dataset: 'people', sql: 'SELECT name FROM dataset' }, ALICE_H)).status, 200);
        const pii = await data.db.query<Record<string, unknown>>('SELECT * FROM pii_access_log WHERE user_id = $1', [ALICE]);
        assert.equal(pii.rows.length, 1);
        assert.equal(pii.rows[0]!.task_id, null);
        assert.equal(pii.rows[0]!.dataset, 'people');
        assert.equal(pii.rows[0]!.action, 'query');
      });

      it('401 / 403 from authentication', async () => {
        assertError(await post(base, '/v1/query', { dataset: 'blocks', sql: 'SELECT 1' }), 401, 'UNAUTHORIZED');
        assertError(await post(base, '/v1/query', { dataset: 'blocks', sql: 'SELECT 1' }, { authorization: 'Bearer forged' }), 401, 'UNAUTHORIZED');
        assertError(await post(base, '/v1/query', { dataset: 'blocks', sql: 'SELECT 1' }, { authorization: 'Bearer banned' }), 403, 'USER_DISABLED');
      });

      it('404 for unknown datasets; 403 for datasets without usable storage', async () => {
        assertError(await post(base, '/v1/query', { dataset: 'nope', sql: 'SELECT 1' }, ALICE_H), 404, 'DATASET_NOT_FOUND');
        assertError(await post(base, '/v1/query', { dataset: 'broken', sql: 'SELECT 1' }, ALICE_H), 403, 'STORAGE_REF_MISSING');
        assertError(await post(base, '/v1/query', { dataset: 'escape', sql: 'SELECT 1' }, ALICE_H), 403, 'STORAGE_OUTSIDE_GRANT');
      });

      it('400 for gate rejections and malformed bodies', async () => {
        for (const sql of ['INSTALL httpfs', "LOAD 'httpfs'", `ATTACH '${MARKER}'`, `SELECT * FROM read_parquet('/x/${MARKER}.parquet')`]) {
          assertError(await post(base, '/v1/query', { dataset: 'blocks', sql }, ALICE_H), 400, 'SQL_REJECTED');
        }
        assertError(await post(base, '/v1/query', { dataset: 'Bad-Name', sql: 'SELECT 1' }, ALICE_H), 400, 'INVALID_REQUEST');
        assertError(await post(base, '/v1/query', { dataset: 'blocks' }, ALICE_H), 400, 'INVALID_REQUEST');
        assertError(await post(base, '/v1/query', { dataset: 'blocks', sql: '' }, ALICE_H), 400, 'INVALID_REQUEST');
      });
    });

    describe('several datasets in one query', () => {
      const ALICE_H = { authorization: 'Bearer alice' };
      const JOIN = 'SELECT a.name, count(*) AS n FROM a JOIN t USING (id) GROUP BY 1 ORDER BY 1';

      it('users: each dataset is authorized and bound to its own relation; joins work; one audit row per dataset', async () => {
        const r = await post(base, '/v1/query', { datasets: { a: 'blocks', t: 'tags' }, sql: JOIN }, ALICE_H);
        assert.equal(r.status, 200, r.text);
        assert.deepEqual(r.body.rows, [['alpha', '2'], ['gamma', '1']]);
        const a = await data.db.query<Record<string, unknown>>(
          `SELECT dataset_name, dataset_id, query_time FROM user_query_audit WHERE result_columns = ARRAY['name', 'n'] ORDER BY dataset_name`);
        assert.deepEqual(a.rows.map((x) => [x.dataset_name, x.dataset_id]), [['blocks', DS_A], ['tags', DS_TAGS]]);
        assert.equal(String(a.rows[0]!.query_time), String(a.rows[1]!.query_time), 'the rows of one query share query_time');
        // names are case-insensitive; CTEs over the relations are fine
        const cte = await post(base, '/v1/query', { datasets: { Blocks: 'blocks', T: 'tags' }, sql: 'WITH x AS (SELECT id FROM blocks) SELECT count(*) AS n FROM x JOIN t USING (id)' }, ALICE_H);
        assert.equal(cte.status, 200, cte.text);
        assert.deepEqual(cte.body.rows, [['3']]);
        // the same dataset twice under two names
        assert.equal((await post(base, '/v1/query', { datasets: { x: 'blocks', y: 'blocks' }, sql: 'SELECT count(*) FROM x, y' }, ALICE_H)).status, 200);
      });

      it('the gate allows exactly the given relation names (and CTEs)', async () => {
        for (const sql of ['SELECT * FROM dataset', 'SELECT * FROM a JOIN logs USING (id)', 'SELECT * FROM main.a']) {
          const r = await post(base, '/v1/query', { datasets: { a: 'blocks', t: 'tags' }, sql }, ALICE_H);
          assertError(r, 400, 'SQL_REJECTED');
        }
        // the single-dataset form keeps its relation `dataset` and only that
        assertError(await post(base, '/v1/query', { dataset: 'blocks', sql: 'SELECT * FROM a' }, ALICE_H), 400, 'SQL_REJECTED');
      });

      it('400 names the bad relation: pattern, keywords, duplicates, count, both forms', async () => {
        const bad = async (body: Record<string, unknown>, path: string) => {
          const r = await post(base, '/v1/query', { sql: 'SELECT 1', ...body }, ALICE_H);
          assertError(r, 400, 'INVALID_REQUEST');
          const problems = r.body.problems as Array<{ path: string }>;
          assert.ok(problems.some((p) => p.path === path), `${path} in ${r.text}`);
        };
        await bad({ datasets: { '1x': 'blocks' } }, 'datasets.1x');
        await bad({ datasets: { 'a-b': 'blocks' } }, 'datasets.a-b');
        await bad({ datasets: { select: 'blocks' } }, 'datasets.select');
        await bad({ datasets: { Join: 'blocks' } }, 'datasets.Join');
        await bad({ datasets: { load: 'blocks' } }, 'datasets.load');
        await bad({ datasets: { a: 'blocks', A: 'tags' } }, 'datasets.A');
        await bad({ datasets: { ['x'.repeat(64)]: 'blocks' } }, `datasets.${'x'.repeat(64)}`);
        await bad({ datasets: {} }, 'datasets');
        await bad({ datasets: Object.fromEntries(Array.from({ length: 9 }, (_, i) => [`d${i}`, 'blocks'])) }, 'datasets');
        await bad({ datasets: { a: 'Bad-Name' } }, 'datasets.a');
        await bad({ dataset: 'blocks', datasets: { a: 'blocks' } }, 'dataset');
        await bad({}, 'dataset');
      });

      it('users: every dataset is checked (404, 403) before anything runs', async () => {
        assertError(await post(base, '/v1/query', { datasets: { a: 'blocks', n: 'nope' }, sql: 'SELECT 1' }, ALICE_H), 404, 'DATASET_NOT_FOUND');
        assertError(await post(base, '/v1/query', { datasets: { a: 'blocks', f: 'finance' }, sql: 'SELECT 1' }, ALICE_H), 403, 'DATASET_FORBIDDEN');
        assertError(await post(base, '/v1/query', { datasets: { a: 'blocks', e: 'escape' }, sql: 'SELECT 1' }, ALICE_H), 403, 'STORAGE_OUTSIDE_GRANT');
      });

      it('users: a PII dataset in a join is logged once, with its name', async () => {
        const before = (await data.db.query<{ n: number }>(`SELECT count(*)::int AS n FROM pii_access_log WHERE user_id = $1`, [ALICE])).rows[0]!.n;
        const r = await post(base, '/v1/query', { datasets: { p: 'people', t: 'tags' }, sql: 'SELECT count(*) FROM p JOIN t USING (id)' }, ALICE_H);
        assert.equal(r.status, 200, r.text);
        const rows = (await data.db.query<{ dataset: string }>(`SELECT dataset FROM pii_access_log WHERE user_id = $1`, [ALICE])).rows;
        assert.equal(rows.length, before + 1);
        assert.ok(rows.some((x) => x.dataset === 'people'));
      });

      it('tasks: every relation must be a granted dataset; joins work; one audit row per dataset', async () => {
        const taskId = TASK;
        const r = await post(base, '/v1/task/query', { task_id: taskId, attempt: 2, datasets: { a: DS_A, t: DS_TAGS }, sql: JOIN }, TASK_H);
        assert.equal(r.status, 200, r.text);
        assert.deepEqual(r.body.rows, [['alpha', '2'], ['gamma', '1']]);
        const a = await data.db.query<{ dataset_id: string }>(`SELECT dataset_id FROM query_audit WHERE task_id = $1 AND result_columns = ARRAY['name', 'n']`, [taskId]);
        assert.deepEqual(a.rows.map((x) => x.dataset_id).sort(), [DS_A, DS_TAGS].sort());
        assertError(await post(base, '/v1/task/query', { task_id: taskId, attempt: 2, datasets: { a: DS_A, o: DS_OTHER }, sql: 'SELECT 1' }, TASK_H), 403, 'DATASET_NOT_GRANTED');
        assertError(await post(base, '/v1/task/query', { task_id: taskId, attempt: 2, datasets: { a: DS_A }, dataset_uuid: DS_A, sql: 'SELECT 1' }, TASK_H), 400, 'INVALID_REQUEST');
        assertError(await post(base, '/v1/task/query', { task_id: taskId, attempt: 2, datasets: { table: DS_A }, sql: 'SELECT 1' }, TASK_H), 400, 'INVALID_REQUEST');
        assertError(await post(base, '/v1/task/query', { task_id: taskId, attempt: 2, datasets: { a: 'not-a-uuid' }, sql: 'SELECT 1' }, TASK_H), 400, 'INVALID_REQUEST');
        assertError(await post(base, '/v1/task/query', { task_id: taskId, attempt: 2, datasets: { a: DS_A, t: DS_TAGS }, sql: 'SELECT * FROM dataset' }, TASK_H), 400, 'SQL_REJECTED');
      });
    });
  });
}

describe('query service limits (pglite)', () => {
  let fx: Fixture;
  let data: { db: Db; close(): Promise<void> };

  before(async () => {
    fx = await makeFixture();
    data = await freshDataDb('pglite');
  });
  after(async () => {
    await data.close();
    fx.tmp.cleanup();
  });

  const HEAVY =
    'SELECT count(*) FROM dataset a, dataset b, dataset c, dataset d, dataset e, dataset f, dataset g, dataset h ' +
    'WHERE (a.n * 3 + b.n * 5 + c.n * 7 + d.n + e.n + f.n + g.n + h.n) % 1000 = 999';

  it('504 at the timeout and 429 QUERY_BUSY when the wait queue is full', async () => {
    const app = buildQueryApp(depsFor(fx, data.db, { maxConcurrent: 1, maxQueued: 0, taskTimeoutMs: 1_500 }));
    const base = await listen(app, '127.0.0.1', 0);
    const pool = executorsOf(app)!;
    try {
      await pool.ready();
      const slow = post(base, '/v1/task/query', task({ dataset_uuid: DS_BIG, sql: HEAVY }), TASK_H);
      await until(() => pool.stats().busy === 1);
      const [busyPid] = pool.busyPids();
      assertError(await post(base, '/v1/task/query', task(), TASK_H), 429, 'QUERY_BUSY');
      assertError(await slow, 504, 'QUERY_TIMEOUT');
      // The executor that ran it is killed at the deadline, not left computing; a new one replaces it.
      await until(() => !existsSync(`/proc/${busyPid}`));
      await pool.ready();
      assert.ok(!pool.pids().includes(busyPid!));
      assert.equal((await post(base, '/v1/task/query', task(), TASK_H)).status, 200);
    } finally {
      await app.close();
    }
  });

  it('queued requests wait for a slot instead of failing', async () => {
    const app = buildQueryApp(depsFor(fx, data.db, { maxConcurrent: 1, maxQueued: 4 }));
    const base = await listen(app, '127.0.0.1', 0);
    try {
      const all = await Promise.all([1, 2, 3].map(() => post(base, '/v1/task/query', task(), TASK_H)));
      assert.deepEqual(all.map((r) => r.status), [200, 200, 200]);
    } finally {
      await app.close();
    }
  });

  it('500 AUDIT_FAILED and no rows when the audit write fails', async () => {
    const failing: Db = {
      ...data.db,
      kind: data.db.kind,
      query: data.db.query.bind(data.db),
      exec: data.db.exec.bind(data.db),
      listen: data.db.listen.bind(data.db),
      close: async () => {},
      tx: async () => {
        throw new Error('data database down');
      },
    };
    const app = buildQueryApp(depsFor(fx, failing));
    const base = await listen(app, '127.0.0.1', 0);
    try {
      const r = await post(base, '/v1/task/query', task(), TASK_H);
      assertError(r, 500, 'AUDIT_FAILED');
      assert.equal(r.body.rows, undefined);
    } finally {
      await app.close();
    }
  });
});
