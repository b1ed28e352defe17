/**
 * Incremental processing: a task's inputs carry its job's committed cursor (`last_cursor`) and
 * `cursor_column`, at claim and at fetch; the cursor advances only when a fenced completion is
 * accepted. The reconcile loop routes events that were recorded but never routed (their outbox
 * row lost), exactly once.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { BACKENDS, freshDbs } from '../support/db.js';
import { buildDispatcher, TEST_SECRETS } from '../support/dispatcher.js';
import { startPlatform, waitFor, type TestPlatform } from '../support/platform.js';
import { claimOk, deploy, taskCall, taskRow, trigger, type Lease } from '../support/drive.js';
import { reconcileEvents } from '../../src/dispatcher/reconcile.js';
import { silentLogger } from '../../src/core/log.js';
import type { Db } from '../../src/db/db.js';
import { defaultSettings, dispatcherSettingsFromEnv } from '../../src/dispatcher/settings.js';

/** A manual source (its test_sleep emits the trigger's cursor) feeding an incremental reader. */
const DAG = () => `name: incr
jobs:
  - name: src
    activation: source
    runtime: ecs_platform
    operator: test_sleep
    source: { kind: manual }
    outputs: 1
    config: { ms: 0, emit_cursor: true }
  - name: reader
    activation: reactive
    runtime: ecs_platform
    operator: test_incremental
    execution_strategy: PerUpdate
    inputs:
      - from: { job: src, output: 0 }
    outputs: 1
    update_strategy: replace
    config: { cursor_column: block_number }
`;

type Platformish = Pick<TestPlatform, 'url' | 'api' | 'info'> & { dbs: { state: Db } };

async function committedCursor(p: Platformish): Promise<string | undefined> {
  const r = await p.dbs.state.query<{ cursor_value: string; cursor_column: string }>(
    `SELECT c.cursor_value, c.cursor_column FROM dataset_cursors c JOIN jobs j ON j.id = c.job_id WHERE j.name = 'reader'`);
  assert.ok(r.rows.length <= 1, 'one cursor row per (dataset, version, job)');
  if (r.rows[0]) assert.equal(r.rows[0].cursor_column, 'block_number');
  return r.rows[0]?.cursor_value;
}

async function readerTask(p: Platformish, cursor: number, status?: string): Promise<{ id: string; status: string; outputs: any } | undefined> {
  const r = await p.dbs.state.query<{ id: string; status: string; outputs: any }>(
    `SELECT t.id, t.status, t.outputs FROM tasks t JOIN jobs j ON j.id = t.job_id
     WHERE j.name = 'reader' AND t.inputs @> $1::jsonb`, [JSON.stringify([{ cursor }])]);
  assert.ok(r.rows.length <= 1, `at most one reader task for cursor ${cursor}`);
  const row = r.rows[0];
  return row && (status === undefined || row.status === status) ? row : undefined;
}

async function readerTasks(p: Platformish): Promise<number> {
  const r = await p.dbs.state.query<{ n: number }>(`SELECT count(*)::int AS n FROM tasks t JOIN jobs j ON j.id = t.job_id WHERE j.name = 'reader'`);
  return r.rows[0]!.n;
}

/** Runs the source by hand: claim it and complete it with its cursor event. */
async function runSource(p: Platformish, cursor: number): Promise<string> {
  const id = await trigger(p as TestPlatform, 'incr', 'src', { cursor });
  const lease = await claimOk(p as TestPlatform, id);
  const out = lease.task.outputs[0];
  const done = await taskCall(p as TestPlatform, 'complete', lease, { status: 'Completed', events: [{ dataset_uuid: out.dataset_uuid, dataset_version: out.dataset_version, cursor }] });
  assert.equal(done.status, 200, JSON.stringify(done.body));
  return id;
}

async function fetchTask(p: Platformish, id: string): Promise<any> {
  const res = await fetch(`${p.url}/internal/task-fetch?task_id=${id}`, { headers: { 'x-trace-worker-token': p.info.worker_token } });
  assert.equal(res.status, 200);
  return res.json();
}

test('reconcile settings: documented defaults, read from the environment, bad values named', () => {
  const d = defaultSettings();
  assert.deepEqual([d.reconcileIntervalMs, d.reconcileGraceSeconds, d.reconcileLookbackSeconds], [60_000, 30, 86_400]);
  assert.deepEqual(dispatcherSettingsFromEnv({ TRACE_RECONCILE_INTERVAL_MS: '5000', TRACE_RECONCILE_GRACE_SECONDS: '0', TRACE_RECONCILE_LOOKBACK_SECONDS: '3600' }),
    { reconcileIntervalMs: 5_000, reconcileGraceSeconds: 0, reconcileLookbackSeconds: 3_600 });
  assert.throws(() => dispatcherSettingsFromEnv({ TRACE_RECONCILE_LOOKBACK_SECONDS: '0' }), /TRACE_RECONCILE_LOOKBACK_SECONDS/);
});

for (const backend of BACKENDS) {
  test(`${backend}: an incremental operator gets its job's committed cursor and resumes from it`, async () => {
    const p = await startPlatform(backend, { workers: 1 });
    try {
      await deploy(p, DAG());
      await trigger(p, 'incr', 'src', { cursor: 10 });
      const first = await waitFor('the first reader task completed', () => readerTask(p, 10, 'Completed'), 60_000);
      assert.deepEqual(first.outputs.map((o: any) => [o.cursor_column, o.after, o.through]), [['block_number', null, '10']], 'the first read starts from the beginning');
      assert.equal(await committedCursor(p), '10');

      await trigger(p, 'incr', 'src', { cursor: 25 });
      const second = await waitFor('the second reader task completed', () => readerTask(p, 25, 'Completed'), 60_000);
      assert.deepEqual(second.outputs.map((o: any) => [o.cursor_column, o.after, o.through]), [['block_number', '10', '25']], 'the next read resumes after the committed cursor');
      assert.equal(await committedCursor(p), '25');

      // The fetch route carries the same fields, as of now.
      const fetched = await fetchTask(p, first.id);
      assert.equal(fetched.task.inputs[0].last_cursor, '25');
      assert.equal(fetched.task.inputs[0].cursor_column, 'block_number');
    } finally {
      await p.close();
    }
  });

  test(`${backend}: the cursor advances only on an accepted fenced completion; stale attempts and replays never move it`, async () => {
    const p = await startPlatform(backend, { workers: 0 });
    try {
      await deploy(p, DAG());
      await runSource(p, 10);
      const r1 = await waitFor('reader task for 10', () => readerTask(p, 10));
      const l1 = await claimOk(p, r1.id);
      assert.equal(l1.task.inputs[0].last_cursor, null, 'nothing committed yet');
      assert.equal(l1.task.inputs[0].cursor_column, 'block_number');
      assert.equal(await committedCursor(p), undefined, 'a claim commits nothing');
      assert.equal((await taskCall(p, 'complete', l1, { status: 'Completed' })).status, 200);
      assert.equal(await committedCursor(p), '10');

      await runSource(p, 50);
      const r2 = await waitFor('reader task for 50', () => readerTask(p, 50));
      const a1 = await claimOk(p, r2.id);
      assert.equal(a1.task.inputs[0].last_cursor, '10');
      const forged = await taskCall(p, 'complete', { ...a1, lease_token: '00000000-0000-4000-8000-000000000000' }, { status: 'Completed' });
      assert.equal(forged.status, 403);
      assert.equal(await committedCursor(p), '10', 'a completion with the wrong lease moves nothing');
      assert.equal((await taskCall(p, 'complete', a1, { status: 'Failed', error_message: 'boom' })).status, 200);
      assert.equal(await committedCursor(p), '10', 'a failed attempt moves nothing');
      await waitFor('retry to attempt 2', async () => {
        const row = await taskRow(p, r2.id);
        return row.attempt === 2 && row.status === 'Queued';
      });
      const a2: Lease = await claimOk(p, r2.id);
      assert.equal(a2.task.inputs[0].last_cursor, '10');
      const stale = await taskCall(p, 'complete', a1, { status: 'Completed' });
      assert.equal(stale.status, 403);
      assert.equal(stale.body.code, 'STALE_ATTEMPT');
      assert.equal(await committedCursor(p), '10', 'the superseded attempt cannot move the cursor');
      assert.equal((await taskCall(p, 'complete', a2, { status: 'Completed' })).status, 200);
      assert.equal(await committedCursor(p), '50');

      // A replay of the older task's accepted completion is a no-op: the cursor never goes back.
      const replay = await taskCall(p, 'complete', l1, { status: 'Completed' });
      assert.equal(replay.status, 200);
      assert.equal(await committedCursor(p), '50');
      const fetched = await fetchTask(p, r2.id);
      assert.equal(fetched.task.inputs[0].last_cursor, '50');
    } finally {
      await p.close();
    }
  });

  test(`${backend}: the reconcile loop routes a recorded event whose outbox row was lost, exactly once`, async () => {
    const dbs = await freshDbs(backend);
    const d = await buildDispatcher(dbs.state, { settings: { reconcileIntervalMs: 100, reconcileGraceSeconds: 1 } });
    const url = await d.start({ loops: false });
    const p: Platformish = {
      url,
      dbs,
      info: { worker_token: TEST_SECRETS.worker } as TestPlatform['info'],
      async api(method, path, body) {
        const yaml = typeof body === 'string';
        const r = await fetch(`${url}${path}`, {
          method,
          headers: { authorization: `Bearer ${d.adminToken}`, 'content-type': yaml ? 'application/yaml' : 'application/json' },
          ...(body === undefined ? {} : { body: yaml ? body : JSON.stringify(body) }),
        });
        return { status: r.status, body: await r.json() as any };
      },
    };
    const q = async (sql: string, params: unknown[] = []) => Number(((await dbs.state.query<{ n: number }>(sql, params)).rows[0]!).n);
    const opts = { graceSeconds: 0, lookbackSeconds: 86_400, batchSize: 500 };
    try {
      await deploy(p as TestPlatform, DAG());
      // The loops are off, so each source's route_event waits in the outbox. Lose the first one,
      // as a crash or a deleted row would; the outbox routes the second.
      const lostSrc = await runSource(p, 40);
      assert.equal(await q(`SELECT count(*)::int AS n FROM task_events WHERE task_id = $1 AND routed AND routed_at IS NULL`, [lostSrc]), 1);
      assert.equal(await q(`WITH d AS (DELETE FROM outbox WHERE kind = 'route_event' RETURNING 1) SELECT count(*)::int AS n FROM d`), 1);
      const keptSrc = await runSource(p, 41);
      while ((await d.dispatcher.drainer.drainOnce()) > 0) { /* drain everything */ }
      assert.ok(await readerTask(p, 41), 'the outbox routed the kept event');
      assert.equal(await q(`SELECT count(*)::int AS n FROM task_events WHERE task_id = $1 AND routed_at IS NOT NULL`, [keptSrc]), 1, 'and marked it routed');
      assert.equal(await readerTask(p, 40), undefined);

      // A sink's dataset event whose outbox row was lost, and one older than the lookback.
      const out = (await dbs.state.query<{ outputs: Array<{ dataset_uuid: string; dataset_version: string }> }>(`SELECT outputs FROM jobs WHERE name = 'src'`)).rows[0]!.outputs[0]!;
      for (const [cursor, age] of [[42, '10 seconds'], [43, '2 days']] as const) {
        const ev = { dataset_uuid: out.dataset_uuid, dataset_version: out.dataset_version, cursor };
        await dbs.state.query(
          `INSERT INTO dataset_events (org_id, dataset_uuid, event_key, event, routed, created_at) VALUES ($1, $2, $3, $4::jsonb, true, now() - $5::interval)`,
          [d.orgId, out.dataset_uuid, `${out.dataset_uuid}:${out.dataset_version}:c:${cursor}`, JSON.stringify(ev), age]);
      }
      // Within the grace period nothing is reconciled.
      assert.deepEqual(await reconcileEvents(dbs.state, { ...opts, graceSeconds: 3_600 }, silentLogger), { events: 0, tasks: 0, failed: 0 });
      assert.equal(await readerTasks(p), 1);

      d.dispatcher.startLoops();
      await waitFor('the reconcile loop created the missing reader tasks', async () => (await readerTask(p, 40)) && readerTask(p, 42), 30_000);
      assert.equal(await q(`SELECT count(*)::int AS n FROM task_events WHERE task_id = $1 AND routed_at IS NOT NULL`, [lostSrc]), 1, 'the event is marked routed');
      assert.equal(await q(`SELECT count(*)::int AS n FROM dataset_events WHERE routed_at IS NOT NULL`), 1, 'the sink event is marked routed; the old one is left alone');
      await waitFor('their wake-ups were sent', async () => (await q(`SELECT count(*)::int AS n FROM outbox WHERE status = 'Pending'`)) === 0);

      // Two more passes, and several loop turns: nothing more.
      assert.deepEqual(await reconcileEvents(dbs.state, opts, silentLogger), { events: 0, tasks: 0, failed: 0 });
      assert.deepEqual(await reconcileEvents(dbs.state, opts, silentLogger), { events: 0, tasks: 0, failed: 0 });
      // Even an event routed again (its mark lost) creates nothing twice: routing is keyed.
      await dbs.state.query(`UPDATE task_events SET routed_at = NULL WHERE task_id = $1`, [lostSrc]);
      assert.deepEqual(await reconcileEvents(dbs.state, opts, silentLogger), { events: 1, tasks: 0, failed: 0 });
      await new Promise((r) => setTimeout(r, 500));
      assert.equal(await readerTask(p, 43), undefined, 'an event past the lookback is not reconciled');
      assert.equal(await readerTasks(p), 3, 'exactly one reader task per event');
    } finally {
      await d.stop();
      await dbs.close();
    }
  });
}
