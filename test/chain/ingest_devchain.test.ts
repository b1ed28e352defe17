import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startRpcGateway, type StartedRpcGateway } from '../../src/rpc-gateway/gateway.js';
import { rpcClientForPool } from '../../src/operators/cryo_ingest/rpc.js';
import { ingestRange, type IngestResult } from '../../src/operators/cryo_ingest/ingest.js';
import { readCommittedManifest } from '../../src/operators/cryo_ingest/manifest.js';
import { describeParquet, duck, jsonRpcServer, rpcCall } from './support.js';
import { COINBASE, startTestChain, type TestChain } from './dev_chain.js';

/**
 * End to end against a real EVM node: anvil -> counting proxy -> RPC egress
 * gateway -> ingest client -> Parquet, then every row is checked against what the node says.
 */

type Proxy = Awaited<ReturnType<typeof jsonRpcServer>>;

interface NodeTx {
  hash: string;
  blockNumber: string;
  transactionIndex: string;
  nonce: string;
  from: string;
  to: string | null;
  value: string;
  input: string;
  gas: string;
  gasPrice: string;
  type: string;
  maxFeePerGas?: string;
  maxPriorityFeePerGas?: string;
}
interface NodeLog {
  address: string;
  topics: string[];
  data: string;
  logIndex: string;
  transactionIndex: string;
  transactionHash: string;
  blockNumber: string;
}
interface NodeReceipt {
  gasUsed: string;
  status: string;
  effectiveGasPrice: string;
  logs: NodeLog[];
}
interface NodeBlock {
  number: string;
  hash: string;
  timestamp: string;
  miner: string;
  gasUsed: string;
  extraData: string;
  baseFeePerGas: string;
  transactions: NodeTx[];
}

let chain: TestChain;
let gw: StartedRpcGateway;
let withReceipts: Proxy; // passes the node's answers through (anvil has eth_getBlockReceipts)
let plain: Proxy; // the same node without eth_getBlockReceipts, as some providers are
let work: string;
const node: { blocks: NodeBlock[]; receipts: Map<string, NodeReceipt>; logs: NodeLog[] } = { blocks: [], receipts: new Map(), logs: [] };

async function forward(method: string, params: unknown[]) {
  const res = await fetch(chain.url, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ jsonrpc: '2.0', id: 1, method, params }),
  });
  const body = (await res.json()) as { result?: unknown; error?: { code: number; message: string } };
  return body.error ? { error: { code: body.error.code, message: body.error.message } } : { result: body.result };
}

before(async () => {
  chain = await startTestChain(1337);
  work = await mkdtemp(join(tmpdir(), 'trace-ingest-devchain-'));
  withReceipts = await jsonRpcServer({ answer: forward });
  plain = await jsonRpcServer({
    answer: async (method, params) => method === 'eth_getBlockReceipts'
      ? { error: { code: -32601, message: 'the method eth_getBlockReceipts does not exist/is not available' } }
      : forward(method, params),
  });
  gw = await startRpcGateway({ port: 0, pools: { full: [withReceipts.url], plain: [plain.url] } });

  for (let b = 0; b <= chain.head; b++) {
    const blk = await rpcCall<NodeBlock>(chain.url, 'eth_getBlockByNumber', [`0x${b.toString(16)}`, true]);
    node.blocks.push(blk);
    for (const tx of blk.transactions) node.receipts.set(tx.hash, await rpcCall<NodeReceipt>(chain.url, 'eth_getTransactionReceipt', [tx.hash]));
  }
  node.logs = await rpcCall<NodeLog[]>(chain.url, 'eth_getLogs', [{ fromBlock: '0x0', toBlock: `0x${chain.head.toString(16)}` }]);
});

after(async () => {
  await gw?.close();
  await withReceipts?.close();
  await plain?.close();
  await chain?.close();
  if (work) await rm(work, { recursive: true, force: true });
});

const ALL = ['blocks', 'transactions', 'logs'] as const;
const num = (h: string) => Number(BigInt(h));
const big = (h: string) => BigInt(h).toString();

async function ingest(pool: string, dir: string, start: number, end: number): Promise<IngestResult> {
  const rpc = rpcClientForPool(gw.url, pool, { maxBatchSize: 4, maxConcurrency: 3 });
  try {
    return await ingestRange({ rpc, chainId: chain.chainId, datasets: [...ALL], start, end, outDir: join(work, dir), mode: 'native', chunkBlocks: 2 });
  } finally {
    rpc.close();
  }
}

const glob = (dir: string, dataset: string) => `'${join(work, dir)}/*__${dataset}__*.parquet'`;
const hx = (col: string) => `CASE WHEN ${col} IS NULL THEN NULL ELSE '0x' || lower(hex(${col})) END AS ${col}`;

async function readBlocks(dir: string) {
  return duck<Record<string, string | number | null>>(
    `SELECT block_number, ${hx('block_hash')}, timestamp, ${hx('author')}, gas_used::VARCHAR AS gas_used, ${hx('extra_data')},
            base_fee_per_gas::VARCHAR AS base_fee_per_gas, chain_id::VARCHAR AS chain_id
     FROM read_parquet(${glob(dir, 'blocks')}) ORDER BY block_number`,
  );
}
async function readTxs(dir: string) {
  return duck<Record<string, string | number | boolean | null>>(
    `SELECT block_number, transaction_index::VARCHAR AS transaction_index, ${hx('transaction_hash')}, nonce::VARCHAR AS nonce,
            ${hx('from_address')}, ${hx('to_address')}, ${hx('value_binary')}, value_string, value_f64, ${hx('input')},
            gas_limit::VARCHAR AS gas_limit, gas_used::VARCHAR AS gas_used, gas_price::VARCHAR AS gas_price, transaction_type,
            max_priority_fee_per_gas::VARCHAR AS max_priority_fee_per_gas, max_fee_per_gas::VARCHAR AS max_fee_per_gas, success,
            n_input_bytes, n_input_zero_bytes, n_input_nonzero_bytes, chain_id::VARCHAR AS chain_id
     FROM read_parquet(${glob(dir, 'transactions')}) ORDER BY block_number, transaction_index`,
  );
}
async function readLogs(dir: string) {
  return duck<Record<string, string | number | null>>(
    `SELECT block_number, transaction_index, log_index, ${hx('transaction_hash')}, ${hx('address')}, ${hx('topic0')}, ${hx('topic1')},
            ${hx('topic2')}, ${hx('topic3')}, ${hx('data')}, n_data_bytes, chain_id::VARCHAR AS chain_id
     FROM read_parquet(${glob(dir, 'logs')}) ORDER BY block_number, log_index`,
  );
}

function expectedTx(tx: NodeTx) {
  const r = node.receipts.get(tx.hash)!;
  const input = Buffer.from(tx.input.slice(2), 'hex');
  const zero = [...input].filter((x) => x === 0).length;
  const type = num(tx.type);
  return {
    block_number: num(tx.blockNumber),
    transaction_index: big(tx.transactionIndex),
    transaction_hash: tx.hash,
    nonce: big(tx.nonce),
    from_address: tx.from,
    to_address: tx.to,
    value_binary: `0x${BigInt(tx.value).toString(16).padStart(64, '0')}`,
    value_string: big(tx.value),
    value_f64: Number(BigInt(tx.value)),
    input: tx.input,
    gas_limit: big(tx.gas),
    gas_used: big(r.gasUsed),
    gas_price: big(r.effectiveGasPrice),
    transaction_type: type,
    max_priority_fee_per_gas: type < 2 ? null : big(tx.maxPriorityFeePerGas!),
    max_fee_per_gas: type < 2 ? null : big(tx.maxFeePerGas!),
    success: r.status === '0x1',
    n_input_bytes: input.length,
    n_input_zero_bytes: zero,
    n_input_nonzero_bytes: input.length - zero,
    chain_id: '1337',
  };
}

async function assertMatchesNode(dir: string, start: number, end: number) {
  const blocks = await readBlocks(dir);
  const wantBlocks = node.blocks.slice(start, end);
  assert.equal(blocks.length, wantBlocks.length, 'one row per block');
  blocks.forEach((row, i) => {
    const b = wantBlocks[i]!;
    assert.deepEqual(row, {
      block_number: num(b.number),
      block_hash: b.hash,
      timestamp: num(b.timestamp),
      author: b.miner,
      gas_used: big(b.gasUsed),
      extra_data: b.extraData,
      base_fee_per_gas: big(b.baseFeePerGas),
      chain_id: '1337',
    });
  });
  if (start <= 1 && end > 1) assert.equal(blocks[1 - start]!.author, COINBASE, 'mined blocks carry the coinbase');

  const txs = await readTxs(dir);
  const wantTxs = wantBlocks.flatMap((b) => b.transactions);
  assert.equal(txs.length, wantTxs.length, 'one row per transaction');
  assert.equal(new Set(txs.map((t) => t.transaction_hash)).size, txs.length, 'no transaction twice');
  txs.forEach((row, i) => assert.deepEqual(row, expectedTx(wantTxs[i]!), `transaction ${wantTxs[i]!.hash}`));

  const logs = await readLogs(dir);
  // log_index is block-wide (eth_getLogs); nodes differ in how receipts number logs, so
  // receipts are compared on content only
  const wantLogs = node.logs.filter((l) => num(l.blockNumber) >= start && num(l.blockNumber) < end);
  const content = (l: { transactionHash: string; address: string; topics: string[]; data: string }) =>
    [l.transactionHash, l.address, ...l.topics, l.data].join('|');
  assert.deepEqual(
    wantLogs.map(content),
    wantTxs.flatMap((t) => node.receipts.get(t.hash)!.logs).map(content),
    'eth_getLogs and the receipts agree on content',
  );
  assert.equal(logs.length, wantLogs.length, 'one row per log');
  logs.forEach((row, i) => {
    const l = wantLogs[i]!;
    assert.deepEqual(row, {
      block_number: num(l.blockNumber),
      transaction_index: num(l.transactionIndex),
      log_index: num(l.logIndex),
      transaction_hash: l.transactionHash,
      address: l.address,
      topic0: l.topics[0] ?? null,
      topic1: l.topics[1] ?? null,
      topic2: l.topics[2] ?? null,
      topic3: l.topics[3] ?? null,
      data: l.data,
      n_data_bytes: (l.data.length - 2) / 2,
      chain_id: '1337',
    });
  });
}

test('the test chain has what the ingest must capture', () => {
  assert.equal(chain.head, 5);
  const txs = node.blocks.flatMap((b) => b.transactions);
  assert.equal(txs.length, 14);
  assert.ok(node.blocks.filter((b) => b.transactions.length >= 6).length >= 2, 'multi-transaction blocks');
  assert.deepEqual([...new Set(txs.map((t) => t.type))].sort(), ['0x0', '0x1', '0x2']);
  assert.ok(txs.some((t) => t.to === null), 'a contract creation');
  assert.ok([...node.receipts.values()].some((r) => r.status === '0x0'), 'a reverted transaction');
  assert.equal([...node.receipts.values()].reduce((a, r) => a + r.logs.length, 0), 10);
});

test('native ingest of [0, head+1) through the gateway matches the node row for row', async () => {
  const res = await ingest('full', 'full', 0, chain.head + 1);
  assert.deepEqual(res.row_counts, { blocks: 6, transactions: 14, logs: 10 });
  assert.deepEqual(
    res.files.map((f) => f.path),
    ['network_1337__blocks__00000000_to_00000005.parquet', 'network_1337__logs__00000000_to_00000005.parquet', 'network_1337__transactions__00000000_to_00000005.parquet'],
  );
  await assertMatchesNode('full', 0, chain.head + 1);
  const m = await readCommittedManifest(join(work, 'full'), { checkHashes: true });
  assert.equal(m.range_start, 0);
  assert.equal(m.range_end, chain.head + 1);
  assert.equal(m.bytes, res.bytes);
  const methods = withReceipts.calls.map((c) => c.method);
  assert.ok(methods.includes('eth_getBlockReceipts'), 'used eth_getBlockReceipts where the node has it');
  assert.ok(!methods.includes('eth_getTransactionReceipt'), 'no per-transaction fallback needed');
  assert.ok(methods.includes('eth_getLogs'));
  // the expected schema holds for real node data too
  const expected = JSON.parse(await readFile(new URL('./cryo_expected_schema.json', import.meta.url), 'utf8')) as Record<string, unknown>;
  for (const f of res.files) assert.deepEqual(await describeParquet(join(work, 'full', f.path)), expected[f.dataset], f.path);
});

test('a node without eth_getBlockReceipts: detected once, per-transaction receipts, identical files', async () => {
  const res = await ingest('plain', 'plain', 0, chain.head + 1);
  const count = (m: string) => plain.calls.filter((c) => c.method === m).length;
  assert.equal(count('eth_getBlockReceipts'), 1, 'probed once, then remembered');
  assert.equal(count('eth_getTransactionReceipt'), 14, 'one receipt call per transaction');
  await assertMatchesNode('plain', 0, chain.head + 1);
  const full = await readCommittedManifest(join(work, 'full'));
  assert.deepEqual(
    res.files.map((f) => [f.path, f.sha256]),
    full.files.map((f) => [f.path, f.sha256]),
    'both receipt paths write byte-identical Parquet',
  );
});

test('adjacent ranges [0,3) and [3,head+1) together hold every row exactly once', async () => {
  const a = await ingest('plain', 'split', 0, 3);
  const b = await ingest('plain', 'split', 3, chain.head + 1).catch((e: unknown) => e);
  // one directory holds one committed range: the second range must go to its own prefix
  assert.equal((b as { code?: string }).code, 'CRYO_STAGING_CONFLICT');
  const b2 = await ingest('plain', 'split2', 3, chain.head + 1);
  assert.equal(a.row_counts.blocks! + b2.row_counts.blocks!, chain.head + 1);
  const union = (ds: string, key: string) =>
    duck<{ n: number; d: number }>(
      `SELECT count(*)::INT AS n, count(DISTINCT ${key})::INT AS d FROM read_parquet(['${join(work, 'split')}/network_1337__${ds}__00000000_to_00000002.parquet', '${join(work, 'split2')}/network_1337__${ds}__00000003_to_00000005.parquet'])`,
    );
  assert.deepEqual(await union('blocks', 'block_number'), [{ n: 6, d: 6 }]);
  assert.deepEqual(await union('transactions', 'transaction_hash'), [{ n: 14, d: 14 }]);
  assert.deepEqual(await union('logs', '(block_number, log_index)'), [{ n: 10, d: 10 }]);
});

test('a range past the head fails cleanly and commits nothing', async () => {
  const dir = join(work, 'past-head');
  const rpc = rpcClientForPool(gw.url, 'plain', { maxRetries: 0 });
  try {
    await assert.rejects(
      ingestRange({ rpc, chainId: 1337, datasets: ['blocks'], start: chain.head, end: chain.head + 3, outDir: dir, mode: 'native' }),
      (e: { code?: string }) => e.code === 'CHAIN_BLOCK_MISSING',
    );
  } finally {
    rpc.close();
  }
  await assert.rejects(readCommittedManifest(dir), (e: { code?: string }) => e.code === 'CRYO_OUTPUT_INVALID');
});

test('a pool serving another chain is refused before anything is written', async () => {
  const dir = join(work, 'wrong-chain');
  const rpc = rpcClientForPool(gw.url, 'plain');
  try {
    await assert.rejects(
      ingestRange({ rpc, chainId: 1, datasets: ['blocks'], start: 0, end: 2, outDir: dir, mode: 'native' }),
      (e: { code?: string; message: string }) => e.code === 'CHAIN_ID_MISMATCH' && /chain 1337, not chain 1/.test(e.message),
    );
  } finally {
    rpc.close();
  }
  await assert.rejects(readCommittedManifest(dir), (e: { code?: string }) => e.code === 'CRYO_OUTPUT_INVALID');
});
