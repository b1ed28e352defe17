import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createCapabilityIssuer } from '../../src/auth/capability.js';
import { BACKENDS } from '../support/db.js';
import { startPlatform, waitFor, type TestPlatform } from '../support/platform.js';
import { claim, claimOk, deploy, post, taskCall, taskRow, trigger, twoJobDag } from '../support/drive.js';

async function count(p: TestPlatform, sql: string, params: unknown[] = []): Promise<number> {
  const r = await p.dbs.state.query<{ n: number }>(sql, params);
  return r.rows[0]!.n;
}

for (const backend of BACKENDS) {
  test(`${backend}: the worker contract is fenced at every step`, async (t) => {
    // The test holds its leases by hand and never heartbeats: they must outlive every step even
    // on a loaded machine (the default test lease of 2 s expired mid-step and re-queued tasks).
    const p = await startPlatform(backend, { workers: 0, settings: { leaseSeconds: 120 } });
    try {
      await deploy(p, twoJobDag());

      await t.test('racing claims: exactly one wins', async () => {
        const id = await trigger(p, 'life', 'src');
        const results = await Promise.all(Array.from({ length: 12 }, (_, i) => claim(p, id, `w${i}`)));
        const won = results.filter((r) => r.body.status === 'Claimed');
        assert.equal(won.length, 1);
        for (const r of results.filter((x) => x.body.status !== 'Claimed')) assert.deepEqual(r.body, { status: 'NotClaimed', reason: 'AlreadyRunning' });
        assert.equal(await count(p, `SELECT count(*)::int AS n FROM task_attempts WHERE task_id = $1`, [id]), 1);
      });

      await t.test('claim refuses unknown, completed and canceled tasks with the right reason', async () => {
        assert.deepEqual((await claim(p, '00000000-0000-4000-8000-000000000000')).body, { status: 'NotClaimed', reason: 'NotFound' });
        const id = await trigger(p, 'life', 'src');
        const lease = await claimOk(p, id);
        assert.equal((await taskCall(p, 'complete', lease, { status: 'Completed' })).status, 200);
        assert.deepEqual((await claim(p, id)).body, { status: 'NotClaimed', reason: 'Completed' });
        const id2 = await trigger(p, 'life', 'src');
        assert.equal((await p.api('POST', `/v1/tasks/${id2}/cancel`)).body.canceled, true);
        assert.deepEqual((await claim(p, id2)).body, { status: 'NotClaimed', reason: 'Canceled' });
      });

      await t.test('worker routes need the worker token', async () => {
        const id = await trigger(p, 'life', 'src');
        assert.equal((await claim(p, id, 'w', '')).status, 401);
        const bad = await claim(p, id, 'w', 'not-the-token');
        assert.equal(bad.status, 401);
        assert.equal(bad.body.code, 'INVALID_WORKER_TOKEN');
        assert.equal((await taskRow(p, id)).status, 'Queued', 'refused claim changed nothing');
        const f = await fetch(`${p.url}/internal/task-fetch?task_id=${id}`);
        assert.equal(f.status, 401);
      });

      await t.test('capability tokens: missing, forged, expired, wrong task, wrong attempt, wrong lease', async () => {
        const id = await trigger(p, 'life', 'src');
        const lease = await claimOk(p, id);
        const other = await claimOk(p, await trigger(p, 'life', 'src'));
        const missing = await post(p, '/v1/task/heartbeat', { task_id: id, attempt: 1, lease_token: lease.lease_token });
        assert.equal(missing.status, 401);
        const forger = await createCapabilityIssuer({ alg: 'HS256', current: { kid: 'forged', secret: 'x'.repeat(48) } });
        const forged = await forger.sign({ org_id: p.info.org_id, task_id: id, attempt: 1, datasets: [], s3: { read_prefixes: [], write_prefixes: [] } }, 600);
        assert.equal((await taskCall(p, 'heartbeat', lease, {}, forged)).status, 401);
        const secrets = JSON.parse(await (await import('node:fs/promises')).readFile(`${p.info.home}/secrets.json`, 'utf8'));
        const past = await createCapabilityIssuer({ alg: 'HS256', current: { kid: secrets.task_capability_kid, secret: secrets.task_capability_secret } }, { clock: () => Date.now() - 3_600_000 });
        const expired = await past.sign({ org_id: p.info.org_id, task_id: id, attempt: 1, datasets: [], s3: { read_prefixes: [], write_prefixes: [] } }, 60);
        assert.equal((await taskCall(p, 'heartbeat', lease, {}, expired)).status, 401);
        const wrongTask = await taskCall(p, 'complete', lease, { status: 'Completed' }, other.capability_token);
        assert.equal(wrongTask.status, 403);
        assert.equal(wrongTask.body.code, 'CAPABILITY_MISMATCH');
        const wrongAttempt = await post(p, '/v1/task/complete', { task_id: id, attempt: 2, lease_token: lease.lease_token, status: 'Completed' }, { 'x-trace-task-capability': lease.capability_token });
        assert.equal(wrongAttempt.status, 403);
        const wrongLease = await taskCall(p, 'complete', { ...lease, lease_token: other.lease_token }, { status: 'Completed' });
        assert.equal(wrongLease.status, 403);
        assert.equal(wrongLease.body.code, 'LEASE_MISMATCH');
        assert.equal((await taskRow(p, id)).status, 'Running', 'every refused call left the task alone');
        assert.equal((await taskCall(p, 'heartbeat', lease)).status, 200);
      });

      await t.test('a stale attempt cannot complete, emit or publish', async () => {
        const id = await trigger(p, 'life', 'src');
        const a1 = await claimOk(p, id);
        const fail = await taskCall(p, 'complete', a1, { status: 'Failed', error_message: 'boom' });
        assert.equal(fail.status, 200);
        await waitFor('retry to attempt 2', async () => (await taskRow(p, id)).attempt === 2 && (await taskRow(p, id)).status === 'Queued');
        const a2 = await claimOk(p, id);
        assert.equal(a2.attempt, 2);
        const out = a1.task.outputs[0];
        const ev = { dataset_uuid: out.dataset_uuid, dataset_version: out.dataset_version, cursor: 5 };
        for (const [route, extra] of [
          ['complete', { status: 'Completed', events: [ev] }],
          ['events', { events: [ev] }],
          ['buffer-publish', { batch_uri: 'file:///tmp/b.jsonl', content_type: 'application/jsonl', batch_size_bytes: 10, dedupe_scope: 'alert_events' }],
          ['heartbeat', {}],
        ] as const) {
          const r = await taskCall(p, route, a1, extra);
          assert.equal(r.status, 403, `${route}: ${JSON.stringify(r.body)}`);
          assert.equal(r.body.code, 'STALE_ATTEMPT');
        }
        assert.equal(await count(p, `SELECT count(*)::int AS n FROM task_events WHERE task_id = $1`, [id]), 0);
        assert.equal(await count(p, `SELECT count(*)::int AS n FROM buffer_publishes WHERE task_id = $1`, [id]), 0);
        const row = await taskRow(p, id);
        assert.equal(row.status, 'Running');
        assert.equal(row.lease_token, a2.lease_token);
        assert.equal((await taskCall(p, 'complete', a2, { status: 'Completed' })).status, 200);
        const rep = await taskCall(p, 'complete', a2, { status: 'Completed' });
        assert.equal(rep.status, 200, 'a repeat of an accepted completion is a no-op success');
      });

      await t.test('duplicate buffer-publish is one record and one message', async () => {
        const id = await trigger(p, 'life', 'src');
        const lease = await claimOk(p, id);
        const body = { batch_uri: `file:///tmp/buffers/${id}/1/batch.jsonl`, content_type: 'application/jsonl', batch_size_bytes: 123, dedupe_scope: 'alert_events' };
        const r1 = await taskCall(p, 'buffer-publish', lease, body);
        const r2 = await taskCall(p, 'buffer-publish', lease, body);
        assert.equal(r1.status, 200);
        assert.equal(r1.body.publish_id, r2.body.publish_id);
        assert.equal(await count(p, `SELECT count(*)::int AS n FROM buffer_publishes WHERE task_id = $1`, [id]), 1);
        assert.equal(await count(p, `SELECT count(*)::int AS n FROM outbox WHERE kind = 'buffer_publish' AND payload->>'task_id' = $1`, [id]), 1);
        await waitFor('buffer message', async () => (await count(p, `SELECT count(*)::int AS n FROM queue_messages WHERE queue = 'buffers' AND body->>'task_id' = $1`, [id])) === 1);
      });

      await t.test('events route only for the current dataset version, once per event', async () => {
        const id = await trigger(p, 'life', 'src');
        const lease = await claimOk(p, id);
        const out = lease.task.outputs[0];
        const stale = await taskCall(p, 'events', lease, { events: [{ dataset_uuid: out.dataset_uuid, dataset_version: '11111111-1111-4111-8111-111111111111', cursor: 7 }] });
        assert.equal(stale.status, 200);
        assert.deepEqual([stale.body.accepted, stale.body.routed], [1, 0]);
        const cur = { dataset_uuid: out.dataset_uuid, dataset_version: out.dataset_version, cursor: 8 };
        const a = await taskCall(p, 'events', lease, { events: [cur, cur] });
        assert.deepEqual([a.body.accepted, a.body.routed], [1, 1]);
        const again = await taskCall(p, 'events', lease, { events: [cur] });
        assert.deepEqual([again.body.accepted, again.body.routed], [0, 0]);
        const notMine = await taskCall(p, 'events', lease, { events: [{ ...cur, dataset_uuid: '22222222-2222-4222-8222-222222222222' }] });
        assert.equal(notMine.status, 403);
        await waitFor('one downstream task', async () => (await count(p,
          `SELECT count(*)::int AS n FROM tasks t JOIN jobs j ON j.id = t.job_id WHERE j.name = 'down' AND t.inputs @> $1::jsonb`,
          [JSON.stringify([{ cursor: 8 }])])) === 1);
        assert.equal(await count(p, `SELECT count(*)::int AS n FROM tasks t JOIN jobs j ON j.id = t.job_id WHERE j.name = 'down' AND t.inputs @> $1::jsonb`, [JSON.stringify([{ cursor: 7 }])]), 0);
      });

      await t.test('malformed bodies are 400 with the stable error shape and change nothing', async () => {
        const id = await trigger(p, 'life', 'src');
        const lease = await claimOk(p, id);
        const h = { 'x-trace-task-capability': lease.capability_token };
        for (const [path, body, headers] of [
          ['/internal/task-claim', '{not json', { 'x-trace-worker-token': p.info.worker_token }],
          ['/internal/task-claim', { task_id: 'nope', worker_id: 'w' }, { 'x-trace-worker-token': p.info.worker_token }],
          ['/internal/task-claim', { task_id: id, worker_id: 'w', extra: 1 }, { 'x-trace-worker-token': p.info.worker_token }],
          ['/v1/task/complete', { task_id: id, attempt: 1, lease_token: lease.lease_token, status: 'Done' }, h],
          ['/v1/task/complete', { task_id: id, attempt: '1', lease_token: lease.lease_token, status: 'Completed' }, h],
          ['/v1/task/events', { task_id: id, attempt: 1, lease_token: lease.lease_token, events: [{ dataset_uuid: 'x' }] }, h],
          ['/v1/task/events', { task_id: id, attempt: 1, lease_token: lease.lease_token, events: [{ dataset_uuid: lease.task.outputs[0].dataset_uuid, dataset_version: lease.task.outputs[0].dataset_version, partition_key: '5-1', start: 5, end: 1 }] }, h],
          ['/v1/task/heartbeat', '[]', h],
        ] as const) {
          const r = await post(p, path, body, headers as Record<string, string>);
          assert.equal(r.status, 400, `${path} ${JSON.stringify(body)} -> ${r.status}`);
          assert.equal(typeof r.body.error, 'string');
          assert.equal(typeof r.body.code, 'string');
        }
        const big = await post(p, '/v1/task/heartbeat', { task_id: id, attempt: 1, lease_token: lease.lease_token, pad: 'x'.repeat(2 * 1024 * 1024) }, h);
        assert.equal(big.status, 413);
        assert.equal((await taskRow(p, id)).status, 'Running');
        assert.equal(await count(p, `SELECT count(*)::int AS n FROM task_events WHERE task_id = $1`, [id]), 0);
        const notFound = await post(p, '/nope', {});
        assert.equal(notFound.status, 404);
        assert.equal(notFound.body.code, 'NOT_FOUND');
      });
    } finally {
      await p.close();
    }
  });

  test(`${backend}: retries stop at max_attempts`, async (t) => {
    const p = await startPlatform(backend, { workers: 1 });
    try {
      await t.test('a task that exhausts max_attempts stays Failed', async () => {
        await deploy(p, twoJobDag({ name: 'failing', srcOp: 'test_fail', srcConfig: { message: 'always broken' }, maxAttempts: 2 }));
        const id = await trigger(p, 'failing', 'src');
        const final = await waitFor('terminal failure', async () => {
          const r = await p.api('GET', `/v1/tasks/${id}`);
          return r.body.attempts.length === 2 && r.body.status === 'Failed' && r.body.next_retry_at === null ? r.body : undefined;
        });
        assert.equal(final.attempt, 2);
        assert.deepEqual(final.attempts.map((a: any) => a.status), ['Failed', 'Failed']);
        assert.match(final.error_message, /always broken/);
        await new Promise((r) => setTimeout(r, 600));
        const later = await p.api('GET', `/v1/tasks/${id}`);
        assert.equal(later.body.status, 'Failed');
        assert.equal(later.body.attempt, 2, 'no third attempt');
      });

    } finally {
      await p.close();
    }
  });
}
