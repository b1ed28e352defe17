/**
 * Shared pieces of the chain sync tests: an anvil dev chain with ERC-20-like transfers, a
 * JSON-RPC proxy that can be slowed down or broken, the RPC egress gateway, a Dispatcher with
 * the chain_sync plugin, in-process workers running `cryo_ingest`, and DuckDB checks of the
 * committed Parquet against what the chain reports.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DuckDBInstance } from '@duckdb/node-api';
import type { Db } from '../../src/db/db.js';
import { parseCommandArgs, type Command } from '../../src/cli/args.js';
import { PgQueue } from '../../src/queue/pgqueue.js';
import { createCapabilityIssuer } from '../../src/auth/capability.js';
import { mintDevUserToken } from '../../src/auth/user.js';
import { operatorCatalog, operatorRegistry } from '../../src/operators/registry.js';
import { Dispatcher } from '../../src/dispatcher/dispatcher.js';
import type { DispatcherSettings } from '../../src/dispatcher/settings.js';
import { bootstrapDeployment } from '../../src/dispatcher/identity.js';
import { InProcessExecutor } from '../../src/dispatcher/executors.js';
import { createLogger, silentLogger } from '../../src/core/log.js';
import { startWorker, type WorkerHandle } from '../../src/worker/worker.js';
import { TaskClient } from '../../src/worker/task-client.js';
import { FileObjectStore } from '../../src/objectstore/file.js';
import { startRpcGateway, type StartedRpcGateway } from '../../src/rpc-gateway/gateway.js';
import { createCryoIngestOperator } from '../../src/operators/cryo_ingest/operator.js';
import { chainSyncPlugin, type ChainSyncPlugin } from '../../src/dispatcher/chain-sync/index.js';
import { parseStorageRef, resolveStorageFiles } from '../../src/query/storage.js';
import type { Operator } from '../../src/operators/types.js';

import { TEST_SECRETS, testDispatcherDeps } from '../support/dispatcher.js';
import { post, type Lease } from '../support/drive.js';
import { tokenInitCode, word } from '../chain/dev_chain.js';
import { startDevChain as startNode } from '../../src/lite/devchain.js';
import { jsonRpcServer, type TestServer } from '../chain/support.js';

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export async function waitFor<T>(what: string, fn: () => Promise<T | undefined | null | false>, timeoutMs = 30_000, everyMs = 100): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(everyMs);
  }
}

// ---------------------------------------------------------------------------------------------
// The chain

export interface DevChain {
  url: string;
  /** The node's process id. */
  pid: number;
  chainId: number;
  token: string;
  accounts: string[];
  call<T = unknown>(method: string, params?: unknown[]): Promise<T>;
  head(): Promise<number>;
  /** Mines `n` empty blocks at once. */
  mineEmpty(n: number): Promise<void>;
  /** Mines one block holding `k` token transfers (each emits one Transfer log). */
  mineTransfers(k: number): Promise<void>;
  close(): Promise<void>;
}

/** Two chains with different `genesisTimestamp`s (default: now) have different genesis blocks. */
export async function startDevChain(chainId = 1337, opts: { genesisTimestamp?: number } = {}): Promise<DevChain> {
  const node = await startNode({ chainId, accounts: 4, ...opts });
  const { url } = node;
  const call = <T>(method: string, params: unknown[] = []): Promise<T> => node.call<T>(method, params);
  const accounts = await call<string[]>('eth_accounts');
  const deploy = await call<string>('eth_sendTransaction', [{ from: accounts[0], data: tokenInitCode(), gas: '0x493e0' }]);
  const token = (await node.receipt<{ contractAddress: string }>(deploy)).contractAddress;
  await node.setAutomine(false);
  let n = 0;
  return {
    url, pid: node.pid, chainId, token, accounts, call,
    async head() { return Number(BigInt(await call<string>('eth_blockNumber'))); },
    async mineEmpty(k) { if (k > 0) await node.mine(k); },
    async mineTransfers(k) {
      for (let i = 0; i < k; i++) {
        const from = accounts[n % 3]!;
        const to = accounts[(n + 1) % 4]!;
        n++;
        await call('eth_sendTransaction', [{ from, to: token, data: `0x${word(to)}${word((n + 1).toString(16))}`, gas: '0x186a0' }]);
      }
      await call('evm_mine');
    },
    close: () => node.close(),
  };
}

/** Builds a chain whose head is at least `blocks - 1`, with transfers sprinkled in. */
export async function buildHistory(chain: DevChain, blocks: number, txBlocks = 24, txPerBlock = 3): Promise<void> {
  const step = Math.floor(blocks / (txBlocks + 1));
  for (let i = 0; i < txBlocks; i++) {
    const head = await chain.head();
    await chain.mineEmpty(Math.max(0, (i + 1) * step - head - 1));
    await chain.mineTransfers(txPerBlock);
  }
  const head = await chain.head();
  if (head < blocks - 1) await chain.mineEmpty(blocks - 1 - head);
}

/**
 * A pass-through JSON-RPC proxy that can add latency, fail every request (`broken`), fail
 * only requests that call one of `failMethods` (e.g. `eth_blockNumber`: a head that cannot be
 * observed while block data still flows), or be pointed at another node (`target`).
 */
export async function rpcProxy(target: string): Promise<TestServer & { delayMs: number; broken: boolean; target: string; failMethods: Set<string> }> {
  const state = { delayMs: 0, broken: false, target };
  const failMethods = new Set<string>();
  const s = await jsonRpcServer({
    before: async (reqs, res) => {
      if (state.delayMs > 0) await sleep(state.delayMs);
      if (state.broken || reqs.some((r) => failMethods.has(r.method))) {
        res.writeHead(503, { 'content-type': 'application/json' });
        res.end('{"error":"down"}');
        return true;
      }
      return false;
    },
    answer: async (method, params) => {
      const r = await fetch(state.target, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ jsonrpc: '2.0', id: 1, method, params }) });
      const b = (await r.json()) as { result?: unknown; error?: { code: number; message: string } };
      return b.error ? { error: b.error } : { result: b.result };
    },
  });
  Object.defineProperties(s, {
    delayMs: { get: () => state.delayMs, set: (v: number) => { state.delayMs = v; } },
    broken: { get: () => state.broken, set: (v: boolean) => { state.broken = v; } },
    target: { get: () => state.target, set: (v: string) => { state.target = v; } },
    failMethods: { value: failMethods },
  });
  return s as typeof s & { delayMs: number; broken: boolean; target: string; failMethods: Set<string> };
}

// ---------------------------------------------------------------------------------------------
// The platform

export interface Stack {
  state: Db;
  store: FileObjectStore;
  objectRoot: string;
  gateway: StartedRpcGateway;
  dispatcher: Dispatcher;
  plugin: ChainSyncPlugin;
  url: string;
  orgId: string;
  adminToken: string;
  workerToken: string;
  workers: WorkerHandle[];
  registry: Map<string, Operator>;
  api<T = any>(method: string, path: string, body?: unknown): Promise<{ status: number; body: T }>;
  startWorkers(n: number, concurrency?: number, prefix?: string): void;
  /** Stops the Dispatcher and starts a new one on the same database and port. */
  restartDispatcher(): Promise<void>;
  stop(): Promise<void>;
}

export interface StackOptions {
  state: Db;
  /** Pools of the RPC gateway: name -> upstream URLs. */
  pools: Record<string, string[]>;
  workers?: number;
  workerConcurrency?: number;
  settings?: Partial<DispatcherSettings>;
  plannerIntervalMs?: number;
  objectRoot?: string;
  /** Overrides the gateway URL the plugin and cryo_ingest use (default: the stack's gateway). */
  rpcGatewayUrl?: () => string | undefined;
}

export async function startStack(opts: StackOptions): Promise<Stack> {
  const objectRoot = opts.objectRoot ?? await mkdtemp(join(tmpdir(), 'trace-cs-'));
  const store = new FileObjectStore(objectRoot);
  const gateway = await startRpcGateway({ pools: opts.pools, port: 0, host: '127.0.0.1' });
  const { org_id } = await bootstrapDeployment(opts.state, { adminSub: 'admin' });
  const issuer = await createCapabilityIssuer({ alg: 'HS256', current: { kid: 'test', secret: TEST_SECRETS.capability } });
  const queue = new PgQueue(opts.state);
  const registry = operatorRegistry({ includeTestOperators: true }) as Map<string, Operator>;
  const gatewayUrl = opts.rpcGatewayUrl ?? (() => gateway.url);
  registry.set('cryo_ingest', createCryoIngestOperator({ objectStore: store, rpcGatewayUrl: gatewayUrl, mode: 'native' }));
  const adminToken = await mintDevUserToken(TEST_SECRETS.user, 'admin');
  let url = '';
  let port = 0;

  const build = () => {
    const plugin = chainSyncPlugin({ objectStore: store, rpcGatewayUrl: gatewayUrl, plannerIntervalMs: opts.plannerIntervalMs ?? 200, headTickMs: 100 });
    const executor = new InProcessExecutor({ dispatcherUrl: () => url, registry, log: silentLogger });
    const d = new Dispatcher(testDispatcherDeps({
      state: opts.state,
      queue,
      sendInTx: (q, name, bodies) => queue.sendInTx(q, name, bodies),
      issuer,
      catalog: operatorCatalog({ includeTestOperators: true }),
      executors: { dispatcher: executor, lambda: executor },
      orgId: org_id,
      settings: { leaseSeconds: 3, ...opts.settings },
      log: process.env.CS_LOG ? createLogger('dispatcher', process.env.CS_LOG) : silentLogger,
    }), [], [plugin]);
    return { d, plugin };
  };

  let { d, plugin } = build();
  await d.start({ host: '127.0.0.1', port: 0 });
  url = d.url!;
  port = Number(new URL(url).port);
  const workers: WorkerHandle[] = [];
  const client = () => new TaskClient({ baseUrl: url, workerToken: TEST_SECRETS.worker });
  const stack: Stack = {
    state: opts.state, store, objectRoot, gateway, dispatcher: d, plugin, url, orgId: org_id, adminToken, workerToken: TEST_SECRETS.worker, workers, registry,
    async api(method, path, body) {
      const h: Record<string, string> = { authorization: `Bearer ${adminToken}` };
      let payload: string | undefined;
      if (body !== undefined) {
        payload = typeof body === 'string' ? body : JSON.stringify(body);
        h['content-type'] = typeof body === 'string' ? 'application/yaml' : 'application/json';
      }
      let res: Response;
      try {
        // `connection: close`: restartDispatcher() closes and re-listens on the same port in this
        // process; a pooled keep-alive socket from before can be left half-open and stall a call.
        res = await fetch(`${url}${path}`, { method, headers: { ...h, connection: 'close' }, ...(payload !== undefined ? { body: payload } : {}) });
      } catch (e) {
        const cause = (e as { cause?: { code?: string; message?: string } }).cause;
        throw new Error(`${method} ${path} failed: ${cause?.code ?? ''} ${cause?.message ?? String(e)}`, { cause: e });
      }
      const text = await res.text();
      let parsed: unknown = text;
      try { parsed = JSON.parse(text); } catch { /* text */ }
      return { status: res.status, body: parsed as any };
    },
    startWorkers(n, concurrency = opts.workerConcurrency ?? 2, prefix = 'w') {
      for (let i = 0; i < n; i++) {
        workers.push(startWorker({
          queue, client: client(), registry, workerId: `${prefix}${workers.length}`, concurrency, log: silentLogger,
          heartbeatMs: 300, pollWaitMs: 200, stopGraceMs: 2_000,
        }));
      }
    },
    async restartDispatcher() {
      await d.stop();
      ({ d, plugin } = build());
      await d.start({ host: '127.0.0.1', port });
      stack.dispatcher = d;
      stack.plugin = plugin;
    },
    async stop() {
      await Promise.all(workers.map((w) => w.stop({ graceMs: 0 })));
      await d.stop();
      await queue.close();
      await gateway.close();
      if (!opts.objectRoot) await rm(objectRoot, { recursive: true, force: true, maxRetries: 5, retryDelay: 200 }).catch(() => undefined);
    },
  };
  stack.startWorkers(opts.workers ?? 0);
  return stack;
}

// ---------------------------------------------------------------------------------------------
// Checking what was committed

/** The exact Parquet files of a dataset's current version, as the Query Service would resolve them. */
export async function currentFiles(state: Db, datasetUuid: string): Promise<string[]> {
  const r = await state.query<{ storage_ref: unknown }>(
    `SELECT v.storage_ref FROM datasets d JOIN dataset_versions v ON v.id = d.current_version WHERE d.id = $1`, [datasetUuid]);
  if (!r.rows[0]) return [];
  return resolveStorageFiles(parseStorageRef(r.rows[0].storage_ref));
}

export async function duck<T = Record<string, unknown>>(sql: string): Promise<T[]> {
  const inst = await DuckDBInstance.create(':memory:', { threads: '1' });
  const conn = await inst.connect();
  try {
    return (await conn.runAndReadAll(sql)).getRowObjectsJS() as T[];
  } finally {
    conn.closeSync();
    inst.closeSync();
  }
}

export const fileList = (files: string[]) => `[${files.map((f) => `'${f.replace(/'/g, "''")}'`).join(', ')}]`;

export interface ChainTruth {
  blocks: Map<number, string>;
  txs: Set<string>;
  logs: Set<string>;
}

/** What the node says about blocks `[0, end)`: block hashes, transaction hashes, `block:log_index`. */
export async function chainTruth(chain: DevChain, end: number): Promise<ChainTruth> {
  const blocks = new Map<number, string>();
  const txs = new Set<string>();
  for (let b = 0; b < end; b += 200) {
    const batch = Array.from({ length: Math.min(200, end - b) }, (_, i) => ({ jsonrpc: '2.0', id: b + i, method: 'eth_getBlockByNumber', params: [`0x${(b + i).toString(16)}`, false] }));
    const res = (await (await fetch(chain.url, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(batch) })).json()) as Array<{ result: { number: string; hash: string; transactions: string[] } }>;
    for (const r of res) {
      blocks.set(Number(BigInt(r.result.number)), r.result.hash.toLowerCase());
      for (const t of r.result.transactions) txs.add(t.toLowerCase());
    }
  }
  const logs = await chain.call<Array<{ blockNumber: string; logIndex: string }>>('eth_getLogs', [{ fromBlock: '0x0', toBlock: `0x${(end - 1).toString(16)}` }]);
  return { blocks, txs, logs: new Set(logs.map((l) => `${Number(BigInt(l.blockNumber))}:${Number(BigInt(l.logIndex))}`)) };
}

/** Asserts every block/transaction/log of the truth is present exactly once in the committed files. */
export async function committedRows(state: Db, uuids: { blocks: string; transactions: string; logs: string }) {
  const bf = await currentFiles(state, uuids.blocks);
  const tf = await currentFiles(state, uuids.transactions);
  const lf = await currentFiles(state, uuids.logs);
  const blocks = bf.length === 0 ? [] : await duck<{ n: number; h: string }>(`SELECT block_number::BIGINT AS n, lower(hex(block_hash)) AS h FROM read_parquet(${fileList(bf)})`);
  const txs = tf.length === 0 ? [] : await duck<{ h: string }>(`SELECT lower(hex(transaction_hash)) AS h FROM read_parquet(${fileList(tf)})`);
  const logs = lf.length === 0 ? [] : await duck<{ k: string }>(`SELECT block_number::VARCHAR || ':' || log_index::VARCHAR AS k FROM read_parquet(${fileList(lf)})`);
  return {
    files: { blocks: bf, transactions: tf, logs: lf },
    blocks: blocks.map((r) => ({ n: Number(r.n), h: `0x${r.h}` })),
    txs: txs.map((r) => `0x${r.h}`),
    logs: logs.map((r) => r.k),
  };
}

export function fixedYaml(name: string, chainId: number, to: number, opts: { chunk?: number; inflight?: number; pool?: string; from?: number; streams?: string[] } = {}): string {
  const streams = opts.streams ?? ['blocks', 'transactions', 'logs'];
  return `kind: chain_sync
name: ${name}
chain_id: ${chainId}
mode:
  kind: fixed_target
  from_block: ${opts.from ?? 0}
  to_block: ${to}
streams:
${streams.map((s) => `  ${s}:
    cryo_dataset_name: ${s}
    rpc_pool: ${opts.pool ?? 'dev'}
    chunk_size: ${opts.chunk ?? 250}
    max_inflight: ${opts.inflight ?? 4}`).join('\n')}
`;
}

export function followYaml(name: string, chainId: number, opts: { chunk?: number; inflight?: number; pool?: string; lag?: number; poll?: number; maxAge?: number; streams?: string[] } = {}): string {
  const streams = opts.streams ?? ['blocks', 'transactions', 'logs'];
  return `kind: chain_sync
name: ${name}
chain_id: ${chainId}
mode:
  kind: follow_head
  from_block: 0
  tail_lag: ${opts.lag ?? 2}
  head_poll_interval_seconds: ${opts.poll ?? 1}
  max_head_age_seconds: ${opts.maxAge ?? 3}
streams:
${streams.map((s) => `  ${s}:
    cryo_dataset_name: ${s}
    rpc_pool: ${opts.pool ?? 'dev'}
    chunk_size: ${opts.chunk ?? 100}
    max_inflight: ${opts.inflight ?? 4}`).join('\n')}
`;
}

// ---------------------------------------------------------------------------------------------
// Driving the worker contract by hand

export type { Lease };

export async function claim(st: Stack, taskId: string, workerId = 'hand'): Promise<Lease> {
  const r = await post(st, '/internal/task-claim', { task_id: taskId, worker_id: workerId }, { 'x-trace-worker-token': st.workerToken });
  if (r.body.status !== 'Claimed') throw new Error(`expected Claimed, got ${JSON.stringify(r.body)}`);
  return { task_id: taskId, attempt: r.body.attempt, lease_token: r.body.lease_token, capability_token: r.body.capability_token, task: r.body.task };
}

export function complete(st: Stack, l: Lease, extra: Record<string, unknown>): Promise<{ status: number; body: any }> {
  return post(st, '/v1/task/complete', { task_id: l.task_id, attempt: l.attempt, lease_token: l.lease_token, ...extra }, { 'x-trace-task-capability': l.capability_token });
}

/** Runs an operator on a claimed payload (without the worker wrapper) and returns its result. */
export async function runOperator(op: Operator, l: Lease): Promise<any> {
  return op.run({ task: l.task, signal: new AbortController().signal, log: silentLogger, capabilityToken: l.capability_token, emit: async () => undefined });
}

export async function count(state: Db, sql: string, params: unknown[] = []): Promise<number> {
  return Number(((await state.query<{ n: number }>(sql, params)).rows[0]!).n);
}

/** Runs a CLI command in this process and returns what it wrote to stdout. */
export async function runCommand(cmd: Command, argv: string[]): Promise<string> {
  const chunks: string[] = [];
  const orig = process.stdout.write.bind(process.stdout);
  (process.stdout as { write: unknown }).write = (s: string | Uint8Array) => { chunks.push(String(s)); return true; };
  try {
    await cmd.run(parseCommandArgs(cmd, argv));
  } finally {
    (process.stdout as { write: unknown }).write = orig;
  }
  return chunks.join('');
}
