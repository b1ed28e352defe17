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
