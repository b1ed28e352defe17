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
 *
 * CPU: `cpu_seconds_per_1000_blocks` is the platform's CPU in the timed end-to-end window
 * (workers, RPC gateway, this process as the Dispatcher, and the Postgres backends serving the
 * run's two databases, read from /proc for the pids pg_stat_activity lists, sampled through the
 * window) against the raw same-calls client's own CPU (this process during the raw pass; the
 * node excluded on both sides). Target: platform <= 1.5x the raw client.
 *
 * Node-bound runs: then the node (anvil, every thread) is pinned to CPU 0 (`taskset`) and capped
 * to a share of that core (a cgroup CPU quota, v1 or v2, when this process may create one):
 * BENCH_CHAIN_NODE_CPU_SHARE, else chosen from the free runs so the capped node serves about half
 * the free end-to-end rate (its CPU per block × that rate / 2). So the node is the bound, while the raw client and the platform may
 * use every core; BENCH_CHAIN_BOUND_RUNS (3) more raw/end-to-end pairs then give
 * `throughput_vs_raw_fetch_node_bound` (target >= 0.9). `node_busy` near 1 says the node was
 * saturated. BENCH_CHAIN_BOUND_RUNS=0 skips them.
 */
import { spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmdirSync, writeFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import type { Queryable } from '../src/db/db.js';
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
const BOUND_RUNS = Math.max(0, Number(process.env.BENCH_CHAIN_BOUND_RUNS ?? 3));
const NODE_SHARE = process.env.BENCH_CHAIN_NODE_CPU_SHARE ? Number(process.env.BENCH_CHAIN_NODE_CPU_SHARE) : undefined;
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
async function rawFetch(url: string, end: number, sameCalls: boolean): Promise<{ seconds: number; txs: number; cpu: number }> {
  const started = Date.now();
  const cpu0 = process.cpuUsage();
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
  const cpu = process.cpuUsage(cpu0);
  return { seconds: (Date.now() - started) / 1000, txs, cpu: (cpu.user + cpu.system) / 1e6 };
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

/**
 * CPU seconds of the Postgres backends serving `databases` over a window: the pids are listed
 * from pg_stat_activity and read from /proc every 200 ms, so backends that come and go inside
 * the window count too (the last reading before one exits). Needs the server on this machine.
 */
function pgBackendCpu(db: Queryable, databases: string[]): { stop(): Promise<number> } {
  const first = new Map<number, number>();
  const last = new Map<number, number>();
  const sample = async (initial: boolean) => {
    const r = await db.query<{ pid: number }>(`SELECT pid FROM pg_stat_activity WHERE datname = ANY($1::text[])`, [databases]);
    for (const { pid } of r.rows) {
      const c = pidCpuSeconds(pid);
      if (initial) first.set(pid, c);
      last.set(pid, c);
    }
  };
  let busy: Promise<void> = sample(true);
  const timer = setInterval(() => { busy = busy.then(() => sample(false)).catch(() => undefined); }, 200);
  return {
    async stop() {
      clearInterval(timer);
      await busy;
      await sample(false);
      let total = 0;
      for (const [pid, c] of last) total += c - (first.get(pid) ?? 0);
      return total;
    },
  };
}

/** CPU seconds per part of the deployment, read at the start and the end of the timed window. */
interface CpuWindow {
  node: number;
  rpc_gateway: number;
  workers: number;
  dispatcher_process: number;
  postgres_backends: number;
}
function cpuSnapshot(children: ChildProcess[], nodePid: number): Omit<CpuWindow, 'postgres_backends'> {
  const own = process.cpuUsage();
  return {
    node: pidCpuSeconds(nodePid),
    rpc_gateway: cpuSeconds(children[1]!),
    workers: children.slice(2).reduce((a, c) => a + cpuSeconds(c), 0),
    dispatcher_process: (own.user + own.system) / 1e6,
  };
}
/** The platform's share of a window: everything but the node. */
const platformCpu = (c: CpuWindow): number => c.rpc_gateway + c.workers + c.dispatcher_process + c.postgres_backends;

/**
 * Pins the node (every thread) to CPU 0 and caps it to `share` of that core with a cgroup CPU
 * quota (v2 `cpu.max`, else v1 `cpu.cfs_quota_us`), as far as this machine allows; says what
 * it did. `release` undoes both.
 */
function capNode(pid: number, share: number): { pinned: boolean; quota: number | null; note: string; release(): void } {
  const notes: string[] = [];
  const ts = spawnSync('taskset', ['-a', '-p', '-c', '0', String(pid)], { encoding: 'utf8' });
  const pinned = ts.status === 0;
  if (!pinned) notes.push(`taskset failed: ${ts.error?.message ?? ts.stderr.trim()}`);
  const period = 50_000; // µs: short, so the cap is smooth rather than long bursts, and >= 1 ms of quota from a share of 0.02
  const v2 = existsSync('/sys/fs/cgroup/cgroup.controllers');
  const root = v2 ? '/sys/fs/cgroup' : '/sys/fs/cgroup/cpu';
  const dir = `${root}/trace-bench-node-${pid}`;
  let quota: number | null = null;
  try {
    if (share > 0 && share < 1) {
      mkdirSync(dir);
      if (v2) writeFileSync(`${dir}/cpu.max`, `${Math.round(share * period)} ${period}`);
      else {
        writeFileSync(`${dir}/cpu.cfs_period_us`, String(period));
        writeFileSync(`${dir}/cpu.cfs_quota_us`, String(Math.round(share * period)));
      }
      writeFileSync(`${dir}/cgroup.procs`, String(pid));
      quota = share;
    }
  } catch (e) {
    notes.push(`no CPU quota (${(e as Error).message}); the node is only pinned`);
  }
  return {
    pinned, quota, note: notes.join('; '),
    release() {
      try {
        if (quota !== null) writeFileSync(`${root}/cgroup.procs`, String(pid));
        if (existsSync(dir)) rmdirSync(dir);
      } catch { /* the node is gone */ }
      if (pinned) spawnSync('taskset', ['-a', '-p', '-c', `0-${availableParallelism() - 1}`, String(pid)]);
    },
  };
}

async function endToEnd(gatewayUrl: string, end: number, base: ChildProcess[], nodePid: number): Promise<{ seconds: number; cpu: CpuWindow }> {
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
    const pg = pgBackendCpu(st.state, [dbs.stateUrl, dbs.dataUrl].map((u) => decodeURIComponent(new URL(u).pathname.slice(1))));
    const cpu0 = cpuSnapshot(children, nodePid);
    const started = Date.now();
    const monoStart = process.hrtime.bigint() / 1000n;
    const r = await st.api('POST', '/v1/chain-sync', fixedYaml('bench', 1337, end, { chunk: CHUNK, inflight: Math.max(2, Math.ceil((2 * WORKERS * CONCURRENCY) / 3)) }));
    if (r.status !== 201) throw new Error(`apply failed: ${JSON.stringify(r.body)}`);
    await until('sync', async () => (await st.state.query(`SELECT 1 FROM chain_sync_jobs WHERE name = 'bench' AND completed_at IS NOT NULL`)).rows.length === 1, 900_000, 20);
    const seconds = (Date.now() - started) / 1000;
    const cpu1 = { ...cpuSnapshot(children, nodePid), postgres_backends: await pg.stop() };
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
    const cpu = Object.fromEntries(Object.entries(cpu1).map(([k, v]) => [k, round(v - ((cpu0 as Partial<CpuWindow>)[k as keyof CpuWindow] ?? 0), 2)])) as unknown as CpuWindow;
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

interface Run {
  raw_bps: number; trace_bps: number; ratio: number; raw_node_cpu: number; raw_client_cpu: number; cpu: CpuWindow; ceiling: number;
  /** CPU-s per 1,000 blocks: the platform end to end, and the raw client for the same calls. */
  platform_per_1k: number; raw_client_per_1k: number;
  node_busy_raw?: number; node_busy_trace?: number;
}

/** One raw same-calls pass, then one end-to-end run, with the node's and the client's CPU. */
async function pair(info: { url: string; pid: number }, gwUrl: string, end: number, children: ChildProcess[], share?: number): Promise<Run> {
  const n0 = pidCpuSeconds(info.pid);
  const same = await rawFetch(info.url, end, true);
  const rawNodeCpu = pidCpuSeconds(info.pid) - n0;
  const e2e = await endToEnd(gwUrl, end, children, info.pid);
  const cpuTotal = e2e.cpu.node + platformCpu(e2e.cpu);
  return {
    raw_bps: round(end / same.seconds, 0), trace_bps: round(end / e2e.seconds, 0), ratio: round(same.seconds / e2e.seconds, 3),
    raw_node_cpu: round(rawNodeCpu, 2), raw_client_cpu: round(same.cpu, 2), cpu: e2e.cpu,
    // the ratio if the CPU work of the end-to-end run had kept every core busy the whole time
    ceiling: round(same.seconds / (cpuTotal / availableParallelism()), 3),
    platform_per_1k: round((platformCpu(e2e.cpu) * 1000) / end, 3), raw_client_per_1k: round((same.cpu * 1000) / end, 3),
    // the node's CPU over what its cap allows in the window: near 1 = the node was the bound
    ...(share ? { node_busy_raw: round(rawNodeCpu / (same.seconds * share), 2), node_busy_trace: round(e2e.cpu.node / (e2e.seconds * share), 2) } : {}),
  };
}

export async function chainBench(): Promise<void> {
  const children: ChildProcess[] = [];
  try {
    const info = (await child([`${ROOT}bench/chain-node.ts`, String(BLOCKS), String(TX_BLOCKS), String(TX_PER_BLOCK)], {}, children)) as { url: string; pid: number; txs: number };
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
    const runs: Run[] = [];
    for (let i = 0; i < RUNS; i++) {
      runs.push(await pair(info, gw.url, end, children));
      process.stderr.write(`${JSON.stringify({ run: i + 1, ...runs[i] })}\n`);
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
    report({ ...withRuns, system: 'trace', metric: 'cpu_seconds', value: { ...mid.cpu, node_during_raw_same_calls: mid.raw_node_cpu, raw_client: mid.raw_client_cpu, cores: availableParallelism() }, unit: 's' });
    // CPU per 1,000 blocks, the node excluded: the platform end to end against the raw client's own CPU for the same calls.
    const per1k = (f: (r: Run) => number) => median(runs.map(f));
    const platformPer1k = per1k((r) => r.platform_per_1k);
    const rawPer1k = per1k((r) => r.raw_client_per_1k);
    report({ ...withRuns, system: 'trace', metric: 'cpu_seconds_per_1000_blocks', value: platformPer1k, unit: 'CPU-s',
      parts: Object.fromEntries((['workers', 'rpc_gateway', 'dispatcher_process', 'postgres_backends'] as const).map((k) => [k, per1k((r) => round((r.cpu[k] * 1000) / end, 3))])) });
    report({ ...withRuns, system: 'raw_jsonrpc_same_calls', metric: 'client_cpu_seconds_per_1000_blocks', value: rawPer1k, unit: 'CPU-s' });
    report({ ...withRuns, system: 'trace', metric: 'cpu_vs_raw_client', value: round(platformPer1k / rawPer1k, 2), unit: 'ratio', target: 1.5, target_is: 'max',
      per_run: runs.map((r) => round(r.platform_per_1k / r.raw_client_per_1k, 2)) });

    if (BOUND_RUNS > 0) {
      // The node on a capped share of CPU 0, so it is the bound; the raw client and the platform may use every core.
      // The node's CPU per block (the more expensive of the raw and end-to-end passes) sets the share.
      const nodePerBlock = median(runs.map((r) => Math.max(r.raw_node_cpu, r.cpu.node))) / end;
      const share = NODE_SHARE ?? round(Math.min(0.9, Math.max(0.02, (e2eBps * nodePerBlock) / 2)), 3);
      const cap = capNode(info.pid, share);
      const bound: Run[] = [];
      try {
        for (let i = 0; i < BOUND_RUNS; i++) {
          bound.push(await pair(info, gw.url, end, children, cap.quota ?? 1));
          process.stderr.write(`${JSON.stringify({ node_bound_run: i + 1, ...bound[i] })}\n`);
        }
      } finally {
        cap.release();
      }
      const b = { ...common, runs: BOUND_RUNS, node_cpus: cap.pinned ? '0' : 'all', node_cpu_share: cap.quota, ...(cap.note ? { note: cap.note } : {}) };
      const bRatios = bound.map((r) => r.ratio);
      report({ ...b, system: 'raw_jsonrpc_same_calls', metric: 'blocks_per_second_node_bound', value: median(bound.map((r) => r.raw_bps)), unit: 'blocks/s',
        node_busy: median(bound.map((r) => r.node_busy_raw!)) });
      report({ ...b, system: 'trace', metric: 'blocks_per_second_node_bound', value: median(bound.map((r) => r.trace_bps)), unit: 'blocks/s',
        node_busy: median(bound.map((r) => r.node_busy_trace!)) });
      report({ ...b, system: 'trace', metric: 'throughput_vs_raw_fetch_node_bound', value: median(bRatios), unit: 'ratio', target: 0.9, per_run: bRatios });
    }
  } finally {
    for (const c of children) c.kill('SIGTERM');
  }
}

if (process.argv[1] && new URL(import.meta.url).pathname === process.argv[1]) await chainBench();
