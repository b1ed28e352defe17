import { test, before, after, beforeEach } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { TaskApiError, TaskClient } from '../../src/worker/task-client.js';
import { FakeDispatcher, makeTask, WORKER_TOKEN } from './fake-dispatcher.js';

let fake: FakeDispatcher;
const fast = { retries: 2, retryBackoff: { baseMs: 5, maxMs: 10 } };

before(async () => {
  fake = await new FakeDispatcher().start();
});
after(async () => {
  await fake.close();
});
beforeEach(() => {
  fake.requests.length = 0;
  fake.problems.length = 0;
  fake.clearHandlers();
});

test('claim and fetch use only the worker token; task routes use only the capability token', async () => {
  const client = new TaskClient({ baseUrl: `${fake.url}/`, workerToken: WORKER_TOKEN, ...fast });
  const t = fake.addTask(makeTask());
  const claim = await client.claim(t.payload.task_id, 'host:1');
  assert.equal(claim.status, 'Claimed');
  if (claim.status !== 'Claimed') return;
  assert.equal(claim.capability_token, t.capability_token);
  assert.equal(claim.task.task_id, t.payload.task_id);
  assert.deepEqual(fake.requests[0]!.body, { task_id: t.payload.task_id, worker_id: 'host:1' });

  const again = await client.claim(t.payload.task_id, 'host:2');
  assert.deepEqual(again, { status: 'NotClaimed', reason: 'AlreadyRunning' });

  const f = await client.fetch(t.payload.task_id);
  assert.equal(f.status, 'Running');
  assert.equal(fake.requests.at(-1)!.method, 'GET');

  const ref = { task_id: t.payload.task_id, attempt: claim.attempt, lease_token: claim.lease_token, capability_token: claim.capability_token };
  await client.heartbeat(ref);
  const ev = await client.events(ref, [{ dataset_uuid: 'a', dataset_version: 'b', cursor: 1 }]);
  assert.equal(ev.accepted, 1);
  const pub = await client.bufferPublish(ref, { batch_uri: 'file:///x/batch.jsonl', content_type: 'application/jsonl', batch_size_bytes: 10, dedupe_scope: 'alert_events' });
  assert.equal(typeof pub.publish_id, 'string');
  // A body field can never override the fencing triple.
  await client.complete(ref, { status: 'Completed', events: [], ...({ lease_token: 'forged', attempt: 99 } as object) });
  assert.equal(t.status, 'Completed');

  for (const r of fake.requests) {
    if (r.path.startsWith('/internal/')) {
      assert.equal(r.headers['x-trace-worker-token'], WORKER_TOKEN);
      assert.equal(r.headers['x-trace-task-capability'], undefined);
    } else {
      assert.equal(r.headers['x-trace-task-capability'], t.capability_token);
      assert.equal(r.headers['x-trace-worker-token'], undefined);
      assert.equal(r.body!.lease_token, t.lease_token);
      assert.equal(r.body!.attempt, 1);
    }
  }
  assert.deepEqual(fake.problems, []);
});

test('a client without a worker token refuses worker-only calls without sending anything', async () => {
  const client = new TaskClient({ baseUrl: fake.url, ...fast });
  await assert.rejects(client.claim('00000000-0000-4000-8000-000000000000', 'w'), (e: unknown) => {
    assert.ok(e instanceof TaskApiError);
    assert.equal(e.code, 'WORKER_TOKEN_MISSING');
    return true;
  });
  assert.equal(fake.requests.length, 0);
});

test('5xx is retried with backoff, then succeeds', async () => {
  const client = new TaskClient({ baseUrl: fake.url, workerToken: WORKER_TOKEN, ...fast });
  let n = 0;
  fake.on('/internal/task-claim', () => (++n <= 2 ? { status: 503, body: { error: 'busy', code: 'UNAVAILABLE' } } : undefined));
  const r = await client.claim('00000000-0000-4000-8000-000000000000', 'w');
  assert.deepEqual(r, { status: 'NotClaimed', reason: 'NotFound' });
  assert.equal(fake.count('/internal/task-claim'), 3);
});

test('5xx that persists surfaces as a transient TaskApiError after the bounded retries', async () => {
  const client = new TaskClient({ baseUrl: fake.url, workerToken: WORKER_TOKEN, ...fast });
  fake.on('/internal/task-claim', () => ({ status: 500, body: { error: 'db down', code: 'INTERNAL' } }));
  await assert.rejects(client.claim('00000000-0000-4000-8000-000000000000', 'w'), (e: unknown) => {
    assert.ok(e instanceof TaskApiError);
    assert.equal(e.status, 500);
    assert.equal(e.code, 'INTERNAL');
    assert.equal(e.transient, true);
    return true;
  });
  assert.equal(fake.count('/internal/task-claim'), 3);
});

test('4xx is not retried and carries status and code', async () => {
  const client = new TaskClient({ baseUrl: fake.url, workerToken: 'wrong-token', ...fast });
  await assert.rejects(client.claim('00000000-0000-4000-8000-000000000000', 'w'), (e: unknown) => {
    assert.ok(e instanceof TaskApiError);
    assert.equal(e.status, 401);
    assert.equal(e.code, 'UNAUTHORIZED');
    assert.equal(e.transient, false);
    assert.ok(!e.message.includes('wrong-token'), 'no token in the message');
    return true;
  });
  assert.equal(fake.count('/internal/task-claim'), 1);

  const t = fake.addTask(makeTask());
  const ok = new TaskClient({ baseUrl: fake.url, workerToken: WORKER_TOKEN, ...fast });
  fake.on('/v1/task/heartbeat', () => ({ status: 409, body: { error: 'canceled', code: 'TASK_CANCELED' } }));
  const before = fake.count('/v1/task/heartbeat');
  await assert.rejects(
    ok.heartbeat({ task_id: t.payload.task_id, attempt: 1, lease_token: t.lease_token, capability_token: t.capability_token }),
    (e: unknown) => e instanceof TaskApiError && e.status === 409 && e.code === 'TASK_CANCELED',
  );
  assert.equal(fake.count('/v1/task/heartbeat') - before, 1);
});

test('connection refused is retried, then reported as DISPATCHER_UNREACHABLE', async () => {
  // A port that was just free: bind, read the port, close.
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const port = (s.address() as AddressInfo).port;
  await new Promise<void>((r) => s.close(() => r()));
  const client = new TaskClient({ baseUrl: `http://127.0.0.1:${port}`, workerToken: WORKER_TOKEN, ...fast });
  await assert.rejects(client.fetch('00000000-0000-4000-8000-000000000000'), (e: unknown) => {
    assert.ok(e instanceof TaskApiError);
    assert.equal(e.code, 'DISPATCHER_UNREACHABLE');
    assert.equal(e.transient, true);
    assert.match(e.message, /ECONNREFUSED/);
    return true;
  });
});

test('a Dispatcher that does not answer hits the per-request timeout', async () => {
  const hung = createServer(() => {
    /* never answers */
  });
  await new Promise<void>((r) => hung.listen(0, '127.0.0.1', r));
  try {
    const client = new TaskClient({ baseUrl: `http://127.0.0.1:${(hung.address() as AddressInfo).port}`, workerToken: WORKER_TOKEN, timeoutMs: 150, retries: 1, retryBackoff: { baseMs: 5, maxMs: 10 } });
    const t0 = Date.now();
    await assert.rejects(client.fetch('00000000-0000-4000-8000-000000000000'), (e: unknown) => e instanceof TaskApiError && e.code === 'DISPATCHER_TIMEOUT' && e.status === 504);
    const took = Date.now() - t0;
    assert.ok(took >= 280 && took < 2_000, `two tries of 150 ms took ${took} ms`);
  } finally {
    hung.closeAllConnections();
    await new Promise<void>((r) => hung.close(() => r()));
  }
});

test('a malformed 200 answer is a BAD_DISPATCHER_RESPONSE error', async () => {
  const client = new TaskClient({ baseUrl: fake.url, workerToken: WORKER_TOKEN, ...fast });
  fake.on('/internal/task-claim', () => ({ status: 200, body: { status: 'Claimed', attempt: 'one' } }));
  await assert.rejects(client.claim('00000000-0000-4000-8000-000000000000', 'w'), (e: unknown) => e instanceof TaskApiError && e.code === 'BAD_DISPATCHER_RESPONSE');
});
