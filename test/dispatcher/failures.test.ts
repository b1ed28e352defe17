import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { createCapabilityIssuer } from '../../src/auth/capability.js';
import { fireDueSchedules } from '../../src/dispatcher/sources.js';
import { BACKENDS, freshDbs } from '../support/db.js';
import { startPlatform, waitFor, type TestPlatform } from '../support/platform.js';
import { buildDispatcher, TEST_SECRETS } from '../support/dispatcher.js';
import { claimOk, deploy, taskCall, taskRow, trigger, twoJobDag } from '../support/drive.js';

const ROOT = new URL('../../', import.meta.url).pathname;

async function n(db: { query: TestPlatform['dbs']['state']['query'] }, sql: string, params: unknown[] = []): Promise<number> {
  return ((await db.query<{ n: number }>(sql, params)).rows[0]!).n;
}

async function http(url: string, method: string, path: string, token: string, body?: unknown, headers: Record<string, string> = {}) {
  const res = await fetch(`${url}${path}`, {
    method,
    headers: { authorization: `Bearer ${token}`, ...(body !== undefined ? { 'content-type': typeof body === 'string' ? 'application/yaml' : 'application/json' } : {}), ...headers },
    ...(body !== undefined ? { body: typeof body === 'string' ? body : JSON.stringify(body) } : {}),
  });
  return { status: res.status, body: await res.json() as any };
}

for (const backend of BACKENDS) {
  test(`${backend}: a Dispatcher that dies before its side effects delivers them after restart`, async () => {
    const dbs = await freshDbs(backend);
    try {
      const d1 = await buildDispatcher(dbs.state);
      const url1 = await d1.start({ loops: false }); // routes only: nothing drains the outbox
      assert.equal((await http(url1, 'POST', '/v1/dags/life/versions?activate=true', d1.adminToken, twoJobDag())).status, 201);
      const trig = await http(url1, 'POST', '/v1/dags/life/jobs/src/trigger', d1.adminToken, {});
      const taskId = trig.body.task_id as string;
      // Run the source attempt by hand, emitting one event on completion.
      const c = await http(url1, 'POST', '/internal/task-claim', '', { task_id: taskId, worker_id: 'w' }, { 'x-trace-worker-token': TEST_SECRETS.worker });
      assert.equal(c.body.status, 'Claimed');
      const out = c.body.task.outputs[0];
      const done = await fetch(`${url1}/v1/task/complete`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'x-trace-task-capability': c.body.capability_token },
        body: JSON.stringify({ task_id: taskId, attempt: 1, lease_token: c.body.lease_token, status: 'Completed', events: [{ dataset_uuid: out.dataset_uuid, dataset_version: out.dataset_version, cursor: 42 }] }),
      });
      assert.equal(done.status, 200);
      await d1.stop(); // the process is gone; its side effects were only recorded
      assert.equal(await n(dbs.state, `SELECT count(*)::int AS n FROM outbox WHERE status = 'Pending'`), 2, 'enqueue + route are pending');
      assert.equal(await n(dbs.state, `SELECT count(*)::int AS n FROM queue_messages`), 0);

      const d2 = await buildDispatcher(dbs.state);
      await d2.start();
      try {
        await waitFor('outbox drained', async () => (await n(dbs.state, `SELECT count(*)::int AS n FROM outbox WHERE status <> 'Done'`)) === 0);
        assert.equal(await n(dbs.state, `SELECT count(*)::int AS n FROM queue_messages WHERE body->>'task_id' = $1`, [taskId]), 1, 'the wake-up was delivered');
        const down = await dbs.state.query<{ id: string }>(`SELECT t.id FROM tasks t JOIN jobs j ON j.id = t.job_id WHERE j.name = 'down'`);
        assert.equal(down.rows.length, 1, 'the routed event created its task');
        assert.equal(await n(dbs.state, `SELECT count(*)::int AS n FROM queue_messages WHERE body->>'task_id' = $1`, [down.rows[0]!.id]), 1);
      } finally {
        await d2.stop();
      }
    } finally {
      await dbs.close();
    }
  });

  test(`${backend}: a queue outage keeps side effects pending and retried, never lost`, async () => {
    const dbs = await freshDbs(backend);
    try {
      let broken = true;
      const { PgQueue } = await import('../../src/queue/pgqueue.js');
      const real = new PgQueue(dbs.state);
      const flaky = Object.create(real) as typeof real;
      flaky.sendBatch = async (q, b) => { if (broken) throw new Error('queue unavailable'); return real.sendBatch(q, b); };
      const d = await buildDispatcher(dbs.state, { queue: flaky });
      const url = await d.start();
      try {
        await http(url, 'POST', '/v1/dags/life/versions?activate=true', d.adminToken, twoJobDag());
        const id = (await http(url, 'POST', '/v1/dags/life/jobs/src/trigger', d.adminToken, {})).body.task_id;
        await waitFor('a failed send was recorded', async () => (await n(dbs.state, `SELECT count(*)::int AS n FROM outbox WHERE status = 'Pending' AND attempts >= 1 AND last_error IS NOT NULL`)) === 1);
        assert.equal((await n(dbs.state, `SELECT count(*)::int AS n FROM tasks WHERE id = $1 AND status = 'Queued'`, [id])), 1);
        broken = false;
        await waitFor('delivered after recovery', async () => (await n(dbs.state, `SELECT count(*)::int AS n FROM queue_messages WHERE body->>'task_id' = $1`, [id])) === 1, 10_000);
      } finally {
        await d.stop();
        await real.close();
      }
    } finally {
      await dbs.close();
    }
  });

  test(`${backend}: cron sources fire on schedule and missed ticks fire once`, async () => {
    const dbs = await freshDbs(backend);
    try {
      const d = await buildDispatcher(dbs.state);
      const url = await d.start({ loops: false });
      const yaml = `name: ticks
jobs:
  - name: tick
    activation: source
    runtime: ecs_platform
    operator: noop
    source: { kind: cron, schedule: "@every 1s" }
    outputs: 1
`;
      assert.equal((await http(url, 'POST', '/v1/dags/ticks/versions?activate=true', d.adminToken, yaml)).status, 201);
      // Ten seconds of downtime: ten ticks were missed.
      await dbs.state.query(`UPDATE source_schedules SET next_fire_at = now() - interval '10 seconds'`);
      assert.equal(await fireDueSchedules(dbs.state, 100), 1);
      assert.equal(await fireDueSchedules(dbs.state, 100), 0, 'the missed ticks collapsed into one firing');
      assert.equal(await n(dbs.state, `SELECT count(*)::int AS n FROM tasks`), 1);
      const next = (await dbs.state.query<{ next_fire_at: Date }>(`SELECT next_fire_at FROM source_schedules`)).rows[0]!.next_fire_at;
      assert.ok(new Date(next).getTime() > Date.now() - 50, 'next tick is in the future');
      await d.stop();
      const d2 = await buildDispatcher(dbs.state);
      await d2.start();
      await waitFor('cron keeps firing', async () => (await n(dbs.state, `SELECT count(*)::int AS n FROM tasks`)) >= 3, 8_000);
      await d2.stop();
      const trig = (await dbs.state.query<{ trigger: { kind: string } }>(`SELECT trigger FROM tasks LIMIT 1`)).rows[0]!.trigger;
      assert.equal(trig.kind, 'cron');
    } finally {
      await dbs.close();
    }
  });

  test(`${backend}: duplicate wake-ups are harmless and max_concurrency is never exceeded`, async () => {
    const p = await startPlatform(backend, { workers: 2, workerConcurrency: 4 });
    try {
      await deploy(p, twoJobDag({ name: 'dups', srcOp: 'test_sleep', srcConfig: { ms: 150 } }));
      const id = await trigger(p, 'dups', 'src');
      await p.queue.sendBatch('tasks', Array.from({ length: 6 }, () => ({ task_id: id })));
      await waitFor('done', async () => (await taskRow(p, id)).status === 'Completed');
      await new Promise((r) => setTimeout(r, 300));
      assert.equal(await n(p.dbs.state, `SELECT count(*)::int AS n FROM task_attempts WHERE task_id = $1`, [id]), 1, 'ran exactly once');
      assert.equal((await taskRow(p, id)).attempt, 1);

      await deploy(p, twoJobDag({ name: 'capped', srcOp: 'test_sleep', srcConfig: { ms: 200 }, maxConcurrency: 2 }));
      const ids = [];
      for (let i = 0; i < 8; i++) ids.push(await trigger(p, 'capped', 'src'));
      let maxRunning = 0;
      const jobId = (await p.dbs.state.query<{ job_id: string }>(`SELECT job_id FROM tasks WHERE id = $1`, [ids[0]])).rows[0]!.job_id;
      await waitFor('all capped tasks done', async () => {
        const running = await n(p.dbs.state, `SELECT count(*)::int AS n FROM tasks WHERE job_id = $1 AND status = 'Running'`, [jobId]);
        maxRunning = Math.max(maxRunning, running);
        return (await n(p.dbs.state, `SELECT count(*)::int AS n FROM tasks WHERE job_id = $1 AND status = 'Completed'`, [jobId])) === 8;
      }, 30_000, 10);
      assert.ok(maxRunning <= 2, `max_concurrency 2 exceeded: saw ${maxRunning} running`);
      assert.ok(maxRunning >= 1);
    } finally {
      await p.close();
    }
  });

  test(`${backend}: an expired lease is reaped; the late reply counts until a newer attempt starts`, async () => {
    // A 5 s lease held by hand with no heartbeats: long enough that the fresh attempt below cannot
    // expire between its claim and its completion on a loaded machine, short enough to wait out.
    const p = await startPlatform(backend, { workers: 0, settings: { leaseSeconds: 5 } });
    try {
      await deploy(p, twoJobDag({ name: 'leases' }));
      // Late but still current: accepted.
      const id1 = await trigger(p, 'leases', 'src');
      const a = await claimOk(p, id1, 'silent');
      await waitFor('reaped', async () => (await taskRow(p, id1)).status === 'Failed', 60_000);
      const hist = await p.dbs.state.query<{ status: string }>(`SELECT status FROM task_attempts WHERE task_id = $1`, [id1]);
      assert.equal(hist.rows[0]!.status, 'TimedOut');
      // The retry scheduler may requeue it any moment; complete right away.
      const late = await taskCall(p, 'complete', a, { status: 'Completed' });
      if ((await taskRow(p, id1)).attempt === 1) {
        assert.equal(late.status, 200, JSON.stringify(late.body));
        assert.equal((await taskRow(p, id1)).status, 'Completed');
      } else {
        assert.equal(late.status, 403);
      }
      // A newer attempt started: the old one is fenced out.
      const id2 = await trigger(p, 'leases', 'src');
      const old = await claimOk(p, id2, 'silent');
      await waitFor('attempt 2 queued', async () => { const r = await taskRow(p, id2); return r.attempt === 2 && r.status === 'Queued'; }, 60_000);
      const fresh = await claimOk(p, id2, 'fresh');
      const stale = await taskCall(p, 'complete', old, { status: 'Completed' });
      assert.equal(stale.status, 403);
      assert.equal(stale.body.code, 'STALE_ATTEMPT');
      assert.equal((await taskCall(p, 'complete', fresh, { status: 'Completed' })).status, 200);
      const r = await p.api('GET', `/v1/tasks/${id2}`);
      assert.deepEqual(r.body.attempts.map((x: any) => x.status), ['TimedOut', 'Completed']);
    } finally {
      await p.close();
    }
  });
}

test('postgres: a worker process killed mid-task is retried with attempt + 1 and fenced out', async () => {
  if (!BACKENDS.includes('postgres')) return;
  const p = await startPlatform('postgres', { workers: 0 });
  const children: ChildProcess[] = [];
  const spawnWorker = (id: string) => {
    const c = spawn(process.execPath, [`${ROOT}bin/trace.mjs`, 'worker', '--include-test-operators', '--worker-id', id, '--concurrency', '2'], {
      env: { PATH: process.env.PATH, TRACE_FROM_SOURCE: '1', NODE_ENV: 'test', TRACE_DISPATCHER_URL: p.url, TRACE_WORKER_TOKEN: p.info.worker_token, TRACE_QUEUE_DATABASE_URL: p.stateUrl },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    children.push(c);
    return c;
  };
  try {
    await deploy(p, twoJobDag({ name: 'killme', srcOp: 'test_sleep', srcConfig: { ms: 2500 } }));
    const w1 = spawnWorker('doomed');
    const id = await trigger(p, 'killme', 'src');
    await waitFor('running on the doomed worker', async () => {
      const r = (await p.dbs.state.query<{ status: string; worker_id: string }>(`SELECT status, worker_id FROM tasks WHERE id = $1`, [id])).rows[0]!;
      return r.status === 'Running' && r.worker_id === 'doomed';
    }, 30_000);
    const first = (await p.dbs.state.query<{ lease_token: string }>(`SELECT lease_token FROM tasks WHERE id = $1`, [id])).rows[0]!;
    w1.kill('SIGKILL');
    spawnWorker('survivor');
    const done = await waitFor('completed by the survivor', async () => {
      const r = await p.api('GET', `/v1/tasks/${id}`);
      return r.body.status === 'Completed' ? r.body : undefined;
    }, 40_000);
    assert.equal(done.attempt, 2);
    assert.deepEqual(done.attempts.map((a: any) => [a.attempt, a.status, a.worker_id]), [[1, 'TimedOut', 'doomed'], [2, 'Completed', 'survivor']]);
    // The dead attempt's credentials are fenced out, even with a valid token for attempt 1.
    const secrets = JSON.parse(await readFile(`${p.info.home}/secrets.json`, 'utf8'));
    const issuer = await createCapabilityIssuer({ alg: 'HS256', current: { kid: secrets.task_capability_kid, secret: secrets.task_capability_secret } });
    const tok = await issuer.sign({ org_id: p.info.org_id, task_id: id, attempt: 1, datasets: [], s3: { read_prefixes: [], write_prefixes: [] } }, 600);
    const stale = await taskCall(p, 'complete', { task_id: id, attempt: 1, lease_token: first.lease_token, capability_token: tok, task: null }, { status: 'Failed', error_message: 'zombie' });
    assert.equal(stale.status, 403);
    assert.equal((await taskRow(p, id)).status, 'Completed');
  } finally {
    for (const c of children) c.kill('SIGKILL');
    await p.close();
  }
});
