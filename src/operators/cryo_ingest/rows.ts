import { hexToBigInt, hexToBytes, hexToNumber, u256ToBytes } from '../../chain/hex.js';
import type { RpcBlock, RpcLog, RpcReceipt, RpcTransaction } from '../../chain/types.js';
import type { Row } from './schema.js';

/**
 * RPC objects -> rows in Cryo's column layout (see schema.ts). The rules follow Cryo:
 * - `gas_price`: legacy (type 0) and access-list (type 1) transactions use `gasPrice`; later
 *   types use `base_fee + min(max_priority_fee, max_fee - base_fee)`, i.e. the effective price.
 * - `max_fee_per_gas` and `max_priority_fee_per_gas` are null for types 0 and 1.
 * - `success` and `gas_used` come from the receipt; `success` is null for pre-Byzantium
 *   receipts that carry no `status`.
 * - `to_address` is null for contract creations.
 */

const u64 = (hex: string | null | undefined): bigint | null => (hex == null ? null : hexToBigInt(hex));

export function blockRow(b: RpcBlock, chainId: number): Row {
  return {
    block_number: hexToNumber(b.number),
    block_hash: hexToBytes(b.hash, 32),
    timestamp: hexToNumber(b.timestamp),
    author: hexToBytes(b.miner, 20),
    gas_used: hexToBigInt(b.gasUsed),
    extra_data: hexToBytes(b.extraData),
    base_fee_per_gas: u64(b.baseFeePerGas),
    chain_id: BigInt(chainId),
  };
}

export function effectiveGasPrice(tx: RpcTransaction, baseFee: bigint | null): bigint | null {
  const type = tx.type ? hexToNumber(tx.type) : 0;
  if (type === 0 || type === 1 || tx.maxFeePerGas == null || tx.maxPriorityFeePerGas == null || baseFee === null) {
    return u64(tx.gasPrice);
  }
  const maxFee = hexToBigInt(tx.maxFeePerGas);
  const tip = hexToBigInt(tx.maxPriorityFeePerGas);
  const headroom = maxFee > baseFee ? maxFee - baseFee : 0n;
  return baseFee + (tip < headroom ? tip : headroom);
}

export function transactionRow(tx: RpcTransaction, receipt: RpcReceipt | undefined, baseFee: bigint | null, chainId: number): Row {
  const input = hexToBytes(tx.input);
  let zero = 0;
  for (const byte of input) if (byte === 0) zero++;
  const value = hexToBigInt(tx.value);
  const type = tx.type ? hexToNumber(tx.type) : 0;
  return {
    block_number: hexToNumber(tx.blockNumber),
    transaction_index: hexToBigInt(tx.transactionIndex),
    transaction_hash: hexToBytes(tx.hash, 32),
    nonce: hexToBigInt(tx.nonce),
    from_address: hexToBytes(tx.from, 20),
    to_address: tx.to ? hexToBytes(tx.to, 20) : null,
    value_binary: u256ToBytes(value),
    value_string: value.toString(10),
    value_f64: Number(value.toString(10)),
    input,
    gas_limit: hexToBigInt(tx.gas),
    gas_used: receipt ? hexToBigInt(receipt.gasUsed) : null,
    gas_price: effectiveGasPrice(tx, baseFee),
    transaction_type: type,
    max_priority_fee_per_gas: type === 0 || type === 1 ? null : u64(tx.maxPriorityFeePerGas),
    max_fee_per_gas: type === 0 || type === 1 ? null : u64(tx.maxFeePerGas),
    success: receipt?.status == null ? null : hexToBigInt(receipt.status) === 1n,
    n_input_bytes: input.length,
    n_input_zero_bytes: zero,
    n_input_nonzero_bytes: input.length - zero,
    chain_id: BigInt(chainId),
  };
}

export function logRow(log: RpcLog, chainId: number): Row {
  const data = hexToBytes(log.data);
  const topic = (i: number): Uint8Array | null => (log.topics[i] ? hexToBytes(log.topics[i]!, 32) : null);
  return {
    block_number: hexToNumber(log.blockNumber),
    transaction_index: hexToNumber(log.transactionIndex),
    log_index: hexToNumber(log.logIndex),
    transaction_hash: hexToBytes(log.transactionHash, 32),
    address: hexToBytes(log.address, 20),
    topic0: topic(0),
    topic1: topic(1),
    topic2: topic(2),
    topic3: topic(3),
    data,
    n_data_bytes: data.length,
    chain_id: BigInt(chainId),
  };
}
