import { TraceError } from '../../core/errors.js';

/**
 * Caller-supplied headers for a webhook request. The sender owns framing, routing and proxy
 * headers; callers may only add end-to-end headers, within size caps.
 */

export const WEBHOOK_HEADERS_REFUSED = 'WEBHOOK_HEADERS_REFUSED';
export const MAX_WEBHOOK_HEADERS = 32;
export const MAX_WEBHOOK_HEADER_NAME = 64;
export const MAX_WEBHOOK_HEADER_VALUE = 2048;
/** Sum of name + value lengths of the caller's headers. */
export const MAX_WEBHOOK_HEADER_BYTES = 8 * 1024;
export const MAX_IDEMPOTENCY_KEY = 255;

const TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;
const VALUE = /^[\t\x20-\x7e]*$/;

/** Names the sender sets itself or that steer hops, proxies or framing. */
const DENIED = new Set([
  'host', 'connection', 'keep-alive', 'transfer-encoding', 'te', 'trailer', 'upgrade', 'content-length',
  'content-type', 'expect', 'http2-settings', 'forwarded', 'x-real-ip', 'via', 'max-forwards',
]);
const DENIED_PREFIXES = ['proxy-', 'x-forwarded-', ':'];

function refuse(message: string): never {
  throw new TraceError(400, WEBHOOK_HEADERS_REFUSED, message);
}

/**
 * Validates caller headers and returns them as given (names keep their spelling). Requires a
 * non-empty `Idempotency-Key`. Throws TraceError(400, WEBHOOK_HEADERS_REFUSED); messages name the
 * header but never its value.
 */
export function checkWebhookHeaders(headers: Record<string, string>): Record<string, string> {
  if (headers === null || typeof headers !== 'object' || Array.isArray(headers)) refuse('headers must be an object');
  const entries = Object.entries(headers);
  if (entries.length > MAX_WEBHOOK_HEADERS) refuse(`at most ${MAX_WEBHOOK_HEADERS} headers are allowed`);
  const seen = new Set<string>();
  let total = 0;
  let idempotencyKey: string | undefined;
  for (const [name, value] of entries) {
    if (name.length === 0 || name.length > MAX_WEBHOOK_HEADER_NAME || !TOKEN.test(name)) {
      refuse('a header name is empty, too long or not a valid token');
    }
    const lower = name.toLowerCase();
    if (DENIED.has(lower) || DENIED_PREFIXES.some((p) => lower.startsWith(p))) refuse(`header ${lower} may not be set`);
    if (seen.has(lower)) refuse(`header ${lower} is given more than once`);
    seen.add(lower);
    if (typeof value !== 'string') refuse(`header ${lower} must be a string`);
    if (value.length > MAX_WEBHOOK_HEADER_VALUE || !VALUE.test(value)) {
      refuse(`header ${lower} is too long or contains characters outside printable ASCII`);
    }
    total += name.length + value.length;
    if (lower === 'idempotency-key') idempotencyKey = value;
  }
  if (total > MAX_WEBHOOK_HEADER_BYTES) refuse(`headers exceed ${MAX_WEBHOOK_HEADER_BYTES} bytes in total`);
  if (idempotencyKey === undefined || idempotencyKey.trim() === '') refuse('the Idempotency-Key header is required');
  if (idempotencyKey.length > MAX_IDEMPOTENCY_KEY) refuse(`the Idempotency-Key header is longer than ${MAX_IDEMPOTENCY_KEY} characters`);
  return { ...headers };
}
