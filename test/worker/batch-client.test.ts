/**
 * The worker on the batched contract: `trace worker` end to end against the real Dispatcher
 * (through a recording HTTP proxy, to see which routes it used), `--batch-max 1`, per-item
 * settling of batched heartbeats, and the fallback to the per-task routes against a Dispatcher
 * without the batch routes.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { silentLogger } from '../../src/core/log.js';
import { PgQueue } from '../../src/queue/pgqueue.js';
import { TASK_QUEUE } from '../../src/queue/queue.js';
import { operatorRegistry } from '../../src/operators/registry.js';
import { TaskApiError, TaskClient } from '../../src/worker/task-client.js';
import { BatchingTaskClient, workerTaskClient } from '../../src/worker/batching.js';
import { startWorker } from '../../src/worker/worker.js';
import { runWorkerProcess } from '../../src/worker/main.js';
import type { ClaimedTask } from '../../src/worker/payload.js';
import { BACKENDS, freshDbs } from '../support/db.js';
import { startPlatform, waitFor, type TestPlatform } from '../support/platform.js';
import { deploy, trigger } from '../support/drive.js';
import { FakeDispatcher, makeTask, WORKER_TOKEN } from './fake-dispatcher.js';

const NEEDS_PG = { skip: !BACKENDS.includes('postgres') && 'needs real Postgres' };

const NOOP_DAG = `name: many
jobs:
  - name: work
    activation: source
    runtime: ecs_platform
    operator: noop
    source: { kind: manual }
    outputs: 1
`;

interface Seen {
  path: string;
  /** Items (or task ids) of a batch request. */
  size?: number;
}

/** A real HTTP proxy in front of the Dispatcher that records each request's path and batch size. */
async function recordingProxy(target: string): Promise<{ url: string; seen: Seen[]; close(): Promise<void> }> {
  const seen: Seen[] = [];
  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      void (async () => {
        const body = Buffer.concat(chunks);
        const path = (req.url ?? '/').split('?')[0]!;
        const s: Seen = { path };
        if (path.endsWith('-batch')) {
          const j = JSON.parse(body.toString('utf8')) as { items?: unknown[]; task_ids?: unknown[] };
          s.size = (j.items ?? j.task_ids ?? []).length;
        }
        seen.push(s);
        const headers: Record<string, string> = {};
        for (const h of ['content-type', 'accept', 'x-trace-worker-token', 'x-trace-task-capability']) {
          const v = req.headers[h];
          if (typeof v === 'string') headers[h] = v;
        }
        const r = await fetch(`${target}${req.url}`, { method: req.method!, headers, ...(body.length > 0 ? { body } : {}) });
        res.writeHead(r.status, { 'content-type': r.headers.get('content-type') ?? 'application/json' });
        res.end(Buffer.from(await r.arrayBuffer()));
      })().catch(() => {
        res.writeHead(502).end();
      });
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    seen,
    close: () => new Promise<void>((r) => {
      server.closeAllConnections();
      server.close(() => r());
    }),
  };
}

async function statuses(p: TestPlatform, ids: string[]): Promise<Map<string, { status: string; attempts: number }>> {
  const r = await p.dbs.state.query<{ id: string; status: string; attempts: number }>(
    `SELECT t.id, t.status, (SELECT count(*)::int FROM task_attempts a WHERE a.task_id = t.id) AS attempts FROM tasks t WHERE t.id = ANY ($1::uuid[])`, [ids]);
  return new Map(r.rows.map((x) => [x.id, { status: x.status, attempts: x.attempts }]));
}

/** Runs `trace worker` (in process) with `args` until every one of `n` fresh tasks is Completed; returns the requests it made. */
async function runTasks(p: TestPlatform, n: number, args: string[]): Promise<Seen[]> {
  const proxy = await recordingProxy(p.url);
  const ac = new AbortController();
  try {
    // The wake-ups pile up before the worker starts, so its first receive takes many at once.
    const ids: string[] = [];
    for (let i = 0; i < n; i++) ids.push(await trigger(p, 'many', 'work'));
    await waitFor('wake-ups queued', async () => (await p.queue.depth(TASK_QUEUE)) >= n, 30_000);
    const proc = runWorkerProcess(
      { TRACE_DISPATCHER_URL: proxy.url, TRACE_WORKER_TOKEN: p.info.worker_token, TRACE_QUEUE_DATABASE_URL: p.stateUrl!, NODE_ENV: 'test', TRACE_LOG_LEVEL: 'error' },
      ['--concurrency', '32', '--worker-id', 'batch:1', ...args],
      { signal: ac.signal, stopGraceMs: 2_000 },
    );
    await waitFor('all tasks completed', async () => [...(await statuses(p, ids)).values()].filter((s) => s.status === 'Completed').length === n, 60_000);
    ac.abort();
    await proc;
    for (const [id, s] of await statuses(p, ids)) assert.equal(s.attempts, 1, `task ${id} ran once`);
    return proxy.seen;
  } finally {
    ac.abort();
    await proxy.close();
  }
}

test('trace worker claims and completes through the batch routes by default, and per task with --batch-max 1', NEEDS_PG, async (t) => {
  const p = await startPlatform('postgres', { workers: 0, settings: { leaseSeconds: 120 } });
  try {
    await deploy(p, NOOP_DAG);

    await t.test('default: batches', async () => {
      const seen = await runTasks(p, 40, []);
      const paths = new Set(seen.map((s) => s.path));
      assert.ok(paths.has('/internal/task-claim-batch'), 'claims went through the batch route');
      assert.ok(paths.has('/v1/task/complete-batch'), 'completions went through the batch route');
      assert.ok(!paths.has('/internal/task-claim') && !paths.has('/v1/task/complete') && !paths.has('/internal/task-fetch'), `no per-task calls: ${[...paths].join(', ')}`);
      const claims = seen.filter((s) => s.path === '/internal/task-claim-batch');
      assert.ok(Math.max(...claims.map((s) => s.size!)) > 1, 'one claim request carried several tasks');
      assert.ok(claims.every((s) => s.size! <= 32), 'never more than the free slots');
      assert.equal(claims.reduce((a, s) => a + s.size!, 0), 40, 'each wake-up claimed once');
      const completes = seen.filter((s) => s.path === '/v1/task/complete-batch');
      assert.equal(completes.reduce((a, s) => a + s.size!, 0), 40);
      assert.ok(completes.length < 40, 'completions shared requests');
    });

    await t.test('--batch-max 1: the per-task routes only', async () => {
      const seen = await runTasks(p, 5, ['--batch-max', '1']);
      assert.ok(seen.every((s) => !s.path.endsWith('-batch')), `no batch route: ${seen.map((s) => s.path).join(', ')}`);
      assert.equal(seen.filter((s) => s.path === '/internal/task-claim').length, 5);
      assert.equal(seen.filter((s) => s.path === '/v1/task/complete').length, 5);
    });

    await t.test('batched heartbeats settle one by one: a stale lease is refused, the others extended', async () => {
      const proxy = await recordingProxy(p.url);
      try {
        const client = new BatchingTaskClient(new TaskClient({ baseUrl: proxy.url, workerToken: p.info.worker_token }), { batchMax: 10 });
        const ids: string[] = [];
        for (let i = 0; i < 5; i++) ids.push(await trigger(p, 'many', 'work'));
        const claimed = await Promise.all(client.claimMany(ids, 'hb:1'));
        const refs = claimed.map((c) => {
          assert.equal(c.status, 'Claimed');
          const ct = c as ClaimedTask & { status: 'Claimed' };
          return { task_id: ct.task.task_id, attempt: ct.attempt, lease_token: ct.lease_token, capability_token: ct.capability_token };
        });
        const wrong = { ...refs[4]!, lease_token: refs[0]!.lease_token };
        const results = await Promise.allSettled([...refs.slice(0, 4), wrong].map((r) => client.heartbeat(r)));
        for (const r of results.slice(0, 4)) assert.equal(r.status, 'fulfilled');
        const bad = results[4]!;
        assert.equal(bad.status, 'rejected');
        assert.ok(bad.reason instanceof TaskApiError);
        assert.equal(bad.reason.status, 403);
        assert.equal(bad.reason.code, 'LEASE_MISMATCH');
        const hb = proxy.seen.filter((s) => s.path === '/v1/task/heartbeat-batch');
        assert.equal(hb.reduce((a, s) => a + s.size!, 0), 5);
        assert.ok(hb.length < 5, 'heartbeats made while one was in flight shared a request');
        assert.ok(!proxy.seen.some((s) => s.path === '/v1/task/heartbeat'));
        // Completions settle one by one too; the refused lease is still Running.
        const done = await Promise.allSettled([...refs.slice(0, 4), wrong].map((r) => client.complete(r, { status: 'Completed' })));
        assert.deepEqual(done.map((d) => d.status), ['fulfilled', 'fulfilled', 'fulfilled', 'fulfilled', 'rejected']);
        const st = await statuses(p, ids);
        assert.deepEqual(ids.map((id) => st.get(id)!.status), ['Completed', 'Completed', 'Completed', 'Completed', 'Running']);
      } finally {
        await proxy.close();
      }
    });
  } finally {
    await p.close();
  }
});

for (const backend of BACKENDS) {
  test(`${backend}: against a Dispatcher without the batch routes the worker falls back to the per-task routes`, async () => {
    const dbs = await freshDbs(backend);
    const fake = await new FakeDispatcher().start();
    const queue = new PgQueue(dbs.state);
    const client = new BatchingTaskClient(new TaskClient({ baseUrl: fake.url, workerToken: WORKER_TOKEN }), { log: silentLogger });
    try {
      const tasks = Array.from({ length: 6 }, () => fake.addTask(makeTask({ operator: 'noop' })));
      await queue.sendBatch(TASK_QUEUE, tasks.map((x) => ({ task_id: x.payload.task_id })));
      const worker = startWorker({ queue, client, workerId: 'fallback:1', concurrency: 8, registry: operatorRegistry({ includeTestOperators: true }), log: silentLogger, pollWaitMs: 200 });
      await waitFor('all tasks completed', async () => tasks.every((x) => x.status === 'Completed'), 30_000);
      await worker.stop({ graceMs: 1_000 });
      assert.equal(client.batched, false, 'the missing route was noticed');
      const paths = fake.requests.map((r) => r.path);
      assert.equal(paths.filter((x) => x === '/internal/task-claim-batch').length, 1, 'asked once, then per task');
      assert.ok(!paths.some((x) => x === '/v1/task/complete-batch' || x === '/v1/task/heartbeat-batch'));
      assert.equal(paths.filter((x) => x === '/internal/task-claim').length, 6);
      assert.equal(paths.filter((x) => x === '/v1/task/complete').length, 6);
      for (const x of tasks) assert.equal(x.completions.length, 1);
      assert.deepEqual(fake.problems, []);
    } finally {
      await queue.close();
      await fake.close();
      await dbs.close();
    }
  });
}

test('workerTaskClient (trace worker and the workers of trace lite up) batches by default; batchMax 1 is the per-task client', () => {
  const opts = { baseUrl: 'http://127.0.0.1:1', workerToken: WORKER_TOKEN };
  assert.ok(workerTaskClient(opts) instanceof BatchingTaskClient);
  assert.ok(workerTaskClient({ ...opts, batchMax: 5 }) instanceof BatchingTaskClient);
  const plain = workerTaskClient({ ...opts, batchMax: 1 });
  assert.ok(plain instanceof TaskClient && !(plain instanceof BatchingTaskClient));
});
