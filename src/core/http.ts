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
  // YAML and plain text bodies arrive as strings (DAG and chain-sync deploys).
  app.addContentTypeParser(['application/yaml', 'application/x-yaml', 'text/yaml', 'text/plain'], { parseAs: 'string' }, (_req, body, done) => done(null, body));
  app.setErrorHandler((err: unknown, req: FastifyRequest, reply: FastifyReply) => {
    const e = toTraceError(err);
    if (e.status >= 500) req.log.error({ err: err instanceof Error ? err.message : String(err), route: req.routeOptions.url }, 'request failed');
    void reply.status(e.status).send(e.toJSON());
  });
  app.setNotFoundHandler((_req, reply) => {
    void reply.status(404).send({ error: 'no such route', code: 'NOT_FOUND' });
  });
  return app;
}

function toTraceError(err: unknown): TraceError {
  if (err instanceof TraceError) return err;
  const fe = err as { code?: string; statusCode?: number; message?: string };
  switch (fe.code) {
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
      return new TraceError(413, 'PAYLOAD_TOO_LARGE', 'request body too large');
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
      return new TraceError(415, 'UNSUPPORTED_MEDIA_TYPE', 'unsupported content type');
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
