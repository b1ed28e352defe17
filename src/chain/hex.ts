/**
 * Hex helpers for EVM JSON-RPC values. Quantities (`0x1a`) become bigint or number; data
 * (`0xdeadbeef`) becomes bytes. Every parser rejects malformed input instead of guessing.
 */

const QUANTITY_RE = /^0x(0|[1-9a-fA-F][0-9a-fA-F]*)$/;
const LOOSE_QUANTITY_RE = /^0x[0-9a-fA-F]{1,64}$/;
const DATA_RE = /^0x([0-9a-fA-F]{2})*$/;

export const isQuantity = (v: unknown): v is string => typeof v === 'string' && LOOSE_QUANTITY_RE.test(v);
export const isData = (v: unknown): v is string => typeof v === 'string' && DATA_RE.test(v);

/** `0x..` quantity -> bigint. Accepts leading zeros (some nodes emit them), at most 256 bits. */
export function hexToBigInt(hex: string): bigint {
  if (!LOOSE_QUANTITY_RE.test(hex)) throw new TypeError('not a hex quantity');
  return BigInt(hex);
}

/** `0x..` quantity -> number; throws when the value is not a safe integer. */
export function hexToNumber(hex: string): number {
  const v = hexToBigInt(hex);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new RangeError('hex quantity exceeds the safe integer range');
  return Number(v);
}

/** number | bigint -> canonical JSON-RPC quantity (`0x0`, `0x1f`). */
export function toQuantity(n: number | bigint): string {
  const v = typeof n === 'bigint' ? n : BigInt(n);
  if (v < 0n) throw new RangeError('quantity must be non-negative');
  return `0x${v.toString(16)}`;
}

export const isCanonicalQuantity = (v: string): boolean => QUANTITY_RE.test(v);

/** `0x..` data -> bytes, optionally requiring an exact length. */
export function hexToBytes(hex: string, expectedLength?: number): Uint8Array {
  if (!DATA_RE.test(hex)) throw new TypeError('not hex data');
  const out = Buffer.from(hex.slice(2), 'hex');
  if (expectedLength !== undefined && out.length !== expectedLength) {
    throw new TypeError(`expected ${expectedLength} bytes, got ${out.length}`);
  }
  return new Uint8Array(out.buffer, out.byteOffset, out.byteLength);
}

export function bytesToHex(bytes: Uint8Array): string {
  return `0x${Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('hex')}`;
}

const TWO_256 = 1n << 256n;

/** Unsigned 256-bit integer -> 32 bytes big-endian (the layout Cryo uses for `*_binary`). */
export function u256ToBytes(v: bigint): Uint8Array {
  if (v < 0n || v >= TWO_256) throw new RangeError('value does not fit in 256 bits');
  return hexToBytes(`0x${v.toString(16).padStart(64, '0')}`);
}

export const U64_MAX = (1n << 64n) - 1n;
export const U32_MAX = 2 ** 32 - 1;
