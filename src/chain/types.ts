import { z } from 'zod';

/**
 * The subset of EVM JSON-RPC objects Trace reads, validated at the trust boundary (node
 * answers are untrusted input). Unknown fields are dropped; values stay hex strings and are
 * converted where they are used.
 */

const quantity = z.string().regex(/^0x[0-9a-fA-F]{1,64}$/, 'hex quantity');
const data = z.string().regex(/^0x([0-9a-fA-F]{2})*$/, 'hex data');
const hash32 = z.string().regex(/^0x[0-9a-fA-F]{64}$/, '32-byte hash');
const address = z.string().regex(/^0x[0-9a-fA-F]{40}$/, '20-byte address');

export const rpcTransactionSchema = z.object({
  hash: hash32,
  nonce: quantity,
  blockHash: hash32,
  blockNumber: quantity,
  transactionIndex: quantity,
  from: address,
  to: address.nullish(),
  value: quantity,
  gas: quantity,
  gasPrice: quantity.nullish(),
  maxFeePerGas: quantity.nullish(),
  maxPriorityFeePerGas: quantity.nullish(),
  input: data,
  type: quantity.nullish(),
  chainId: quantity.nullish(),
});
export type RpcTransaction = z.infer<typeof rpcTransactionSchema>;

const blockBase = {
  number: quantity,
  hash: hash32,
  parentHash: hash32,
  miner: address,
  timestamp: quantity,
  gasUsed: quantity,
  gasLimit: quantity,
  extraData: data,
  baseFeePerGas: quantity.nullish(),
};

export const rpcBlockWithHashesSchema = z.object({ ...blockBase, transactions: z.array(hash32) });
export const rpcBlockWithTxsSchema = z.object({ ...blockBase, transactions: z.array(rpcTransactionSchema) });
export type RpcBlockWithHashes = z.infer<typeof rpcBlockWithHashesSchema>;
export type RpcBlockWithTxs = z.infer<typeof rpcBlockWithTxsSchema>;
export type RpcBlock = RpcBlockWithHashes | RpcBlockWithTxs;

export const rpcLogSchema = z.object({
  address,
  topics: z.array(hash32).max(4),
  data,
  blockNumber: quantity,
  blockHash: hash32.nullish(),
  transactionHash: hash32,
  transactionIndex: quantity,
  logIndex: quantity,
  removed: z.boolean().optional(),
});
export type RpcLog = z.infer<typeof rpcLogSchema>;

export const rpcReceiptSchema = z.object({
  transactionHash: hash32,
  transactionIndex: quantity,
  blockHash: hash32,
  blockNumber: quantity,
  gasUsed: quantity,
  status: quantity.nullish(),
  effectiveGasPrice: quantity.nullish(),
  logs: z.array(rpcLogSchema),
});
export type RpcReceipt = z.infer<typeof rpcReceiptSchema>;

/*
 * Fast structural checks with exactly the acceptance rules of the schemas above (same
 * patterns, same nullish/optional fields, same array limits). They allocate nothing and return
 * the input unchanged, so the ingest validates a whole response batch at a fraction of the
 * cost of a zod parse; callers fall back to the schema only to describe a rejection.
 */

const QUANTITY_RE = /^0x[0-9a-fA-F]{1,64}$/;
const DATA_RE = /^0x([0-9a-fA-F]{2})*$/;
const HASH32_RE = /^0x[0-9a-fA-F]{64}$/;
const ADDRESS_RE = /^0x[0-9a-fA-F]{40}$/;

type Obj = Record<string, unknown>;
const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);
const isQ = (v: unknown): boolean => typeof v === 'string' && QUANTITY_RE.test(v);
const isQn = (v: unknown): boolean => v === null || v === undefined || isQ(v);
const isD = (v: unknown): boolean => typeof v === 'string' && DATA_RE.test(v);
const isH = (v: unknown): boolean => typeof v === 'string' && HASH32_RE.test(v);
const isHn = (v: unknown): boolean => v === null || v === undefined || isH(v);
const isA = (v: unknown): boolean => typeof v === 'string' && ADDRESS_RE.test(v);
const isAn = (v: unknown): boolean => v === null || v === undefined || isA(v);

function isTx(t: unknown): boolean {
  return (
    isObj(t) &&
    isH(t.hash) &&
    isQ(t.nonce) &&
    isH(t.blockHash) &&
    isQ(t.blockNumber) &&
    isQ(t.transactionIndex) &&
    isA(t.from) &&
    isAn(t.to) &&
    isQ(t.value) &&
    isQ(t.gas) &&
    isQn(t.gasPrice) &&
    isQn(t.maxFeePerGas) &&
    isQn(t.maxPriorityFeePerGas) &&
    isD(t.input) &&
    isQn(t.type) &&
    isQn(t.chainId)
  );
}

function isBlockBase(b: Obj): boolean {
  return (
    isQ(b.number) &&
    isH(b.hash) &&
    isH(b.parentHash) &&
    isA(b.miner) &&
    isQ(b.timestamp) &&
    isQ(b.gasUsed) &&
    isQ(b.gasLimit) &&
    isD(b.extraData) &&
    isQn(b.baseFeePerGas)
  );
}

function every(v: unknown, item: (x: unknown) => boolean): boolean {
  if (!Array.isArray(v)) return false;
  for (let i = 0; i < v.length; i++) if (!item(v[i])) return false;
  return true;
}

/** Accepts exactly what `rpcTransactionSchema` accepts. */
export const isRpcTransaction = (v: unknown): v is RpcTransaction => isTx(v);
/** Accepts exactly what `rpcBlockWithHashesSchema` accepts. */
export const isRpcBlockWithHashes = (v: unknown): v is RpcBlockWithHashes => isObj(v) && isBlockBase(v) && every(v.transactions, isH);
/** Accepts exactly what `rpcBlockWithTxsSchema` accepts. */
export const isRpcBlockWithTxs = (v: unknown): v is RpcBlockWithTxs => isObj(v) && isBlockBase(v) && every(v.transactions, isTx);

function isLog(l: unknown): boolean {
  return (
    isObj(l) &&
    isA(l.address) &&
    Array.isArray(l.topics) &&
    l.topics.length <= 4 &&
    every(l.topics, isH) &&
    isD(l.data) &&
    isQ(l.blockNumber) &&
    isHn(l.blockHash) &&
    isH(l.transactionHash) &&
    isQ(l.transactionIndex) &&
    isQ(l.logIndex) &&
    (l.removed === undefined || typeof l.removed === 'boolean')
  );
}

/** Accepts exactly what `rpcLogSchema` accepts. */
export const isRpcLog = (v: unknown): v is RpcLog => isLog(v);
/** Accepts exactly what `z.array(rpcLogSchema)` accepts. */
export const isRpcLogArray = (v: unknown): v is RpcLog[] => every(v, isLog);

function isReceipt(r: unknown): boolean {
  return (
    isObj(r) &&
    isH(r.transactionHash) &&
    isQ(r.transactionIndex) &&
    isH(r.blockHash) &&
    isQ(r.blockNumber) &&
    isQ(r.gasUsed) &&
    isQn(r.status) &&
    isQn(r.effectiveGasPrice) &&
    every(r.logs, isLog)
  );
}

/** Accepts exactly what `rpcReceiptSchema` accepts. */
export const isRpcReceipt = (v: unknown): v is RpcReceipt => isReceipt(v);
/** Accepts exactly what `z.array(rpcReceiptSchema)` accepts. */
export const isRpcReceiptArray = (v: unknown): v is RpcReceipt[] => every(v, isReceipt);
