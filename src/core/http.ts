import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import type { z } from 'zod';
import { TraceError, badRequest, formatPath } from './errors.js';
import type { Logger } from './log.js';

/**
 * The one way Trace services build an HTTP server: body caps, the stable error shape
 * `{error, code}` for every failure (including Fastify's own parse errors and unknown routes),
 * and JSON logs that never carry credentials.
 */
export function createHttpServer(opts: { log: Logger; bodyLimit?: number; name: string }): FastifyInstance {
  const app = Fastify({
    loggerInstance: opts.log as unknown as FastifyBaseLogger,
    logController: new LogController({ disableRequestLogging: true }),
    bodyLimit: opts.bodyLimit ?? 1024 * 1024,
    trustProxy: false,
    return503OnClosing: true,
    forceCloseConnections: true,
    keepAliveTimeout: 65_000,
  }) as unknown as FastifyInstance;
  // Bodies are JSON; routes that also take YAML are registered with withYamlBodies(). Any other
  // content type (Fastify's default text/plain included) is refused by the parser lookup (415).
  app.removeContentTypeParser('text/plain');
  // 503s (a dependency unreachable, a service draining) come in storms during an outage: one
  // warning per code every 10 s, with how many were not logged.
  const quiet = new Map<string, { at: number; suppressed: number }>();
  app.setErrorHandler((err: unknown, req: FastifyRequest, reply: FastifyReply) => {
    const e = toTraceError(err, req);
    if (e.status === 503) {
      const q = quiet.get(e.code);
      const now = Date.now();
      if (!q || now - q.at >= 10_000) {
        req.log.warn({ code: e.code, err: e.message, route: req.routeOptions.url, suppressed: q?.suppressed ?? 0 }, 'request refused: service unavailable');
        quiet.set(e.code, { at: now, suppressed: 0 });
      } else {
        q.suppressed++;
      }
    } else if (e.status >= 500) {
      req.log.error({ err: err instanceof Error ? err.message : String(err), route: req.routeOptions.url }, 'request failed');
    }
    void reply.status(e.status).send(e.toJSON());
  });
  methodAwareNotFound(app);
  return app;
}

/** The content types of YAML bodies (DAG and chain-sync deploys); plain text is read as YAML too. */
export const YAML_CONTENT_TYPES = ['application/yaml', 'application/x-yaml', 'text/yaml', 'text/plain'];

/**
 * Registers routes that take a YAML body (as a string) besides JSON. Only their scope has the
 * YAML parser, so every other route answers 415 to a YAML or text body.
 */
export function withYamlBodies(app: FastifyInstance, register: (scope: FastifyInstance) => void): void {
  void app.register(async (scope) => {
    scope.addContentTypeParser(YAML_CONTENT_TYPES, { parseAs: 'string' }, (_req, body, done) => done(null, body));
    register(scope);
  });
}

/** A Fastify route URL (`/v1/tasks/:id`, `/rpc/*`) as a regular expression over request paths. */
function routePattern(url: string): RegExp {
  const body = url.split('/').map((seg) => {
    if (seg === '*') return '.*';
    if (seg.startsWith(':')) return '[^/]+';
    return seg.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  }).join('/');
  return new RegExp(`^${body}/?$`);
}

/**
 * The not-found handler every Trace service uses: 405 with an `Allow` header when the path is
 * known under other methods, else 404; both in the stable error shape. Routes are collected as
 * they are added (call before adding routes).
 */
export function methodAwareNotFound(app: FastifyInstance): void {
  const routes: Array<{ re: RegExp; methods: string[] }> = [];
  app.addHook('onRoute', (r) => {
    routes.push({ re: routePattern(r.url), methods: (Array.isArray(r.method) ? r.method : [r.method]).map(String) });
  });
  app.setNotFoundHandler((req, reply) => {
    const path = (req.raw.url ?? '/').split('?')[0]!;
    const allowed = new Set<string>();
    for (const r of routes) if (r.re.test(path)) for (const m of r.methods) allowed.add(m);
    if (allowed.size > 0 && !allowed.has(req.method)) {
      const list = [...allowed].sort();
      void reply.status(405).header('allow', list.join(', ')).send({ error: `${req.method} is not allowed on ${path.slice(0, 200)}; use ${list.join(', ')}`, code: 'METHOD_NOT_ALLOWED' });
      return;
    }
    void reply.status(404).send({ error: 'no such route', code: 'NOT_FOUND' });
  });
}

function toTraceError(err: unknown, req?: FastifyRequest): TraceError {
  if (err instanceof TraceError) return err;
  const fe = err as { code?: string; statusCode?: number; message?: string };
  switch (fe.code) {
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
      return new TraceError(413, 'PAYLOAD_TOO_LARGE', 'request body too large');
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE': {
      const ct = String(req?.headers['content-type'] ?? '').split(';')[0]!.trim().slice(0, 100);
      return new TraceError(415, 'UNSUPPORTED_MEDIA_TYPE', `content type ${ct || '(none)'} is not accepted here; send application/json`);
    }
    case 'FST_ERR_CTP_EMPTY_JSON_BODY':
      return badRequest('request body is empty', 'MALFORMED_BODY');
    case 'FST_ERR_CTP_INVALID_JSON_BODY':
      return badRequest('request body is not valid JSON', 'MALFORMED_BODY');
    default:
      break;
  }
  if (err instanceof SyntaxError || fe.statusCode === 400) return badRequest('malformed request', 'MALFORMED_BODY');
  if (typeof fe.statusCode === 'number' && fe.statusCode >= 400 && fe.statusCode < 500) {
    return new TraceError(fe.statusCode, 'BAD_REQUEST', 'bad request');
  }
  return new TraceError(500, 'INTERNAL', 'internal error');
}

/** Parses untrusted input with a zod schema; on failure a 400 listing every bad field. */
export function parseInput<T>(schema: z.ZodType<T>, value: unknown, what = 'request body'): T {
  const r = schema.safeParse(value);
  if (r.success) return r.data;
  const problems = r.error.issues.map((i) => ({ path: formatPath(i.path), message: i.message }));
  const first = problems[0]!;
  throw badRequest(`invalid ${what}: ${first.path}: ${first.message}`, 'INVALID_REQUEST', problems);
}

export function header(req: FastifyRequest, name: string): string | undefined {
  const v = req.headers[name.toLowerCase()];
  return Array.isArray(v) ? v[0] : v;
}

/** Binds to host:port (port 0 = ephemeral) and returns the base URL. */
export async function listen(app: FastifyInstance, host: string, port: number): Promise<string> {
  await app.listen({ host, port });
  const addr = app.server.address();
  if (addr === null || typeof addr === 'string') throw new Error('server has no TCP address');
  return `http://${host.includes(':') ? `[${host}]` : host}:${addr.port}`;
}

/** A started HTTP service: its base URL and an idempotent stop. */
export interface ServedApp {
  url: string;
  app: FastifyInstance;
  stop(): Promise<void>;
}

/** Listens (closing the app if binding fails) and returns a handle whose stop may be called twice. */
export async function serve(app: FastifyInstance, host: string, port: number): Promise<ServedApp> {
  let url: string;
  try {
    url = await listen(app, host, port);
  } catch (e) {
    await app.close().catch(() => undefined);
    throw e;
  }
  let stopped = false;
  return {
    url,
    app,
    async stop() {
      if (stopped) return;
      stopped = true;
      await app.close();
    },
  };
}
