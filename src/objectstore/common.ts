/** Small pieces every adapter shares: the common errors and byte conversion. */
import { TraceError } from '../core/errors.js';

export const objectNotFound = () => new TraceError(404, 'OBJECT_NOT_FOUND', 'object not found');
export const objectTooLarge = () => new TraceError(413, 'OBJECT_TOO_LARGE', 'object is larger than allowed');
export const storeUnavailable = (cause?: unknown) =>
  new TraceError(503, 'OBJECT_STORE_UNAVAILABLE', 'object store request failed', cause === undefined ? {} : { cause });

export function toBuffer(chunk: Uint8Array | string): Buffer {
  if (typeof chunk === 'string') return Buffer.from(chunk, 'utf8');
  return Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
}

/** Validates a byte limit given by a caller (a positive safe integer). */
export function checkByteLimit(n: number | undefined, what: string): void {
  if (n === undefined) return;
  if (!Number.isSafeInteger(n) || n < 0) throw new TraceError(500, 'OBJECT_STORE_MISUSE', `${what} must be a non-negative integer`);
}
