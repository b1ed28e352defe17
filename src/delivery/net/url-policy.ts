import { TraceError } from '../../core/errors.js';
import { canonicalAddress, isForbiddenAddress, isLoopbackAddress, parseIpv4Readings, parseIpv6 } from './address-policy.js';

/**
 * Static checks on a webhook URL, without DNS. Used when an alert definition is created or
 * updated, and again by the sender before it resolves the host.
 *
 * Choices where the brief left room:
 * - Any port 1..65535 is allowed. The address is what matters for SSRF; receivers legitimately
 *   listen on 8443 and friends. Port 0 is refused.
 * - Refused names: `localhost`, `*.localhost`, `*.local` (mDNS), `*.internal` (reserved for
 *   private use; cloud providers put metadata and instance names there), `*.localdomain`,
 *   `*.home.arpa`, and every single-label name (`metadata`, `kubernetes`): those are completed
 *   by resolver search domains into internal names.
 * - IP literals are judged by the address policy in any spelling. WHATWG URL already rewrites
 *   `2130706433`, `0177.0.0.1`, `0x7f.1` and `127.1` to `127.0.0.1` and IPv6 to compressed form;
 *   this module re-reads the result with its own parser anyway.
 * - IPv6 zone ids (`[fe80::1%25eth0]`) make WHATWG URL parsing fail, so they are refused as
 *   invalid URLs (and would be refused as link-local otherwise).
 * - A single trailing dot (`example.com.`) is removed; empty labels are refused.
 * - The fragment is dropped (it is never sent).
 * - Error messages name the rule that failed and never echo the URL (paths and queries of
 *   webhook URLs often carry secrets).
 */

export const WEBHOOK_URL_REFUSED = 'WEBHOOK_URL_REFUSED';
export const MAX_WEBHOOK_URL_LENGTH = 2048;

/** Env switch for development: `TRACE_DELIVERY_ALLOW_HTTP_LOOPBACK=1`. Off by default. */
export const ALLOW_HTTP_LOOPBACK_ENV = 'TRACE_DELIVERY_ALLOW_HTTP_LOOPBACK';

export function allowHttpLoopbackFromEnv(env: NodeJS.ProcessEnv = process.env): boolean {
  const v = env[ALLOW_HTTP_LOOPBACK_ENV]?.trim().toLowerCase();
  return v === '1' || v === 'true';
}

export interface WebhookUrlOptions {
  /**
   * Development only. Permits loopback destinations (127.0.0.0/8, ::1, `localhost`,
   * `*.localhost`), and plain `http://` for those destinations only. Every other private or
   * reserved destination stays refused.
   */
  allowHttpLoopback?: boolean;
}

export interface CheckedWebhookUrl {
  /** Normalized URL: no userinfo, no fragment, no trailing dot on the host. */
  url: URL;
  /** Host name (lower case, punycode, no trailing dot) or canonical IP literal (IPv6 without brackets). */
  host: string;
  port: number;
  /** Canonical IP when the host is an IP literal, else null (a DNS name the sender must resolve). */
  ip: string | null;
  family: 4 | 6 | null;
  protocol: 'https:' | 'http:';
}

const BLOCKED_SUFFIXES = ['localhost', 'local', 'internal', 'localdomain', 'home.arpa'];
const LABEL = /^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$/;

function refuse(message: string): never {
  throw new TraceError(400, WEBHOOK_URL_REFUSED, message);
}

function isLoopbackName(host: string): boolean {
  return host === 'localhost' || host.endsWith('.localhost');
}

/**
 * Validates and normalizes a webhook URL. Throws TraceError(400, WEBHOOK_URL_REFUSED) with a
 * message naming the failed rule.
 */
export function checkWebhookUrl(raw: string, opts: WebhookUrlOptions = {}): CheckedWebhookUrl {
  const allowLoopback = opts.allowHttpLoopback === true;
  if (typeof raw !== 'string' || raw.length === 0) refuse('webhook URL is empty');
  if (raw.length > MAX_WEBHOOK_URL_LENGTH) refuse(`webhook URL is longer than ${MAX_WEBHOOK_URL_LENGTH} characters`);
  // eslint-disable-next-line no-control-regex
  if (/[\u0000-\u0020\u007f-\u009f]/.test(raw)) refuse('webhook URL contains whitespace or control characters');

  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    refuse('webhook URL is not a valid absolute URL');
  }

  const protocol = url.protocol;
  if (protocol !== 'https:' && protocol !== 'http:') refuse('webhook URL must use https');
  if (url.username !== '' || url.password !== '') refuse('webhook URL must not contain credentials (user:pass@)');

  let hostname = url.hostname;
  if (hostname === '') refuse('webhook URL has an empty host');

  let ip: string | null = null;
  let family: 4 | 6 | null = null;
  let host: string;

  if (hostname.startsWith('[')) {
    const bytes = parseIpv6(hostname);
    const canon = bytes ? canonicalAddress(hostname.slice(1, -1)) : null;
    if (!canon) refuse('webhook URL host is not a valid IPv6 address');
    ip = canon.address;
    family = 6;
    host = ip;
  } else {
    if (hostname.endsWith('.')) hostname = hostname.slice(0, -1);
    if (hostname === '' || hostname.endsWith('.')) refuse('webhook URL host has an empty label');
    if (parseIpv4Readings(hostname).length > 0) {
      // WHATWG has normally canonicalized IPv4 already; re-read every spelling regardless.
      const canon = canonicalAddress(hostname);
      if (!canon) {
        const verdict = isForbiddenAddress(hostname);
        refuse(verdict.forbidden ? `webhook URL host is in a forbidden address range: ${verdict.reason ?? 'refused'}` : 'webhook URL host is an ambiguous IPv4 spelling');
      }
      ip = canon.address;
      family = 4;
      host = ip;
    } else {
      host = hostname;
    }
  }

  if (ip !== null) {
    const verdict = isForbiddenAddress(ip);
    if (verdict.forbidden && !(allowLoopback && verdict.category === 'loopback')) {
      refuse(`webhook URL host is in a forbidden address range: ${verdict.reason ?? 'refused'}`);
    }
  } else {
    if (host.length > 253) refuse('webhook URL host name is too long');
    const labels = host.split('.');
    if (labels.some((l) => !LABEL.test(l))) refuse('webhook URL host name has an invalid label');
    const loopbackName = isLoopbackName(host);
    if (!(allowLoopback && loopbackName)) {
      if (BLOCKED_SUFFIXES.some((s) => host === s || host.endsWith(`.${s}`))) {
        refuse('webhook URL host name is reserved for local or internal use');
      }
      if (labels.length < 2) refuse('webhook URL host must be a fully qualified domain name');
    }
  }

  const loopbackTarget = ip !== null ? isLoopbackAddress(ip) : isLoopbackName(host);
  if (protocol === 'http:' && !(allowLoopback && loopbackTarget)) refuse('webhook URL must use https');

  let port: number;
  if (url.port === '') port = protocol === 'https:' ? 443 : 80;
  else {
    port = Number(url.port);
    if (!Number.isInteger(port) || port < 1 || port > 65535) refuse('webhook URL port must be between 1 and 65535');
  }

  const normalized = new URL(url.href);
  normalized.hash = '';
  if (normalized.hostname !== (family === 6 ? `[${host}]` : host)) normalized.hostname = family === 6 ? `[${host}]` : host;

  return { url: normalized, host, port, ip, family, protocol: protocol as 'https:' | 'http:' };
}

/** Non-throwing form for schema refinements: the refusal message, or null when the URL passes. */
export function webhookUrlProblem(raw: string, opts: WebhookUrlOptions = {}): string | null {
  try {
    checkWebhookUrl(raw, opts);
    return null;
  } catch (e) {
    if (e instanceof TraceError) return e.message;
    throw e;
  }
}

/**
 * What may be logged about a webhook target: scheme, host and port only. Paths and queries
 * often carry secrets (Slack-style `/services/T../B../secret`, `?token=`), so they never appear.
 */
export function describeWebhookTarget(url: URL | string): string {
  try {
    const u = typeof url === 'string' ? new URL(url) : url;
    return `${u.protocol}//${u.host}`;
  } catch {
    return '[invalid url]';
  }
}
