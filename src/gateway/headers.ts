/**
 * Which headers cross the Gateway, in each direction. Both directions are allowlists: a header
 * not named here is dropped. That removes, without having to enumerate them, every
 * `X-Trace-*` header (including `X-Trace-Worker-Token` and `X-Trace-Task-Capability`), every
 * `X-Forwarded-*` / `Forwarded` / `X-Real-IP` / `X-User-Id` / `X-Org-Id`-style identity header,
 * cookies, the client's `Host`, and hop-by-hop headers (`Connection`, `Keep-Alive`, `TE`,
 * `Trailer`, `Transfer-Encoding`, `Upgrade`, `Proxy-*`, `Expect`). Backends derive identity only
 * from the verified `Authorization` header, which is forwarded byte for byte.
 */
import type { IncomingHttpHeaders, OutgoingHttpHeaders } from 'node:http';

/** Request headers forwarded to a backend (lower case). */
export const FORWARDED_REQUEST_HEADERS: ReadonlySet<string> = new Set([
  'authorization',
  'accept',
  'content-type',
  'user-agent',
  'idempotency-key',
  'if-match',
  'if-none-match',
]);

/** Request headers a browser may send cross-origin (the CORS preflight answer). */
export const CORS_ALLOWED_REQUEST_HEADERS: readonly string[] = ['authorization', 'accept', 'content-type', 'idempotency-key', 'if-match', 'if-none-match'];

/** Response headers passed back from a backend (lower case); everything else stays internal. */
export const FORWARDED_RESPONSE_HEADERS: ReadonlySet<string> = new Set([
  'content-type',
  'content-length',
  'content-encoding',
  'content-language',
  'cache-control',
  'etag',
  'last-modified',
  'location',
  'retry-after',
  'www-authenticate',
]);

/** Response headers a browser script may read. */
export const CORS_EXPOSED_RESPONSE_HEADERS = 'x-request-id, retry-after';

export const REQUEST_ID_HEADER = 'x-request-id';

/** Forwarded on webhook ingress routes only: the delivery's id, timestamp and signature. */
export const WEBHOOK_REQUEST_HEADERS: ReadonlySet<string> = new Set(['x-trace-webhook-id', 'x-trace-webhook-timestamp', 'x-trace-webhook-signature']);

export function upstreamRequestHeaders(incoming: IncomingHttpHeaders, requestId: string, contentLength: number | undefined, webhook = false): OutgoingHttpHeaders {
  const out: OutgoingHttpHeaders = {};
  for (const name of webhook ? [...FORWARDED_REQUEST_HEADERS, ...WEBHOOK_REQUEST_HEADERS] : FORWARDED_REQUEST_HEADERS) {
    const v = incoming[name];
    if (typeof v === 'string') out[name] = v;
  }
  out[REQUEST_ID_HEADER] = requestId;
  if (contentLength !== undefined) out['content-length'] = String(contentLength);
  return out;
}

export function downstreamResponseHeaders(upstream: IncomingHttpHeaders): Record<string, string> {
  const out: Record<string, string> = {};
  for (const name of FORWARDED_RESPONSE_HEADERS) {
    const v = upstream[name];
    if (typeof v === 'string') out[name] = v;
  }
  return out;
}
