/**
 * Runners keep finished work through outages (src/worker/lease.ts): a completion the Dispatcher
 * cannot take right now is retried with backoff until the lease is about to run out, a heartbeat
 * that moves the lease moves that deadline, and nothing is sent once it has passed. An operator
 * that failed on an unreachable dependency, and a run stopped by shutdown, give the lease back
 * through the worker-only release instead of failing the attempt.
 */
import { test, before, after, beforeEach } from 'node:test';
import assert from 'node:assert/strict';
import { silentLogger } from '../../src/core/log.js';
import { operatorRegistry } from '../../src/operators/registry.js';
import { runClaimedTask } from '../../src/worker/run-task.js';
import { TaskClient } from '../../src/worker/task-client.js';
import { LeaseClock, callWhileLeased, isTransientTaskError } from '../../src/worker/lease.js';
import { DependencyUnavailable } from '../../src/core/dependency.js';
import type { Operator } from '../../src/operators/types.js';
import { FakeDispatcher, makeTask, WORKER_TOKEN } from './fake-dispatcher.js';

const registry = operatorRegistry({ includeTestOperators: true });
// An operator whose database is down, the way the Postgres adapter reports it.
const dbDown: Operator = {
  info: { ...registry.get('noop')!.info, name: 'db_down' },
  async run() {
    throw new DependencyUnavailable('data_database', 'ECONNREFUSED');
  },
};
registry.set('db_down', dbDown);

let fake: FakeDispatcher;
let client: TaskClient;
before(async () => {
  fake = await new FakeDispatcher().start();
  client = new TaskClient({ baseUrl: fake.url, workerToken: WORKER_TOKEN, retries: 0 });
});
after(async () => {
  await fake.close();
});
beforeEach(() => {
  fake.requests.length = 0;
  fake.problems.length = 0;
  fake.clearHandlers();
});

const unavailable = { status: 503, body: { error: 'the state database is unreachable (ECONNRESET)', code: 'STATE_DATABASE_UNAVAILABLE' } };

test('a completion is retried through an outage shorter than the lease, and the work is kept', async () => {
  const t = fake.addTask(makeTask({ operator: 'noop' }));
  const until = Date.now() + 2_500;
  fake.on('/v1/task/complete', () => (Date.now() < until ? unavailable : undefined));
  const outcome = await runClaimedTask(fake.claimed(t, 30_000), { client, registry, log: silentLogger });
  assert.equal(outcome, 'Completed');
  assert.ok(fake.count('/v1/task/complete') >= 4, `only ${fake.count('/v1/task/complete')} tries`);
  assert.equal(t.status, 'Completed');
  assert.deepEqual(fake.problems, []);
});

test('retrying stops before the lease runs out; nothing is sent after it', async () => {
  const t = fake.addTask(makeTask({ operator: 'noop' }));
  fake.on('/v1/task/complete', () => unavailable);
  const leaseMs = 3_000;
  const started = Date.now();
  const outcome = await runClaimedTask(fake.claimed(t, leaseMs), { client, registry, log: silentLogger, heartbeatMs: 60_000 });
  const took = Date.now() - started;
  assert.equal(outcome, 'Lost');
  assert.ok(took < leaseMs, `gave up after ${took} ms, past the lease`);
  assert.ok(took > leaseMs / 3, `gave up after only ${took} ms`);
  const last = Math.max(...fake.requests.filter((r) => r.path === '/v1/task/complete').map((r) => r.at));
  assert.ok(last < started + leaseMs, 'a try after the lease expired');
  assert.ok(fake.count('/v1/task/complete') >= 3);
});

test('an accepted heartbeat moves the retry deadline with the lease', async () => {
  const t = fake.addTask(makeTask({ operator: 'test_sleep', config: { ms: 100 } }));
  const until = Date.now() + 3_000;
  fake.on('/v1/task/complete', () => (Date.now() < until ? unavailable : undefined));
  // Claimed with 1.5 s left; the heartbeat answers with a lease two minutes out.
  const outcome = await runClaimedTask(fake.claimed(t, 1_500), { client, registry, log: silentLogger, heartbeatMs: 50 });
  assert.equal(outcome, 'Completed');
  assert.ok(fake.count('/v1/task/heartbeat') >= 1);
});

test('4xx answers are final: no retry', async () => {
  const t = fake.addTask(makeTask({ operator: 'noop' }));
  fake.on('/v1/task/complete', () => ({ status: 403, body: { error: 'stale', code: 'STALE_ATTEMPT' } }));
  assert.equal(await runClaimedTask(fake.claimed(t), { client, registry, log: silentLogger }), 'Lost');
  assert.equal(fake.count('/v1/task/complete'), 1);
});

test('an operator that failed on an unreachable dependency releases the lease (infrastructure), naming it', async () => {
  const t = fake.addTask(makeTask({ operator: 'db_down' }));
  const outcome = await runClaimedTask(fake.claimed(t), { client, registry, log: silentLogger });
  assert.equal(outcome, 'Released');
  assert.equal(fake.count('/v1/task/complete'), 0, 'no Failed completion: the attempt must not count');
  const rel = fake.requests.filter((r) => r.path === '/internal/task-release');
  assert.equal(rel.length, 1);
  assert.deepEqual({ ...rel[0]!.body, error_message: undefined }, {
    reason: 'infrastructure', dependency: 'data_database', task_id: t.payload.task_id, attempt: 1, lease_token: t.lease_token, error_message: undefined,
  });
  assert.match(String(rel[0]!.body!.error_message), /the data database is unreachable \(ECONNREFUSED\)/);
  assert.equal(rel[0]!.headers['x-trace-worker-token'], WORKER_TOKEN);
  assert.equal(rel[0]!.headers['x-trace-task-capability'], undefined);
  assert.deepEqual(fake.problems, []);
});

test('without the worker token (no release) an infrastructure failure completes Failed with the real cause', async () => {
  const t = fake.addTask(makeTask({ operator: 'db_down' }));
  const capOnly = new TaskClient({ baseUrl: fake.url, retries: 0 });
  const outcome = await runClaimedTask(fake.claimed(t), { client: capOnly, registry, log: silentLogger });
  assert.equal(outcome, 'Failed');
  assert.match(String(fake.bodies('/v1/task/complete')[0]!.error_message), /data database is unreachable/);
});

test('shutdown after the grace period releases the lease instead of abandoning it', async () => {
  const t = fake.addTask(makeTask({ operator: 'test_sleep', config: { ms: 10_000 } }));
  const abort = new AbortController();
  const run = runClaimedTask(fake.claimed(t), { client, registry, log: silentLogger, signal: abort.signal });
  await new Promise((r) => setTimeout(r, 100));
  abort.abort();
  assert.equal(await run, 'Released');
  assert.equal(fake.bodies('/internal/task-release')[0]!.reason, 'shutdown');
  assert.equal(fake.count('/v1/task/complete'), 0);
  assert.equal(t.status, 'Queued');
});

test('callWhileLeased: transient errors only, bounded by the earlier of the lease and notAfter', async () => {
  assert.equal(isTransientTaskError(new DependencyUnavailable('queue', 'x')), true);
  assert.equal(isTransientTaskError({ status: 409, code: 'X' }), false);
  assert.equal(isTransientTaskError(Object.assign(new Error('x'), { code: 'ECONNRESET' })), true);
  const lease = new LeaseClock(new Date(Date.now() + 60_000).toISOString());
  let tries = 0;
  const starts: number[] = [];
  const notAfter = Date.now() + 800;
  await assert.rejects(callWhileLeased(lease, async () => {
    tries++;
    starts.push(Date.now());
    throw Object.assign(new Error('down'), { code: 'ECONNREFUSED' });
  }, { what: 'x', notAfter }), /down/);
  assert.ok(starts.every((at) => at < notAfter), `a try started after notAfter: ${starts.map((at) => at - notAfter).join(', ')} ms`);
  assert.ok(Date.now() >= notAfter - 400, 'the time before notAfter was used, not given up early');
  assert.ok(tries >= 2);
  tries = 0;
  await assert.rejects(callWhileLeased(lease, async () => {
    tries++;
    throw Object.assign(new Error('no'), { status: 400, code: 'BAD' });
  }, { what: 'x' }), /no/);
  assert.equal(tries, 1);
});

test('a failed heartbeat is retried within a second or so, not after a whole interval', async () => {
  const t = fake.addTask(makeTask({ operator: 'test_sleep', config: { ms: 4_000 } }));
  let first = true;
  fake.on('/v1/task/heartbeat', () => {
    if (!first) return undefined;
    first = false;
    return unavailable;
  });
  assert.equal(await runClaimedTask(fake.claimed(t), { client, registry, log: silentLogger, heartbeatMs: 2_500 }), 'Completed');
  const beats = fake.requests.filter((r) => r.path === '/v1/task/heartbeat').map((r) => r.at);
  assert.ok(beats.length >= 2, `only ${beats.length} heartbeats`);
  const gap = beats[1]! - beats[0]!;
  assert.ok(gap < 2_000, `the retry came ${gap} ms after the failure`);
});

test('a shutdown past its grace period ends a completion retry, so the process can exit', async () => {
  const t = fake.addTask(makeTask({ operator: 'noop' }));
  fake.on('/v1/task/complete', () => unavailable);
  const abort = new AbortController();
  const started = Date.now();
  setTimeout(() => abort.abort(), 500);
  const outcome = await runClaimedTask(fake.claimed(t, 120_000), { client, registry, log: silentLogger, signal: abort.signal });
  assert.equal(outcome, 'Lost');
  assert.ok(Date.now() - started < 8_000, `still retrying ${Date.now() - started} ms after the start`);
});
