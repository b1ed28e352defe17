import { test } from 'node:test';
import assert from 'node:assert/strict';
import { BACKENDS } from '../support/db.js';
import { startPlatform, waitFor, type TestPlatform } from '../support/platform.js';
import { claimOk, deploy, post, taskRow, trigger, twoJobDag, type Lease } from '../support/drive.js';

const item = (l: Lease, extra: Record<string, unknown> = {}) => ({
  task_id: l.task_id, attempt: l.attempt, lease_token: l.lease_token, capability_token: l.capability_token, ...extra,
});

function claimBatch(p: TestPlatform, taskIds: string[], workerId = 'batch-worker', token = p.info.worker_token) {
  return post(p, '/internal/task-claim-batch', { task_ids: taskIds, worker_id: workerId }, { 'x-trace-worker-token': token });
}

async function leases(p: TestPlatform, n: number): Promise<Lease[]> {
  const out: Lease[] = [];
  for (let i = 0; i < n; i++) out.push(await claimOk(p, await trigger(p, 'life', 'src')));
  return out;
}

async function attemptRows(p: TestPlatform, id: string): Promise<Array<{ attempt: number; status: string }>> {
  return (await p.dbs.state.query<{ attempt: number; status: string }>(`SELECT attempt, status FROM task_attempts WHERE task_id = $1 ORDER BY attempt`, [id])).rows;
}

async function leaseExpiry(p: TestPlatform, id: string): Promise<number> {
  const r = await p.dbs.state.query<{ lease_expires_at: Date }>(`SELECT lease_expires_at FROM tasks WHERE id = $1`, [id]);
  return new Date(r.rows[0]!.lease_expires_at).getTime();
}

for (const backend of BACKENDS) {
  test(`${backend}: the batched worker contract`, async (t) => {
    // No workers: the test drives the contract by hand. Long leases: the reaper stays out of it.
    const p = await startPlatform(backend, { workers: 0, settings: { leaseSeconds: 120 } });
    try {
      await deploy(p, twoJobDag());
      // Its failures are final (no retry moves the attempt on under a replay).
      await deploy(p, twoJobDag({ name: 'once', maxAttempts: 1 }));

      await t.test('claim-batch: every task claimed once across two concurrent batch claimers, with its payload and token', async () => {
        const ids: string[] = [];
        for (let i = 0; i < 8; i++) ids.push(await trigger(p, 'life', 'src'));
        const unknown = '00000000-0000-4000-8000-000000000000';
        const [a, b] = await Promise.all([claimBatch(p, [...ids, unknown], 'wa'), claimBatch(p, [...ids].reverse(), 'wb')]);
        assert.equal(a.status, 200, JSON.stringify(a.body));
        assert.equal(b.status, 200, JSON.stringify(b.body));
        assert.deepEqual(a.body.results.map((r: any) => r.task_id), [...ids, unknown], 'answers in request order');
        assert.deepEqual(a.body.results.at(-1), { task_id: unknown, status: 'NotClaimed', reason: 'NotFound' });
        const won = [...a.body.results, ...b.body.results].filter((r: any) => r.status === 'Claimed');
        assert.equal(won.length, ids.length, 'each task claimed exactly once');
        assert.deepEqual(new Set(won.map((r: any) => r.task_id)), new Set(ids));
        for (const r of [...a.body.results, ...b.body.results].filter((x: any) => x.status === 'NotClaimed' && x.task_id !== unknown)) {
          assert.equal(r.reason, 'AlreadyRunning');
        }
        for (const r of won) {
          assert.equal(r.attempt, 1);
          assert.equal(r.task.task_id, r.task_id);
          assert.equal(r.task.operator, 'test_emit');
          assert.ok(r.capability_token.length > 20);
          // The claimed token works on the per-task routes: no fetch round trip is needed.
          const hb = await post(p, '/v1/task/heartbeat', { task_id: r.task_id, attempt: 1, lease_token: r.lease_token }, { 'x-trace-task-capability': r.capability_token });
          assert.equal(hb.status, 200, JSON.stringify(hb.body));
          assert.equal((await attemptRows(p, r.task_id)).length, 1);
        }
      });

      await t.test('claim-batch needs the worker token and a well-formed batch', async () => {
        const id = await trigger(p, 'life', 'src');
        assert.equal((await claimBatch(p, [id], 'w', 'not-the-token')).status, 401);
        const empty = await claimBatch(p, []);
        assert.equal(empty.status, 400);
        assert.equal(empty.body.problems[0].path, 'task_ids');
        const dup = await claimBatch(p, [id, id]);
        assert.equal(dup.status, 400);
        assert.equal(dup.body.problems[0].path, 'task_ids[1]');
        const many = await claimBatch(p, Array.from({ length: 101 }, (_, i) => `00000000-0000-4000-8000-${String(i).padStart(12, '0')}`));
        assert.equal(many.status, 400);
        assert.equal(many.body.problems[0].path, 'task_ids');
        assert.equal((await taskRow(p, id)).status, 'Queued', 'refused batches claimed nothing');
        assert.equal((await claimBatch(p, [id])).body.results[0].status, 'Claimed');
      });

      await t.test('complete-batch fences every item on its own; a replay is a no-op', async () => {
        const [ok1, ok2, wrongLease, foreign, garbage] = await leases(p, 5);
        const failed = await claimOk(p, await trigger(p, 'once', 'src'));
        // A stale attempt: attempt 1 failed, attempt 2 holds the lease now.
        const staleId = await trigger(p, 'life', 'src');
        const stale1 = await claimOk(p, staleId);
        assert.equal((await post(p, '/v1/task/complete', { task_id: staleId, attempt: 1, lease_token: stale1.lease_token, status: 'Failed', error_message: 'x' }, { 'x-trace-task-capability': stale1.capability_token })).status, 200);
        await waitFor('attempt 2 queued', async () => (await taskRow(p, staleId)).attempt === 2 && (await taskRow(p, staleId)).status === 'Queued');
        const stale2 = await claimOk(p, staleId);
        const items = [
          item(ok1!, { status: 'Completed' }),
          item(stale1, { status: 'Completed' }),
          item(wrongLease!, { status: 'Completed', lease_token: ok2!.lease_token }),
          item(foreign!, { status: 'Completed', capability_token: ok1!.capability_token }),
          item(garbage!, { status: 'Completed', capability_token: 'not-a-jwt' }),
          item(failed, { status: 'Failed', error_message: 'boom' }),
          item(ok2!, { status: 'Finished' }),
        ];
        const r = await post(p, '/v1/task/complete-batch', { items });
        assert.equal(r.status, 200, JSON.stringify(r.body));
        const res = r.body.results;
        assert.deepEqual(res.map((x: any) => x.task_id), items.map((x) => x.task_id));
        assert.deepEqual(res[0], { task_id: ok1!.task_id, status: 200, body: { ok: true, status: 'Completed' } });
        assert.deepEqual([res[1].status, res[1].body.code], [403, 'STALE_ATTEMPT']);
        assert.deepEqual([res[2].status, res[2].body.code], [403, 'LEASE_MISMATCH']);
        assert.deepEqual([res[3].status, res[3].body.code], [403, 'CAPABILITY_MISMATCH']);
        assert.equal(res[4].status, 401);
        assert.equal(res[5].status, 200);
        assert.equal(res[5].body.status, 'Failed');
        assert.equal(res[5].body.retry_at, undefined, 'the last attempt failed: no retry');
        assert.equal(res[6].status, 400);
        assert.equal(res[6].body.problems[0].path, 'items[6].status');
        for (const x of res.slice(1, 5)) assert.equal(typeof x.body.error, 'string');

        assert.equal((await taskRow(p, ok1!.task_id)).status, 'Completed');
        assert.equal((await taskRow(p, failed.task_id)).status, 'Failed');
        for (const l of [wrongLease!, foreign!, garbage!, ok2!, stale2]) assert.equal((await taskRow(p, l.task_id)).status, 'Running', 'a refused item changed nothing');
        assert.deepEqual(await attemptRows(p, staleId), [{ attempt: 1, status: 'Failed' }, { attempt: 2, status: 'Running' }]);

        // Replaying the accepted completions answers the same and changes nothing.
        const before = await attemptRows(p, ok1!.task_id);
        const again = await post(p, '/v1/task/complete-batch', { items: [items[0], items[5]] });
        assert.equal(again.status, 200);
        assert.deepEqual(again.body.results[0], res[0]);
        assert.equal(again.body.results[1].status, 200);
        assert.equal(again.body.results[1].body.status, 'Failed');
        assert.deepEqual(await attemptRows(p, ok1!.task_id), before);
        assert.deepEqual(await attemptRows(p, failed.task_id), [{ attempt: 1, status: 'Failed' }], 'no new attempt from the replay');
      });

      await t.test('an item refused inside the transaction leaves the others committed', async () => {
        const [a, b] = await leases(p, 2);
        // b finishes Completed first; completing it as Failed is then a 409 from the full transition.
        assert.equal((await post(p, '/v1/task/complete-batch', { items: [item(b!, { status: 'Completed' })] })).body.results[0].status, 200);
        const r = await post(p, '/v1/task/complete-batch', { items: [item(b!, { status: 'Failed', error_message: 'late' }), item(a!, { status: 'Completed', outputs: [{ n: 1 }] })] });
        assert.equal(r.status, 200);
        assert.deepEqual([r.body.results[0].status, r.body.results[0].body.code], [409, 'ALREADY_FINISHED']);
        assert.equal(r.body.results[1].status, 200);
        assert.equal((await taskRow(p, a!.task_id)).status, 'Completed');
        assert.equal((await taskRow(p, b!.task_id)).status, 'Completed');
      });

      await t.test('heartbeat-batch extends only the valid leases', async () => {
        const [good, badLease, badToken, done] = await leases(p, 4);
        assert.equal((await post(p, '/v1/task/complete-batch', { items: [item(done!, { status: 'Completed' })] })).body.results[0].status, 200);
        const ids = [good!, badLease!, badToken!].map((l) => l.task_id);
        const before = await Promise.all(ids.map((id) => leaseExpiry(p, id)));
        await new Promise((r) => setTimeout(r, 50));
        const r = await post(p, '/v1/task/heartbeat-batch', {
          items: [item(good!), item(badLease!, { lease_token: good!.lease_token }), item(badToken!, { capability_token: good!.capability_token }), item(done!)],
        });
        assert.equal(r.status, 200, JSON.stringify(r.body));
        const res = r.body.results;
        assert.equal(res[0].status, 200);
        assert.equal(res[0].body.ok, true);
        assert.equal(Date.parse(res[0].body.lease_expires_at), await leaseExpiry(p, good!.task_id));
        assert.deepEqual([res[1].status, res[1].body.code], [403, 'LEASE_MISMATCH']);
        assert.deepEqual([res[2].status, res[2].body.code], [403, 'CAPABILITY_MISMATCH']);
        assert.deepEqual([res[3].status, res[3].body.code], [409, 'TASK_NOT_RUNNING']);
        const after = await Promise.all(ids.map((id) => leaseExpiry(p, id)));
        assert.ok(after[0]! > before[0]!, 'the valid lease moved on');
        assert.equal(after[1], before[1], 'a refused heartbeat left its lease alone');
        assert.equal(after[2], before[2], 'a refused heartbeat left its lease alone');
      });

      await t.test('malformed batches are refused whole with the field path and change nothing', async () => {
        const [l] = await leases(p, 1);
        for (const route of ['complete-batch', 'heartbeat-batch']) {
          const extra = route === 'complete-batch' ? { status: 'Completed' } : {};
          const empty = await post(p, `/v1/task/${route}`, { items: [] });
          assert.equal(empty.status, 400);
          assert.equal(empty.body.problems[0].path, 'items');
          const dup = await post(p, `/v1/task/${route}`, { items: [item(l!, extra), item(l!, extra)] });
          assert.equal(dup.status, 400);
          assert.equal(dup.body.code, 'INVALID_REQUEST');
          assert.equal(dup.body.problems[0].path, 'items[1]');
          const many = await post(p, `/v1/task/${route}`, { items: Array.from({ length: 101 }, (_, i) => ({ ...item(l!, extra), task_id: `00000000-0000-4000-8000-${String(i).padStart(12, '0')}` })) });
          assert.equal(many.status, 400);
          assert.equal(many.body.problems[0].path, 'items');
          const noId = await post(p, `/v1/task/${route}`, { items: [{ ...item(l!, extra), task_id: 'nope' }] });
          assert.equal(noId.status, 400);
          assert.equal(noId.body.problems[0].path, 'items[0].task_id');
        }
        assert.equal((await taskRow(p, l!.task_id)).status, 'Running', 'nothing changed');
      });
    } finally {
      await p.close();
    }
  });
}
