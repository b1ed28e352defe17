/**
 * The embedded profile's stand-in for S3 presigned uploads: a URL that lets its holder PUT one
 * body, of at most `maxBytes`, to one key, until it expires. The query carries `key`, `expires`
 * (unix seconds), `max_bytes` and `sig` = base64url(HMAC-SHA256(secret,
 * "trace-upload-v1\n" + key + "\n" + expires + "\n" + max_bytes)). Keys cannot contain newlines
 * (keys.ts), so the signed string is unambiguous; the version tag keeps these MACs apart from
 * anything else signed with the same secret. Verification recomputes the MAC and compares in
 * constant time before it looks at anything else; every refusal is 403 (no detail about which
 * part was wrong, except that an authentic but expired URL says so).
 */
import { createHmac, timingSafeEqual } from 'node:crypto';
import { z } from 'zod';
import { TraceError } from '../core/errors.js';
import { canonicalKey, isValidKey } from './keys.js';

export const MIN_SECRET_BYTES = 32;
const MAC_TAG = 'trace-upload-v1';
const SIG_RE = /^[A-Za-z0-9_-]{43}$/;
const DIGITS_RE = /^(0|[1-9][0-9]{0,15})$/;

export interface SignUploadInput {
  /** Absolute URL of the upload route, e.g. `http://127.0.0.1:8081/v1/uploads`. */
  baseUrl: string;
  key: string;
  expiresAt: Date;
  maxBytes: number;
  secret: string | Uint8Array;
}

export interface VerifiedUpload {
  key: string;
  expiresAt: Date;
  maxBytes: number;
}

function secretBytes(secret: string | Uint8Array): Buffer {
  const b = typeof secret === 'string' ? Buffer.from(secret, 'utf8') : Buffer.from(secret);
  if (b.length < MIN_SECRET_BYTES) throw new TraceError(500, 'UPLOAD_SECRET_WEAK', `upload signing secret must be at least ${MIN_SECRET_BYTES} bytes`);
  return b;
}

function mac(secret: Buffer, key: string, expires: string, maxBytes: string): Buffer {
  return createHmac('sha256', secret).update(`${MAC_TAG}\n${key}\n${expires}\n${maxBytes}`, 'utf8').digest();
}

/** Builds the signed upload URL. Throws 400 INVALID_OBJECT_KEY for a bad key, 500 for bad arguments. */
export function signUploadUrl(input: SignUploadInput): string {
  const key = canonicalKey(input.key);
  const secret = secretBytes(input.secret);
  if (!Number.isSafeInteger(input.maxBytes) || input.maxBytes < 0) throw new TraceError(500, 'OBJECT_STORE_MISUSE', 'maxBytes must be a non-negative integer');
  const ms = input.expiresAt instanceof Date ? input.expiresAt.getTime() : Number.NaN;
  if (!Number.isFinite(ms) || ms < 0) throw new TraceError(500, 'OBJECT_STORE_MISUSE', 'expiresAt must be a valid date');
  let url: URL;
  try {
    url = new URL(input.baseUrl);
  } catch {
    throw new TraceError(500, 'OBJECT_STORE_MISUSE', 'baseUrl must be an absolute URL');
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new TraceError(500, 'OBJECT_STORE_MISUSE', 'baseUrl must be http or https');
  const expires = String(Math.floor(ms / 1000));
  const maxBytes = String(input.maxBytes);
  url.search = '';
  url.hash = '';
  url.searchParams.set('key', key);
  url.searchParams.set('expires', expires);
  url.searchParams.set('max_bytes', maxBytes);
  url.searchParams.set('sig', mac(secret, key, expires, maxBytes).toString('base64url'));
  return url.toString();
}

const querySchema = z.object({
  key: z.string().min(1).max(4096),
  expires: z.string().regex(DIGITS_RE),
  max_bytes: z.string().regex(DIGITS_RE),
  sig: z.string().regex(SIG_RE),
});

const forged = () => new TraceError(403, 'UPLOAD_SIGNATURE_INVALID', 'upload URL signature is missing or invalid');

/**
 * Checks a signed upload URL's query (a parsed query object, URLSearchParams or a query string)
 * at time `now`. Returns what it authorizes, or throws 403 UPLOAD_SIGNATURE_INVALID (missing,
 * malformed, forged or tampered) or 403 UPLOAD_URL_EXPIRED.
 */
export function verifyUploadSignature(query: unknown, secret: string | Uint8Array, now: Date = new Date()): VerifiedUpload {
  const sb = secretBytes(secret);
  let raw: unknown = query;
  if (typeof query === 'string') raw = new URLSearchParams(query.startsWith('?') ? query.slice(1) : query);
  if (raw instanceof URLSearchParams) {
    const obj: Record<string, string | string[]> = {};
    for (const name of new Set(raw.keys())) {
      const all = raw.getAll(name);
      obj[name] = all.length === 1 ? all[0]! : all;
    }
    raw = obj;
  }
  const parsed = querySchema.safeParse(raw); // repeated parameters arrive as arrays and fail here
  if (!parsed.success) throw forged();
  const q = parsed.data;
  // Compare the canonical base64url text, so no second spelling of a signature is accepted.
  const expected = Buffer.from(mac(sb, q.key, q.expires, q.max_bytes).toString('base64url'), 'utf8');
  const given = Buffer.from(q.sig, 'utf8');
  if (given.length !== expected.length || !timingSafeEqual(given, expected)) throw forged();
  if (!isValidKey(q.key)) throw forged();
  const expiresMs = Number(q.expires) * 1000;
  if (!(now.getTime() < expiresMs)) throw new TraceError(403, 'UPLOAD_URL_EXPIRED', 'upload URL has expired');
  const maxBytes = Number(q.max_bytes);
  if (!Number.isSafeInteger(maxBytes)) throw forged();
  return { key: q.key, expiresAt: new Date(expiresMs), maxBytes };
}
