import { z } from 'zod';
import { TraceError } from '../../core/errors.js';
import { hexToNumber, toQuantity } from '../../chain/hex.js';
import {
  isRpcBlockWithHashes,
  isRpcBlockWithTxs,
  isRpcLogArray,
  isRpcReceipt,
  isRpcReceiptArray,
  rpcBlockWithHashesSchema,
  rpcBlockWithTxsSchema,
  rpcLogSchema,
  rpcReceiptSchema,
  type RpcBlock,
  type RpcBlockWithTxs,
  type RpcLog,
  type RpcReceipt,
} from '../../chain/types.js';
import { RpcCallError, type RpcClient } from './rpc.js';

/**
 * Fetches chain data for a block range `[start, end)` through the RPC client. Every answer is
 * validated; a block the node does not have, a receipt that belongs to another block, or logs
 * that disagree with the fetched blocks fail the fetch (retryable: the node may be behind or
 * mid-reorg) rather than writing a partial range.
 */

export const chainError = (code: string, message: string, retryable = true): TraceError =>
  new TraceError(502, code, message, { extra: { retryable } });

/**
 * `check` accepts exactly what `schema` accepts (see the guards in chain/types.ts) and costs a
 * fraction of a parse; the schema runs only to describe a rejection.
 */
function parseOrThrow<T>(schema: z.ZodType<T>, check: (v: unknown) => boolean, v: unknown, what: string): T {
  if (check(v)) return v as T;
  const r = schema.safeParse(v);
  if (!r.success) {
    const first = r.error.issues[0];
    const where = first ? `${first.path.join('.')}: ${first.message}` : 'invalid';
    throw chainError('CHAIN_BAD_RESPONSE', `the node returned a malformed ${what} (${where})`);
  }
  return r.data;
}

/** `eth_getBlockByNumber` for every block of the range, in order. */
export async function fetchBlocks(rpc: RpcClient, start: number, end: number, fullTransactions: true): Promise<RpcBlockWithTxs[]>;
export async function fetchBlocks(rpc: RpcClient, start: number, end: number, fullTransactions: boolean): Promise<RpcBlock[]>;
export async function fetchBlocks(rpc: RpcClient, start: number, end: number, fullTransactions: boolean): Promise<RpcBlock[]> {
  const numbers = Array.from({ length: end - start }, (_, i) => start + i);
  const raw = await rpc.callMany(numbers.map((n) => ({ method: 'eth_getBlockByNumber', params: [toQuantity(n), fullTransactions] })));
  const schema = fullTransactions ? rpcBlockWithTxsSchema : rpcBlockWithHashesSchema;
  const check = fullTransactions ? isRpcBlockWithTxs : isRpcBlockWithHashes;
  return raw.map((b, i) => {
    const n = numbers[i]!;
    if (b === null || b === undefined) throw chainError('CHAIN_BLOCK_MISSING', `the node has no block ${n} (is the range past the head?)`);
    const block = parseOrThrow<RpcBlock>(schema, check, b, `block ${n}`);
    if (hexToNumber(block.number) !== n) throw chainError('CHAIN_BAD_RESPONSE', `asked for block ${n}, got ${hexToNumber(block.number)}`);
    if (fullTransactions) {
      for (const tx of (block as RpcBlockWithTxs).transactions) {
        if (tx.blockHash.toLowerCase() !== block.hash.toLowerCase()) {
          throw chainError('CHAIN_INCONSISTENT', `a transaction of block ${n} names another block hash`);
        }
      }
    }
    return block;
  });
}

const receiptsArraySchema = z.array(rpcReceiptSchema);

/**
 * Receipts of every transaction of `blocks`, keyed by lower-case transaction hash. Uses
 * `eth_getBlockReceipts` when the node has it, otherwise `eth_getTransactionReceipt` per
 * transaction; the client remembers which one works.
 */
export async function fetchReceipts(rpc: RpcClient, blocks: readonly RpcBlockWithTxs[]): Promise<Map<string, RpcReceipt>> {
  const out = new Map<string, RpcReceipt>();
  const fallback: RpcBlockWithTxs[] = [];
  await Promise.all(
    blocks.map(async (b) => {
      if (b.transactions.length === 0) return;
      const r = await rpc.callOptional<unknown>('eth_getBlockReceipts', [b.number]);
      if (!r.supported) return void fallback.push(b);
      if (r.result === null) throw chainError('CHAIN_BLOCK_MISSING', `the node has no receipts for block ${hexToNumber(b.number)}`);
      const receipts = parseOrThrow(receiptsArraySchema, isRpcReceiptArray, r.result, `receipt list of block ${hexToNumber(b.number)}`);
      addReceipts(out, b, receipts);
    }),
  );
  if (fallback.length > 0) {
    const hashes = fallback.flatMap((b) => b.transactions.map((t) => t.hash));
    const raw = await rpc.callMany(hashes.map((h) => ({ method: 'eth_getTransactionReceipt', params: [h] })));
    const byBlock = new Map<string, RpcReceipt[]>();
    raw.forEach((r, i) => {
      if (r === null || r === undefined) throw chainError('CHAIN_RECEIPT_MISSING', 'the node has no receipt for a mined transaction');
      const receipt = parseOrThrow(rpcReceiptSchema, isRpcReceipt, r, `receipt of transaction ${hashes[i]}`);
      const k = receipt.blockHash.toLowerCase();
      byBlock.set(k, [...(byBlock.get(k) ?? []), receipt]);
    });
    for (const b of fallback) addReceipts(out, b, byBlock.get(b.hash.toLowerCase()) ?? []);
  }
  return out;
}

function addReceipts(out: Map<string, RpcReceipt>, block: RpcBlockWithTxs, receipts: readonly RpcReceipt[]): void {
  const n = hexToNumber(block.number);
  const want = new Set(block.transactions.map((t) => t.hash.toLowerCase()));
  let matched = 0;
  for (const r of receipts) {
    const h = r.transactionHash.toLowerCase();
    if (r.blockHash.toLowerCase() !== block.hash.toLowerCase() || !want.has(h)) {
      throw chainError('CHAIN_INCONSISTENT', `receipts of block ${n} do not match its transactions (reorg?)`);
    }
    if (!out.has(h)) matched++;
    out.set(h, r);
  }
  if (matched !== want.size) throw chainError('CHAIN_INCONSISTENT', `block ${n} has ${want.size} transactions but ${matched} receipts`);
}

const logsArraySchema = z.array(rpcLogSchema);

/**
 * `eth_getLogs` over `[start, end)`. When the node refuses a range as too large ("query
 * returned more than 10000 results", "block range too large", ...) the range is halved and
 * both halves are fetched, down to single blocks. Logs come back sorted by
 * `(block_number, log_index)` without duplicates; removed logs are dropped.
 */
export async function fetchLogs(rpc: RpcClient, start: number, end: number): Promise<RpcLog[]> {
  const collect = async (s: number, e: number): Promise<RpcLog[]> => {
    try {
      const raw = await rpc.call<unknown>('eth_getLogs', [{ fromBlock: toQuantity(s), toBlock: toQuantity(e - 1) }]);
      return parseOrThrow(logsArraySchema, isRpcLogArray, raw, `log list of blocks ${s}..${e - 1}`);
    } catch (err) {
      if (err instanceof RpcCallError && err.kind === 'too_many_results') {
        if (e - s <= 1) throw chainError('CHAIN_LOGS_TOO_LARGE', `the node refuses to return the logs of block ${s}`, false);
        const mid = s + Math.floor((e - s) / 2);
        const [a, b] = await Promise.all([collect(s, mid), collect(mid, e)]);
        return [...a, ...b];
      }
      throw err;
    }
  };
  const logs = await collect(start, end);
  const seen = new Map<string, RpcLog>();
  for (const l of logs) {
    if (l.removed) continue;
    const bn = hexToNumber(l.blockNumber);
    if (bn < start || bn >= end) throw chainError('CHAIN_BAD_RESPONSE', `eth_getLogs returned a log of block ${bn} outside ${start}..${end - 1}`);
    seen.set(`${bn}:${hexToNumber(l.logIndex)}`, l);
  }
  return [...seen.values()].sort(
    (a, b) => hexToNumber(a.blockNumber) - hexToNumber(b.blockNumber) || hexToNumber(a.logIndex) - hexToNumber(b.logIndex),
  );
}

export interface FetchedChunk {
  blocks: RpcBlock[];
  receipts: Map<string, RpcReceipt>;
  logs: RpcLog[];
}

/** Everything the requested datasets need for `[start, end)`, fetching only what is needed. */
export async function fetchChunk(
  rpc: RpcClient,
  start: number,
  end: number,
  need: { blocks: boolean; transactions: boolean; logs: boolean },
): Promise<FetchedChunk> {
  const wantBlocks = need.blocks || need.transactions;
  const [blocks, logs] = await Promise.all([
    wantBlocks ? fetchBlocks(rpc, start, end, need.transactions) : Promise.resolve([] as RpcBlock[]),
    need.logs ? fetchLogs(rpc, start, end) : Promise.resolve([] as RpcLog[]),
  ]);
  const receipts = need.transactions ? await fetchReceipts(rpc, blocks as RpcBlockWithTxs[]) : new Map<string, RpcReceipt>();
  if (wantBlocks && need.logs) {
    const hashes = new Map(blocks.map((b) => [hexToNumber(b.number), b.hash.toLowerCase()]));
    for (const l of logs) {
      if (l.blockHash && hashes.get(hexToNumber(l.blockNumber)) !== l.blockHash.toLowerCase()) {
        throw chainError('CHAIN_INCONSISTENT', `logs of block ${hexToNumber(l.blockNumber)} name another block hash (reorg?)`);
      }
    }
  }
  return { blocks, receipts, logs };
}
