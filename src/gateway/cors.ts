/**
 * CORS for the Gateway (containers/gateway.md "CORS": allowed origins per environment, default
 * same-origin only). Origins are an exact allowlist (`TRACE_GATEWAY_CORS_ORIGINS`,
 * comma-separated, default empty). There is no wildcard: `*` is a configuration error, and the
 * Gateway never sends `Access-Control-Allow-Credentials` because user auth is a Bearer header
 * (cookies are stripped, never forwarded), so credentialed CORS is never needed.
 */
import { TraceError } from '../core/errors.js';
import { CORS_ALLOWED_REQUEST_HEADERS, CORS_EXPOSED_RESPONSE_HEADERS } from './headers.js';

/** Preflight answers are cached by browsers for this long. */
export const CORS_MAX_AGE_SECONDS = 600;

/** Validates and normalizes configured origins (`https://app.example.com`, `http://localhost:3000`). */
export function parseCorsOrigins(input: string | readonly string[] | undefined): string[] {
  const list = input === undefined ? [] : typeof input === 'string' ? input.split(',') : [...input];
  const out = new Set<string>();
  for (const raw of list.map((s) => s.trim()).filter((s) => s !== '')) {
    if (raw.includes('*')) throw new TypeError('TRACE_GATEWAY_CORS_ORIGINS must list exact origins; wildcards are not allowed');
    let u: URL;
    try {
      u = new URL(raw);
    } catch {
      throw new TypeError(`TRACE_GATEWAY_CORS_ORIGINS entry is not an origin: ${raw.slice(0, 100)}`);
    }
    if ((u.protocol !== 'https:' && u.protocol !== 'http:') || u.origin === 'null' || u.username !== '' || u.password !== '' || raw.replace(/\/$/, '').toLowerCase() !== u.origin.toLowerCase()) {
      throw new TypeError(`TRACE_GATEWAY_CORS_ORIGINS entry must be scheme://host[:port] only: ${raw.slice(0, 100)}`);
    }
    out.add(u.origin);
  }
  return [...out];
}

export class CorsPolicy {
  readonly #origins: ReadonlySet<string>;

  constructor(origins: readonly string[]) {
    this.#origins = new Set(parseCorsOrigins(origins));
  }

  /** The origin to echo back when it is allowlisted (exact, case-sensitive match). */
  allowed(origin: string | undefined): string | undefined {
    return origin !== undefined && this.#origins.has(origin) ? origin : undefined;
  }

  /** Headers for an ordinary (non-preflight) response. */
  responseHeaders(origin: string | undefined): Record<string, string> {
    const ok = this.allowed(origin);
    if (ok === undefined) return this.#origins.size > 0 ? { vary: 'Origin' } : {};
    return { 'access-control-allow-origin': ok, vary: 'Origin', 'access-control-expose-headers': CORS_EXPOSED_RESPONSE_HEADERS };
  }

  /**
   * Answers a preflight for a known path. Throws 403 when the origin, the requested method or a
   * requested header is not allowed.
   */
  preflight(origin: string | undefined, requestMethod: string, requestHeaders: string | undefined, methods: readonly string[]): Record<string, string> {
    const ok = this.allowed(origin);
    if (ok === undefined) throw new TraceError(403, 'CORS_ORIGIN_NOT_ALLOWED', 'this origin is not allowed to call the Trace API');
    if (!methods.includes(requestMethod)) throw new TraceError(403, 'CORS_METHOD_NOT_ALLOWED', 'this method is not allowed on this path');
    const asked = (requestHeaders ?? '').split(',').map((h) => h.trim().toLowerCase()).filter((h) => h !== '');
    if (asked.some((h) => !CORS_ALLOWED_REQUEST_HEADERS.includes(h))) {
      throw new TraceError(403, 'CORS_HEADER_NOT_ALLOWED', 'a requested header is not allowed');
    }
    return {
      'access-control-allow-origin': ok,
      'access-control-allow-methods': methods.join(', '),
      'access-control-allow-headers': CORS_ALLOWED_REQUEST_HEADERS.join(', '),
      'access-control-max-age': String(CORS_MAX_AGE_SECONDS),
      vary: 'Origin, Access-Control-Request-Method, Access-Control-Request-Headers',
    };
  }
}
