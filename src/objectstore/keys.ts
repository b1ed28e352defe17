/**
 * Object keys, prefixes and store URLs: the one definition every adapter and the credential
 * scoping code share (contracts/credential_minting.md: canonical prefixes, no `..`, no wildcards,
 * a prefix is a directory, never a starts-with-anything pattern).
 *
 * A key is relative and `/`-separated, with no empty, `.` or `..` segments, no backslashes, no
 * control characters (C0, DEL, C1, U+2028/9), no wildcards (`*`, `?`), no unpaired surrogates, at
 * most 1024 UTF-8 bytes (the S3 limit) and at most 255 bytes per segment (the filesystem limit).
 * Segments beginning `.trace-tmp-` are reserved for in-flight writes of the file store.
 * Keys are validated, never repaired: a bad key is refused with 400 INVALID_OBJECT_KEY, and the
 * message never repeats the key (it may be hostile).
 */
import { fileURLToPath, pathToFileURL } from 'node:url';
import { TraceError } from '../core/errors.js';

export const MAX_KEY_BYTES = 1024;
export const MAX_SEGMENT_BYTES = 255;
/** Name prefix of the file store's temporary files; no key segment may start with it. */
export const RESERVED_SEGMENT_PREFIX = '.trace-tmp-';

// eslint-disable-next-line no-control-regex
const FORBIDDEN_CHARS = /[\u0000-\u001f\u007f-\u009f\u2028\u2029\\*?]/;
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;
const S3_BUCKET_RE = /^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/;

export function invalidKey(message: string): TraceError {
  return new TraceError(400, 'INVALID_OBJECT_KEY', message);
}

/** The reason `key` is not a valid key, or null when it is. */
export function keyProblem(key: unknown, what = 'object key'): string | null {
  if (typeof key !== 'string') return `${what} must be a string`;
  if (key === '') return `${what} is empty`;
  if (LONE_SURROGATE.test(key)) return `${what} is not valid Unicode`;
  if (Buffer.byteLength(key, 'utf8') > MAX_KEY_BYTES) return `${what} is longer than ${MAX_KEY_BYTES} bytes`;
  if (FORBIDDEN_CHARS.test(key)) return `${what} contains a control character, backslash or wildcard`;
  if (key.startsWith('/')) return `${what} must be relative (no leading /)`;
  for (const seg of key.split('/')) {
    if (seg === '') return `${what} has an empty path segment`;
    if (seg === '.' || seg === '..') return `${what} has a . or .. segment`;
    if (Buffer.byteLength(seg, 'utf8') > MAX_SEGMENT_BYTES) return `${what} has a segment longer than ${MAX_SEGMENT_BYTES} bytes`;
    if (seg.startsWith(RESERVED_SEGMENT_PREFIX)) return `${what} uses a reserved name`;
  }
  return null;
}

export function isValidKey(key: unknown): key is string {
  return keyProblem(key) === null;
}

/** Returns `key` when it is a valid key; otherwise throws 400 INVALID_OBJECT_KEY. */
export function canonicalKey(key: unknown): string {
  const problem = keyProblem(key);
  if (problem !== null) throw invalidKey(problem);
  return key as string;
}

/**
 * A prefix as a directory: `a/b` and `a/b/` both become `a/b/`; `''` is the root and stays `''`.
 * Anything a key could not be (after dropping one trailing `/`) is refused.
 */
export function canonicalPrefix(prefix: unknown): string {
  if (prefix === '') return '';
  if (typeof prefix !== 'string') throw invalidKey('object prefix must be a string');
  const body = prefix.endsWith('/') ? prefix.slice(0, -1) : prefix;
  const problem = keyProblem(body, 'object prefix');
  if (problem !== null) throw invalidKey(problem);
  if (Buffer.byteLength(body, 'utf8') + 1 > MAX_KEY_BYTES) throw invalidKey(`object prefix is longer than ${MAX_KEY_BYTES} bytes`);
  return `${body}/`;
}

/** Like canonicalPrefix, but the root (`''`) is refused: for grants and deletions. */
export function canonicalNonEmptyPrefix(prefix: unknown): string {
  const p = canonicalPrefix(prefix);
  if (p === '') throw invalidKey('object prefix is empty');
  return p;
}

/**
 * Segment-aware containment: `a/b/c` is within `a/b` and `a/b/`, `a/bc` is not, and a prefix is
 * not within itself. Fails closed: an invalid key or prefix, or the empty (root) prefix, gives false.
 */
export function isWithin(key: string, prefix: string): boolean {
  if (!isValidKey(key)) return false;
  let p: string;
  try {
    p = canonicalPrefix(prefix);
  } catch {
    return false;
  }
  return p !== '' && key.length > p.length && key.startsWith(p);
}

/** `prefix + key` with both validated and the total bounded. */
export function joinKey(prefix: string, key: string): string {
  const full = canonicalPrefix(prefix) + canonicalKey(key);
  if (Buffer.byteLength(full, 'utf8') > MAX_KEY_BYTES) throw invalidKey(`object key is longer than ${MAX_KEY_BYTES} bytes`);
  return full;
}

/** Compares keys in UTF-8 byte order (the order S3 lists in). */
export function compareKeys(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a, 'utf8'), Buffer.from(b, 'utf8'));
}

// ---------------------------------------------------------------------------------------------
// Store URLs

export type ObjectUrl =
  | { scheme: 's3'; bucket: string; /** canonicalPrefix form: `''` or ending in `/`. */ prefix: string }
  | { scheme: 'file'; /** Absolute directory path, no trailing `/` (except the filesystem root). */ path: string };

function invalidUrl(message: string): TraceError {
  return new TraceError(400, 'INVALID_OBJECT_URL', message);
}

export function isS3Bucket(name: string): boolean {
  return S3_BUCKET_RE.test(name) && !name.includes('..') && !name.includes('.-') && !name.includes('-.') && !/^\d+\.\d+\.\d+\.\d+$/.test(name);
}

/**
 * Parses `s3://bucket[/prefix]` or `file:///abs/path` strictly (no query, fragment, credentials,
 * host on file URLs, or `.`/`..`/empty segments); throws 400 INVALID_OBJECT_URL otherwise.
 * The message names the problem, never the URL.
 */
export function parseObjectUrl(url: string): ObjectUrl {
  if (typeof url !== 'string' || url.length > 4096) throw invalidUrl('object store URL must be a string of at most 4096 characters');
  if (url.startsWith('s3://')) {
    const rest = url.slice('s3://'.length);
    const slash = rest.indexOf('/');
    const bucket = slash === -1 ? rest : rest.slice(0, slash);
    const prefix = slash === -1 ? '' : rest.slice(slash + 1);
    if (!isS3Bucket(bucket)) throw invalidUrl('s3 URL has no valid bucket name');
    try {
      return { scheme: 's3', bucket, prefix: canonicalPrefix(prefix) };
    } catch (e) {
      throw invalidUrl(`s3 URL prefix is not canonical: ${(e as Error).message}`);
    }
  }
  if (url.startsWith('file:')) {
    if (!url.startsWith('file:///')) throw invalidUrl('file URL must be file:///absolute/path');
    if (/[?#]/.test(url)) throw invalidUrl('file URL must not have a query or fragment');
    // The URL parser would silently resolve `.`/`..` (also percent-encoded); refuse them raw.
    const rawSegs = url.slice('file:///'.length).replace(/\/$/, '').split('/');
    for (const seg of rawSegs) {
      let decoded: string;
      try {
        decoded = decodeURIComponent(seg);
      } catch {
        throw invalidUrl('file URL is malformed');
      }
      if (decoded === '.' || decoded === '..') throw invalidUrl('file URL path has a . or .. segment');
      if (seg === '' && rawSegs.length > 1) throw invalidUrl('file URL path has an empty path segment');
    }
    let path: string;
    try {
      path = fileURLToPath(url);
    } catch {
      throw invalidUrl('file URL is malformed');
    }
    if (!path.startsWith('/')) throw invalidUrl('file URL must be an absolute path');
    const body = path.replace(/\/$/, '').slice(1);
    if (body !== '') {
      const problem = keyProblem(body, 'file URL path');
      if (problem !== null) throw invalidUrl(problem);
    }
    return { scheme: 'file', path: body === '' ? '/' : `/${body}` };
  }
  throw invalidUrl('object store URL must start with s3:// or file:///');
}

/**
 * The canonical form of a granted prefix URL, for credential scoping: `s3://bucket/prefix/`
 * (the prefix must be non-empty) or `file:///abs/dir/` (not the filesystem root).
 */
export function canonicalPrefixUrl(url: string): string {
  const u = parseObjectUrl(url);
  if (u.scheme === 's3') {
    if (u.prefix === '') throw invalidUrl('s3 prefix URL must name a non-empty prefix');
    return `s3://${u.bucket}/${u.prefix}`;
  }
  if (u.path === '/') throw invalidUrl('file prefix URL must not be the filesystem root');
  return fileDirUrl(u.path);
}

/** `file:///abs/dir/` for an absolute directory path (percent-encoded like pathToFileURL). */
export function fileDirUrl(absDir: string): string {
  const href = pathToFileURL(absDir).href;
  return href.endsWith('/') ? href : `${href}/`;
}

/**
 * True when `url` (an object URL) lies strictly inside `prefixUrl` (a prefix URL), segment-aware.
 * Both are canonicalized first; anything malformed gives false.
 */
export function isUrlWithin(url: string, prefixUrl: string): boolean {
  try {
    const p = parseObjectUrl(prefixUrl);
    const u = parseObjectUrl(url);
    if (p.scheme === 's3' && u.scheme === 's3') {
      if (p.bucket !== u.bucket || p.prefix === '') return false;
      const key = u.prefix.slice(0, -1); // canonicalPrefix added a trailing '/'
      return isWithin(key, p.prefix);
    }
    if (p.scheme === 'file' && u.scheme === 'file') {
      if (p.path === '/') return false;
      return isWithin(u.path.slice(1), p.path.slice(1));
    }
    return false;
  } catch {
    return false;
  }
}
