/**
 * The Gateway: the only public entry point of Trace (containers/gateway.md, DESIGN.md section 3).
 *
 * Order of decisions for every request, each refusing in the stable `{error, code}` shape:
 * 1. front door (before Fastify routing): canonicalize the request target (target.ts; 400/414)
 *    and look the method + path up in the allowlist (routes.ts; 404 for anything else,
 *    including every spelling of `/internal/*` and `/v1/task/*`);
 * 2. CORS preflight for allowlisted paths (cors.ts; 204 or 403), answered without a token;
 * 3. the Bearer JWT, verified here (401 before anything is proxied) and forwarded unchanged;
 * 4. rate limits (rate-limit.ts; 429 with Retry-After);
 * 5. the body cap (413 before anything is proxied);
 * 6. the proxy (proxy.ts): allowlisted headers only, a fresh X-Request-Id, the body streamed,
 *    the response streamed back with allowlisted headers; 502/504 when a backend is down or slow.
 * Backends still verify the JWT themselves; nothing the Gateway adds is an identity claim.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { z } from 'zod';
import { TraceError, notFound, payloadTooLarge, unauthorized } from '../core/errors.js';
import { createHttpServer } from '../core/http.js';
import { installOps, serviceRegistry } from '../core/ops.js';
import { Counter, type Registry } from 'prom-client';
import { newId } from '../core/ids.js';
import type { Logger } from '../core/log.js';
import type { UserIdentity, UserVerifier } from '../auth/user.js';
import { CorsPolicy } from './cors.js';
import { REQUEST_ID_HEADER, downstreamResponseHeaders, upstreamRequestHeaders } from './headers.js';
import { ClientGone, UpstreamService } from './proxy.js';
import { DEFAULT_RATE_LIMITS, GatewayRateLimiter, type RateLimits } from './rate-limit.js';
import { RouteTable, allowedMethods, type RouteMatch, type RouteRule, type Upstream } from './routes.js';
import { canonicalTarget, type CanonicalTarget } from './target.js';
import { createConsole } from './console/console.js';
import { openApiDocument } from './openapi.js';

/** The OpenAPI 3.1 document of every route the Gateway forwards (openapi.ts). */
export const OPENAPI_PATH = '/v1/openapi.json';

export interface GatewayLimits extends RateLimits {
  /** Largest request body forwarded; larger is 413. Default 1 MiB. */
  maxBodyBytes: number;
  /** Longest request target (path and query); longer is 414. Default 4096. */
  maxTargetLength: number;
  /** Response-header deadline and idle timeout per backend. Defaults: Dispatcher 30 s, Query Service 90 s (its own user query timeout is 60 s). */
  dispatcherTimeoutMs: number;
  queryTimeoutMs: number;
  /** Connect deadline for both backends; a backend that does not accept is 502. Default 5 s. */
  connectTimeoutMs: number;
}

export const DEFAULT_GATEWAY_LIMITS: GatewayLimits = {
  ...DEFAULT_RATE_LIMITS,
  maxBodyBytes: 1024 * 1024,
  maxTargetLength: 4096,
  dispatcherTimeoutMs: 30_000,
  queryTimeoutMs: 90_000,
  connectTimeoutMs: 5_000,
};

export interface GatewayOptions {
  routes: { dispatcherUrl: string; queryUrl: string };
  userVerifier: UserVerifier;
  limits?: Partial<GatewayLimits>;
  cors?: { allowedOrigins: readonly string[] };
  log: Logger;
  /** The registry `/metrics` serves; default a fresh one. */
  metrics?: Registry;
  /** Milliseconds since the epoch, for the rate limiter (tests). */
  clock?: () => number;
  /** The web console under `/console` (console/README.md); on unless `enabled: false`. */
  console?: { enabled?: boolean; secureCookies?: boolean };
}

const positiveInt = z.number().int().positive();
const limitsSchema = z.strictObject({
  userPerMinute: positiveInt,
  orgPerMinute: positiveInt,
  queryPerUserPerMinute: positiveInt,
  maxBodyBytes: positiveInt.max(64 * 1024 * 1024),
  maxTargetLength: positiveInt.min(64).max(16 * 1024),
  dispatcherTimeoutMs: positiveInt,
  queryTimeoutMs: positiveInt,
  connectTimeoutMs: positiveInt,
});

export function resolveLimits(partial: Partial<GatewayLimits> = {}): GatewayLimits {
  const defined = Object.fromEntries(Object.entries(partial).filter(([, v]) => v !== undefined));
  const r = limitsSchema.safeParse({ ...DEFAULT_GATEWAY_LIMITS, ...defined });
  if (!r.success) {
    const i = r.error.issues[0]!;
    throw new TypeError(`gateway limit ${i.path.join('.')}: ${i.message}`);
  }
  return r.data;
}

/** What the front door decided about one request, for the Fastify side. */
interface Admitted {
  requestId: string;
  startedAt: number;
  target: CanonicalTarget;
  /** The rule for this method, or undefined for a CORS preflight and the console. */
  match: RouteMatch | undefined;
  methods: string[];
  /** A `/console` page: served by console/ with its own session, never proxied. */
  console?: true;
}

/**
 * Refused requests whose body should not be read just to be discarded: chunked, large, or
 * announced with `Expect: 100-continue` (the client is waiting and will not send it). Their
 * connection is closed after the answer.
 */
function bodyIsLarge(req: IncomingMessage, cap: number): boolean {
  if (req.headers['transfer-encoding'] !== undefined || expectsContinue(req)) return true;
  const n = Number(req.headers['content-length'] ?? '0');
  return !Number.isFinite(n) || n > Math.min(cap, 64 * 1024);
}

function writeRefusal(res: ServerResponse, e: TraceError, headers: Record<string, string>): void {
  const body = JSON.stringify(e.toJSON());
  res.statusCode = e.status;
  for (const [k, v] of Object.entries(headers)) res.setHeader(k, v);
  res.setHeader('content-type', 'application/json; charset=utf-8');
  res.setHeader('content-length', Buffer.byteLength(body));
  res.end(body);
}

/**
 * Runs `screen` on every raw request before Fastify sees it. Fastify's router answers some
 * malformed paths (bad percent-encoding) itself, outside the error handler and in its own
 * shape; the Gateway must decide on every path first, in one place.
 */
function installFrontDoor(app: FastifyInstance, screen: (req: IncomingMessage, res: ServerResponse) => boolean): void {
  const server = app.server;
  const inner = server.listeners('request') as Array<(req: IncomingMessage, res: ServerResponse) => void>;
  if (inner.length !== 1 || server.listenerCount('checkContinue') !== 0) throw new Error('unexpected HTTP server listeners; refusing to start the gateway');
  const handle = (req: IncomingMessage, res: ServerResponse) => {
    if (screen(req, res)) return;
    inner[0]!.call(server, req, res);
  };
  server.removeAllListeners('request');
  server.on('request', handle);
  // `Expect: 100-continue`: Node would send 100 at once; instead the Gateway sends it only after
  // route, token, rate and size checks pass (the end of the onRequest hook), so a refused client
  // never uploads its body.
  server.on('checkContinue', handle);
}

const expectsContinue = (req: IncomingMessage) => /^100-continue$/i.test(String(req.headers.expect ?? ''));

export function buildGateway(opts: GatewayOptions): FastifyInstance {
  const limits = resolveLimits(opts.limits);
  const log = opts.log;
  const table = new RouteTable();
  const cors = new CorsPolicy(opts.cors?.allowedOrigins ?? []);
  const limiter = new GatewayRateLimiter(limits, opts.clock ? { clock: opts.clock } : {});
  const upstreams: Record<Upstream, UpstreamService> = {
    dispatcher: new UpstreamService({ name: 'dispatcher', url: opts.routes.dispatcherUrl, timeoutMs: limits.dispatcherTimeoutMs, connectTimeoutMs: limits.connectTimeoutMs }),
    query: new UpstreamService({ name: 'query', url: opts.routes.queryUrl, timeoutMs: limits.queryTimeoutMs, connectTimeoutMs: limits.connectTimeoutMs }),
  };
  const admitted = new WeakMap<IncomingMessage, Admitted>();
  // GET /healthz, /readyz, /metrics, /v1/openapi.json: answered by the Gateway itself, without a token.
  const opsRequests = new WeakSet<IncomingMessage>();
  const identities = new WeakMap<FastifyRequest, UserIdentity>();
  const consoleApp = opts.console?.enabled === false ? undefined : createConsole({
    dispatcherUrl: opts.routes.dispatcherUrl,
    userVerifier: opts.userVerifier,
    secureCookies: opts.console?.secureCookies ?? false,
    timeoutMs: limits.dispatcherTimeoutMs,
    log,
    rateLimit: (who) => {
      const d = limiter.take(`${who.iss}\u0000${who.sub}`, 'default');
      return d.ok ? undefined : new TraceError(429, 'RATE_LIMITED', `rate limit exceeded (${d.scope}); retry after ${d.retryAfterSeconds} s`, { extra: { retry_after_seconds: d.retryAfterSeconds } });
    },
  });

  const app = createHttpServer({ log, name: 'gateway', bodyLimit: limits.maxBodyBytes });
  // Bodies are never parsed here: every content type passes through as the raw stream.
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('*', (_req, _payload, done) => done(null, undefined));

  installFrontDoor(app, (req, res) => {
    const requestId = newId();
    const origin = typeof req.headers.origin === 'string' ? req.headers.origin : undefined;
    const refuse = (e: TraceError, reason: string, extra: Record<string, string> = {}) => {
      const headers: Record<string, string> = { [REQUEST_ID_HEADER]: requestId, ...cors.responseHeaders(origin), ...extra };
      if (bodyIsLarge(req, limits.maxBodyBytes)) headers.connection = 'close';
      log.info({ request_id: requestId, method: req.method, status: e.status, code: e.code, reason }, 'gateway refused request');
      writeRefusal(res, e, headers);
      return true;
    };
    let target: CanonicalTarget;
    try {
      target = canonicalTarget(req.url ?? '', limits.maxTargetLength);
    } catch (e) {
      if (e instanceof TraceError) return refuse(e, 'target');
      throw e;
    }
    if (req.method === 'GET' && OPS_PATHS.has(target.path)) {
      opsRequests.add(req);
      return false;
    }
    if (consoleApp && target.segments[0] === 'console') {
      const method = req.method ?? '';
      if (method !== 'GET' && method !== 'POST') return refuse(new TraceError(405, 'METHOD_NOT_ALLOWED', 'console pages take GET and POST only'), 'method', { allow: 'GET, POST' });
      admitted.set(req, { requestId, startedAt: performance.now(), target, match: undefined, methods: ['GET', 'POST'], console: true });
      return false;
    }
    const matches = table.matchPath(target.segments);
    const methods = allowedMethods(matches);
    const method = req.method ?? '';
    const match = matches.find((m) => (m.rule.methods as readonly string[]).includes(method));
    const isPreflight = method === 'OPTIONS' && typeof req.headers['access-control-request-method'] === 'string';
    if (matches.length === 0) return refuse(notFound('no such route', 'NOT_FOUND'), 'route');
    if (!match && !isPreflight) {
      const allow = [...methods].sort().join(', ');
      return refuse(new TraceError(405, 'METHOD_NOT_ALLOWED', `${method.slice(0, 20)} is not allowed on this route; use ${allow}`), 'method', { allow });
    }
    admitted.set(req, { requestId, startedAt: performance.now(), target, match: isPreflight ? undefined : match, methods });
    return false;
  });

  const admittedOf = (req: FastifyRequest): Admitted => {
    const a = admitted.get(req.raw);
    if (!a) throw notFound('no such route', 'NOT_FOUND');
    return a;
  };

  const registry = opts.metrics ?? serviceRegistry('gateway');
  installOps(app, {
    service: 'gateway',
    registry,
    checks: {
      dispatcher: (ms) => upstreamAlive(opts.routes.dispatcherUrl, ms),
      query_service: (ms) => upstreamAlive(opts.routes.queryUrl, ms),
    },
  });
  app.get(OPENAPI_PATH, async () => openApiDocument());
  const proxied = new Counter({
    name: 'trace_gateway_requests_total',
    help: 'Requests the Gateway proxied, by route pattern, upstream and status class',
    labelNames: ['route', 'upstream', 'status'],
    registers: [registry],
  });

  app.addHook('onRequest', async (req, reply) => {
    if (opsRequests.has(req.raw)) return undefined;
    const a = admittedOf(req);
    const origin = typeof req.headers.origin === 'string' ? req.headers.origin : undefined;
    void reply.header(REQUEST_ID_HEADER, a.requestId);
    if (a.console) return undefined; // the console authenticates its own session
    try {
      if (a.match === undefined) {
        const h = cors.preflight(origin, String(req.headers['access-control-request-method']), headerString(req, 'access-control-request-headers'), a.methods);
        return reply.code(204).headers(h).send();
      }
      void reply.headers(cors.responseHeaders(origin));
      if (a.match.rule.audience === 'webhook') {
        // No user token: the Dispatcher checks the HMAC signature and rate-limits per source.
        const declared = req.headers['content-length'];
        if (declared !== undefined && Number(declared) > limits.maxBodyBytes) throw payloadTooLarge(`request body is larger than ${limits.maxBodyBytes} bytes`);
        if (expectsContinue(req.raw)) reply.raw.writeContinue();
        return undefined;
      }
      const authz = headerString(req, 'authorization');
      if (authz === undefined) throw unauthorized('missing Authorization header');
      const who = await opts.userVerifier.verify(authz);
      identities.set(req, who);
      const decision = limiter.take(`${who.iss}\u0000${who.sub}`, a.match.rule.rateClass);
      if (!decision.ok) {
        void reply.header('retry-after', String(decision.retryAfterSeconds));
        throw new TraceError(429, 'RATE_LIMITED', `rate limit exceeded (${decision.scope}); retry after ${decision.retryAfterSeconds} s`, {
          extra: { scope: decision.scope, retry_after_seconds: decision.retryAfterSeconds },
        });
      }
      const declared = req.headers['content-length'];
      if (declared !== undefined && Number(declared) > limits.maxBodyBytes) throw payloadTooLarge(`request body is larger than ${limits.maxBodyBytes} bytes`);
      if (expectsContinue(req.raw)) reply.raw.writeContinue();
    } catch (e) {
      if (bodyIsLarge(req.raw, limits.maxBodyBytes)) void reply.header('connection', 'close');
      if (e instanceof TraceError) {
        req.log.info({ request_id: a.requestId, method: req.method, route: a.match?.rule.pattern, status: e.status, code: e.code, ...(identities.get(req) ? { sub: identities.get(req)!.sub } : {}) }, 'gateway refused request');
      }
      throw e;
    }
    return undefined;
  });

  app.route({
    method: ['GET', 'POST', 'PUT', 'DELETE', 'OPTIONS'],
    url: '/*',
    handler: async (req, reply) => {
      const a = admittedOf(req);
      if (a.console && consoleApp) return consoleApp.handle(req, reply, a.target, a.requestId);
      const rule = a.match!.rule;
      const who = identities.get(req);
      if (!who && rule.audience !== 'webhook') throw unauthorized();
      return proxy(req, reply, a, rule, who);
    },
  });

  async function proxy(req: FastifyRequest, reply: FastifyReply, a: Admitted, rule: RouteRule, who: UserIdentity | undefined): Promise<FastifyReply> {
    const upstream = upstreams[rule.upstream];
    let body: Awaited<ReturnType<typeof requestBody>>;
    try {
      body = await requestBody(req, limits.maxBodyBytes);
    } catch (e) {
      // The rest of the body is never read: close the connection after the answer.
      void reply.header('connection', 'close');
      throw e;
    }
    const webhook = rule.audience === 'webhook';
    const headers = upstreamRequestHeaders(req.headers, a.requestId, body === undefined ? undefined : body.length, webhook);
    // A webhook sender's Authorization header (if any) is not a Trace token: never forward it.
    if (webhook) delete headers.authorization;
    const abort = new AbortController();
    const onClose = () => {
      if (!reply.raw.writableFinished) abort.abort();
    };
    reply.raw.once('close', onClose);
    const pathAndQuery = a.target.query === '' ? a.target.path : `${a.target.path}?${a.target.query}`;
    const logCtx = { request_id: a.requestId, method: req.method, route: rule.pattern, upstream: upstream.name, ...(who ? { sub: who.sub } : {}) };
    let res: IncomingMessage;
    try {
      res = await upstream.request({ method: req.method, pathAndQuery, headers, body: body?.data, signal: abort.signal });
    } catch (e) {
      if (e instanceof ClientGone) {
        req.log.info({ ...logCtx }, 'client went away before the backend answered');
        reply.hijack(); // the connection is gone; there is nothing left to send
        return reply;
      }
      if (e instanceof TraceError) req.log.warn({ ...logCtx, status: e.status, code: e.code }, 'backend call failed');
      throw e;
    }
    const status = res.statusCode ?? 502;
    proxied.inc({ route: rule.pattern, upstream: upstream.name, status: `${Math.floor(status / 100)}xx` });
    req.log.info({ ...logCtx, status, duration_ms: Math.round(performance.now() - a.startedAt) }, 'gateway proxied request');
    void reply.code(status).headers(downstreamResponseHeaders(res.headers));
    if (status === 204 || status === 304) {
      res.resume();
      return reply.send();
    }
    return reply.send(res);
  }

  app.addHook('onClose', async () => {
    upstreams.dispatcher.close();
    upstreams.query.close();
  });
  return app;
}

/** The Gateway's own paths (GET only, no token): health, readiness, metrics and the API document. */
const OPS_PATHS = new Set(['/healthz', '/readyz', '/metrics', OPENAPI_PATH]);

/** A backend is reachable when its `/healthz` answers 200 within `ms`. */
async function upstreamAlive(base: string, ms: number): Promise<void> {
  const r = await fetch(`${base}/healthz`, { signal: AbortSignal.timeout(ms) }).catch((e: unknown) => {
    const cause = (e as { cause?: { code?: string } }).cause;
    throw new Error(cause?.code ?? (e instanceof Error && e.name === 'TimeoutError' ? `no answer within ${ms} ms` : 'unreachable'));
  });
  await r.body?.cancel();
  if (r.status !== 200) throw new Error(`answered ${r.status}`);
}

function headerString(req: FastifyRequest, name: string): string | undefined {
  const v = req.headers[name];
  return typeof v === 'string' ? v : undefined;
}

/**
 * The body to forward. A declared Content-Length (already checked against the cap) is streamed
 * as it arrives; Node's parser guarantees exactly that many bytes. A chunked body is read up to
 * the cap first, so an oversized one is refused before the backend sees a single byte.
 */
async function requestBody(req: FastifyRequest, cap: number): Promise<{ length: number; data: Buffer | IncomingMessage } | undefined> {
  const raw = req.raw;
  const declared = req.headers['content-length'];
  if (declared !== undefined) {
    const n = Number(declared);
    if (n === 0) return { length: 0, data: Buffer.alloc(0) };
    return { length: n, data: raw };
  }
  if (req.headers['transfer-encoding'] === undefined) return undefined;
  const data = await readCapped(raw, cap);
  return { length: data.length, data };
}

function readCapped(raw: IncomingMessage, cap: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const cleanup = () => {
      raw.off('data', onData);
      raw.off('end', onEnd);
      raw.off('error', onError);
    };
    const onData = (chunk: Buffer) => {
      size += chunk.length;
      if (size > cap) {
        cleanup();
        raw.pause();
        reject(payloadTooLarge(`request body is larger than ${cap} bytes`));
        return;
      }
      chunks.push(chunk);
    };
    const onEnd = () => {
      cleanup();
      resolve(Buffer.concat(chunks, size));
    };
    const onError = (e: Error) => {
      cleanup();
      reject(e);
    };
    raw.on('data', onData);
    raw.once('end', onEnd);
    raw.once('error', onError);
  });
}
