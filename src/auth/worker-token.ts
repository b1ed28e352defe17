/**
 * Worker identity for worker-only endpoints (`X-Trace-Worker-Token`, worker_only_endpoints.md).
 * Comparison is constant-time over SHA-256 digests, so neither the token's content nor its
 * length leaks through timing.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { TraceError } from '../core/errors.js';

export const WORKER_TOKEN_HEADER = 'x-trace-worker-token';

const digest = (s: string) => createHash('sha256').update(s, 'utf8').digest();

/**
 * Throws TraceError 401 `INVALID_WORKER_TOKEN` unless `header` equals `expected`. `expected`
 * may list several tokens (old and new during a rotation overlap); every one is compared, with
 * no early exit. An empty `expected` is a misconfiguration: 500 `WORKER_TOKEN_NOT_CONFIGURED`.
 */
export function checkWorkerToken(expected: string | readonly string[], header: string | readonly string[] | undefined | null): void {
  const accepted = (typeof expected === 'string' ? [expected] : [...expected]).filter((t) => typeof t === 'string' && t !== '');
  if (accepted.length === 0) {
    throw new TraceError(500, 'WORKER_TOKEN_NOT_CONFIGURED', 'worker token is not configured');
  }
  if (typeof header !== 'string' || header === '') {
    throw new TraceError(401, 'INVALID_WORKER_TOKEN', 'missing or invalid worker token');
  }
  const presented = digest(header);
  let ok = false;
  for (const token of accepted) {
    // Bitwise OR: no short-circuit, every configured token is compared.
    ok = timingSafeEqual(presented, digest(token)) || ok;
  }
  if (!ok) throw new TraceError(401, 'INVALID_WORKER_TOKEN', 'missing or invalid worker token');
}
