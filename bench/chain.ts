/**
 * Chain ingest benchmark: blocks/s and transactions/s from a dev chain into published Parquet
 * end to end (a fixed_target chain_sync of blocks, transactions and logs: planner, outbox,
 * pgqueue, claims, cryo_ingest through the RPC egress gateway, DuckDB/Parquet, verified
 * commit, views), beside the raw JSON-RPC fetch rate of the same blocks from the same node in
 * the same run. Deployed as in production: the node (anvil), the RPC gateway and the
 * workers are their own processes; the Dispatcher runs here on real Postgres
 * (TRACE_TEST_PG_URL).
 *
 * Raw references (straight to the node, 4 chunks of 100 blocks in flight, answers parsed,
 * nothing written): `raw_jsonrpc_same_calls` issues exactly the requests the three streams
 * issue (block headers for `blocks`; blocks with transactions plus one receipt per
 * transaction for `transactions`; eth_getLogs for `logs`); `raw_jsonrpc_min` fetches the
 * same data once (blocks with transactions, receipts, logs);
 * `raw_jsonrpc_same_calls_via_rpc_gateway` is the same-calls fetch through the RPC gateway
 * (with `vs_direct`, a direct pass right after it). The target is >= 0.8 of the same-calls rate.
 *
 * Knobs: BENCH_CHAIN_BLOCKS (20000), BENCH_CHAIN_TX_BLOCKS (1000), BENCH_CHAIN_TX_PER_BLOCK (5),
 * BENCH_CHAIN_CHUNK (2000), BENCH_CHAIN_WORKERS (2 processes), BENCH_CHAIN_WORKER_CONCURRENCY (3),
 * BENCH_CHAIN_RUNS (3 raw/end-to-end pairs; figures are medians).
 * BENCH_CHAIN_CPU_PROF=<dir> writes V8 CPU profiles of the node, gateway and worker processes there.
 */
import type { ChildProcess } from 'node:child_process';
import { readFileSync, readdirSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { freshDbs } from '../test/support/db.js';
import { fixedYaml, startStack } from '../test/chain-sync/support.js';
import { percentile, report, round, spawnJsonChild, until } from './util.js';

const ROOT = new URL('../', import.meta.url).pathname;
const BLOCKS = Number(process.env.BENCH_CHAIN_BLOCKS ?? 20_000);
const TX_BLOCKS = Number(process.env.BENCH_CHAIN_TX_BLOCKS ?? 1000);
const TX_PER_BLOCK = Number(process.env.BENCH_CHAIN_TX_PER_BLOCK ?? 5);
const CHUNK = Number(process.env.BENCH_CHAIN_CHUNK ?? 2000);
const WORKERS = Number(process.env.BENCH_CHAIN_WORKERS ?? 2);
const CONCURRENCY = Number(process.env.BENCH_CHAIN_WORKER_CONCURRENCY ?? 3);
const RUNS = Math.max(1, Number(process.env.BENCH_CHAIN_RUNS ?? 3));
const PROF = process.env.BENCH_CHAIN_CPU_PROF ? ['--cpu-prof', `--cpu-prof-dir=${process.env.BENCH_CHAIN_CPU_PROF}`] : [];

async function rpc(url: string, batch: Array<{ method: string; params: unknown[] }>): Promise<unknown[]> {
  if (batch.length === 0) return [];
  const body = batch.map((b, i) => ({ jsonrpc: '2.0', id: i, ...b }));
  const res = (await (await fetch(url, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) })).json()) as Array<{ id: number; result: unknown }>;
  const out = new Array<unknown>(batch.length);
  for (const r of res) out[r.id] = r.result;
  return out;
}

const q = (n: number) => `0x${n.toString(16)}`;

/** Raw JSON-RPC: 4 chunks of 100 blocks in flight. `sameCalls` adds the header-only block fetch the blocks stream makes. */
async function rawFetch(url: string, end: number, sameCalls: boolean): Promise<{ seconds: number; txs: number }> {
  const started = Date.now();
  let next = 0;
  let txs = 0;
  const worker = async () => {
    while (next < end) {
      const s = next;
      const e = Math.min(end, s + 100);
      next = e;
      const numbers = Array.from({ length: e - s }, (_, i) => s + i);
      const [full] = await Promise.all([
        rpc(url, numbers.map((n) => ({ method: 'eth_getBlockByNumber', params: [q(n), true] }))) as Promise<Array<{ transactions: Array<{ hash: string }> }>>,
        sameCalls ? rpc(url, numbers.map((n) => ({ method: 'eth_getBlockByNumber', params: [q(n), false] }))) : Promise.resolve([]),
        rpc(url, [{ method: 'eth_getLogs', params: [{ fromBlock: q(s), toBlock: q(e - 1) }] }]),
      ]);
      const hashes = full.flatMap((b) => b.transactions.map((t) => t.hash));
      txs += hashes.length;
      await rpc(url, hashes.map((h) => ({ method: 'eth_getTransactionReceipt', params: [h] })));
    }
  };
  await Promise.all(Array.from({ length: 4 }, worker));
  return { seconds: (Date.now() - started) / 1000, txs };
}

function child(args: string[], env: NodeJS.ProcessEnv, children: ChildProcess[]): Promise<Record<string, unknown>> {
  return new Promise((resolve) => {
    children.push(spawnJsonChild(process.execPath, [...PROF, '--import', 'tsx', ...args], { PATH: process.env.PATH, NODE_ENV: 'production', ...env }, (o) => resolve(o)));
  });
}

/** CPU seconds a process used so far (Linux /proc; 0 elsewhere). */
function pidCpuSeconds(pid: number | undefined): number {
  try {
    const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
    return (Number(f[11]) + Number(f[12])) / 100;
  } catch {
    return 0;
  }
}
const cpuSeconds = (c: ChildProcess): number => pidCpuSeconds(c.pid);

/** CPU seconds of every local Postgres server process (Linux /proc; 0 elsewhere). */
function postgresCpuSeconds(): number {
  let total = 0;
  try {
    for (const d of readdirSync('/proc')) {
      if (!/^\d+$/.test(d)) continue;
      try {
        if (readFileSync(`/proc/${d}/comm`, 'utf8').trim() === 'postgres') total += pidCpuSeconds(Number(d));
      } catch {
        /* gone */
      }
    }
  } catch {
    return 0;
  }
  return total;
}

/** CPU seconds per part of the deployment, read at the start and the end of the timed window. */
interface CpuWindow {
  node: number;
  rpc_gateway: number;
  workers: number;
  dispatcher_process: number;
  postgres: number;
}
function cpuSnapshot(children: ChildProcess[]): CpuWindow {
  return {
    node: cpuSeconds(children[0]!),
    rpc_gateway: cpuSeconds(children[1]!),
    workers: children.slice(2).reduce((a, c) => a + cpuSeconds(c), 0),
    dispatcher_process: process.cpuUsage().user / 1e6 + process.cpuUsage().system / 1e6,
    postgres: postgresCpuSeconds(),
  };
}

async function endToEnd(gatewayUrl: string, end: number, base: ChildProcess[]): Promise<{ seconds: number; cpu: CpuWindow }> {
  const children = [...base]; // node, gateway, then this run's workers
  const dbs = await freshDbs('postgres', { poolMax: 20 });
  const st = await startStack({ state: dbs.state, pools: {}, workers: 0, plannerIntervalMs: 200, rpcGatewayUrl: () => gatewayUrl,
    settings: { leaseSeconds: 120, loopIntervalMs: 200 } });
  try {
    const ready: Array<Promise<unknown>> = [];
    for (let i = 0; i < WORKERS; i++) {
      const c = spawnJsonChild(process.execPath, [...PROF, '--import', 'tsx', `${ROOT}test/chain-sync/worker-child.ts`], {
        PATH: process.env.PATH, NODE_ENV: 'production', TRACE_DISPATCHER_URL: st.url, TRACE_WORKER_TOKEN: st.workerToken, TRACE_QUEUE_DATABASE_URL: dbs.stateUrl,
        OBJECT_ROOT: st.objectRoot, TRACE_RPC_GATEWAY_URL: gatewayUrl, WORKER_ID: `bench-${i}`, WORKER_CONCURRENCY: String(CONCURRENCY), HEARTBEAT_MS: '10000',
      }, () => undefined);
      children.push(c);
      ready.push(new Promise((r) => c.stdout!.once('data', r)));
    }
    await Promise.all(ready);
    // Warm-up: a small sync of other dataset keys (JIT, DuckDB, pools).
    const warm = fixedYaml('warm', 1337, 600, { chunk: 100, inflight: 3 }).replace(/^ {2}(blocks|transactions|logs):$/gm, '  warm_$1:');
    if ((await st.api('POST', '/v1/chain-sync', warm)).status !== 201) throw new Error('warm-up apply failed');
    await until('warm-up', async () => (await st.state.query(`SELECT 1 FROM chain_sync_jobs WHERE name = 'warm' AND completed_at IS NOT NULL`)).rows.length === 1, 120_000, 50);
    const cpu0 = cpuSnapshot(children);
    const started = Date.now();
    const monoStart = process.hrtime.bigint() / 1000n;
    const r = await st.api('POST', '/v1/chain-sync', fixedYaml('bench', 1337, end, { chunk: CHUNK, inflight: Math.max(2, Math.ceil((2 * WORKERS * CONCURRENCY) / 3)) }));
    if (r.status !== 201) throw new Error(`apply failed: ${JSON.stringify(r.body)}`);
    await until('sync', async () => (await st.state.query(`SELECT 1 FROM chain_sync_jobs WHERE name = 'bench' AND completed_at IS NOT NULL`)).rows.length === 1, 900_000, 20);
    const seconds = (Date.now() - started) / 1000;
    const cpu1 = cpuSnapshot(children);
    if (PROF.length > 0) process.stderr.write(`${JSON.stringify({ window_monotonic_us: [String(monoStart), String(process.hrtime.bigint() / 1000n)] })}\n`);
    if (process.env.BENCH_CHAIN_TIMELINE) {
      // Per range: when it was planned, claimed, finished and committed, in ms from the apply.
      const t = await st.state.query<Record<string, unknown>>(
        `SELECT r.dataset_key, r.range_start, a.worker_id,
                round(extract(epoch FROM r.created_at) * 1000 - $1) AS planned,
                round(extract(epoch FROM a.started_at) * 1000 - $1) AS started,
                round(extract(epoch FROM a.finished_at) * 1000 - $1) AS finished,
                round(extract(epoch FROM r.completed_at) * 1000 - $1) AS committed
           FROM chain_sync_scheduled_ranges r JOIN chain_sync_jobs j ON j.job_id = r.job_id AND j.name = 'bench'
           JOIN task_attempts a ON a.task_id = r.task_id ORDER BY started`, [started]);
      for (const row of t.rows) process.stderr.write(`${JSON.stringify(row)}\n`);
    }
    const cpu = Object.fromEntries(Object.entries(cpu1).map(([k, v]) => [k, round(v - cpu0[k as keyof CpuWindow], 1)])) as unknown as CpuWindow;
    const s = (await st.api('GET', '/v1/chain-sync/bench')).body as { streams: Array<{ committed_blocks: number }> };
    if (!s.streams.every((x) => x.committed_blocks === end)) throw new Error('the sync did not commit every block');
    return { seconds, cpu };
  } finally {
    for (const c of children.slice(base.length)) c.kill('SIGTERM');
    await st.stop();
    await dbs.close();
  }
}

const median = (xs: number[]): number => percentile(xs, 50);

export async function chainBench(): Promise<void> {
  const children: ChildProcess[] = [];
  try {
    const info = (await child([`${ROOT}bench/chain-node.ts`, String(BLOCKS), String(TX_BLOCKS), String(TX_PER_BLOCK)], {}, children)) as { url: string; txs: number };
    const gw = (await child([`${ROOT}bench/chain-gateway.ts`, info.url], {}, children)) as { url: string };
    const end = BLOCKS;
    const txs = info.txs;
    const common = { bench: 'chain', blocks: end, transactions: txs, chunk_size: CHUNK, worker_processes: WORKERS, worker_concurrency: CONCURRENCY,
      streams: 'blocks,transactions,logs', node: 'anvil 1.7', backend: 'postgres' };
    await rawFetch(info.url, end, true); // warm the node (JIT, caches): raw passes keep speeding up otherwise
    const min = await rawFetch(info.url, end, false);
    // The same raw fetch through the RPC egress gateway (the only path operators have): what the hop itself costs here.
    const viaGw = await rawFetch(`${gw.url}/rpc/dev`, end, true);
    const direct = await rawFetch(info.url, end, true);
    // Raw and end-to-end runs alternate so both see the node in the same state; medians over RUNS pairs.
    const runs: Array<{ raw_bps: number; trace_bps: number; ratio: number; raw_node_cpu: number; cpu: CpuWindow; ceiling: number }> = [];
    for (let i = 0; i < RUNS; i++) {
      const n0 = cpuSeconds(children[0]!);
      const same = await rawFetch(info.url, end, true);
      const rawNodeCpu = cpuSeconds(children[0]!) - n0;
      const e2e = await endToEnd(gw.url, end, children);
      const cpuTotal = Object.values(e2e.cpu).reduce((a, b) => a + b, 0);
      const run = {
        raw_bps: round(end / same.seconds, 0), trace_bps: round(end / e2e.seconds, 0), ratio: round(same.seconds / e2e.seconds, 3), raw_node_cpu: round(rawNodeCpu, 1), cpu: e2e.cpu,
        // the ratio if the CPU work of the end-to-end run had kept every core busy the whole time
        ceiling: round(same.seconds / (cpuTotal / availableParallelism()), 3),
      };
      runs.push(run);
      process.stderr.write(`${JSON.stringify({ run: i + 1, ...run })}\n`);
    }
    const sameBps = median(runs.map((r) => r.raw_bps));
    const e2eBps = median(runs.map((r) => r.trace_bps));
    const ratios = runs.map((r) => r.ratio);
    const mid = runs.find((r) => r.ratio === median(ratios))!;
    const withRuns = { ...common, runs: RUNS };
    report({ ...withRuns, system: 'raw_jsonrpc_same_calls', metric: 'blocks_per_second', value: sameBps, unit: 'blocks/s' });
    report({ ...withRuns, system: 'raw_jsonrpc_same_calls', metric: 'transactions_per_second', value: round((txs * sameBps) / end, 0), unit: 'tx/s' });
    report({ ...common, system: 'raw_jsonrpc_min', metric: 'blocks_per_second', value: round(end / min.seconds, 0), unit: 'blocks/s' });
    report({ ...common, system: 'raw_jsonrpc_same_calls_via_rpc_gateway', metric: 'blocks_per_second', value: round(end / viaGw.seconds, 0), unit: 'blocks/s',
      vs_direct: round(direct.seconds / viaGw.seconds, 3) });
    report({ ...withRuns, system: 'trace', metric: 'blocks_per_second', value: e2eBps, unit: 'blocks/s' });
    report({ ...withRuns, system: 'trace', metric: 'transactions_per_second', value: round((txs * e2eBps) / end, 0), unit: 'tx/s' });
    // Each run's ratio is taken against the raw fetch just before it; the figure is their median.
    report({ ...withRuns, system: 'trace', metric: 'throughput_vs_raw_fetch', value: median(ratios), unit: 'ratio', target: 0.8, per_run: ratios });
    report({ ...withRuns, system: 'trace', metric: 'throughput_vs_raw_min_fetch', value: round(e2eBps / (end / min.seconds), 3), unit: 'ratio' });
    // On a machine whose cores are all shared by the node and the pipeline, the CPU work itself bounds the ratio.
    report({ ...withRuns, system: 'trace', metric: 'throughput_vs_raw_fetch_cpu_ceiling', value: median(runs.map((r) => r.ceiling)), unit: 'ratio' });
    // Where the CPU went during the timed end-to-end window of the median run; every part shares the machine's cores.
    report({ ...withRuns, system: 'trace', metric: 'cpu_seconds', value: { ...mid.cpu, node_during_raw_same_calls: mid.raw_node_cpu, cores: availableParallelism() }, unit: 's' });
  } finally {
    for (const c of children) c.kill('SIGTERM');
  }
}

if (process.argv[1] && new URL(import.meta.url).pathname === process.argv[1]) await chainBench();
