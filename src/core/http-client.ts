import http from 'node:http';
import https from 'node:https';

/**
 * A small HTTP client on node:http with keep-alive agents. Hot paths (workers calling the
 * Dispatcher, the ingest calling the RPC egress gateway, the gateway calling providers) use it
 * instead of fetch: fetch's web-streams machinery cost more CPU per call than the call itself.
 * No redirects are followed: a 3xx is answered to the caller as is.
 */
export interface HttpResult {
  status: number;
  text: string;
}

export interface HttpRawResult {
  status: number;
  headers: http.IncomingHttpHeaders;
  /** The body bytes as received (no decoding). */
  body: Buffer;
}

export interface HttpRequestOptions {
  method: string;
  headers: Record<string, string>;
  body?: string | Buffer;
  /** Whole exchange, connect to last body byte. */
  timeoutMs: number;
  /** Larger answers fail with code `RESPONSE_TOO_LARGE`. Default 64 MiB. */
  maxResponseBytes?: number;
  /** Own connection pool (for example one per upstream with its own socket cap). */
  agent?: http.Agent;
}

export class HttpTransportError extends Error {
  constructor(message: string, readonly code: string, readonly timedOut: boolean) {
    super(message);
    this.name = 'HttpTransportError';
  }
}

const agents = {
  http: new http.Agent({ keepAlive: true, maxSockets: 256, keepAliveMsecs: 30_000 }),
  https: new https.Agent({ keepAlive: true, maxSockets: 256, keepAliveMsecs: 30_000 }),
};

/** A keep-alive agent for `url`'s protocol (http or https). */
export function keepAliveAgent(url: string | URL, maxSockets: number): http.Agent {
  const isHttps = new URL(url).protocol === 'https:';
  const opts = { keepAlive: true, maxSockets, keepAliveMsecs: 30_000 };
  return isHttps ? new https.Agent(opts) : new http.Agent(opts);
}

export function httpRequestRaw(url: string | URL, opts: HttpRequestOptions): Promise<HttpRawResult> {
  const u = typeof url === 'string' ? new URL(url) : url;
  const isHttps = u.protocol === 'https:';
  const mod = isHttps ? https : http;
  const maxBytes = opts.maxResponseBytes ?? 64 * 1024 * 1024;
  return new Promise<HttpRawResult>((resolve, reject) => {
    const headers: Record<string, string> = { ...opts.headers };
    if (opts.body !== undefined) headers['content-length'] = String(Buffer.byteLength(opts.body));
    const req = mod.request(u, { method: opts.method, headers, agent: opts.agent ?? (isHttps ? agents.https : agents.http) }, (res) => {
      const declared = Number(res.headers['content-length'] ?? NaN);
      if (Number.isFinite(declared) && declared > maxBytes) {
        req.destroy(new HttpTransportError('response too large', 'RESPONSE_TOO_LARGE', false));
        return;
      }
      const chunks: Buffer[] = [];
      let size = 0;
      res.on('data', (c: Buffer) => {
        size += c.length;
        if (size > maxBytes) {
          req.destroy(new HttpTransportError('response too large', 'RESPONSE_TOO_LARGE', false));
          return;
        }
        chunks.push(c);
      });
      res.on('end', () => {
        clearTimeout(timer);
        resolve({ status: res.statusCode ?? 0, headers: res.headers, body: chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, size) });
      });
      res.on('error', (e) => {
        clearTimeout(timer);
        reject(asTransportError(e));
      });
    });
    const timer = setTimeout(() => req.destroy(new HttpTransportError(`no answer within ${opts.timeoutMs} ms`, 'TIMEOUT', true)), opts.timeoutMs);
    req.on('error', (e) => {
      clearTimeout(timer);
      reject(asTransportError(e));
    });
    if (opts.body !== undefined) req.end(opts.body);
    else req.end();
  });
}

export async function httpRequest(url: string, opts: HttpRequestOptions): Promise<HttpResult> {
  const r = await httpRequestRaw(url, opts);
  return { status: r.status, text: r.body.toString('utf8') };
}

function asTransportError(e: unknown): HttpTransportError {
  if (e instanceof HttpTransportError) return e;
  const code = (e as { code?: unknown }).code;
  return new HttpTransportError(e instanceof Error ? e.message : String(e), typeof code === 'string' ? code : 'TRANSPORT_ERROR', false);
}
