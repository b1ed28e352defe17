import { createHash } from 'node:crypto';
import { u256ToBytes } from '../../chain/hex.js';
import type { CryoDataset, Row } from './schema.js';

/**
 * Deterministic fake chain (`mode: 'fake'`, `TRACE_CRYO_MODE=fake`): rows derived only from
 * `(chain_id, block_number)`, no network. Block `b` has `b % 4` transactions; every
 * even-indexed transaction emits one Transfer-shaped log. The same block yields the same rows
 * whatever range it is requested in, so overlapping ranges agree.
 */

const digest = (s: string): Uint8Array => new Uint8Array(createHash('sha256').update(s).digest());
const addr = (s: string): Uint8Array => digest(s).subarray(0, 20);
const TRANSFER_TOPIC = Buffer.from('ddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef', 'hex');

/** The fake chain's boundaries as a range manifest records them (block `b`'s parent is `b - 1`). */
export function fakeChainView(chainId: number, start: number, end: number): { genesis_hash: string; head_block: null; first_parent_hash: string; last_block_hash: string } {
  const hex = (b: number) => `0x${Buffer.from(digest(`fake:block:${chainId}:${b}`)).toString('hex')}`;
  return { genesis_hash: hex(0), head_block: null, first_parent_hash: start === 0 ? `0x${'0'.repeat(64)}` : hex(start - 1), last_block_hash: hex(end - 1) };
}

export const fakeTxCount = (block: number): number => block % 4;

export function fakeRows(dataset: CryoDataset, chainId: number, block: number): Row[] {
  const chain = BigInt(chainId);
  const baseFee = 1_000_000_000n + BigInt(block % 97);
  const nTx = fakeTxCount(block);
  if (dataset === 'blocks') {
    return [
      {
        block_number: block,
        block_hash: digest(`fake:block:${chainId}:${block}`),
        timestamp: (1_600_000_000 + block * 2) % 2 ** 32,
        author: addr(`fake:author:${block % 7}`),
        gas_used: 21_000n * BigInt(nTx),
        extra_data: new TextEncoder().encode('trace-fake'),
        base_fee_per_gas: baseFee,
        chain_id: chain,
      },
    ];
  }
  if (dataset === 'transactions') {
    return Array.from({ length: nTx }, (_, i) => {
      const input = i % 2 === 0 ? digest(`fake:input:${block}:${i}`).subarray(0, 4 + (i % 3)) : new Uint8Array();
      let zero = 0;
      for (const b of input) if (b === 0) zero++;
      const value = BigInt(block) * 10n ** 18n + BigInt(i); // exceeds u64 from block 19 on
      const tip = 1_000_000n * BigInt(i + 1);
      return {
        block_number: block,
        transaction_index: BigInt(i),
        transaction_hash: digest(`fake:tx:${chainId}:${block}:${i}`),
        nonce: BigInt(block),
        from_address: addr(`fake:from:${i}`),
        to_address: i === 3 ? null : addr(`fake:to:${block % 11}:${i}`),
        value_binary: u256ToBytes(value),
        value_string: value.toString(10),
        value_f64: Number(value.toString(10)),
        input,
        gas_limit: 50_000n,
        gas_used: 21_000n,
        gas_price: baseFee + tip,
        transaction_type: 2,
        max_priority_fee_per_gas: tip,
        max_fee_per_gas: baseFee * 2n,
        success: (block + i) % 5 !== 0,
        n_input_bytes: input.length,
        n_input_zero_bytes: zero,
        n_input_nonzero_bytes: input.length - zero,
        chain_id: chain,
      };
    });
  }
  const rows: Row[] = [];
  for (let i = 0; i < nTx; i += 2) {
    const data = u256ToBytes(BigInt(block * 1000 + i));
    rows.push({
      block_number: block,
      transaction_index: i,
      log_index: rows.length,
      transaction_hash: digest(`fake:tx:${chainId}:${block}:${i}`),
      address: addr(`fake:token:${block % 3}`),
      topic0: new Uint8Array(TRANSFER_TOPIC),
      topic1: pad32(addr(`fake:from:${i}`)),
      topic2: pad32(addr(`fake:to:${block % 11}:${i}`)),
      topic3: null,
      data,
      n_data_bytes: data.length,
      chain_id: chain,
    });
  }
  return rows;
}

function pad32(a: Uint8Array): Uint8Array {
  const out = new Uint8Array(32);
  out.set(a, 32 - a.length);
  return out;
}
