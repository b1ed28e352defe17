/**
 * UDF platform benchmark, on real Postgres:
 *
 * 1. Sink throughput: JSONL alert-event batches (BENCH_SINK_ROWS rows in batches of
 *    BENCH_SINK_BATCH) already in the object store, their pointer messages on the `buffers`
 *    queue; the sink drains them (read, validate every row, one upsert transaction per batch,
 *    ledger). Figures: rows/s for new rows, and rows/s for a second pass of the same rows (all
 *    duplicates: ON CONFLICT DO NOTHING), dataset-event reporting stubbed out.
 * 2. UDF invocation overhead: the end-to-end time of a no-op bundle's task (`tasks.created_at`
 *    to `completed_at`: outbox invoke, lease, bundle load and hash check, extract, child process,
 *    completion over HTTP), p50 and p99, for a Node and a Python bundle, with a trusted `noop`
 *    operator on `runtime: lambda` (in-process, no bundle) as the reference measured in the same run.
 */
import { randomUUID } from 'node:crypto';
import { join } from 'node:path';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { freshDbs } from '../test/support/db.js';
import { buildUdfPlatform, deployDag, registerParquetDataset, uploadBundle } from '../test/udf-platform/support.js';
import { goodBundle } from '../test/udf/support/zips.js';
import { FileObjectStore } from '../src/objectstore/file.js';
import { PgQueue } from '../src/queue/pgqueue.js';
import { startSink } from '../src/sink/sink.js';
import { silentLogger } from '../src/core/log.js';
import { percentile, report, round, until } from './util.js';

const SINK_ROWS = Number(process.env.BENCH_SINK_ROWS ?? 100_000);
const SINK_BATCH = Number(process.env.BENCH_SINK_BATCH ?? 5_000);
const SAMPLES = Number(process.env.BENCH_UDF_SAMPLES ?? 40);

async function sinkThroughput(): Promise<{ insertRps: number; dupRps: number; batches: number }> {
  const dbs = await freshDbs('postgres', { poolMax: 10 });
  const home = await mkdtemp(join(tmpdir(), 'trace-bench-sink-'));
  const store = new FileObjectStore(join(home, 'objects'));
  const queue = new PgQueue(dbs.state);
  try {
    const org = randomUUID();
    const def = randomUUID();
    const now = new Date().toISOString();
    const messages: Array<Record<string, unknown>> = [];
    const batches = Math.ceil(SINK_ROWS / SINK_BATCH);
    const taskId = randomUUID();
    for (let b = 0; b < batches; b++) {
      const lines: string[] = [];
      for (let i = b * SINK_BATCH; i < Math.min(SINK_ROWS, (b + 1) * SINK_BATCH); i++) {
        lines.push(JSON.stringify({ alert_definition_id: def, dedupe_key: `bench:${i}`, event_time: now, severity: 'warning', payload: { chain_id: 1, block_number: i, tx_hash: `0x${i.toString(16).padStart(64, '0')}` } }));
      }
      const text = `${lines.join('\n')}\n`;
      const key = `buffers/${taskId}/1/batch-${b}.jsonl`;
      await store.put(key, text);
      messages.push({ org_id: org, task_id: taskId, attempt: 1, job_id: null, batch_uri: store.url(key), content_type: 'application/jsonl', batch_size_bytes: Buffer.byteLength(text), dedupe_scope: 'alert_events' });
    }
    const sink = startSink({ data: dbs.data, queue, store, log: silentLogger, events: { report: async () => ({ accepted: 1, routed: 1 }) }, batchSize: 10 }, false);
    const pass = async (): Promise<number> => {
      await queue.sendBatch('buffers', messages.map((m) => ({ ...m, publish_id: randomUUID() })));
      const t0 = performance.now();
      while ((await sink.drainOnce()) > 0) { /* drain */ }
      return performance.now() - t0;
    };
    const insertMs = await pass();
    const inserted = Number((await dbs.data.query<{ n: number }>(`SELECT count(*)::int AS n FROM alert_events`)).rows[0]!.n);
    if (inserted !== SINK_ROWS) throw new Error(`expected ${SINK_ROWS} rows, found ${inserted}`);
    const dupMs = await pass();
    const after = Number((await dbs.data.query<{ n: number }>(`SELECT count(*)::int AS n FROM alert_events`)).rows[0]!.n);
    if (after !== SINK_ROWS) throw new Error('the duplicate pass added rows');
    await sink.stop();
    return { insertRps: SINK_ROWS / (insertMs / 1000), dupRps: SINK_ROWS / (dupMs / 1000), batches };
  } finally {
    await queue.close();
    await dbs.close();
    await rm(home, { recursive: true, force: true });
  }
}

async function invocationOverhead(): Promise<Record<string, { p50: number; p99: number }>> {
  const p = await buildUdfPlatform('postgres', { sink: false, delivery: false, worker: false, settings: { leaseSeconds: 60, loopIntervalMs: 1000 } });
  try {
    await registerParquetDataset(p, 'bench_input', 'SELECT 1::INTEGER AS x');
    const node = await uploadBundle(p, await goodBundle([{ name: 'index.mjs', data: `process.stdout.write('{}');\n` }], { runtime: 'node', entrypoint: 'index.mjs' }));
    const py = await uploadBundle(p, await goodBundle([{ name: 'main.py', data: `import sys\nsys.stdout.write('{}')\n` }], { runtime: 'python', entrypoint: 'main.py' }));
    const job = (name: string, operator: string, udf?: { id: string; entry: string }) => `
  - name: ${name}
    activation: reactive
    runtime: lambda
    operator: ${operator}
    execution_strategy: PerUpdate
    inputs:
      - from: { dataset: bench_input }
    outputs: 1
    update_strategy: replace${udf ? `\n    udf:\n      bundle_id: "${udf.id}"\n      entrypoint: ${udf.entry}` : ''}`;
    await deployDag(p, `name: udf_bench\njobs:${job('node_noop', 'udf', { id: node.bundle_id, entry: 'index.mjs' })}${job('python_noop', 'udf', { id: py.bundle_id, entry: 'main.py' })}${job('trusted_noop', 'noop')}\n`);
    const out: Record<string, { p50: number; p99: number }> = {};
    for (const name of ['trusted_noop', 'node_noop', 'python_noop']) {
      const ms: number[] = [];
      for (let i = 0; i < SAMPLES + 3; i++) {
        const r = await p.api('POST', `/v1/dags/udf_bench/jobs/${name}/trigger`, { cursor: i + 1 });
        const id = r.body.task_id as string;
        let row: { status: string; ms: number } | undefined;
        await until(`${name} task`, async () => {
          row = (await p.dbs.state.query<{ status: string; ms: number }>(
            `SELECT status, extract(epoch FROM (completed_at - created_at)) * 1000 AS ms FROM tasks WHERE id = $1`, [id])).rows[0];
          return row?.status === 'Completed' || row?.status === 'Failed';
        }, 60_000, 2);
        if (row!.status !== 'Completed') throw new Error(`${name} task failed`);
        if (i >= 3) ms.push(Number(row!.ms)); // the first runs warm up (sandbox probe, JIT)
      }
      out[name] = { p50: percentile(ms, 50), p99: percentile(ms, 99) };
    }
    return out;
  } finally {
    await p.close();
  }
}

export async function udfBench(): Promise<void> {
  const s = await sinkThroughput();
  const common = { bench: 'udf', backend: 'postgres' };
  report({ ...common, system: 'trace', metric: 'sink_rows_upserted_per_second', value: round(s.insertRps, 0), unit: 'rows/s', rows: SINK_ROWS, batch_rows: SINK_BATCH, batches: s.batches });
  report({ ...common, system: 'trace', metric: 'sink_duplicate_rows_per_second', value: round(s.dupRps, 0), unit: 'rows/s', rows: SINK_ROWS, batch_rows: SINK_BATCH, batches: s.batches });
  const o = await invocationOverhead();
  for (const [name, v] of Object.entries(o)) {
    const system = name === 'trusted_noop' ? 'trace-in-process-reference' : 'trace';
    report({ ...common, system, metric: `${name}_task_ms_p50`, value: round(v.p50), unit: 'ms', samples: SAMPLES });
    report({ ...common, system, metric: `${name}_task_ms_p99`, value: round(v.p99), unit: 'ms', samples: SAMPLES });
  }
  const ref = o.trusted_noop!.p50;
  report({ ...common, system: 'trace', metric: 'node_udf_overhead_p50', value: round(o.node_noop!.p50 - ref), unit: 'ms', reference: 'trusted_noop p50' });
  report({ ...common, system: 'trace', metric: 'python_udf_overhead_p50', value: round(o.python_noop!.p50 - ref), unit: 'ms', reference: 'trusted_noop p50' });
}

if (import.meta.url === `file://${process.argv[1]}`) {
  await udfBench();
  process.exit(0);
}
