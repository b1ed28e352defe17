import { createHash, randomUUID } from 'node:crypto';

export const newId = (): string => randomUUID();

/** Namespace for every deterministic Trace UUID (RFC 4122 version 5 style, SHA-1 based). */
const TRACE_NAMESPACE = '6b1d3c1e-8f3a-5c4e-9f1d-2a7b8c9d0e1f';

function uuidBytes(uuid: string): Buffer {
  return Buffer.from(uuid.replace(/-/g, ''), 'hex');
}

/** Deterministic UUIDv5 of `parts` joined by NUL, inside the Trace namespace. */
export function uuidV5(...parts: Array<string | number>): string {
  const h = createHash('sha1');
  h.update(uuidBytes(TRACE_NAMESPACE));
  h.update(parts.map(String).join('\u0000'));
  const b = h.digest().subarray(0, 16);
  b[6] = (b[6]! & 0x0f) | 0x50;
  b[8] = (b[8]! & 0x3f) | 0x80;
  const hex = b.toString('hex');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

export function sha256Hex(data: string | Uint8Array): string {
  return createHash('sha256').update(data).digest('hex');
}

/** Canonical JSON (sorted keys) so hashes of equal objects are equal. */
export function canonicalJson(value: unknown): string {
  if (value === null || typeof value !== 'object') return JSON.stringify(value) ?? 'null';
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`;
  const keys = Object.keys(value as Record<string, unknown>).sort();
  return `{${keys
    .filter((k) => (value as Record<string, unknown>)[k] !== undefined)
    .map((k) => `${JSON.stringify(k)}:${canonicalJson((value as Record<string, unknown>)[k])}`)
    .join(',')}}`;
}

export const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
