import { promises as dnsPromises } from 'node:dns';
import * as http from 'node:http';
import * as https from 'node:https';
import { BlockList, isIP, type LookupFunction } from 'node:net';
import type { Logger } from '../../core/log.js';
import { TraceError } from '../../core/errors.js';
import { canonicalAddress, isForbiddenAddress } from './address-policy.js';
import { checkWebhookHeaders } from './headers.js';
import { checkWebhookUrl, describeWebhookTarget, type CheckedWebhookUrl } from './url-policy.js';

/**
 * One outbound webhook POST with SSRF defenses:
 *
 * 1. The URL passes checkWebhookUrl (https only unless the development loopback switch is on).
 * 2. The host is resolved exactly once (`lookup(host, {all: true, verbatim: true})`).
 * 3. Every resolved address must pass the address policy (and the optional operator deny list);
 *    one forbidden address refuses the whole send as terminal.
 * 4. The socket is opened to a checked IP address, never to the name: Node does no DNS of its
 *    own (a lookup that always fails is installed to prove it), TLS SNI and certificate checks
 *    use the host name, and the Host header is written by the sender. A DNS answer that changes
 *    between check and connect (rebinding) therefore cannot move the connection.
 * 5. node:http(s) with `agent: false`: no connection reuse, and proxy variables
 *    (HTTPS_PROXY, HTTP_PROXY, ALL_PROXY, NO_PROXY) are never consulted.
 *
 * Outcomes: 2xx delivered; 408, 429 and 5xx retryable; network failures and timeouts retryable;
 * every 3xx terminal (redirects are never followed: a receiver that redirects is misconfigured
 * from Trace's side, retrying will not change that, and the Location is neither followed nor
 * reported); other statuses terminal; policy refusals terminal.
 *
 * If connecting to the first address fails before the TLS handshake completes, the next checked
 * address (in resolver order, at most MAX_ADDRESS_ATTEMPTS) is tried within the same deadline.
 * Once the request may have reached the receiver there is no second try inside one send.
 */

export type SendOutcome = 'delivered' | 'retryable' | 'terminal';

export interface SendWebhookResult {
  outcome: SendOutcome;
  /** HTTP status when a response arrived. */
  status?: number;
  /** Short reason; never contains the URL, header values or bodies. */
  error?: string;
  /** From Retry-After on a retryable response, clamped to [0, 24 h]. */
  retryAfterMs?: number;
  /** The checked IP address the request was sent to (for the delivery audit). */
  address?: string;
  durationMs: number;
}

export type HostLookup = (
  hostname: string,
  options: { all: true; verbatim: true },
) => Promise<ReadonlyArray<{ address: string; family: number }>>;

export const defaultLookup: HostLookup = (hostname, options) => dnsPromises.lookup(hostname, options);

export const DEFAULT_TIMEOUT_MS = 5_000;
export const DEFAULT_CONNECT_TIMEOUT_MS = 3_000;
export const DEFAULT_MAX_RESPONSE_BYTES = 64 * 1024;
export const DEFAULT_MAX_REQUEST_BYTES = 256 * 1024;
export const MAX_RESPONSE_HEADER_BYTES = 16 * 1024;
export const MAX_ADDRESS_ATTEMPTS = 3;
const MAX_TIMEOUT_MS = 60_000;
const MAX_RETRY_AFTER_MS = 24 * 3600 * 1000;
const USER_AGENT = 'Trace-Delivery/1';

export interface SendWebhookInput {
  url: string;
  /** JSON object body; include `delivery_id` in it for receiver-side dedupe. */
  body: Record<string, unknown>;
  /** Must contain `Idempotency-Key: <delivery_id>`; see checkWebhookHeaders for the rules. */
  headers: Record<string, string>;
  /** Total budget: DNS + connect + TLS + request + response. Default 5000. */
  timeoutMs?: number;
  /** Budget for TCP connect + TLS handshake to one address. Default min(3000, timeoutMs). */
  connectTimeoutMs?: number;
  /** Response body bytes read (and discarded) before the socket is dropped. Default 64 KiB. */
  maxResponseBytes?: number;
  /** Serialized request body cap. Default 256 KiB. */
  maxRequestBytes?: number;
  /** Development switch, see WebhookUrlOptions.allowHttpLoopback. */
  allowHttpLoopback?: boolean;
  /** Resolver, injectable for tests. Called at most once per send. */
  lookup?: HostLookup;
  /** Operator deny list (e.g. the VPC CIDR when it is public space); see blockListFromCidrs. */
  deniedAddresses?: BlockList;
  /** Extra trust anchors. Tests only: production uses the system CA store. */
  ca?: string | Buffer | Array<string | Buffer>;
  /** Aborts the send (e.g. on shutdown); the outcome is retryable. */
  signal?: AbortSignal;
  /** One line per send with scheme://host:port only, never path, query, headers or body. */
  logger?: Logger;
  /** Replaces the network I/O for one pinned address. Tests only. */
  transport?: PinnedTransport;
}

/** Everything needed to send to one already-checked address. */
export interface PinnedRequest {
  protocol: 'https:' | 'http:';
  /** Checked IP address to connect to. */
  address: string;
  family: 4 | 6;
  /** Name for SNI and certificate verification (an IP literal when the URL had one). */
  hostname: string;
  port: number;
  /** Path and query. */
  path: string;
  /** Final header set, Host included. */
  headers: Record<string, string>;
  body: Buffer;
  connectTimeoutMs: number;
  /** Epoch ms by which everything must be done. */
  deadline: number;
  maxResponseBytes: number;
  maxResponseHeaderBytes: number;
  ca?: string | Buffer | Array<string | Buffer>;
  signal?: AbortSignal;
}

export type TransportResult =
  | { kind: 'response'; status: number; retryAfter?: string }
  /** `connected`: TCP (and TLS) were established, so the receiver may have seen the request. */
  | { kind: 'failure'; connected: boolean; code: string };

export type PinnedTransport = (req: PinnedRequest) => Promise<TransportResult>;

/** Parses `a.b.c.d/n` and `x::/n` entries into a BlockList. Throws TraceError on a bad entry. */
export function blockListFromCidrs(cidrs: readonly string[]): BlockList {
  const list = new BlockList();
  for (const raw of cidrs) {
    const entry = raw.trim();
    if (entry === '') continue;
    const [addr = '', prefixText] = entry.split('/');
    const canon = canonicalAddress(addr);
    const prefix = prefixText === undefined ? (canon?.family === 6 ? 128 : 32) : Number(prefixText);
    if (!canon || !Number.isInteger(prefix) || prefix < 0 || prefix > (canon.family === 6 ? 128 : 32)) {
      throw new TraceError(400, 'BAD_CIDR', 'a denied address entry is not a valid CIDR');
    }
    list.addSubnet(canon.address, prefix, canon.family === 6 ? 'ipv6' : 'ipv4');
  }
  return list;
}

function clampInt(v: number | undefined, dflt: number, min: number, max: number): number {
  if (v === undefined || !Number.isFinite(v)) return dflt;
  return Math.max(min, Math.min(max, Math.floor(v)));
}

function parseRetryAfter(v: string | undefined, now: number): number | undefined {
  if (v === undefined) return undefined;
  const t = v.trim();
  let ms: number;
  if (/^\d{1,10}$/.test(t)) ms = Number(t) * 1000;
  else {
    const at = Date.parse(t);
    if (Number.isNaN(at)) return undefined;
    ms = at - now;
  }
  return Math.max(0, Math.min(MAX_RETRY_AFTER_MS, ms));
}

function classifyStatus(status: number): { outcome: SendOutcome; error?: string } {
  if (status >= 200 && status <= 299) return { outcome: 'delivered' };
  if (status >= 300 && status <= 399) return { outcome: 'terminal', error: `receiver answered with redirect ${status}; redirects are not followed` };
  if (status === 408 || status === 429 || (status >= 500 && status <= 599)) {
    return { outcome: 'retryable', error: `receiver answered ${status}` };
  }
  return { outcome: 'terminal', error: `receiver answered ${status}` };
}

function hostHeader(checked: CheckedWebhookUrl): string {
  const name = checked.family === 6 ? `[${checked.host}]` : checked.host;
  const dflt = checked.protocol === 'https:' ? 443 : 80;
  return checked.port === dflt ? name : `${name}:${checked.port}`;
}

class LookupTimeout extends Error {}

async function lookupWithin(lookup: HostLookup, host: string, ms: number): Promise<ReadonlyArray<{ address: string; family: number }>> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new LookupTimeout('lookup timed out')), Math.max(0, ms));
  });
  try {
    return await Promise.race([lookup(host, { all: true, verbatim: true }), timeout]);
  } finally {
    clearTimeout(timer);
  }
}

function errorCode(e: unknown): string {
  const code = (e as { code?: unknown } | null)?.code;
  return typeof code === 'string' && /^[A-Z0-9_]{1,64}$/.test(code) ? code : 'EUNKNOWN';
}

/** Sends one webhook. Never throws for network or policy problems; returns the outcome. */
export async function sendWebhook(input: SendWebhookInput): Promise<SendWebhookResult> {
  const started = Date.now();
  const result = await sendInner(input, started);
  const out: SendWebhookResult = { ...result, durationMs: Date.now() - started };
  if (input.logger) {
    input.logger.info(
      { target: describeWebhookTarget(input.url), address: out.address, status: out.status, outcome: out.outcome, error: out.error, duration_ms: out.durationMs },
      'webhook send',
    );
  }
  return out;
}

type SendCore = Omit<SendWebhookResult, 'durationMs'>;

async function sendInner(input: SendWebhookInput, started: number): Promise<SendCore> {
  const timeoutMs = clampInt(input.timeoutMs, DEFAULT_TIMEOUT_MS, 1, MAX_TIMEOUT_MS);
  const connectTimeoutMs = clampInt(input.connectTimeoutMs, Math.min(DEFAULT_CONNECT_TIMEOUT_MS, timeoutMs), 1, timeoutMs);
  const maxResponseBytes = clampInt(input.maxResponseBytes, DEFAULT_MAX_RESPONSE_BYTES, 0, 16 * 1024 * 1024);
  const maxRequestBytes = clampInt(input.maxRequestBytes, DEFAULT_MAX_REQUEST_BYTES, 1, 16 * 1024 * 1024);
  const allowLoopback = input.allowHttpLoopback === true;
  const deadline = started + timeoutMs;

  // Static checks: URL, headers, body. All refusals are terminal and happen before any I/O.
  let checked: CheckedWebhookUrl;
  let userHeaders: Record<string, string>;
  try {
    checked = checkWebhookUrl(input.url, { allowHttpLoopback: allowLoopback });
    userHeaders = checkWebhookHeaders(input.headers);
  } catch (e) {
    if (e instanceof TraceError) return { outcome: 'terminal', error: e.message };
    throw e;
  }
  if (input.body === null || typeof input.body !== 'object' || Array.isArray(input.body)) {
    return { outcome: 'terminal', error: 'webhook body must be a JSON object' };
  }
  let body: Buffer;
  try {
    body = Buffer.from(JSON.stringify(input.body), 'utf8');
  } catch {
    return { outcome: 'terminal', error: 'webhook body is not JSON-serializable' };
  }
  if (body.length > maxRequestBytes) return { outcome: 'terminal', error: `webhook body exceeds ${maxRequestBytes} bytes` };
  if (input.signal?.aborted) return { outcome: 'retryable', error: 'send aborted' };

  // Resolve once.
  let resolved: ReadonlyArray<{ address: string; family: number }>;
  if (checked.ip !== null) {
    resolved = [{ address: checked.ip, family: checked.family ?? 4 }];
  } else {
    try {
      resolved = await lookupWithin(input.lookup ?? defaultLookup, checked.host, deadline - Date.now());
    } catch (e) {
      if (e instanceof LookupTimeout) return { outcome: 'retryable', error: 'DNS lookup timed out' };
      return { outcome: 'retryable', error: `DNS lookup failed (${errorCode(e)})` };
    }
    if (!Array.isArray(resolved) || resolved.length === 0) return { outcome: 'retryable', error: 'DNS lookup returned no addresses' };
  }

  // Check every address; one bad answer refuses the send.
  const targets: Array<{ address: string; family: 4 | 6 }> = [];
  for (const r of resolved) {
    const canon = typeof r?.address === 'string' ? canonicalAddress(r.address) : null;
    if (!canon) return { outcome: 'terminal', error: 'destination refused: host resolved to an unusable address' };
    const verdict = isForbiddenAddress(canon.address);
    const loopback = verdict.forbidden && verdict.category === 'loopback';
    if (verdict.forbidden && !(allowLoopback && loopback)) {
      return { outcome: 'terminal', error: `destination refused: host resolves to a forbidden address (${verdict.reason ?? 'refused'})` };
    }
    if (input.deniedAddresses?.check(canon.address, canon.family === 6 ? 'ipv6' : 'ipv4')) {
      return { outcome: 'terminal', error: 'destination refused: host resolves to an operator-denied address' };
    }
    if (checked.protocol === 'http:' && !loopback) {
      return { outcome: 'terminal', error: 'destination refused: plain http is only allowed to loopback addresses' };
    }
    if (!targets.some((t) => t.address === canon.address)) targets.push(canon);
  }

  const headers: Record<string, string> = {
    'User-Agent': USER_AGENT,
    ...userHeaders,
    Host: hostHeader(checked),
    'Content-Type': 'application/json',
    'Content-Length': String(body.length),
    Connection: 'close',
  };
  const transport = input.transport ?? httpTransport;
  let last: TransportResult | undefined;
  let lastAddress: string | undefined;
  for (const target of targets.slice(0, MAX_ADDRESS_ATTEMPTS)) {
    if (Date.now() >= deadline) break;
    const req: PinnedRequest = {
      protocol: checked.protocol,
      address: target.address,
      family: target.family,
      hostname: checked.host,
      port: checked.port,
      path: `${checked.url.pathname}${checked.url.search}`,
      headers,
      body,
      connectTimeoutMs: Math.min(connectTimeoutMs, Math.max(1, deadline - Date.now())),
      deadline,
      maxResponseBytes,
      maxResponseHeaderBytes: MAX_RESPONSE_HEADER_BYTES,
    };
    if (input.ca !== undefined) req.ca = input.ca;
    if (input.signal) req.signal = input.signal;
    last = await transport(req);
    lastAddress = target.address;
    if (last.kind === 'response') {
      const c = classifyStatus(last.status);
      const out: SendCore = { outcome: c.outcome, status: last.status, address: target.address };
      if (c.error) out.error = c.error;
      if (c.outcome === 'retryable') {
        const ra = parseRetryAfter(last.retryAfter, Date.now());
        if (ra !== undefined) out.retryAfterMs = ra;
      }
      return out;
    }
    if (last.connected || last.code === 'ABORTED' || last.code === 'TIMEOUT') break;
  }
  const out: SendCore = { outcome: 'retryable', error: describeFailure(last) };
  if (lastAddress) out.address = lastAddress;
  return out;
}

function describeFailure(r: TransportResult | undefined): string {
  if (!r || r.kind !== 'failure') return 'timed out before connecting';
  switch (r.code) {
    case 'TIMEOUT':
      return 'timed out';
    case 'CONNECT_TIMEOUT':
      return 'connect timed out';
    case 'ABORTED':
      return 'send aborted';
    default:
      return `network error (${r.code})`;
  }
}

/** Any DNS attempt on a pinned connection is a bug; fail it loudly instead of resolving. */
const noLookup: LookupFunction = (_hostname, _options, callback) => {
  const err: NodeJS.ErrnoException = new Error('DNS lookup is disabled on pinned webhook connections');
  err.code = 'EPINNED_LOOKUP';
  callback(err, '', 0);
};

/** The real network transport: node:http(s), one fresh socket to `req.address`. */
export const httpTransport: PinnedTransport = (req) =>
  new Promise<TransportResult>((resolve) => {
    const isHttps = req.protocol === 'https:';
    let settled = false;
    let connected = false;
    let response: { status: number; retryAfter?: string } | undefined;
    let bytes = 0;
    const timers: NodeJS.Timeout[] = [];

    const options: https.RequestOptions = {
      host: req.address,
      family: req.family,
      port: req.port,
      method: 'POST',
      path: req.path,
      headers: req.headers,
      agent: false,
      setHost: false,
      lookup: noLookup,
      maxHeaderSize: req.maxResponseHeaderBytes,
      insecureHTTPParser: false,
    };
    if (isHttps) {
      // SNI and certificate verification use the name, the socket uses the checked address.
      options.servername = isIP(req.hostname) ? '' : req.hostname;
      options.rejectUnauthorized = true;
      if (req.ca !== undefined) options.ca = req.ca;
    }
    const client = isHttps ? https.request(options) : http.request(options);

    const onAbort = () => fail('ABORTED');
    function finish(r: TransportResult): void {
      if (settled) return;
      settled = true;
      for (const t of timers) clearTimeout(t);
      req.signal?.removeEventListener('abort', onAbort);
      client.destroy();
      resolve(r);
    }
    function fail(code: string): void {
      // Once the status line is in, the outcome is decided; body trouble does not change it.
      if (response) finish({ kind: 'response', ...response });
      else finish({ kind: 'failure', connected, code });
    }

    client.on('socket', (socket) => {
      if (settled) return;
      const connectTimer = setTimeout(() => fail('CONNECT_TIMEOUT'), req.connectTimeoutMs);
      timers.push(connectTimer);
      socket.once(isHttps ? 'secureConnect' : 'connect', () => {
        connected = true;
        clearTimeout(connectTimer);
      });
    });
    client.on('response', (res) => {
      const ra = res.headers['retry-after'];
      response = { status: res.statusCode ?? 0 };
      if (typeof ra === 'string') response.retryAfter = ra;
      res.on('data', (chunk: Buffer) => {
        bytes += chunk.length;
        if (bytes > req.maxResponseBytes) finish({ kind: 'response', ...response! });
      });
      res.on('end', () => finish({ kind: 'response', ...response! }));
      res.on('error', () => fail('ERESPONSE'));
      res.on('aborted', () => fail('ERESPONSE'));
    });
    client.on('error', (err) => fail(errorCode(err)));

    timers.push(setTimeout(() => fail('TIMEOUT'), Math.max(0, req.deadline - Date.now())));
    if (req.signal) {
      if (req.signal.aborted) {
        fail('ABORTED');
        return;
      }
      req.signal.addEventListener('abort', onAbort, { once: true });
    }
    client.end(req.body);
  });
