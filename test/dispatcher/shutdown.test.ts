/**
 * Draining on SIGTERM/SIGINT: the Dispatcher stops leasing at once (claims answer 503
 * DISPATCHER_DRAINING, no more invocations), its own runs get the grace period, and what still
 * runs after it is released so the next Dispatcher retries it at once without using up an
 * attempt. `trace worker` stops claiming, releases what it could not finish, and exits 0.
 * `trace lite up` on Ctrl-C lets an in-flight UDF finish within the grace period, releases one
 * that cannot, and a restarted lite runs it right away instead of after the lease expires.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { cp, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BACKENDS, createPgDatabase, freshDbs } from '../support/db.js';
import { buildDispatcher, TEST_SECRETS } from '../support/dispatcher.js';
import { startPlatform, waitFor } from '../support/platform.js';
import { deploy, post, trigger, twoJobDag } from '../support/drive.js';
import { buildBundleFromDir } from '../../src/cli/commands/udf.js';

const ROOT = new URL('../../', import.meta.url).pathname;

function inprocDag(name: string, ms: number, maxAttempts = 3): string {
  return `name: ${name}
jobs:
  - name: run
    activation: source
    runtime: dispatcher
    operator: test_sleep
    source: { kind: manual }
    outputs: 1
    max_attempts: ${maxAttempts}
    config: { ms: ${ms} }
`;
}

async function history(db: { query: (sql: string, p?: unknown[]) => Promise<{ rows: any[] }> }, id: string): Promise<string[]> {
  return (await db.query(`SELECT status FROM task_attempts WHERE task_id = $1 ORDER BY attempt`, [id])).rows.map((r) => r.status as string);
}

for (const backend of BACKENDS) {
  test(`${backend}: a stopping Dispatcher stops leasing, lets its runs finish within the grace period and releases the rest`, async () => {
    const dbs = await freshDbs(backend);
    try {
      const d1 = await buildDispatcher(dbs.state);
      const url1 = await d1.start();
      const admin = { authorization: `Bearer ${d1.adminToken}` };
      const yaml = (name: string, ms: number) => fetch(`${url1}/v1/dags/${name}/versions?activate=true`, { method: 'POST', headers: { ...admin, 'content-type': 'application/yaml' }, body: inprocDag(name, ms, 1) });
      assert.equal((await yaml('quick', 600)).status, 201);
      assert.equal((await yaml('slow', 30_000)).status, 201);
      const quick = (await post({ url: url1 }, '/v1/dags/quick/jobs/run/trigger', {}, admin)).body.task_id as string;
      const slow = (await post({ url: url1 }, '/v1/dags/slow/jobs/run/trigger', {}, admin)).body.task_id as string;
      const status = async (id: string) => (await dbs.state.query<{ status: string; attempt: number; uncounted_attempts: number }>(`SELECT status, attempt, uncounted_attempts FROM tasks WHERE id = $1`, [id])).rows[0]!;
      await waitFor('both running in the Dispatcher', async () => (await status(quick)).status === 'Running' && (await status(slow)).status === 'Running');
      // While draining nothing is leased: a claim is refused with a clear 503 and changes nothing.
      await d1.dispatcher.stopLeasing();
      const other = (await dbs.state.query<{ id: string }>(`SELECT t.id FROM tasks t WHERE t.status = 'Queued' LIMIT 1`)).rows[0];
      const refused = await post({ url: url1 }, '/internal/task-claim', { task_id: other?.id ?? quick, worker_id: 'w' }, { 'x-trace-worker-token': TEST_SECRETS.worker });
      assert.equal(refused.status, 503);
      assert.equal(refused.body.code, 'DISPATCHER_DRAINING');
      const t0 = Date.now();
      await d1.stop({ graceMs: 3_000 });
      assert.ok(Date.now() - t0 < 3_000 + 6_000, 'stop() is bounded by the grace period');
      assert.deepEqual(await history(dbs.state, quick), ['Completed'], 'the short run finished within the grace period');
      assert.deepEqual(await history(dbs.state, slow), ['Released'], 'the long run was released, not abandoned');
      assert.deepEqual({ ...(await status(slow)) }, { status: 'Queued', attempt: 2, uncounted_attempts: 1 });
      // The next Dispatcher runs it at once (no lease to wait for) although max_attempts is 1.
      await dbs.state.query(`UPDATE jobs SET config = '{"ms": 300}'::jsonb WHERE id = (SELECT job_id FROM tasks WHERE id = $1)`, [slow]);
      const d2 = await buildDispatcher(dbs.state);
      const started = Date.now();
      await d2.start();
      try {
        await waitFor('the released task completed', async () => (await status(slow)).status === 'Completed', 15_000);
        assert.ok(Date.now() - started < 10_000, 'retried at once, not after a lease expiry');
        assert.deepEqual(await history(dbs.state, slow), ['Released', 'Completed']);
      } finally {
        await d2.stop();
      }
    } finally {
      await dbs.close();
    }
  });
}

if (BACKENDS.includes('postgres')) {
  test('postgres: trace worker on SIGTERM stops claiming, releases what it could not finish, exits 0', async () => {
    const p = await startPlatform('postgres', { workers: 0, settings: { leaseSeconds: 120 } });
    let child: ChildProcess | undefined;
    try {
      await deploy(p, twoJobDag({ name: 'wstop', srcOp: 'test_sleep', srcConfig: { ms: 60_000 } }));
      child = spawn(process.execPath, [`${ROOT}bin/trace.mjs`, 'worker', '--include-test-operators', '--worker-id', 'stopper'], {
        env: { PATH: process.env.PATH, TRACE_FROM_SOURCE: '1', NODE_ENV: 'test', TRACE_DISPATCHER_URL: p.url, TRACE_WORKER_TOKEN: p.info.worker_token, TRACE_QUEUE_DATABASE_URL: p.stateUrl, TRACE_SHUTDOWN_GRACE_SECONDS: '1' },
        stdio: ['ignore', 'ignore', 'pipe'],
      });
      const exited = new Promise<number | null>((r) => child!.on('exit', (code) => r(code)));
      const id = await trigger(p, 'wstop', 'src');
      await waitFor('running on the worker', async () => {
        const r = (await p.dbs.state.query<{ status: string; worker_id: string }>(`SELECT status, worker_id FROM tasks WHERE id = $1`, [id])).rows[0]!;
        return r.status === 'Running' && r.worker_id === 'stopper';
      }, 60_000);
      const sig = Date.now();
      child.kill('SIGTERM');
      assert.equal(await exited, 0);
      assert.ok(Date.now() - sig < 10_000, 'exited soon after the grace period');
      const r = (await p.dbs.state.query<{ status: string; attempt: number; uncounted_attempts: number }>(`SELECT status, attempt, uncounted_attempts FROM tasks WHERE id = $1`, [id])).rows[0]!;
      assert.deepEqual({ ...r }, { status: 'Queued', attempt: 2, uncounted_attempts: 1 });
      assert.deepEqual(await history(p.dbs.state, id), ['Released']);
    } finally {
      child?.kill('SIGKILL');
      await p.close();
    }
  });

  test('postgres: trace lite up on Ctrl-C lets an in-flight UDF finish, releases one that cannot, and a restart runs it at once', async () => {
    const home = await mkdtemp(join(tmpdir(), 'trace-lite-stop-'));
    const s = await createPgDatabase('trace_ls');
    const d = await createPgDatabase('trace_ld');
    const env = {
      PATH: process.env.PATH, TRACE_FROM_SOURCE: '1', NODE_ENV: 'test', TRACE_HOME: home,
      TRACE_STATE_DATABASE_URL: s.url, TRACE_DATA_DATABASE_URL: d.url,
    };
    const { openDb } = await import('../../src/db/open.js');
    const state = await openDb(s.url, { max: 2 });
    const children: ChildProcess[] = [];
    const logs: string[] = [];
    const lite = async (grace: number) => {
      await rm(join(home, 'lite.json'), { force: true });
      const c = spawn(process.execPath, [`${ROOT}bin/trace.mjs`, 'lite', 'up', '--workers', '1'], {
        env: { ...env, TRACE_SHUTDOWN_GRACE_SECONDS: String(grace), TRACE_LOG_LEVEL: 'info' }, stdio: ['ignore', 'pipe', 'pipe'],
      });
      c.stdout!.on('data', (b: Buffer) => logs.push(b.toString()));
      children.push(c);
      let err = '';
      c.stderr!.on('data', (b: Buffer) => { err += b.toString(); logs.push(b.toString()); });
      const exited = new Promise<number | null>((r) => c.on('exit', (code) => r(code)));
      const info = await waitFor('lite.json', async () => {
        if (c.exitCode !== null) throw new Error(`lite exited with ${c.exitCode}`);
        const text = await readFile(join(home, 'lite.json'), 'utf8').catch(() => undefined);
        try {
          return text === undefined ? undefined : JSON.parse(text) as { dispatcher_url: string; admin_token: string };
        } catch {
          return undefined; // still being written
        }
      }, 90_000, 200)
        .catch((e: unknown) => { throw new Error(`${(e as Error).message}: ${err.slice(-2000)}`, { cause: e }); });
      return { c, exited, info };
    };
    const status = async (id: string) => (await state.query<{ status: string; attempt: number; uncounted_attempts: number }>(
      `SELECT status, attempt, uncounted_attempts FROM tasks WHERE id = $1`, [id])).rows[0]!;
    try {
      const l1 = await lite(20);
      const api = (method: string, path: string, body?: unknown) => fetch(`${l1.info.dispatcher_url}${path}`, {
        method, headers: { authorization: `Bearer ${l1.info.admin_token}`, ...(body === undefined ? {} : { 'content-type': typeof body === 'string' ? 'application/yaml' : 'application/json' }) },
        ...(body === undefined ? {} : { body: typeof body === 'string' ? body : JSON.stringify(body) }),
      }).then(async (r) => ({ status: r.status, body: await r.json() as any }));
      const dir = join(home, 'sleepy');
      await cp(new URL('./fixtures/sleepy-udf/', import.meta.url).pathname, dir, { recursive: true });
      await cp(join(ROOT, 'examples/udf/node-alert/trace-udf.mjs'), join(dir, 'trace-udf.mjs'));
      const built = await buildBundleFromDir(dir);
      const open = await api('POST', '/v1/udf/bundles', { runtime: 'node' });
      assert.equal(open.status, 201, JSON.stringify(open.body));
      assert.ok((await fetch(open.body.upload.url, { method: 'PUT', body: built.zip, headers: open.body.upload.headers })).ok);
      assert.equal((await api('POST', `/v1/udf/bundles/${open.body.bundle_id}/finalize`, { sha256: built.sha256 })).status, 200);
      const dag = (ms: number) => `name: sleepy
jobs:
  - name: tick
    activation: source
    runtime: dispatcher
    operator: cursor_emitter
    source: { kind: manual }
    outputs: 1
  - name: nap
    activation: reactive
    runtime: lambda
    operator: udf
    execution_strategy: PerUpdate
    inputs:
      - from: { job: tick, output: 0 }
    outputs: 1
    update_strategy: replace
    max_attempts: 1
    config: { ms: ${ms} }
    udf: { bundle_id: "${open.body.bundle_id}", entrypoint: index.mjs }
`;
      assert.equal((await api('POST', '/v1/dags/sleepy/versions?activate=true', dag(3_000))).status, 201);
      const napTask = async (cursor: number) => {
        assert.ok((await api('POST', '/v1/dags/sleepy/jobs/tick/trigger', { cursor })).status < 300);
        return waitFor('the UDF running', async () => {
          const r = await state.query<{ id: string }>(`SELECT t.id FROM tasks t JOIN jobs j ON j.id = t.job_id WHERE j.name = 'nap' AND t.inputs->0->>'cursor' = $1 AND t.status = 'Running'`, [String(cursor)]);
          return r.rows[0]?.id;
        }, 60_000);
      };
      // 1. Ctrl-C while a 3 s UDF runs, grace 20 s: it finishes and its completion is kept.
      const first = await napTask(1);
      l1.c.kill('SIGINT');
      assert.equal(await l1.exited, 0);
      assert.equal((await status(first)).status, 'Completed');
      assert.deepEqual(await history(state, first), ['Completed']);

      // 2. Ctrl-C while a 60 s UDF runs, grace 1 s: released (the child is stopped), not thrown away.
      const l2 = await lite(1);
      assert.equal((await fetch(`${l2.info.dispatcher_url}/v1/dags/sleepy/versions?activate=true`, {
        method: 'POST', headers: { authorization: `Bearer ${l2.info.admin_token}`, 'content-type': 'application/yaml' }, body: dag(60_000),
      })).status < 300, true);
      const api2 = (path: string, body: unknown) => fetch(`${l2.info.dispatcher_url}${path}`, { method: 'POST', headers: { authorization: `Bearer ${l2.info.admin_token}`, 'content-type': 'application/json' }, body: JSON.stringify(body) });
      assert.ok((await api2('/v1/dags/sleepy/jobs/tick/trigger', { cursor: 2 })).status < 300);
      const second = await waitFor('the long UDF running', async () => {
        const r = await state.query<{ id: string }>(`SELECT t.id FROM tasks t JOIN jobs j ON j.id = t.job_id WHERE j.name = 'nap' AND t.inputs->0->>'cursor' = '2' AND t.status = 'Running'`);
        return r.rows[0]?.id;
      }, 60_000);
      l2.c.kill('SIGINT');
      assert.equal(await l2.exited, 0);
      const released = await status(second);
      assert.deepEqual([released.status, released.attempt, released.uncounted_attempts], ['Queued', 2, 1]);
      assert.deepEqual(await history(state, second), ['Released']);

      // 3. The next lite runs it at once (max_attempts 1: the released attempt did not count).
      await state.query(`UPDATE jobs SET config = '{"ms": 200}'::jsonb WHERE id = (SELECT job_id FROM tasks WHERE id = $1)`, [second]);
      const l3 = await lite(5);
      const up = Date.now();
      await waitFor('the released UDF task completed', async () => (await status(second)).status === 'Completed', 60_000);
      assert.ok(Date.now() - up < 45_000, 'it did not wait for the old lease (120 s) to expire');
      assert.deepEqual(await history(state, second), ['Released', 'Completed']);
      l3.c.kill('SIGINT');
      assert.equal(await l3.exited, 0);
    } catch (e) {
      process.stderr.write(`lite output:\n${logs.join('').slice(-6000)}\n`);
      throw e;
    } finally {
      for (const c of children) c.kill('SIGKILL');
      await state.close();
      await s.drop();
      await d.drop();
      await rm(home, { recursive: true, force: true });
    }
  });
}
