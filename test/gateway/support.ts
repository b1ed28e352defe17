// Fake backends that record what reaches them, raw HTTP for spellings fetch would normalize,
// and a Gateway wired to them.
import http, { type IncomingHttpHeaders } from 'node:http';
import net from 'node:net';
import { createUserVerifier, mintDevUserToken } from '../../src/auth/user.js';
import { buildGateway, type GatewayLimits } from '../../src/gateway/gateway.js';
import { listen } from '../../src/core/http.js';
import { silentLogger } from '../../src/core/log.js';

export const USER_SECRET = 'gateway-test-user-secret-0123456789abcdef0123';

export interface Received {
  method: string;
  url: string;
  headers: IncomingHttpHeaders;
  body: string;
}

export interface FakeBackend {
  url: string;
  received: Received[];
  close(): Promise<void>;
}

export type Behaviour = (req: Received, res: http.ServerResponse) => void;

/** Echoes what it received as JSON, plus headers that must not leave the private network. */
export const echo: Behaviour = (r, res) => {
  const body = JSON.stringify({ seen: { method: r.method, url: r.url, body: r.body } });
  res.writeHead(200, {
    'content-type': 'application/json; charset=utf-8',
    'x-internal-node': 'ip-10-0-0-7',
    'set-cookie': 'backend_session=abc',
    'x-trace-debug': 'internal',
    'access-control-allow-origin': '*',
  });
  res.end(body);
};

export async function fakeBackend(_name: string, behaviour: Behaviour = echo): Promise<FakeBackend> {
  const received: Received[] = [];
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const r: Received = { method: req.method ?? '', url: req.url ?? '', headers: req.headers, body: Buffer.concat(chunks).toString('utf8') };
      received.push(r);
      behaviour(r, res);
    });
  });
  server.keepAliveTimeout = 5_000;
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  const addr = server.address() as net.AddressInfo;
  return {
    url: `http://127.0.0.1:${addr.port}`,
    received,
    async close() {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/** A URL on which nothing listens: bind a port, then release it. */
export async function closedUrl(): Promise<string> {
  const s = net.createServer();
  await new Promise<void>((resolve) => s.listen(0, '127.0.0.1', () => resolve()));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise<void>((resolve) => s.close(() => resolve()));
  return `http://127.0.0.1:${port}`;
}

export const token = (sub: string) => mintDevUserToken(USER_SECRET, sub);

export interface TestGateway {
  url: string;
  port: number;
  dispatcher: FakeBackend;
  query: FakeBackend;
  /** Requests that reached either backend. */
  proxied(): number;
  close(): Promise<void>;
}

export async function startTestGateway(opts: {
  limits?: Partial<GatewayLimits>;
  corsOrigins?: string[];
  dispatcher?: FakeBackend;
  query?: FakeBackend;
  dispatcherUrl?: string;
  clock?: () => number;
} = {}): Promise<TestGateway> {
  const dispatcher = opts.dispatcher ?? (await fakeBackend('dispatcher'));
  const query = opts.query ?? (await fakeBackend('query'));
  const app = buildGateway({
    routes: { dispatcherUrl: opts.dispatcherUrl ?? dispatcher.url, queryUrl: query.url },
    userVerifier: createUserVerifier({ mode: 'dev', secret: USER_SECRET }),
    limits: { userPerMinute: 100_000, orgPerMinute: 100_000, queryPerUserPerMinute: 100_000, ...opts.limits },
    cors: { allowedOrigins: opts.corsOrigins ?? [] },
    log: silentLogger,
    ...(opts.clock ? { clock: opts.clock } : {}),
  });
  const url = await listen(app, '127.0.0.1', 0);
  return {
    url,
    port: Number(new URL(url).port),
    dispatcher,
    query,
    proxied: () => dispatcher.received.length + query.received.length,
    async close() {
      await app.close();
      await dispatcher.close();
      await query.close();
    },
  };
}

export interface RawResponse {
  status: number;
  headers: Record<string, string>;
  body: string;
  json(): Record<string, unknown>;
}

/**
 * Sends exactly these bytes (request line, headers, body) and reads one response. Used for
 * targets that fetch would normalize (dot segments, backslashes, encodings).
 */
export function rawRequest(port: number, method: string, target: string, headers: Record<string, string> = {}, body?: string | Buffer): Promise<RawResponse> {
  return new Promise((resolve, reject) => {
    const s = net.connect(port, '127.0.0.1');
    const chunks: Buffer[] = [];
    s.on('connect', () => {
      const lines = [`${method} ${target} HTTP/1.1`, 'Host: gateway.test', 'Connection: close'];
      for (const [k, v] of Object.entries(headers)) lines.push(`${k}: ${v}`);
      if (body !== undefined && !Object.keys(headers).some((k) => /^(content-length|transfer-encoding)$/i.test(k))) lines.push(`Content-Length: ${Buffer.byteLength(body)}`);
      s.write(`${lines.join('\r\n')}\r\n\r\n`);
      if (body !== undefined) s.write(body);
    });
    s.on('data', (c: Buffer) => chunks.push(c));
    s.on('error', reject);
    s.on('close', () => {
      const text = Buffer.concat(chunks).toString('latin1');
      const sep = text.indexOf('\r\n\r\n');
      if (sep < 0) {
        reject(new Error(`no HTTP response (${text.length} bytes)`));
        return;
      }
      const [statusLine, ...headerLines] = text.slice(0, sep).split('\r\n');
      const h: Record<string, string> = {};
      for (const l of headerLines) {
        const i = l.indexOf(':');
        h[l.slice(0, i).trim().toLowerCase()] = l.slice(i + 1).trim();
      }
      let rest = text.slice(sep + 4);
      if (h['transfer-encoding'] === 'chunked') rest = dechunk(rest);
      resolve({ status: Number(statusLine!.split(' ')[1]), headers: h, body: rest, json: () => JSON.parse(rest) as Record<string, unknown> });
    });
  });
}

function dechunk(s: string): string {
  let out = '';
  let i = 0;
  for (;;) {
    const nl = s.indexOf('\r\n', i);
    if (nl < 0) break;
    const n = parseInt(s.slice(i, nl), 16);
    if (!Number.isFinite(n) || n === 0) break;
    out += s.slice(nl + 2, nl + 2 + n);
    i = nl + 2 + n + 2;
  }
  return out;
}
