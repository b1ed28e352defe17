/**
 * Orchestration benchmark: no-op tasks end to end through the whole path (create with outbox,
 * outbox drain to pgqueue, queue receive, claim over HTTP, complete over HTTP, ack) with the
 * Dispatcher in this process and several `trace worker` processes, on real Postgres; then
 * graphile-worker running no-op jobs on the same Postgres as the reference.
 *
 * Workers use the batched contract (`--batch-max`, BENCH_BATCH_MAX, default 100; 1 measures the
 * per-task routes). One JSON line per figure, then `orchestration_ratio_vs_graphile`.
 */
import type { ChildProcess } from 'node:child_process';
import { makeWorkerUtils, runMigrations } from 'graphile-worker';
import { openDb } from '../src/db/open.js';
import { migrate } from '../src/db/migrate.js';
import { createTasks } from '../src/dispatcher/tasks/create.js';
import { createPgDatabase } from '../test/support/db.js';
import { buildDispatcher, TEST_SECRETS } from '../test/support/dispatcher.js';
import { percentile, report, round, spawnJsonChild, until } from './util.js';

const ROOT = new URL('../', import.meta.url).pathname;
const N = Number(process.env.BENCH_TASKS ?? 10_000);
const WORKERS = Number(process.env.BENCH_WORKER_PROCESSES ?? 2);
const CONCURRENCY = Number(process.env.BENCH_WORKER_CONCURRENCY ?? 32);
const LATENCY_SAMPLES = Number(process.env.BENCH_LATENCY_SAMPLES ?? 200);
const BATCH_MAX = Number(process.env.BENCH_BATCH_MAX ?? 100);
/** What the figures are held to: throughput at least graphile-worker's, event-to-claim p50 and p99. */
const TARGETS = { ratio: 1.0, p50_ms: 10, p99_ms: 50 };

const YAML = `name: bench
jobs:
  - name: work
    activation: source
    runtime: ecs_platform
    operator: noop
    source: { kind: manual }
    outputs: 1
`;

async function trace(): Promise<{ tps: number; p50: number; p99: number }> {
  const s = await createPgDatabase('trace_bench');
  const state = await openDb(s.url, { max: 20 });
  const children: ChildProcess[] = [];
  try {
    await migrate(state, 'state');
    const d = await buildDispatcher(state, { settings: { leaseSeconds: 120, requeueAfterSeconds: 600, loopIntervalMs: 1000 } });
    const url = await d.start();
    const dep = await fetch(`${url}/v1/dags/bench/versions?activate=true`, { method: 'POST', headers: { authorization: `Bearer ${d.adminToken}`, 'content-type': 'application/yaml' }, body: YAML });
    if (dep.status !== 201) throw new Error(`deploy failed: ${await dep.text()}`);
    const jobId = (await state.query<{ id: string }>(`SELECT id FROM jobs WHERE name = 'work'`)).rows[0]!.id;
    for (let i = 0; i < WORKERS; i++) {
      children.push(spawnJsonChild(process.execPath, [...(process.env.BENCH_WORKER_NODE_ARGS ?? '').split(' ').filter(Boolean), `${ROOT}bin/trace.mjs`, 'worker', '--concurrency', String(CONCURRENCY), '--batch-max', String(BATCH_MAX), '--worker-id', `bench-${i}`], {
        PATH: process.env.PATH, TRACE_LOG_LEVEL: 'warn',
        TRACE_DISPATCHER_URL: url, TRACE_WORKER_TOKEN: TEST_SECRETS.worker, TRACE_QUEUE_DATABASE_URL: s.url,
      }, () => undefined));
    }
    let seq = 0;
    const create = async (count: number) => {
      for (let off = 0; off < count; off += 1000) {
        const batch = Array.from({ length: Math.min(1000, count - off) }, () => ({ job_id: jobId, dedupe_key: `b:${seq++}`, inputs: [], trigger: { kind: 'manual' } }));
        await state.tx((q) => createTasks(q, batch));
        d.dispatcher.ctx.kickOutbox();
      }
    };
    const completed = async () => (await state.query<{ n: number }>(`SELECT count(*)::int AS n FROM tasks WHERE status = 'Completed'`)).rows[0]!.n;
    // Warm up (workers connecting, JIT, pools).
    await create(500);
    await until('warm-up', async () => (await completed()) === 500, 60_000, 50);

    const t0 = performance.now();
    await create(N);
    await until('all tasks completed', async () => (await completed()) === N + 500, 600_000, 20);
    const tps = N / ((performance.now() - t0) / 1000);

    // Event-to-claim latency on an idle system: one task at a time.
    const lat: number[] = [];
    for (let i = 0; i < LATENCY_SAMPLES; i++) {
      const [row] = await state.tx((q) => createTasks(q, [{ job_id: jobId, dedupe_key: `l:${i}`, inputs: [], trigger: { kind: 'manual' } }]));
      d.dispatcher.ctx.kickOutbox();
      let started: number | undefined;
      await until('claimed', async () => {
        const r = await state.query<{ ms: number | null }>(`SELECT (extract(epoch FROM started_at - created_at) * 1000)::float8 AS ms FROM tasks WHERE id = $1`, [row!.id]);
        started = r.rows[0]?.ms ?? undefined;
        return started !== undefined && started !== null;
      }, 10_000, 2);
      lat.push(started!);
      await new Promise((r) => setTimeout(r, 10));
    }
    await d.stop();
    return { tps, p50: percentile(lat, 50), p99: percentile(lat, 99) };
  } finally {
    for (const c of children) c.kill('SIGTERM');
    await new Promise((r) => setTimeout(r, 300));
    await state.close();
    await s.drop();
  }
}

async function graphile(): Promise<{ tps: number; p50: number; p99: number }> {
  const s = await createPgDatabase('trace_bench_gw');
  const children: ChildProcess[] = [];
  const latencies: number[] = [];
  let ready = 0;
  try {
    await runMigrations({ connectionString: s.url });
    const utils = await makeWorkerUtils({ connectionString: s.url });
    for (let i = 0; i < WORKERS; i++) {
      children.push(spawnJsonChild(process.execPath, [`${ROOT}bench/graphile-child.mjs`, s.url, String(CONCURRENCY)], { PATH: process.env.PATH }, (o) => {
        if (o.ready) ready++;
        if (typeof o.latency_ms === 'number') latencies.push(o.latency_ms);
      }));
    }
    await until('graphile workers ready', async () => ready === WORKERS, 30_000, 50);
    const pending = async () => utils.withPgClient(async (c) => Number((await c.query(`SELECT count(*) AS n FROM graphile_worker.jobs`)).rows[0].n));
    const add = async (count: number) => {
      for (let off = 0; off < count; off += 1000) {
        await utils.addJobs(Array.from({ length: Math.min(1000, count - off) }, () => ({ identifier: 'noop', payload: {} })));
      }
    };
    await add(500);
    await until('warm-up', async () => (await pending()) === 0, 60_000, 50);
    const t0 = performance.now();
    await add(N);
    await until('all jobs done', async () => (await pending()) === 0, 600_000, 20);
    const tps = N / ((performance.now() - t0) / 1000);
    for (let i = 0; i < LATENCY_SAMPLES; i++) {
      const before = latencies.length;
      await utils.addJob('noop', { t: Date.now() });
      await until('job started', async () => latencies.length > before, 10_000, 2);
      await new Promise((r) => setTimeout(r, 10));
    }
    await utils.release();
    return { tps, p50: percentile(latencies, 50), p99: percentile(latencies, 99) };
  } finally {
    for (const c of children) c.kill('SIGTERM');
    await new Promise((r) => setTimeout(r, 300));
    await s.drop();
  }
}

export async function orchestrationBench(): Promise<void> {
  const common = { bench: 'orchestration', tasks: N, worker_processes: WORKERS, worker_concurrency: CONCURRENCY, batch_max: BATCH_MAX, backend: 'postgres' };
  const figure = (system: string, metric: string, value: number, unit: string, extra: Record<string, unknown> = {}) =>
    report({ figure: `orchestration_${metric}`, ...common, system, metric, value, unit, ...extra });
  const t = await trace();
  figure('trace', 'tasks_per_second', round(t.tps, 0), 'tasks/s');
  figure('trace', 'event_to_claim_p50', round(t.p50), 'ms', { target: TARGETS.p50_ms, meets_target: t.p50 < TARGETS.p50_ms });
  figure('trace', 'event_to_claim_p99', round(t.p99), 'ms', { target: TARGETS.p99_ms, meets_target: t.p99 < TARGETS.p99_ms });
  if (process.env.BENCH_SYSTEMS === 'trace') return;
  const g = await graphile();
  figure('graphile-worker', 'tasks_per_second', round(g.tps, 0), 'tasks/s');
  figure('graphile-worker', 'event_to_claim_p50', round(g.p50), 'ms');
  figure('graphile-worker', 'event_to_claim_p99', round(g.p99), 'ms');
  const ratio = t.tps / g.tps;
  report({
    figure: 'orchestration_ratio_vs_graphile', ...common, system: 'trace', metric: 'throughput_vs_reference',
    value: round(ratio, 3), unit: 'ratio', trace_tasks_per_second: round(t.tps, 0), graphile_tasks_per_second: round(g.tps, 0),
    target: TARGETS.ratio, meets_target: ratio >= TARGETS.ratio,
  });
}
