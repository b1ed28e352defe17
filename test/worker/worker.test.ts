/**
 * The queue-woken worker loop against a real pgqueue (Postgres and embedded PGlite) and the
 * fake Dispatcher over real HTTP.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { silentLogger } from '../../src/core/log.js';
import { PgQueue } from '../../src/queue/pgqueue.js';
import { TASK_QUEUE } from '../../src/queue/queue.js';
import { operatorRegistry } from '../../src/operators/registry.js';
import { TaskClient } from '../../src/worker/task-client.js';
import { startWorker } from '../../src/worker/worker.js';
import { parseWorkerArgs, runWorkerProcess } from '../../src/worker/main.js';
import { BACKENDS, freshDbs } from '../support/db.js';
import { FakeDispatcher, makeTask, WORKER_TOKEN } from './fake-dispatcher.js';

const registry = operatorRegistry({ includeTestOperators: true });
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function until(what: string, cond: () => boolean | Promise<boolean>, ms = 15_000): Promise<void> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (await cond()) return;
    await sleep(20);
  }
  assert.fail(`timed out waiting for ${what}`);
}

for (const backend of BACKENDS) {
  test(`${backend}: worker drains wake-ups within its concurrency, acks NotClaimed and junk, extends visibility, stops gracefully`, async () => {
    const dbs = await freshDbs(backend);
    const fake = await new FakeDispatcher().start();
    const queue = new PgQueue(dbs.state);
    const client = new TaskClient({ baseUrl: fake.url, workerToken: WORKER_TOKEN });
    try {
      // Track how many tasks run at once (claimed and not yet completed).
      let running = 0;
      let maxRunning = 0;
      fake.on('/internal/task-claim', (req) => {
        if (fake.tasks.get(String(req.body?.task_id))?.status === 'Queued') maxRunning = Math.max(maxRunning, ++running);
        return undefined;
      });
      fake.on('/v1/task/complete', () => {
        running--;
        return undefined;
      });

      // 1. Five tasks, a duplicate wake-up, an unknown task and a malformed message.
      // (each takes a moment so that concurrency is observable)
      const tasks = Array.from({ length: 5 }, () => fake.addTask(makeTask({ operator: 'test_sleep', config: { ms: 150 } })));
      await queue.sendBatch(TASK_QUEUE, [
        ...tasks.map((t) => ({ task_id: t.payload.task_id })),
        { task_id: tasks[0]!.payload.task_id },
        { task_id: '00000000-0000-4000-8000-00000000dead' },
        { nope: true },
      ]);
      const worker = startWorker({ queue, client, workerId: 'test:1', concurrency: 2, registry, log: silentLogger, pollWaitMs: 200, visibilityTimeoutSeconds: 1 });
      await until('all five tasks completed', () => tasks.every((t) => t.status === 'Completed'));
      await until('queue drained', async () => (await queue.depth(TASK_QUEUE)) === 0);
      assert.equal(maxRunning, 2, 'ran two at a time, never more');
      for (const c of fake.requests.filter((r) => r.path === '/internal/task-claim')) assert.equal(c.body?.worker_id, 'test:1');
      assert.deepEqual(fake.problems, []);

      // 2. A task longer than the visibility timeout: the wake-up stays hidden (claimed once).
      const long = fake.addTask(makeTask({ operator: 'test_sleep', config: { ms: 2_300 } }));
      await queue.send(TASK_QUEUE, { task_id: long.payload.task_id });
      await until('long task completed', () => long.status === 'Completed');
      const claims = fake.bodies('/internal/task-claim').filter((b) => b.task_id === long.payload.task_id).length;
      assert.equal(claims, 1, 'visibility was extended while the task ran');
      await until('queue drained again', async () => (await queue.depth(TASK_QUEUE)) === 0);

      // 3. Graceful stop: a running task gets the grace period, then its lease is released (not
      // completed, not left to expire): the Dispatcher queues it again at once.
      const stuck = fake.addTask(makeTask({ operator: 'test_sleep', config: { ms: 60_000 } }));
      await queue.send(TASK_QUEUE, { task_id: stuck.payload.task_id });
      await until('stuck task claimed', () => stuck.status === 'Running');
      assert.equal(worker.inFlight, 1);
      const t0 = Date.now();
      await worker.stop({ graceMs: 300 });
      assert.ok(Date.now() - t0 < 5_000, 'stop() returned promptly after the grace period');
      assert.equal(stuck.status, 'Queued', 'released, not completed');
      assert.equal(fake.bodies('/v1/task/complete').filter((b) => b.task_id === stuck.payload.task_id).length, 0);
      assert.deepEqual(fake.bodies('/internal/task-release').map((b) => [b.task_id, b.reason]), [[stuck.payload.task_id, 'shutdown']]);
      assert.equal(worker.inFlight, 0);

      // After stop nothing is received any more.
      const after = fake.addTask(makeTask({ operator: 'noop' }));
      await queue.send(TASK_QUEUE, { task_id: after.payload.task_id });
      await sleep(400);
      assert.equal(after.status, 'Queued');
      assert.deepEqual(fake.problems, []);
    } finally {
      await queue.close();
      await fake.close();
      await dbs.close();
    }
  });
}

test('trace worker flags are validated with one-line reasons', () => {
  assert.deepEqual(parseWorkerArgs([]), { concurrency: 4, includeTestOperators: false });
  assert.deepEqual(parseWorkerArgs(['--concurrency', '8', '--worker-id=w1']), { concurrency: 8, includeTestOperators: false, workerId: 'w1' });
  assert.throws(() => parseWorkerArgs(['--concurrency', '0']), /--concurrency must be an integer from 1 to 256/);
  assert.throws(() => parseWorkerArgs(['--concurrency']), /needs a value/);
  assert.throws(() => parseWorkerArgs(['--bogus']), /unknown argument "--bogus"/);
});

test('trace worker refuses to start without a worker token or with a non-postgres queue URL', async () => {
  await assert.rejects(runWorkerProcess({ TRACE_QUEUE_DATABASE_URL: 'postgres://x@127.0.0.1/q' }, []), /TRACE_WORKER_TOKEN is required/);
  await assert.rejects(runWorkerProcess({ TRACE_WORKER_TOKEN: 't' }, []), /TRACE_QUEUE_DATABASE_URL is required/);
  await assert.rejects(runWorkerProcess({ TRACE_WORKER_TOKEN: 't', TRACE_STATE_DATABASE_URL: 'postgres://x@127.0.0.1/s' }, []), /never use the state database URL/);
  await assert.rejects(runWorkerProcess({ TRACE_WORKER_TOKEN: 't', TRACE_QUEUE_DATABASE_URL: 'pglite:///tmp/x' }, []), /must be a postgres:\/\/ URL/);
});

test('runWorkerProcess: wires env, queue and Dispatcher, runs a task, stops on signal', { skip: !BACKENDS.includes('postgres') && 'needs real Postgres' }, async () => {
  const dbs = await freshDbs('postgres');
  const fake = await new FakeDispatcher().start();
  const queue = new PgQueue(dbs.state);
  const ac = new AbortController();
  try {
    const t = fake.addTask(makeTask({ operator: 'test_emit', config: { events: [{ cursor: 9 }] } }));
    await queue.send(TASK_QUEUE, { task_id: t.payload.task_id });
    const proc = runWorkerProcess(
      { TRACE_DISPATCHER_URL: fake.url, TRACE_WORKER_TOKEN: WORKER_TOKEN, TRACE_QUEUE_DATABASE_URL: dbs.stateUrl, NODE_ENV: 'test' },
      ['--concurrency', '2', '--worker-id', 'proc:1', '--include-test-operators'],
      { signal: ac.signal, stopGraceMs: 500 },
    );
    await until('task completed by the process', () => t.status === 'Completed');
    assert.equal(fake.bodies('/internal/task-claim')[0]!.worker_id, 'proc:1');
    assert.deepEqual((t.completions[0]!.events as Array<{ cursor: number }>).map((e) => e.cursor), [9]);
    ac.abort();
    await proc;
    assert.deepEqual(fake.problems, []);
  } finally {
    ac.abort();
    await queue.close();
    await fake.close();
    await dbs.close();
  }
});
