/**
 * Request-target canonicalization for the Gateway. The Gateway decides on, and forwards, one
 * canonical spelling of the path, so the path it checked and the path a backend routes are the
 * same string. Anything that is not plainly one canonical path is refused here, before any
 * route lookup, authentication or proxying:
 *
 * - only origin-form targets (`/path?query`); absolute-form (`http://host/...`) and `*` are 400;
 * - a fragment (`#`) is 400 (clients never send one);
 * - empty segments (`//`, a trailing `/`) are 400;
 * - each segment is percent-decoded exactly once (malformed escapes and invalid UTF-8 are 400),
 *   and the decoded segment must consist of `A-Z a-z 0-9 . _ ~ : -` and must not be `.` or `..`;
 *   so an encoded `/` (`%2F`), `\` (`%5C`), `%` (double encoding), NUL, `;` path parameters,
 *   spaces and non-ASCII are all 400, and a backslash in the raw target is 400 as well;
 * - an over-long target is 414.
 * Percent-encoded unreserved characters are normalized (RFC 3986 section 6.2.2.2): `/v1/d%61tasets`
 * is the path `/v1/datasets`, and that canonical form is what gets forwarded. Matching is
 * case-sensitive, so `/V1/task/complete` is simply an unknown path (404).
 */
import { TraceError } from '../core/errors.js';

export const SEGMENT_RE = /^[A-Za-z0-9._~:-]+$/;

export interface CanonicalTarget {
  /** Decoded path segments (no empty ones). */
  segments: string[];
  /** The canonical path, each segment re-encoded: what the backend receives. */
  path: string;
  /** The raw query string without `?` ('' when absent); forwarded unchanged. */
  query: string;
}

const bad = (message: string) => new TraceError(400, 'NON_CANONICAL_PATH', message);

export function canonicalTarget(raw: string, maxLength: number): CanonicalTarget {
  if (raw.length > maxLength) throw new TraceError(414, 'URI_TOO_LONG', `request target is longer than ${maxLength} characters`);
  if (!raw.startsWith('/')) throw bad('request target must be an absolute path');
  if (raw.includes('#')) throw bad('request target must not contain a fragment');
  const q = raw.indexOf('?');
  const rawPath = q < 0 ? raw : raw.slice(0, q);
  const query = q < 0 ? '' : raw.slice(q + 1);
  if (rawPath.includes('\\')) throw bad('path must not contain a backslash');
  if (rawPath === '/') return { segments: [], path: '/', query };
  const segments: string[] = [];
  for (const seg of rawPath.slice(1).split('/')) {
    if (seg === '') throw bad('path must not contain empty segments (double or trailing slashes)');
    let decoded = seg;
    if (seg.includes('%')) {
      try {
        decoded = decodeURIComponent(seg);
      } catch {
        throw bad('path contains a malformed percent-encoding');
      }
    }
    if (!SEGMENT_RE.test(decoded)) throw bad('path contains characters that are not allowed in a Trace path');
    if (decoded === '.' || decoded === '..') throw bad('path must not contain dot segments');
    segments.push(decoded);
  }
  return { segments, path: `/${segments.map(encodeURIComponent).join('/')}`, query };
}
