/**
 * The release transition (`POST /internal/task-release`) and attempts that do not count:
 * shutdown releases requeue at once, infrastructure releases wait for their dependency, neither
 * uses up max_attempts, both are fenced and worker-only, a repeat is a no-op, and a cap stops a
 * misclassified error from retrying forever. Also: the retry scheduler holds tasks waiting on a
 * dependency the Dispatcher sees down and re-drives them when it is back.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { BACKENDS, freshDbs } from '../support/db.js';
import { startPlatform, waitFor, type TestPlatform } from '../support/platform.js';
import { buildDispatcher, TEST_SECRETS } from '../support/dispatcher.js';
import { claimOk, deploy, post, taskCall, taskRow, trigger, twoJobDag, type Lease } from '../support/drive.js';

function release(p: { url: string }, lease: Pick<Lease, 'task_id' | 'attempt' | 'lease_token'>, body: Record<string, unknown>, headers: Record<string, string>) {
  return post(p, '/internal/task-release', { task_id: lease.task_id, attempt: lease.attempt, lease_token: lease.lease_token, ...body }, headers);
}

async function attempts(p: TestPlatform, id: string) {
  return (await p.dbs.state.query<{ attempt: number; status: string; error_message: string | null }>(
    `SELECT attempt, status, error_message FROM task_attempts WHERE task_id = $1 ORDER BY attempt`, [id])).rows;
}

async function counters(p: TestPlatform, id: string) {
  return (await p.dbs.state.query<{ status: string; attempt: number; uncounted_attempts: number; waiting_on: string | null; next_retry_at: Date | null }>(
    `SELECT status, attempt, uncounted_attempts, waiting_on, next_retry_at FROM tasks WHERE id = $1`, [id])).rows[0]!;
}

for (const backend of BACKENDS) {
  test(`${backend}: release on shutdown requeues at once and does not use up an attempt`, async () => {
    const p = await startPlatform(backend, { workers: 0, settings: { leaseSeconds: 60 } });
    try {
      await deploy(p, twoJobDag({ name: 'rel', maxAttempts: 1 }));
      const id = await trigger(p, 'rel', 'src');
      const a = await claimOk(p, id, 'w1');
      const w = { 'x-trace-worker-token': p.info.worker_token };
      const r = await release(p, a, { reason: 'shutdown' }, w);
      assert.equal(r.status, 200, JSON.stringify(r.body));
      assert.deepEqual(r.body, { ok: true, status: 'Queued' });
      const c = await counters(p, id);
      assert.deepEqual([c.status, c.attempt, c.uncounted_attempts], ['Queued', 2, 1]);
      assert.deepEqual((await attempts(p, id)).map((x) => x.status), ['Released']);
      assert.match((await attempts(p, id))[0]!.error_message!, /runner shut down/);
      // A fresh wake-up was written: nobody waits for the lease to expire.
      await waitFor('a wake-up for attempt 2', async () => (await p.queue.depth('tasks')) >= 2);
      // The repeat (an answer lost on the way back) is a no-op.
      const again = await release(p, a, { reason: 'shutdown' }, w);
      assert.equal(again.status, 200);
      assert.equal((await counters(p, id)).attempt, 2);
      // The released lease is fenced out, even with its valid capability token.
      const stale = await taskCall(p, 'complete', a, { status: 'Completed' });
      assert.equal(stale.status, 403);
      assert.equal(stale.body.code, 'STALE_ATTEMPT');
      // max_attempts is 1, yet the next attempt runs: the released one did not count.
      const b = await claimOk(p, id, 'w2');
      assert.equal(b.attempt, 2);
      assert.equal((await taskCall(p, 'complete', b, { status: 'Completed' })).status, 200);
      assert.equal((await taskRow(p, id)).status, 'Completed');
    } finally {
      await p.close();
    }
  });

  test(`${backend}: an infrastructure release waits with waiting_on and retries without counting`, async () => {
    // The retry waits 2.5-7.5 s: long enough that the Failed/waiting_on state below is still there to
    // read on a loaded machine, so the test does not race the retry scheduler.
    const p = await startPlatform(backend, { workers: 0, settings: { leaseSeconds: 60, infraRetryBaseMs: 5_000, infraRetryMaxMs: 5_000 } });
    try {
      await deploy(p, twoJobDag({ name: 'infra', maxAttempts: 1 }));
      const id = await trigger(p, 'infra', 'src');
      const w = { 'x-trace-worker-token': p.info.worker_token };
      const a = await claimOk(p, id, 'w1');
      const r = await release(p, a, { reason: 'infrastructure', dependency: 'data_database', error_message: 'the data database is unreachable (ECONNREFUSED)' }, w);
      assert.equal(r.status, 200, JSON.stringify(r.body));
      assert.equal(r.body.status, 'Failed');
      assert.ok(typeof r.body.retry_at === 'string');
      const c = await counters(p, id);
      assert.deepEqual([c.status, c.attempt, c.uncounted_attempts, c.waiting_on], ['Failed', 1, 1, 'data_database']);
      assert.ok(c.next_retry_at !== null, 'a retry is scheduled although max_attempts is 1');
      const hist = await attempts(p, id);
      assert.equal(hist[0]!.status, 'Released');
      assert.match(hist[0]!.error_message!, /data_database unreachable: the data database is unreachable \(ECONNREFUSED\)/);
      assert.match((await taskRow(p, id)).error_message, /data_database unreachable/);
      const view = await p.api('GET', `/v1/tasks/${id}`);
      assert.equal(view.body.waiting_on, 'data_database');
      assert.equal(view.body.uncounted_attempts, 1);
      assert.equal(view.body.attempts[0].status, 'Released');
      // The retry scheduler requeues it (attempt 2, waiting_on cleared) and it can finish.
      await waitFor('requeued', async () => (await counters(p, id)).status === 'Queued', 60_000);
      assert.equal((await counters(p, id)).waiting_on, null);
      const b = await claimOk(p, id, 'w2');
      assert.equal(b.attempt, 2);
      // A real failure on the counted attempt is terminal at max_attempts 1.
      const f = await taskCall(p, 'complete', b, { status: 'Failed', error_message: 'bad input' });
      assert.equal(f.status, 200);
      const end = await counters(p, id);
      assert.deepEqual([end.status, end.next_retry_at], ['Failed', null]);
    } finally {
      await p.close();
    }
  });

  test(`${backend}: release is worker-only, fenced, validated, and refusals change nothing`, async () => {
    const p = await startPlatform(backend, { workers: 0, settings: { leaseSeconds: 60 } });
    try {
      await deploy(p, twoJobDag({ name: 'relsec' }));
      const id = await trigger(p, 'relsec', 'src');
      const a = await claimOk(p, id, 'w1');
      const before = await counters(p, id);
      // A UDF holds only its capability token: release is not for it (no endless free retries).
      const cap = await release(p, a, { reason: 'shutdown' }, { 'x-trace-task-capability': a.capability_token });
      assert.equal(cap.status, 401);
      assert.equal(typeof cap.body.code, 'string');
      const wrong = await release(p, a, { reason: 'shutdown' }, { 'x-trace-worker-token': 'nope'.repeat(10) });
      assert.equal(wrong.status, 401);
      const w = { 'x-trace-worker-token': p.info.worker_token };
      const noDep = await release(p, a, { reason: 'infrastructure' }, w);
      assert.equal(noDep.status, 400);
      assert.equal(noDep.body.code, 'INVALID_REQUEST');
      assert.match(noDep.body.error, /dependency/);
      const badDep = await release(p, a, { reason: 'infrastructure', dependency: 'the_moon' }, w);
      assert.equal(badDep.status, 400);
      assert.match(badDep.body.error, /dependency/);
      const badReason = await release(p, a, { reason: 'bored' }, w);
      assert.equal(badReason.status, 400);
      assert.match(badReason.body.error, /reason/);
      const foreign = await release(p, { ...a, lease_token: '00000000-0000-4000-8000-000000000000' }, { reason: 'shutdown' }, w);
      assert.equal(foreign.status, 403);
      assert.equal(foreign.body.code, 'LEASE_MISMATCH');
      const stale = await release(p, { ...a, attempt: 7 }, { reason: 'shutdown' }, w);
      assert.equal(stale.status, 403);
      assert.equal(stale.body.code, 'STALE_ATTEMPT');
      assert.deepEqual(await counters(p, id), before, 'refused releases changed nothing');
      assert.deepEqual((await attempts(p, id)).map((x) => x.status), ['Running']);
      // A finished attempt has nothing to release.
      assert.equal((await taskCall(p, 'complete', a, { status: 'Completed' })).status, 200);
      const done = await release(p, a, { reason: 'shutdown' }, w);
      assert.equal(done.status, 409);
      assert.equal(done.body.code, 'ALREADY_FINISHED');
    } finally {
      await p.close();
    }
  });

  test(`${backend}: past maxUncountedAttempts a release counts like a failed attempt`, async () => {
    const p = await startPlatform(backend, { workers: 0, settings: { leaseSeconds: 60, maxUncountedAttempts: 2, infraRetryBaseMs: 50, infraRetryMaxMs: 50 } });
    try {
      await deploy(p, twoJobDag({ name: 'capped_rel', maxAttempts: 1 }));
      const id = await trigger(p, 'capped_rel', 'src');
      const w = { 'x-trace-worker-token': p.info.worker_token };
      for (let i = 0; i < 2; i++) {
        const a = await claimOk(p, id, `w${i}`);
        assert.equal((await release(p, a, { reason: 'infrastructure', dependency: 'queue' }, w)).status, 200);
        await waitFor('requeued', async () => (await counters(p, id)).status === 'Queued', 60_000);
      }
      const a = await claimOk(p, id, 'w-last');
      const r = await release(p, a, { reason: 'infrastructure', dependency: 'queue' }, w);
      assert.equal(r.status, 200);
      const c = await counters(p, id);
      assert.deepEqual([c.status, c.uncounted_attempts, c.next_retry_at], ['Failed', 2, null], 'the third release counted and max_attempts 1 was used up');
      assert.match((await taskRow(p, id)).error_message, /counted/);
    } finally {
      await p.close();
    }
  });

  test(`${backend}: tasks waiting on a dependency the Dispatcher sees down are held, then re-driven when it is back`, async () => {
    const dbs = await freshDbs(backend);
    let dataUp = false;
    const d = await buildDispatcher(dbs.state, {
      settings: { infraRetryBaseMs: 60_000, infraRetryMaxMs: 60_000, dependencyProbeMs: 100 },
      probes: { data_database: async () => { if (!dataUp) throw Object.assign(new Error('connect ECONNREFUSED'), { code: 'ECONNREFUSED' }); } },
    });
    const url = await d.start();
    try {
      const http = (path: string, body?: unknown, headers: Record<string, string> = {}) => post({ url }, path, body, headers);
      const admin = { authorization: `Bearer ${d.adminToken}` };
      const dep = await fetch(`${url}/v1/dags/held/versions?activate=true`, { method: 'POST', headers: { ...admin, 'content-type': 'application/yaml' }, body: twoJobDag({ name: 'held' }) });
      assert.equal(dep.status, 201);
      const id = (await http('/v1/dags/held/jobs/src/trigger', {}, admin)).body.task_id as string;
      const w = { 'x-trace-worker-token': TEST_SECRETS.worker };
      const c = await http('/internal/task-claim', { task_id: id, worker_id: 'w' }, w);
      assert.equal(c.body.status, 'Claimed');
      assert.equal((await release({ url }, { task_id: id, attempt: 1, lease_token: c.body.lease_token }, { reason: 'infrastructure', dependency: 'data_database' }, w)).status, 200);
      // Due now, but held while the data database is seen down.
      await dbs.state.query(`UPDATE tasks SET next_retry_at = now() WHERE id = $1`, [id]);
      const ready = await fetch(`${url}/readyz`);
      assert.equal(ready.status, 503);
      const rb = await ready.json() as { error: string; code: string; checks: Record<string, string> };
      assert.equal(rb.code, 'NOT_READY');
      assert.match(rb.error, /data database unreachable/);
      assert.equal(rb.checks.state_database, 'ok');
      assert.equal((await fetch(`${url}/healthz`)).status, 200, 'healthz stays alive-only');
      await new Promise((r) => setTimeout(r, 600));
      assert.equal(((await dbs.state.query<{ status: string }>(`SELECT status FROM tasks WHERE id = $1`, [id])).rows[0]!).status, 'Failed', 'held while down');
      // Another task waits with a long backoff: the recovery re-drives it at once.
      const id2 = (await http('/v1/dags/held/jobs/src/trigger', {}, admin)).body.task_id as string;
      const c2 = await http('/internal/task-claim', { task_id: id2, worker_id: 'w' }, w);
      assert.equal((await release({ url }, { task_id: id2, attempt: 1, lease_token: c2.body.lease_token }, { reason: 'infrastructure', dependency: 'data_database' }, w)).status, 200);
      dataUp = true;
      await waitFor('both re-driven', async () => {
        const r = await dbs.state.query<{ n: number }>(`SELECT count(*)::int AS n FROM tasks WHERE id = ANY ($1::uuid[]) AND status IN ('Queued', 'Running', 'Completed')`, [[id, id2]]);
        return r.rows[0]!.n === 2;
      }, 10_000);
      assert.equal((await fetch(`${url}/readyz`)).status, 200);
    } finally {
      await d.stop();
      await dbs.close();
    }
  });
}
