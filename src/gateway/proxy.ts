/**
 * One backend behind the Gateway and the single way to call it: node:http(s) with a keep-alive
 * agent, the request body streamed (or sent from a buffer), the response handed back as a
 * stream. node:http rather than fetch because it adds no headers of its own and never
 * decompresses, so what the backend sent is what the client gets.
 *
 * Failures map to the stable error shape: no connection (refused, reset, no route, connect
 * timeout) is 502 `UPSTREAM_UNAVAILABLE`; no response within the timeout (the socket idle for
 * `timeoutMs`) is 504 `UPSTREAM_TIMEOUT`. Messages name the backend's role, never its address.
 */
import http, { type IncomingMessage, type OutgoingHttpHeaders } from 'node:http';
import https from 'node:https';
import type { Readable } from 'node:stream';
import { TraceError } from '../core/errors.js';

export interface UpstreamSpec {
  /** Role name used in messages and logs: `dispatcher` or `query`. */
  name: string;
  /** Base URL (`http(s)://host:port[/prefix]`); the canonical request path is appended. */
  url: string;
  /** Longest a request may wait for response headers, and longest the socket may then be idle. */
  timeoutMs: number;
  connectTimeoutMs: number;
}

/** The client went away before the backend answered; there is no one to answer. */
export class ClientGone extends Error {}

export class UpstreamService {
  readonly name: string;
  readonly #base: URL;
  readonly #prefix: string;
  readonly #agent: http.Agent;
  readonly #timeoutMs: number;
  readonly #connectTimeoutMs: number;

  constructor(spec: UpstreamSpec) {
    const u = new URL(spec.url);
    if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new TypeError(`${spec.name} URL must be http(s)`);
    if (u.username !== '' || u.password !== '') throw new TypeError(`${spec.name} URL must not carry credentials`);
    if (u.search !== '' || u.hash !== '') throw new TypeError(`${spec.name} URL must not have a query or fragment`);
    this.name = spec.name;
    this.#base = u;
    this.#prefix = u.pathname.replace(/\/+$/, '');
    const agentOpts = { keepAlive: true, maxSockets: 256, maxFreeSockets: 32 };
    this.#agent = u.protocol === 'https:' ? new https.Agent(agentOpts) : new http.Agent(agentOpts);
    this.#timeoutMs = spec.timeoutMs;
    this.#connectTimeoutMs = spec.connectTimeoutMs;
  }

  /**
   * Sends one request and resolves with the response once its headers arrive. `pathAndQuery`
   * must already be canonical. A streamed body must carry a `content-length` in `headers`.
   */
  request(args: { method: string; pathAndQuery: string; headers: OutgoingHttpHeaders; body?: Readable | Buffer; signal: AbortSignal }): Promise<IncomingMessage> {
    const mod = this.#base.protocol === 'https:' ? https : http;
    return new Promise<IncomingMessage>((resolve, reject) => {
      let settled = false;
      let connectTimer: NodeJS.Timeout | undefined;
      const headerTimer = setTimeout(() => fail(this.#timeout()), this.#timeoutMs);
      const req = mod.request({
        protocol: this.#base.protocol,
        hostname: this.#base.hostname.replace(/^\[|\]$/g, ''),
        port: this.#base.port || (this.#base.protocol === 'https:' ? 443 : 80),
        method: args.method,
        path: this.#prefix + args.pathAndQuery,
        headers: args.headers,
        agent: this.#agent,
        timeout: this.#timeoutMs,
      });
      const onAbort = () => fail(new ClientGone('client closed the connection'));
      const done = () => {
        settled = true;
        clearTimeout(headerTimer);
        if (connectTimer) clearTimeout(connectTimer);
        args.signal.removeEventListener('abort', onAbort);
      };
      const fail = (e: Error) => {
        if (settled) return;
        done();
        req.destroy();
        reject(e);
      };
      if (args.signal.aborted) {
        onAbort();
        return;
      }
      args.signal.addEventListener('abort', onAbort, { once: true });
      req.on('socket', (socket) => {
        if (socket.connecting) {
          connectTimer = setTimeout(() => fail(this.#unavailable()), this.#connectTimeoutMs);
          socket.once('connect', () => clearTimeout(connectTimer));
        }
      });
      // Idle socket: before the response it is a timeout; after it, the response stream errors.
      req.on('timeout', () => {
        if (!settled) fail(this.#timeout());
        else req.destroy(new Error('upstream response stalled'));
      });
      req.on('error', () => fail(this.#unavailable()));
      req.on('response', (res) => {
        if (settled) {
          res.resume();
          return;
        }
        done();
        resolve(res);
      });
      if (args.body === undefined) req.end();
      else if (Buffer.isBuffer(args.body)) req.end(args.body);
      else {
        const body = args.body;
        body.on('error', () => fail(new ClientGone('client request body failed')));
        body.pipe(req);
      }
    });
  }

  #unavailable(): TraceError {
    return new TraceError(502, 'UPSTREAM_UNAVAILABLE', `the ${this.name} service is unavailable`);
  }

  #timeout(): TraceError {
    return new TraceError(504, 'UPSTREAM_TIMEOUT', `the ${this.name} service did not answer in time`);
  }

  close(): void {
    this.#agent.destroy();
  }
}
