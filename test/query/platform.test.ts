/**
 * The Query Service as a part of the platform: a real Dispatcher (with the external-dataset
 * admin route) and a real Query Service on 127.0.0.1 ephemeral ports, both on the same freshly
 * migrated state database (real Postgres and PGlite), Parquet the test writes with DuckDB, the
 * registry and memberships from Postgres state, audit rows in Postgres data, and the `trace`
 * CLI as a child process.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, realpathSync, rmSync, utimesSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { tmpdir } from 'node:os';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { newId, uuidV5 } from '../../src/core/ids.js';
import { silentLogger } from '../../src/core/log.js';
import { createUserVerifier, mintDevUserToken } from '../../src/auth/user.js';
import { bootstrapDeployment, ensureUser } from '../../src/dispatcher/identity.js';
import { datasetAdminRoutes, registerExternalDataset } from '../../src/dispatcher/http/dataset-admin-routes.js';
import { startQueryService, type QueryServiceHandle } from '../../src/lite/query.js';
import { TraceError } from '../../src/core/errors.js';
import { runQuery } from '../../src/query/executor/engine.js';
import { SqlGate } from '../../src/query/executor/gate.js';
import { SandboxPool } from '../../src/query/executor/instances.js';
import { BACKENDS, freshDbs, type TestDbs } from '../support/db.js';
import { buildDispatcher, TEST_SECRETS } from '../support/dispatcher.js';
import { twoJobDag } from '../support/drive.js';
import { tempDir, writeParquet, type TempDir } from './support.js';

const REPO = resolve(fileURLToPath(new URL('.', import.meta.url)), '..', '..');
const CRYO = process.env.TRACE_TEST_CRYO_FIXTURES ?? resolve(REPO, '..', 'shared', 'fixtures', 'cryo-monad');
const cryoSkip = existsSync(resolve(CRYO, 'tx_fake_duplicate.parquet')) ? false : `Cryo fixtures not found at ${CRYO}; skipping`;

interface Res<T = any> { status: number; body: T }

async function call<T = any>(base: string, method: string, path: string, token: string | undefined, body?: unknown): Promise<Res<T>> {
  const headers: Record<string, string> = {};
  if (token) headers.authorization = `Bearer ${token}`;
  if (body !== undefined) headers['content-type'] = 'application/json';
  const res = await fetch(`${base}${path}`, { method, headers, ...(body !== undefined ? { body: JSON.stringify(body) } : {}) });
  const text = await res.text();
  let parsed: unknown = text;
  try { parsed = JSON.parse(text); } catch { /* not JSON */ }
  return { status: res.status, body: parsed as T };
}

const dirUrl = (dir: string) => `${pathToFileURL(dir).href}/`;

function expectError(r: Res, status: number, code: string): void {
  assert.equal(r.status, status, JSON.stringify(r.body));
  assert.equal(r.body.code, code, JSON.stringify(r.body));
  assert.equal(typeof r.body.error, 'string');
}

/** Runs the real `trace` binary from source. */
function trace(args: string[], env: Record<string, string>): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((res) => {
    execFile(process.execPath, [join(REPO, 'bin', 'trace.mjs'), ...args], {
      cwd: REPO,
      env: { PATH: process.env.PATH ?? '', NODE_ENV: 'test', TRACE_FROM_SOURCE: '1', ...env },
      timeout: 30_000,
    }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : 1) : 0;
      res({ code, stdout, stderr });
    });
  });
}

BACKENDS.forEach((backend, backendIndex) => {
  describe(`Query Service on the platform (${backend})`, () => {
    let dbs: TestDbs;
    let built: Awaited<ReturnType<typeof buildDispatcher>>;
    let qs: QueryServiceHandle;
    let dispatcherUrl: string;
    let queryUrl: string;
    let tmp: TempDir;
    let tradesDir: string;
    const tok: Record<string, string> = {};
    let otherOrg: string;

    const q = (token: string | undefined, dataset: string, sql: string, limit?: number) =>
      call(queryUrl, 'POST', '/v1/query', token, { dataset, sql, ...(limit !== undefined ? { limit } : {}) });
    const register = (token: string, name: string, from: string, glob?: string) =>
      call(dispatcherUrl, 'POST', `/v1/datasets/${name}/register`, token, { from, ...(glob ? { glob } : {}) });

    before(async () => {
      dbs = await freshDbs(backend);
      // Tests register Parquet from their temp folders and, where present, the shared Cryo fixtures.
      built = await buildDispatcher(dbs.state, { datasetStorage: { roots: [tmpdir(), CRYO] } });
      // Mounted here until src/dispatcher/dispatcher.ts mounts it itself.
      if (!built.dispatcher.app.hasRoute({ method: 'POST', url: '/v1/datasets/:name/register' })) datasetAdminRoutes(built.dispatcher.app, built.dispatcher.ctx);
      dispatcherUrl = await built.start({ loops: false });
      const orgId = built.orgId;
      await dbs.state.tx(async (tx) => {
        await tx.query(`INSERT INTO org_roles (id, org_id, slug, name) VALUES ($1, $2, 'finance', 'finance')`, [newId(), orgId]);
        await ensureUser(tx, orgId, 'analyst', ['member']);
        await ensureUser(tx, orgId, 'fin', ['member', 'finance']);
      });
      otherOrg = (await bootstrapDeployment(dbs.state, { orgSlug: 'other', adminSub: 'outsider' })).org_id;
      for (const sub of ['admin', 'analyst', 'fin', 'outsider', 'stranger']) tok[sub] = await mintDevUserToken(TEST_SECRETS.user, sub);
      tok.forged = await mintDevUserToken('f'.repeat(48), 'admin');
      qs = await startQueryService({
        state: dbs.state,
        data: dbs.data,
        orgId,
        userVerifier: createUserVerifier({ mode: 'dev', secret: TEST_SECRETS.user }),
        capabilityVerifier: built.dispatcher.ctx.deps.capabilityVerifier,
        dispatcherUrl,
        config: { maxConcurrent: 2 },
        host: '127.0.0.1',
        port: 0,
        log: silentLogger,
      });
      queryUrl = qs.url;
      tmp = tempDir('trace-qplat-');
      tradesDir = join(tmp.dir, 'trades');
      await writeParquet([
        { path: join(tradesDir, 'part-0.parquet'), select: `SELECT * FROM (VALUES (1::BIGINT, 'eth', 10.5::DOUBLE), (2::BIGINT, 'btc', 20.25::DOUBLE)) t(id, sym, px)` },
        { path: join(tradesDir, 'part-1.parquet'), select: `SELECT * FROM (VALUES (3::BIGINT, 'sol', 30.0::DOUBLE)) t(id, sym, px)` },
        { path: join(tmp.dir, 'secret', 'secret.parquet'), select: `SELECT 'top-secret' AS s` },
      ]);
      writeFileSync(join(tradesDir, 'notes.txt'), 'not parquet');
    });

    after(async () => {
      await qs?.stop();
      await built?.stop();
      await dbs?.close();
      tmp?.cleanup();
    });

    it('registers a folder of Parquet as an external dataset (201) and lists it', async () => {
      const r = await register(tok.admin!, 'trades', dirUrl(tradesDir));
      assert.equal(r.status, 201, JSON.stringify(r.body));
      const uuid = uuidV5('external_dataset', built.orgId, 'trades');
      assert.equal(r.body.dataset_uuid, uuid);
      assert.equal(r.body.kind, 'external');
      assert.equal(r.body.created, true);
      assert.equal(r.body.changed, true);
      assert.equal(r.body.files, 2);
      assert.deepEqual(r.body.storage_ref, { scheme: 'file', prefix: `${realpathSync(tradesDir)}/`, glob: '*.parquet' });
      const row = (await dbs.state.query<{ kind: string; producer_dag_name: string | null; current_version: string; config_hash: string; storage_ref: unknown }>(
        `SELECT d.kind, d.producer_dag_name, d.current_version, v.config_hash, v.storage_ref
         FROM datasets d JOIN dataset_versions v ON v.id = d.current_version WHERE d.id = $1`, [uuid])).rows[0]!;
      assert.equal(row.kind, 'external');
      assert.equal(row.producer_dag_name, null);
      assert.equal(row.current_version, r.body.dataset_version);
      assert.match(row.config_hash, /^[0-9a-f]{64}$/);
      assert.deepEqual(row.storage_ref, r.body.storage_ref);

      const list = await call(dispatcherUrl, 'GET', '/v1/datasets', tok.analyst);
      assert.equal(list.status, 200);
      const d = list.body.datasets.find((x: { name: string }) => x.name === 'trades');
      assert.equal(d.kind, 'external');
      assert.equal(d.producer, null);
      assert.equal(d.current_version, r.body.dataset_version);
    });

    it('answers POST /v1/query over the registered files and audits the pinned version', async () => {
      const r = await q(tok.analyst, 'trades', 'SELECT id, sym, px FROM dataset ORDER BY id');
      assert.equal(r.status, 200, JSON.stringify(r.body));
      assert.deepEqual(r.body.columns.map((c: { name: string }) => c.name), ['id', 'sym', 'px']);
      assert.deepEqual(r.body.rows, [['1', 'eth', 10.5], ['2', 'btc', 20.25], ['3', 'sol', 30]]);
      assert.equal(r.body.truncated, false);
      const version = (await dbs.state.query<{ current_version: string }>(`SELECT current_version FROM datasets WHERE name = 'trades'`)).rows[0]!.current_version;
      const a = (await dbs.data.query<{ user_sub: string; dataset_name: string; dataset_version: string; result_row_count: number }>(
        `SELECT user_sub, dataset_name, dataset_version, result_row_count FROM user_query_audit ORDER BY id DESC LIMIT 1`)).rows[0]!;
      assert.deepEqual(a, { user_sub: 'analyst', dataset_name: 'trades', dataset_version: version, result_row_count: 3 });
      const t = await q(tok.analyst, 'trades', 'SELECT id FROM dataset ORDER BY id', 2);
      assert.deepEqual(t.body.rows, [['1'], ['2']]);
      assert.equal(t.body.truncated, true);
    });

    it('re-registering the same files is a no-op (200, same version); a new file makes a new current version', async () => {
      const before1 = await register(tok.admin!, 'trades', dirUrl(tradesDir));
      const again = await register(tok.admin!, 'trades', dirUrl(tradesDir));
      assert.equal(again.status, 200, JSON.stringify(again.body));
      assert.equal(again.body.created, false);
      assert.equal(again.body.changed, false);
      assert.equal(again.body.dataset_version, before1.body.dataset_version);
      const v1 = before1.body.dataset_version as string;
      const count = async () => (await dbs.state.query<{ n: number }>(`SELECT count(*)::int AS n FROM dataset_versions WHERE dataset_uuid = $1`, [before1.body.dataset_uuid])).rows[0]!.n;
      assert.equal(await count(), 1);

      // A query pinned before the new version keeps reading v1's answer.
      assert.deepEqual((await q(tok.analyst, 'trades', 'SELECT count(*) AS n FROM dataset')).body.rows, [['3']]);
      await writeParquet([{ path: join(tradesDir, 'part-2.parquet'), select: `SELECT 4::BIGINT AS id, 'ada' AS sym, 0.5::DOUBLE AS px` }]);
      const v2r = await register(tok.admin!, 'trades', dirUrl(tradesDir));
      assert.equal(v2r.status, 201, JSON.stringify(v2r.body));
      assert.equal(v2r.body.created, false);
      assert.equal(v2r.body.changed, true);
      assert.equal(v2r.body.files, 3);
      const v2 = v2r.body.dataset_version as string;
      assert.notEqual(v2, v1);
      assert.equal(await count(), 2);
      const after2 = await q(tok.analyst, 'trades', 'SELECT count(*) AS n, max(id) AS top FROM dataset');
      assert.deepEqual(after2.body.rows, [['4', '4']]);
      const audited = (await dbs.data.query<{ dataset_version: string }>(`SELECT dataset_version FROM user_query_audit ORDER BY id DESC LIMIT 1`)).rows[0]!;
      assert.equal(audited.dataset_version, v2);

      // Back to the first file set: its earlier version becomes current again (no third row).
      rmSync(join(tradesDir, 'part-2.parquet'));
      const back = await register(tok.admin!, 'trades', dirUrl(tradesDir));
      assert.equal(back.status, 201);
      assert.equal(back.body.dataset_version, v1);
      assert.equal(await count(), 2);
      assert.deepEqual((await q(tok.analyst, 'trades', 'SELECT count(*) AS n FROM dataset')).body.rows, [['3']]);

      // A file rewritten in place (same name) is a new file set: size, then mtime alone.
      const part1 = join(tradesDir, 'part-1.parquet');
      await writeParquet([{ path: part1, select: `SELECT * FROM (VALUES (3::BIGINT, 'sol', 30.0::DOUBLE), (5::BIGINT, 'dot', 7.0::DOUBLE)) t(id, sym, px)` }]);
      const resized = await register(tok.admin!, 'trades', dirUrl(tradesDir));
      assert.equal(resized.status, 201);
      assert.deepEqual((await q(tok.analyst, 'trades', 'SELECT count(*) AS n FROM dataset')).body.rows, [['4']]);
      await writeParquet([{ path: part1, select: `SELECT * FROM (VALUES (3::BIGINT, 'sol', 30.0::DOUBLE)) t(id, sym, px)` }]);
      const later = new Date(Date.now() + 5_000);
      utimesSync(part1, later, later);
      const touched = await register(tok.admin!, 'trades', dirUrl(tradesDir));
      assert.equal(touched.status, 201);
      assert.ok(![v1, v2, resized.body.dataset_version].includes(touched.body.dataset_version), 'same size, new mtime: a new version');
      assert.deepEqual((await q(tok.analyst, 'trades', 'SELECT count(*) AS n FROM dataset')).body.rows, [['3']]);
    });

    it('enforces read roles (403 without one, admin always reads) and 404 for unknown datasets', async () => {
      await dbs.state.query(`UPDATE datasets SET read_roles = '{finance}' WHERE name = 'trades'`);
      try {
        expectError(await q(tok.analyst, 'trades', 'SELECT 1 AS x'), 403, 'DATASET_FORBIDDEN');
        assert.equal((await q(tok.fin, 'trades', 'SELECT 1 AS x')).status, 200);
        assert.equal((await q(tok.admin, 'trades', 'SELECT 1 AS x')).status, 200);
        // The Dispatcher's registry hides it from the analyst, too.
        const list = await call(dispatcherUrl, 'GET', '/v1/datasets', tok.analyst);
        assert.equal(list.body.datasets.some((x: { name: string }) => x.name === 'trades'), false);
      } finally {
        await dbs.state.query(`UPDATE datasets SET read_roles = '{}' WHERE name = 'trades'`);
      }
      expectError(await q(tok.analyst, 'no_such_dataset', 'SELECT 1 AS x'), 404, 'DATASET_NOT_FOUND');
    });

    it('refuses users outside the deployment org, unknown users and forged tokens', async () => {
      // The outsider is the admin of another org and has a same-named dataset there.
      const theirs = await registerExternalDataset(dbs.state, otherOrg, 'trades', dirUrl(join(tmp.dir, 'secret')), undefined, { roots: [tmp.dir] });
      assert.notEqual(theirs.dataset_uuid, uuidV5('external_dataset', built.orgId, 'trades'));
      expectError(await q(tok.outsider, 'trades', 'SELECT * FROM dataset'), 403, 'NOT_A_MEMBER');
      expectError(await q(tok.stranger, 'trades', 'SELECT 1 AS x'), 403, 'NOT_A_MEMBER');
      expectError(await q(tok.forged, 'trades', 'SELECT 1 AS x'), 401, 'UNAUTHORIZED');
      expectError(await q(undefined, 'trades', 'SELECT 1 AS x'), 401, 'UNAUTHORIZED');
      // The analyst still reads their own org's dataset, never the other org's.
      const mine = await q(tok.analyst, 'trades', 'SELECT count(*) AS n FROM dataset');
      assert.deepEqual(mine.body.rows, [['3']]);
    });

    it('the gate and sandbox still hold on registered datasets', async () => {
      expectError(await q(tok.analyst, 'trades', `SELECT * FROM read_parquet('${join(tmp.dir, 'secret', 'secret.parquet')}')`), 400, 'SQL_REJECTED');
      expectError(await q(tok.analyst, 'trades', `SELECT * FROM '${join(tmp.dir, 'secret', 'secret.parquet')}'`), 400, 'SQL_REJECTED');
      // Several queries in a row over the same version each still see only the granted files.
      for (let i = 0; i < 3; i++) {
        const r = await q(tok.analyst, 'trades', 'SELECT count(*) AS n FROM dataset');
        assert.deepEqual(r.body.rows, [['3']]);
      }
    });

    it('register: admin only, validated sources, job-output names are taken, s3 refused without an S3 object store', async () => {
      expectError(await register(tok.analyst!, 'trades', dirUrl(tradesDir)), 403, 'ADMIN_REQUIRED');
      expectError(await call(dispatcherUrl, 'POST', '/v1/datasets/trades/register', undefined, { from: dirUrl(tradesDir) }), 401, 'UNAUTHORIZED');
      expectError(await register(tok.admin!, 'x1', `file://${tradesDir}/../secret/`), 400, 'INVALID_SOURCE');
      expectError(await register(tok.admin!, 'x1', `file://${tradesDir}/%2e%2e/secret/`), 400, 'INVALID_SOURCE');
      expectError(await register(tok.admin!, 'x1', 'file://relative/dir/'), 400, 'INVALID_SOURCE');
      expectError(await register(tok.admin!, 'x1', tradesDir), 400, 'INVALID_SOURCE');
      expectError(await register(tok.admin!, 'x1', 'https://example.com/data/'), 400, 'INVALID_SOURCE');
      expectError(await register(tok.admin!, 'x1', 'file:///'), 400, 'INVALID_SOURCE');
      expectError(await register(tok.admin!, 'x1', dirUrl(join(tmp.dir, 'missing'))), 422, 'SOURCE_UNAVAILABLE');
      expectError(await register(tok.admin!, 'x1', pathToFileURL(join(tradesDir, 'part-0.parquet')).href), 422, 'SOURCE_UNAVAILABLE');
      const empty = join(tmp.dir, 'empty');
      mkdirSync(empty, { recursive: true });
      expectError(await register(tok.admin!, 'x1', dirUrl(empty)), 422, 'NO_FILES');
      expectError(await register(tok.admin!, 'x1', dirUrl(tradesDir), '../*.parquet'), 400, 'INVALID_REQUEST');
      expectError(await register(tok.admin!, 'Bad-Name', dirUrl(tradesDir)), 400, 'INVALID_REQUEST');
      assert.equal((await dbs.state.query(`SELECT 1 FROM datasets WHERE name = 'x1'`)).rows.length, 0, 'a refused registration writes nothing');

      await dbs.state.query(
        `INSERT INTO datasets (id, org_id, name, kind, producer_dag_name, producer_job_name, producer_output_index) VALUES ($1, $2, 'blocks', 'job_output', 'chain', 'sync', 0)`,
        [newId(), built.orgId]);
      expectError(await register(tok.admin!, 'blocks', dirUrl(tradesDir)), 409, 'DATASET_NAME_TAKEN');
      await assert.rejects(registerExternalDataset(dbs.state, built.orgId, 'blocks', dirUrl(tradesDir), undefined, { roots: [tmp.dir] }), (e: unknown) => (e as { status?: number }).status === 409);

      // This Dispatcher has no S3 object store: an s3:// source is refused, and nothing is recorded.
      expectError(await register(tok.admin!, 'lake', 's3://my-bucket/exports/trades', '**/*.parquet'), 400, 'OBJECT_STORE_NOT_CONFIGURED');
      assert.equal((await dbs.state.query(`SELECT 1 FROM datasets WHERE name = 'lake'`)).rows.length, 0);
      expectError(await register(tok.admin!, 'lake2', 's3://Bad_Bucket/x/'), 400, 'INVALID_SOURCE');
      expectError(await register(tok.admin!, 'lake2', 's3://bucket/a/../b/'), 400, 'INVALID_SOURCE');
    });

    it('the task path verifies Dispatcher-minted capability tokens and asks the Dispatcher about the lease', async () => {
      const cur = (await dbs.state.query<{ id: string; current_version: string; storage_ref: any }>(
        `SELECT d.id, d.current_version, v.storage_ref FROM datasets d JOIN dataset_versions v ON v.id = d.current_version WHERE d.org_id = $1 AND d.name = 'trades'`, [built.orgId])).rows[0]!;
      // A real task, claimed through the worker route: its lease is live.
      const yaml = twoJobDag({ name: 'qlease' });
      const dep = await fetch(`${dispatcherUrl}/v1/dags/qlease/versions?activate=true`, { method: 'POST', headers: { authorization: `Bearer ${tok.admin}`, 'content-type': 'application/yaml' }, body: yaml });
      assert.ok(dep.status < 300, await dep.text());
      const trig = await call(dispatcherUrl, 'POST', '/v1/dags/qlease/jobs/src/trigger', tok.admin, {});
      assert.equal(trig.status < 300, true, JSON.stringify(trig.body));
      const taskId = trig.body.task_id as string;
      const claimed = await fetch(`${dispatcherUrl}/internal/task-claim`, { method: 'POST', headers: { 'content-type': 'application/json', 'x-trace-worker-token': TEST_SECRETS.worker }, body: JSON.stringify({ task_id: taskId, worker_id: 'qtest' }) });
      const lease = await claimed.json() as { status: string; attempt: number; lease_token: string; capability_token: string };
      assert.equal(lease.status, 'Claimed');
      // The grant is made here (this task reads nothing); the lease behind it is the real one.
      const token = await built.dispatcher.ctx.deps.issuer.sign({
        org_id: built.orgId, task_id: taskId, attempt: lease.attempt,
        datasets: [{ dataset_uuid: cur.id, dataset_version: cur.current_version, storage_ref: cur.storage_ref }],
        s3: { read_prefixes: [], write_prefixes: [] },
      }, 600);
      const ask = (tokenUsed: string, extra: Record<string, unknown> = {}) => fetch(`${queryUrl}/v1/task/query`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'x-trace-task-capability': tokenUsed },
        body: JSON.stringify({ task_id: taskId, attempt: lease.attempt, dataset_uuid: cur.id, sql: 'SELECT count(*) AS n FROM dataset', ...extra }),
      }).then(async (r) => ({ status: r.status, body: await r.json() as any }));
      const ok = await ask(token, { lease_token: lease.lease_token });
      assert.equal(ok.status, 200, JSON.stringify(ok.body));
      assert.deepEqual(ok.body.rows, [['3']]);
      expectError(await ask(token, { lease_token: newId() }), 403, 'LEASE_MISMATCH');
      assert.equal((await ask(`${token.slice(0, -4)}AAAA`)).status, 401);
      // Once the attempt completes, its token reads nothing more.
      const done = await fetch(`${dispatcherUrl}/v1/task/complete`, { method: 'POST', headers: { 'content-type': 'application/json', 'x-trace-task-capability': lease.capability_token }, body: JSON.stringify({ task_id: taskId, attempt: lease.attempt, lease_token: lease.lease_token, status: 'Completed' }) });
      assert.equal(done.status, 200, await done.text());
      expectError(await ask(token), 403, 'ATTEMPT_NOT_LIVE');
    });

    it('real Cryo output registered through the route and queried', { skip: cryoSkip }, async () => {
      const r = await register(tok.admin!, 'monad_transactions', dirUrl(CRYO));
      assert.equal(r.status, 201, JSON.stringify(r.body));
      assert.equal(r.body.files, 3);
      const res = await q(tok.analyst, 'monad_transactions', `
        WITH per_tx AS (SELECT transaction_hash, count(DISTINCT block_number) AS blocks FROM dataset GROUP BY transaction_hash)
        SELECT count(*) AS duplicated FROM per_tx WHERE blocks > 1`);
      assert.equal(res.status, 200, JSON.stringify(res.body));
      assert.deepEqual(res.body.rows, [['2']]);
      const stats = await q(tok.analyst, 'monad_transactions', 'SELECT min(block_number) AS lo, max(block_number) AS hi, any_value(chain_id) AS chain FROM dataset WHERE block_number < 99999');
      assert.deepEqual(stats.body.rows, [[45216, 46336, '143']]);
    });

    it('the trace CLI: query (table and --json), datasets, datasets register', { skip: backendIndex === 0 ? false : 'the CLI runs on the first backend only' }, async () => {
      const home = join(tmp.dir, 'home');
      mkdirSync(home, { recursive: true });
      const base = { TRACE_HOME: home, TRACE_QUERY_URL: queryUrl, TRACE_DISPATCHER_URL: dispatcherUrl };
      const [table, asJson, bad, list, reg] = await Promise.all([
        trace(['query', '--dataset', 'trades', 'SELECT id, sym, px FROM dataset ORDER BY id', '--limit', '2'], { ...base, TRACE_TOKEN: tok.analyst! }),
        trace(['query', '--dataset', 'trades', 'SELECT count(*) AS n FROM dataset', '--json'], { ...base, TRACE_TOKEN: tok.analyst! }),
        trace(['query', '--dataset', 'nope', 'SELECT 1'], { ...base, TRACE_TOKEN: tok.analyst! }),
        trace(['datasets'], { ...base, TRACE_TOKEN: tok.analyst! }),
        trace(['datasets', 'register', 'cli_trades', '--from', tradesDir, '--json'], { ...base, TRACE_TOKEN: tok.admin! }),
      ]);
      assert.equal(table.code, 0, table.stderr);
      const lines = table.stdout.trimEnd().split('\n');
      assert.match(lines[0]!, /^id\s+sym\s+px$/);
      assert.match(lines[1]!, /^-+\s+-+\s+-+$/);
      assert.match(lines[2]!, /^1\s+eth\s+10\.5$/);
      assert.match(lines[3]!, /^2\s+btc\s+20\.25$/);
      assert.equal(lines[4], '2 rows (truncated)');
      assert.equal(lines.length, 5);

      assert.equal(asJson.code, 0, asJson.stderr);
      const answer = JSON.parse(asJson.stdout);
      assert.match(answer.dataset_versions?.dataset ?? '', /^[0-9a-f-]{36}$/, 'the answer names the version it read');
      delete answer.dataset_versions;
      assert.deepEqual(answer, { columns: [{ name: 'n', type: 'BIGINT' }], rows: [['3']], truncated: false });

      assert.equal(bad.code, 1);
      assert.equal(bad.stdout, '');
      assert.match(bad.stderr, /^trace query: .*\(DATASET_NOT_FOUND\)\n$/);

      assert.equal(list.code, 0, list.stderr);
      assert.match(list.stdout, /^name\s+kind\s+producer/);
      assert.match(list.stdout, /\ntrades\s+external\s+\(all members\)/);

      assert.equal(reg.code, 0, reg.stderr);
      const regBody = JSON.parse(reg.stdout) as { name: string; created: boolean; files: number };
      assert.equal(regBody.name, 'cli_trades');
      assert.equal(regBody.created, true);
      assert.equal(regBody.files, 2);

      const [again, denied, usage, joined, mixed] = await Promise.all([
        trace(['datasets', 'register', 'cli_trades', '--from', dirUrl(tradesDir)], { ...base, TRACE_TOKEN: tok.admin! }),
        trace(['datasets', 'register', 'cli_trades', '--from', tradesDir], { ...base, TRACE_TOKEN: tok.analyst! }),
        trace(['query', 'SELECT 1'], { ...base, TRACE_TOKEN: tok.analyst! }),
        trace(['query', '--dataset', 't=trades', '-d', 'c=cli_trades', 'SELECT count(*) AS n, sum(t.px + c.px) AS s FROM t JOIN c USING (id)', '--json'], { ...base, TRACE_TOKEN: tok.analyst! }),
        trace(['query', '--dataset', 'trades', '--dataset', 'c=cli_trades', 'SELECT 1'], { ...base, TRACE_TOKEN: tok.analyst! }),
      ]);
      assert.equal(joined.code, 0, joined.stderr);
      assert.deepEqual(JSON.parse(joined.stdout).rows, [['3', 121.5]]);
      assert.equal(mixed.code, 2);
      assert.match(mixed.stderr, /either one --dataset NAME or --dataset ALIAS=NAME/);
      assert.equal(again.code, 0, again.stderr);
      assert.match(again.stdout, /^unchanged: cli_trades version [0-9a-f-]{36} \(2 files, \d+ bytes\)\n$/);
      assert.equal(denied.code, 1);
      assert.match(denied.stderr, /ADMIN_REQUIRED/);
      assert.equal(usage.code, 2);
      assert.match(usage.stderr, /--dataset NAME \(or --dataset ALIAS=NAME, repeatable\) is required/);
    });
  });
});

/**
 * The Query Service reuses one locked instance per exact file list (src/query/pool.ts). These
 * run the statement without the SQL gate (lease.execute), so the sandbox alone must refuse.
 */
describe('sandbox reuse (pool)', () => {
  let tmp: TempDir;
  let a: string[];
  let b: string[];
  let big: string[];
  let gate: SqlGate;

  before(async () => {
    tmp = tempDir('trace-qpool-');
    a = [join(tmp.dir, 'a', 'a.parquet')];
    b = [join(tmp.dir, 'b', 'b.parquet')];
    big = [join(tmp.dir, 'big', 'big.parquet')];
    await writeParquet([
      { path: big[0]!, select: 'SELECT range AS n FROM range(20000)' },
      { path: a[0]!, select: 'SELECT range AS n FROM range(5)' },
      { path: b[0]!, select: "SELECT 'top-secret' AS s" },
    ]);
    gate = await SqlGate.create();
  });
  after(() => {
    gate.close();
    tmp.cleanup();
  });

  it('a reused instance stays locked to its own grant, query after query', async () => {
    const spill = join(tmp.dir, 'spill1');
    mkdirSync(spill);
    const pool = new SandboxPool({ tempRoot: spill });
    try {
      for (let i = 0; i < 3; i++) {
        const lease = (await pool.lease({ files: a }))!;
        try {
          assert.deepEqual((await lease.execute('SELECT count(*) AS c FROM dataset')).rows, [['5']]);
          await assert.rejects(lease.execute(`SELECT * FROM read_parquet('${b[0]}')`), (e: unknown) => e instanceof TraceError && e.code === 'QUERY_SANDBOX_DENIED');
          await assert.rejects(lease.execute(`SELECT * FROM '${b[0]}'`), (e: unknown) => e instanceof TraceError && e.code === 'QUERY_SANDBOX_DENIED');
          await assert.rejects(lease.execute("SELECT * FROM read_csv('/etc/passwd')"), (e: unknown) => e instanceof TraceError && e.status === 403);
          for (const sql of ['CREATE TABLE dataset AS SELECT 42 AS n', 'CREATE OR REPLACE TEMP VIEW dataset AS SELECT 42 AS n', 'SET enable_external_access = true', 'SELECT 1; DROP VIEW dataset', 'INSTALL httpfs']) {
            await assert.rejects(lease.execute(sql), (e: unknown) => e instanceof TraceError && e.status >= 400 && e.status < 500, sql);
          }
        } finally {
          lease.release(false);
        }
      }
      assert.equal(pool.size, 1, 'one instance served every query on the same file list');
      const other = (await pool.lease({ files: b }))!;
      try {
        assert.deepEqual((await other.execute('SELECT s FROM dataset')).rows, [['top-secret']]);
        await assert.rejects(other.execute(`SELECT * FROM read_parquet('${a[0]}')`), (e: unknown) => e instanceof TraceError && e.code === 'QUERY_SANDBOX_DENIED');
      } finally {
        other.release(false);
      }
      assert.equal(pool.size, 2, 'another file list gets its own instance');
      // S3 grants are not pooled.
      assert.equal(await pool.lease({ files: ['s3://bucket/k/x.parquet'] }), null);
    } finally {
      pool.close();
    }
    await waitUntil(() => readdirSync(spill).length === 0, 'spill directories removed on close');
  });

  it('retires an instance after a timeout, when idle, and beyond the size cap', async () => {
    const spill = join(tmp.dir, 'spill2');
    mkdirSync(spill);
    const pool = new SandboxPool({ tempRoot: spill }, { maxInstances: 1, idleMs: 60_000 });
    const ok = await gate.check('SELECT count(*) AS c FROM dataset');
    try {
      const heavy = await gate.check('SELECT count(*) FROM dataset a, dataset b, dataset c WHERE (a.n * 3 + b.n * 5 + c.n) % 1000 = 999');
      await assert.rejects(runQuery({ grant: { files: big }, sql: heavy, timeoutMs: 300, pool }), (e: unknown) => e instanceof TraceError && e.code === 'QUERY_TIMEOUT');
      await waitUntil(() => pool.size === 0, 'the timed-out instance is retired');
      assert.deepEqual((await runQuery({ grant: { files: a }, sql: ok, pool })).rows, [['5']]);
      assert.deepEqual((await runQuery({ grant: { files: b }, sql: ok, pool })).rows, [['1']]);
      assert.equal(pool.size, 1, 'at most maxInstances idle instances are kept');
    } finally {
      pool.close();
    }
    const brief = new SandboxPool({ tempRoot: spill }, { idleMs: 200 });
    try {
      assert.deepEqual((await runQuery({ grant: { files: a }, sql: ok, pool: brief })).rows, [['5']]);
      assert.equal(brief.size, 1);
      await waitUntil(() => brief.size === 0, 'idle instances are closed after idleMs');
    } finally {
      brief.close();
    }
    await waitUntil(() => readdirSync(spill).length === 0, 'spill directories removed');
  });
});

async function waitUntil(fn: () => boolean, what: string, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!fn()) {
    if (Date.now() > deadline) throw new Error(`timed out: ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}
