import { test, before, after, beforeEach } from 'node:test';
import assert from 'node:assert/strict';
import { silentLogger } from '../../src/core/log.js';
import { operatorRegistry } from '../../src/operators/registry.js';
import { heartbeatIntervalMs, runClaimedTask } from '../../src/worker/run-task.js';
import { TaskClient } from '../../src/worker/task-client.js';
import { EVENTS_PER_REQUEST } from '../../src/worker/events.js';
import { FakeDispatcher, makeTask, WORKER_TOKEN } from './fake-dispatcher.js';

const registry = operatorRegistry({ includeTestOperators: true });
let fake: FakeDispatcher;
let client: TaskClient;

before(async () => {
  fake = await new FakeDispatcher().start();
  client = new TaskClient({ baseUrl: fake.url, workerToken: WORKER_TOKEN, retries: 1, retryBackoff: { baseMs: 10, maxMs: 20 } });
});
after(async () => {
  await fake.close();
});
beforeEach(() => {
  // every test starts with a clean slate of requests and problems on the shared fake
  fake.requests.length = 0;
  fake.problems.length = 0;
  fake.state.clear();
  fake.clearHandlers();
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

test('heartbeats on the configured cadence with the fenced body, and stop after completion', async () => {
  const t = fake.addTask(makeTask({ operator: 'test_sleep', config: { ms: 1_000 } }));
  const outcome = await runClaimedTask(fake.claimed(t), { client, registry, log: silentLogger, heartbeatMs: 60 });
  assert.equal(outcome, 'Completed');
  const beats = fake.requests.filter((r) => r.path === '/v1/task/heartbeat');
  // One beat per interval after the previous answer: never faster than the cadence, and at most
  // 1000 / 60 of them (fewer when the machine is slow to answer).
  assert.ok(beats.length >= 2 && beats.length <= 17, `expected 2 to 17 heartbeats in 1000 ms at 60 ms, got ${beats.length}`);
  for (let i = 1; i < beats.length; i++) assert.ok(beats[i]!.at - beats[i - 1]!.at >= 55, `two beats ${beats[i]!.at - beats[i - 1]!.at} ms apart`);
  for (const b of beats) {
    assert.deepEqual(b.body, { task_id: t.payload.task_id, attempt: 1, lease_token: t.lease_token });
    assert.equal(b.headers['x-trace-task-capability'], t.capability_token);
    assert.equal(b.headers['x-trace-worker-token'], undefined);
  }
  const n = fake.count('/v1/task/heartbeat');
  await sleep(200);
  assert.equal(fake.count('/v1/task/heartbeat'), n, 'no heartbeats after the run ended');
  assert.deepEqual(fake.problems, []);
});

test('default heartbeat interval is min(30 s, heartbeat_timeout / 4)', () => {
  assert.equal(heartbeatIntervalMs({ heartbeat_timeout_seconds: 8 }), 2_000);
  assert.equal(heartbeatIntervalMs({ heartbeat_timeout_seconds: 600 }), 30_000);
  assert.equal(heartbeatIntervalMs({ heartbeat_timeout_seconds: 0 }), 30_000);
});

test('completion carries the mapped events (output_index -> dataset) and only the capability token', async () => {
  const task = makeTask({
    operator: 'test_emit',
    config: { events: [{ cursor: 42 }, { output_index: 1, start: 100, end: 200 }, { output_index: 0, cursor: 'abc' }] },
  });
  const t = fake.addTask(task);
  assert.equal(await runClaimedTask(fake.claimed(t), { client, registry, log: silentLogger }), 'Completed');
  const completes = fake.requests.filter((r) => r.path === '/v1/task/complete');
  assert.equal(completes.length, 1);
  const c = completes[0]!;
  assert.equal(c.headers['x-trace-task-capability'], t.capability_token);
  assert.equal(c.headers['x-trace-worker-token'], undefined);
  const [o0, o1] = task.outputs;
  assert.deepEqual(c.body, {
    task_id: task.task_id,
    attempt: 1,
    lease_token: t.lease_token,
    status: 'Completed',
    events: [
      { dataset_uuid: o0!.dataset_uuid, dataset_version: o0!.dataset_version, cursor: 42 },
      { dataset_uuid: o1!.dataset_uuid, dataset_version: o1!.dataset_version, partition_key: '100-200', start: 100, end: 200 },
      { dataset_uuid: o0!.dataset_uuid, dataset_version: o0!.dataset_version, cursor: 'abc' },
    ],
  });
  assert.deepEqual(fake.problems, []);
});

test('mid-task emit goes through /v1/task/events; many stateless events are chunked ahead of completion', async () => {
  const mid = fake.addTask(makeTask({ operator: 'test_emit', config: { mid_task: true, events: [{ cursor: 7 }] } }));
  assert.equal(await runClaimedTask(fake.claimed(mid), { client, registry, log: silentLogger }), 'Completed');
  const ev = fake.bodies('/v1/task/events');
  assert.equal(ev.length, 1);
  assert.deepEqual(ev[0]!.events, [{ dataset_uuid: mid.payload.outputs[0]!.dataset_uuid, dataset_version: mid.payload.outputs[0]!.dataset_version, cursor: 7 }]);
  assert.deepEqual(mid.completions[0]!.events, []);

  fake.requests.length = 0;
  const n = 2 * EVENTS_PER_REQUEST + 500;
  const many = fake.addTask(makeTask({ operator: 'test_emit', config: { events: Array.from({ length: n }, (_, i) => ({ cursor: i })) } }));
  assert.equal(await runClaimedTask(fake.claimed(many), { client, registry, log: silentLogger }), 'Completed');
  const sent = fake.bodies('/v1/task/events').map((b) => (b.events as unknown[]).length);
  assert.deepEqual(sent, [EVENTS_PER_REQUEST, EVENTS_PER_REQUEST]);
  const fin = many.completions[0]!.events as Array<{ cursor: number }>;
  assert.equal(fin.length, 500);
  assert.equal(fin[0]!.cursor, 2 * EVENTS_PER_REQUEST);
  assert.deepEqual(fake.problems, []);
});

test('STATE_CONFLICT: re-fetches fresh state, re-runs the operator, completes with the new version', async () => {
  const input = { dataset_uuid: '55555555-5555-4555-8555-555555555555', dataset_version: '66666666-6666-4666-8666-666666666666', cursor: 49 };
  const key = `cursor:${input.dataset_uuid}`;
  const t = fake.addTask(makeTask({
    operator: 'range_aggregator',
    config: { range_size: 10 },
    inputs: [input],
    operator_state: [{ state_key: key, state: { last_emitted_end: 10 }, version: 3 }],
  }));
  // Another task commits first: the stream moved to 30 (version 4) just before our completion.
  let raced = false;
  fake.on('/v1/task/complete', () => {
    if (!raced) {
      raced = true;
      fake.state.set(key, { state: { last_emitted_end: 30 }, version: 4 });
    }
    return undefined;
  });
  const outcome = await runClaimedTask(fake.claimed(t), { client, registry, log: silentLogger });
  assert.equal(outcome, 'Completed');
  const completes = fake.bodies('/v1/task/complete');
  assert.equal(completes.length, 2, 'one conflicting completion, one accepted');
  assert.deepEqual(completes[0]!.operator_state, [{ state_key: key, expected_version: 3, state: { last_emitted_end: 50 } }]);
  assert.equal(fake.count('/internal/task-fetch'), 1);
  const fetchReq = fake.requests.find((r) => r.path === '/internal/task-fetch')!;
  assert.equal(fetchReq.headers['x-trace-worker-token'], WORKER_TOKEN);
  assert.equal(fetchReq.headers['x-trace-task-capability'], undefined);
  const final = t.completions[0]!;
  assert.deepEqual(final.operator_state, [{ state_key: key, expected_version: 4, state: { last_emitted_end: 50 } }]);
  assert.deepEqual((final.events as Array<{ partition_key: string }>).map((e) => e.partition_key), ['30-40', '40-50']);
  assert.deepEqual(fake.state.get(key), { state: { last_emitted_end: 50 }, version: 5 });
  assert.deepEqual(fake.problems, []);
});

test('STATE_CONFLICT that never resolves fails the attempt after the bounded retries', async () => {
  const t = fake.addTask(makeTask({ operator: 'cursor_emitter', config: { cursor_from: 'counter' }, trigger: { kind: 'cron', fired_at: new Date().toISOString() } }));
  fake.on('/v1/task/complete', (req) =>
    req.body?.status === 'Completed' ? { status: 409, body: { error: 'changed', code: 'STATE_CONFLICT' } } : undefined);
  const outcome = await runClaimedTask(fake.claimed(t), { client, registry, log: silentLogger, maxStateConflictRetries: 2 });
  assert.equal(outcome, 'Failed');
  const completes = fake.bodies('/v1/task/complete');
  assert.deepEqual(completes.map((b) => b.status), ['Completed', 'Completed', 'Completed', 'Failed']);
  assert.match(String(t.completions[0]!.error_message), /STATE_CONFLICT/);
  assert.equal(fake.count('/internal/task-fetch'), 2);
});

test('heartbeat 409 TASK_CANCELED aborts the operator and completes Canceled', async () => {
  const t = fake.addTask(makeTask({ operator: 'test_sleep', config: { ms: 20_000 } }));
  fake.on('/v1/task/heartbeat', (req) => (req.body?.task_id === t.payload.task_id ? { status: 409, body: { error: 'canceled', code: 'TASK_CANCELED' } } : undefined));
  const t0 = Date.now();
  const outcome = await runClaimedTask(fake.claimed(t), { client, registry, log: silentLogger, heartbeatMs: 40 });
  assert.equal(outcome, 'Canceled');
  assert.ok(Date.now() - t0 < 3_000, 'did not wait for the operator');
  assert.deepEqual(t.completions.map((c) => c.status), ['Canceled']);
  assert.deepEqual(fake.problems, []);
});

test('heartbeat 403 (stale attempt) stops the run as Lost without completing', async () => {
  const t = fake.addTask(makeTask({ operator: 'test_sleep', config: { ms: 20_000 } }));
  fake.on('/v1/task/heartbeat', (req) => (req.body?.task_id === t.payload.task_id ? { status: 403, body: { error: 'stale', code: 'STALE_ATTEMPT' } } : undefined));
  const outcome = await runClaimedTask(fake.claimed(t), { client, registry, log: silentLogger, heartbeatMs: 40 });
  assert.equal(outcome, 'Lost');
  assert.equal(fake.bodies('/v1/task/complete').filter((b) => b.task_id === t.payload.task_id).length, 0);
  assert.equal(fake.bodies('/v1/task/heartbeat').filter((b) => b.task_id === t.payload.task_id).length, 1, '403 is not retried');
});

test('completion 403 (lease mismatch) returns Lost and does not try again', async () => {
  const t = fake.addTask(makeTask({ operator: 'noop' }));
  fake.on('/v1/task/complete', (req) => (req.body?.task_id === t.payload.task_id ? { status: 403, body: { error: 'lease', code: 'LEASE_MISMATCH' } } : undefined));
  assert.equal(await runClaimedTask(fake.claimed(t), { client, registry, log: silentLogger }), 'Lost');
  assert.equal(fake.bodies('/v1/task/complete').filter((b) => b.task_id === t.payload.task_id).length, 1);
});

test('timeout_seconds: an operator that ignores the abort is abandoned and the attempt completes Failed "timeout"', async () => {
  const t = fake.addTask(makeTask({ operator: 'test_sleep', timeout_seconds: 1, config: { ms: 2_500, ignore_abort: true } }));
  const t0 = Date.now();
  const outcome = await runClaimedTask(fake.claimed(t), { client, registry, log: silentLogger, heartbeatMs: 200 });
  const took = Date.now() - t0;
  assert.equal(outcome, 'Failed');
  assert.ok(took >= 950 && took < 3_000, `took ${took} ms`);
  assert.equal(t.completions.length, 1);
  assert.equal(t.completions[0]!.status, 'Failed');
  assert.match(String(t.completions[0]!.error_message), /^timeout/);
  assert.deepEqual(fake.problems, []);
});

test('unknown operator completes Failed with a clear message and never heartbeats', async () => {
  const t = fake.addTask(makeTask({ operator: 'no_such_operator' }));
  assert.equal(await runClaimedTask(fake.claimed(t), { client, registry, log: silentLogger, heartbeatMs: 10 }), 'Failed');
  assert.match(String(t.completions[0]!.error_message), /unknown operator "no_such_operator"/);
  assert.match(String(t.completions[0]!.error_message), /range_aggregator/);
  assert.equal(fake.count('/v1/task/heartbeat'), 0);
});

test('operator errors and bad operator events complete Failed with a short message', async () => {
  const a = fake.addTask(makeTask({ operator: 'test_fail', config: { message: 'boom: the RPC said no' } }));
  assert.equal(await runClaimedTask(fake.claimed(a), { client, registry, log: silentLogger }), 'Failed');
  assert.equal(a.completions[0]!.error_message, 'boom: the RPC said no');

  const b = fake.addTask(makeTask({ operator: 'test_emit', config: { events: [{ output_index: 5, cursor: 1 }] } }));
  assert.equal(await runClaimedTask(fake.claimed(b), { client, registry, log: silentLogger }), 'Failed');
  assert.match(String(b.completions[0]!.error_message), /events\[0\]: output_index 5 is not an output/);

  const c = fake.addTask(makeTask({ operator: 'range_aggregator', config: { range_size: 0 } }));
  assert.equal(await runClaimedTask(fake.claimed(c), { client, registry, log: silentLogger }), 'Failed');
  assert.match(String(c.completions[0]!.error_message), /range_size/);
});

test('flaky operator: fails on early attempts, succeeds later', async () => {
  const first = fake.addTask(makeTask({ operator: 'test_flaky', attempt: 1, config: { fail_attempts: 1 } }));
  assert.equal(await runClaimedTask(fake.claimed(first), { client, registry, log: silentLogger }), 'Failed');
  const second = fake.addTask(makeTask({ operator: 'test_flaky', attempt: 2, config: { fail_attempts: 1, events: [{ cursor: 1 }] } }));
  assert.equal(await runClaimedTask(fake.claimed(second), { client, registry, log: silentLogger }), 'Completed');
  assert.equal((second.completions[0]!.events as unknown[]).length, 1);
  assert.deepEqual(fake.problems, []);
});

test('a rejected Completed body (4xx) is reported as Failed', async () => {
  const t = fake.addTask(makeTask({ operator: 'noop' }));
  fake.on('/v1/task/complete', (req) =>
    req.body?.task_id === t.payload.task_id && req.body.status === 'Completed'
      ? { status: 413, body: { error: 'request body too large', code: 'PAYLOAD_TOO_LARGE' } }
      : undefined);
  assert.equal(await runClaimedTask(fake.claimed(t), { client, registry, log: silentLogger }), 'Failed');
  assert.match(String(t.completions[0]!.error_message), /PAYLOAD_TOO_LARGE/);
});

test('caller abort (worker shutdown) stops the operator and releases the lease without completing', async () => {
  const t = fake.addTask(makeTask({ operator: 'test_sleep', config: { ms: 20_000 } }));
  const ac = new AbortController();
  setTimeout(() => ac.abort(), 100);
  assert.equal(await runClaimedTask(fake.claimed(t), { client, registry, log: silentLogger, signal: ac.signal }), 'Released');
  assert.equal(fake.count('/v1/task/complete'), 0);
  assert.equal(fake.bodies('/internal/task-release')[0]!.reason, 'shutdown');
});

test('Dispatcher unreachable for the whole lease: Lost (the lease expires and the Dispatcher retries)', async () => {
  const dead = new TaskClient({ baseUrl: 'http://127.0.0.1:1', retries: 1, retryBackoff: { baseMs: 5, maxMs: 10 } });
  const t = fake.addTask(makeTask({ operator: 'noop' }));
  const started = Date.now();
  assert.equal(await runClaimedTask(fake.claimed(t, 2_000), { client: dead, registry, log: silentLogger, heartbeatMs: 60_000 }), 'Lost');
  assert.ok(Date.now() - started < 2_000, 'gave up before the lease ran out');
});
