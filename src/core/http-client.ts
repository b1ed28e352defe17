import http from 'node:http';
import https from 'node:https';

/**
 * A small JSON-over-HTTP client on node:http with keep-alive agents. Services on the task hot
 * path (workers calling the Dispatcher) use it instead of fetch: fetch's web-streams machinery
 * cost more CPU per call than the call itself.
 */
export interface HttpResult {
  status: number;
  text: string;
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

export function httpRequest(url: string, opts: { method: string; headers: Record<string, string>; body?: string; timeoutMs: number; maxResponseBytes?: number }): Promise<HttpResult> {
  const u = new URL(url);
  const isHttps = u.protocol === 'https:';
  const mod = isHttps ? https : http;
  const maxBytes = opts.maxResponseBytes ?? 64 * 1024 * 1024;
  return new Promise<HttpResult>((resolve, reject) => {
    const headers: Record<string, string> = { ...opts.headers };
    if (opts.body !== undefined) headers['content-length'] = String(Buffer.byteLength(opts.body));
    const req = mod.request(u, { method: opts.method, headers, agent: isHttps ? agents.https : agents.http }, (res) => {
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
        resolve({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString('utf8') });
      });
      res.on('error', (e) => { clearTimeout(timer); reject(asTransportError(e)); });
    });
    const timer = setTimeout(() => req.destroy(new HttpTransportError(`no answer within ${opts.timeoutMs} ms`, 'TIMEOUT', true)), opts.timeoutMs);
    req.on('error', (e) => { clearTimeout(timer); reject(asTransportError(e)); });
    if (opts.body !== undefined) req.end(opts.body);
    else req.end();
  });
}

function asTransportError(e: unknown): HttpTransportError {
  if (e instanceof HttpTransportError) return e;
  const code = (e as { code?: unknown }).code;
  return new HttpTransportError(e instanceof Error ? e.message : String(e), typeof code === 'string' ? code : 'TRANSPORT_ERROR', false);
}
