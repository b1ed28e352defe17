/**
 * The task channel: the only way out of a sandboxed run. The runner creates one HTTP server on a
 * Unix socket per run and binds the socket's directory into the sandbox (`/run/trace`); the
 * sandbox has no network at all. The channel forwards exactly the task-scoped routes of the run's
 * own attempt and refuses everything else with the stable error shape, before anything reaches
 * a service:
 *
 * - `POST /v1/task/heartbeat|complete|events|buffer-publish|credentials` -> the Dispatcher,
 *   `POST /v1/task/query` -> the Query Service; any other path 404 ROUTE_NOT_ALLOWED (query
 *   strings included), any other method 405 METHOD_NOT_ALLOWED;
 * - the `X-Trace-Task-Capability` header must be this run's token (401 MISSING_CAPABILITY,
 *   403 CAPABILITY_MISMATCH) and the body's `task_id`, `attempt` (and `lease_token`, required on
 *   Dispatcher routes) this run's attempt (403 TASK_MISMATCH);
 * - bodies are JSON objects (415, 400 MALFORMED_BODY) of at most `maxRequestBytes` (413), answers
 *   at most `maxResponseBytes` (502), at most `maxConcurrent` calls at once (429).
 *
 * Signed uploads: a `credentials` answer's `uploads[].url` (the Dispatcher's signed upload route,
 * or an S3 presigned PUT) is replaced by a channel path `/v1/task/uploads/{n}`; `PUT` there
 * forwards the body, at most that upload's `max_bytes`, to exactly the URL the Dispatcher issued
 * for this run, with the headers it issued. A run can reach no other URL this way.
 *
 * Upstream answers (status and JSON body) pass back otherwise unchanged; the Dispatcher and the
 * Query Service still verify the token and the lease themselves.
 */
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { chmod, lchown } from 'node:fs/promises';
import { z } from 'zod';
import type { Logger } from '../../core/log.js';
import { formatPath, type Problem } from '../../core/errors.js';
import type { ChannelLimits } from './config.js';
import type { RunOwner } from './workarea.js';

export const CHANNEL_ROUTES: Readonly<Record<string, 'dispatcher' | 'query'>> = {
  '/v1/task/heartbeat': 'dispatcher',
  '/v1/task/complete': 'dispatcher',
  '/v1/task/events': 'dispatcher',
  '/v1/task/buffer-publish': 'dispatcher',
  '/v1/task/credentials': 'dispatcher',
  '/v1/task/query': 'query',
};

const CAPABILITY_HEADER = 'x-trace-task-capability';
/** Channel paths of the signed uploads a run was issued. */
const UPLOAD_PATH_RE = /^\/v1\/task\/uploads\/(\d{1,4})$/;
/** Signed uploads one run may hold. */
const MAX_UPLOAD_SLOTS = 256;

interface UploadSlot {
  url: string;
  headers: Record<string, string>;
  maxBytes: number;
}

export interface TaskFence {
  task_id: string;
  attempt: number;
  lease_token: string;
}

export interface TaskChannelOptions {
  socketPath: string;
  dispatcherUrl?: string;
  queryUrl?: string;
  capabilityToken: string;
  fence: TaskFence;
  limits: ChannelLimits;
  /** The sandbox identity that must be able to connect (root platforms only). */
  owner?: RunOwner;
  log: Logger;
}

export interface TaskChannel {
  socketPath: string;
  /** Calls forwarded and refused so far. */
  readonly counts: { forwarded: number; refused: number };
  close(): Promise<void>;
}

class Refusal extends Error {
  constructor(readonly status: number, readonly code: string, message: string, readonly problems?: Problem[]) {
    super(message);
  }
}

const fenceSchema = z.looseObject({
  task_id: z.string({ error: 'must be a string' }),
  attempt: z.number({ error: 'must be a number' }).int('must be an integer'),
  lease_token: z.string({ error: 'must be a string' }).optional(),
});

function send(res: ServerResponse, status: number, body: Buffer | string, contentType = 'application/json'): void {
  if (res.headersSent || res.destroyed) return;
  res.writeHead(status, { 'content-type': contentType, 'content-length': Buffer.byteLength(body), 'cache-control': 'no-store' });
  res.end(body);
}

function refuse(res: ServerResponse, r: Refusal): void {
  const body: Record<string, unknown> = { error: r.message, code: r.code };
  if (r.problems) body.problems = r.problems;
  if (r.status === 405) res.setHeader('allow', 'POST');
  send(res, r.status, JSON.stringify(body));
}

/** Reads a request body, refusing it past `max` bytes (declared or streamed). */
function readBody(req: IncomingMessage, max: number): Promise<Buffer> {
  const declared = Number(req.headers['content-length']);
  if (Number.isFinite(declared) && declared > max) return Promise.reject(new Refusal(413, 'PAYLOAD_TOO_LARGE', `request body is over the task channel's limit of ${max} bytes`));
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (size > max) {
        reject(new Refusal(413, 'PAYLOAD_TOO_LARGE', `request body is over the task channel's limit of ${max} bytes`));
        req.removeAllListeners('data');
        req.resume();
        return;
      }
      chunks.push(c);
    });
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', () => reject(new Refusal(400, 'MALFORMED_BODY', 'the request body could not be read')));
  });
}

/** Reads an upstream answer up to `max` bytes. */
async function readCapped(res: Response, max: number): Promise<Buffer | undefined> {
  const declared = Number(res.headers.get('content-length'));
  if (Number.isFinite(declared) && declared > max) {
    await res.body?.cancel();
    return undefined;
  }
  if (!res.body) return Buffer.alloc(0);
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const c of res.body as unknown as AsyncIterable<Uint8Array>) {
    size += c.length;
    if (size > max) return undefined;
    chunks.push(Buffer.from(c));
  }
  return Buffer.concat(chunks);
}

/** Opens the channel of one run on `socketPath`. */
export async function openTaskChannel(opts: TaskChannelOptions): Promise<TaskChannel> {
  const { limits, fence, log } = opts;
  const counts = { forwarded: 0, refused: 0 };
  let inFlight = 0;
  /** A run cannot flood the platform's log: refusals past this many are only counted. */
  const MAX_REFUSAL_LOGS = 20;

  const slots: UploadSlot[] = [];

  const checkToken = (req: IncomingMessage) => {
    const token = req.headers[CAPABILITY_HEADER];
    if (typeof token !== 'string' || token === '') throw new Refusal(401, 'MISSING_CAPABILITY', 'the X-Trace-Task-Capability header is required');
    if (token !== opts.capabilityToken) throw new Refusal(403, 'CAPABILITY_MISMATCH', "the task channel carries this run's own capability token only");
  };

  /** `PUT /v1/task/uploads/{n}`: the body goes to the signed URL issued for slot n. */
  const upload = async (req: IncomingMessage, res: ServerResponse, n: number): Promise<void> => {
    const slot = slots[n];
    if (!slot) throw new Refusal(404, 'UPLOAD_NOT_ISSUED', 'no signed upload with this number was issued to this run');
    if (req.method !== 'PUT') throw new Refusal(405, 'METHOD_NOT_ALLOWED', 'a signed upload accepts PUT only');
    checkToken(req);
    // Streamed, not buffered: an upload may be large. Its length is declared up front (S3
    // presigned PUTs need it) and held to exactly that.
    const declared = Number(req.headers['content-length']);
    if (!Number.isSafeInteger(declared) || declared < 0) throw new Refusal(411, 'LENGTH_REQUIRED', 'a signed upload needs a content-length');
    if (declared > slot.maxBytes) throw new Refusal(413, 'PAYLOAD_TOO_LARGE', `the upload is over its limit of ${slot.maxBytes} bytes`);
    let overrun = false;
    async function* body(): AsyncGenerator<Buffer> {
      let seen = 0;
      for await (const chunk of req as AsyncIterable<Buffer>) {
        seen += chunk.length;
        if (seen > declared) {
          overrun = true;
          throw new Error('more bytes than declared');
        }
        yield chunk;
      }
    }
    let upstream: Response;
    try {
      upstream = await fetch(slot.url, {
        method: 'PUT', headers: { ...slot.headers, 'content-length': String(declared) }, body: body() as unknown as ReadableStream, duplex: 'half',
        redirect: 'manual', signal: AbortSignal.timeout(limits.upstreamTimeoutMs),
      } as RequestInit & { duplex: 'half' });
    } catch (e) {
      if (overrun) throw new Refusal(413, 'PAYLOAD_TOO_LARGE', 'the upload sent more bytes than its content-length');
      if (e instanceof Error && (e.name === 'TimeoutError' || e.name === 'AbortError')) throw new Refusal(504, 'UPSTREAM_TIMEOUT', `the upload did not answer within ${limits.upstreamTimeoutMs} ms`);
      throw new Refusal(502, 'UPSTREAM_UNAVAILABLE', 'the upload target could not be reached');
    }
    const answer = await readCapped(upstream, 64 * 1024);
    counts.forwarded++;
    send(res, upstream.status, answer ?? Buffer.alloc(0), upstream.headers.get('content-type')?.toLowerCase().startsWith('application/json') ? 'application/json' : 'application/octet-stream');
  };

  /** Replaces the signed URLs of a credentials answer by channel paths. */
  const rewriteUploads = (answer: Buffer): Buffer => {
    let doc: unknown;
    try {
      doc = JSON.parse(answer.toString('utf8'));
    } catch {
      return answer;
    }
    const uploads = (doc as { uploads?: unknown }).uploads;
    if (!Array.isArray(uploads) || uploads.length === 0) return answer;
    for (const u of uploads as Array<Record<string, unknown>>) {
      if (typeof u?.url !== 'string' || !/^https?:\/\//.test(u.url)) continue;
      if (slots.length >= MAX_UPLOAD_SLOTS) throw new Refusal(429, 'TOO_MANY_UPLOADS', `a run may be issued at most ${MAX_UPLOAD_SLOTS} signed uploads`);
      const headers: Record<string, string> = {};
      for (const [k, v] of Object.entries((u.headers as Record<string, unknown> | undefined) ?? {})) if (typeof v === 'string') headers[k] = v;
      const maxBytes = typeof u.max_bytes === 'number' && u.max_bytes >= 0 ? u.max_bytes : limits.maxRequestBytes;
      slots.push({ url: u.url, headers, maxBytes });
      u.url = `/v1/task/uploads/${slots.length - 1}`;
      u.headers = {};
    }
    return Buffer.from(JSON.stringify(doc));
  };

  const handle = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const path = req.url ?? '';
    const slot = UPLOAD_PATH_RE.exec(path);
    if (slot) return upload(req, res, Number(slot[1]));
    const target = Object.prototype.hasOwnProperty.call(CHANNEL_ROUTES, path) ? CHANNEL_ROUTES[path] : undefined;
    if (!target) throw new Refusal(404, 'ROUTE_NOT_ALLOWED', 'the task channel forwards only POST /v1/task/heartbeat, complete, events, buffer-publish, credentials and query, and PUT to the signed uploads issued to this run');
    if (req.method !== 'POST') throw new Refusal(405, 'METHOD_NOT_ALLOWED', `${path} accepts POST only`);
    checkToken(req);
    const ctype = String(req.headers['content-type'] ?? '').split(';')[0]!.trim().toLowerCase();
    if (ctype !== 'application/json') throw new Refusal(415, 'UNSUPPORTED_MEDIA_TYPE', 'the content-type must be application/json');
    const raw = await readBody(req, limits.maxRequestBytes);
    let body: unknown;
    try {
      body = JSON.parse(raw.toString('utf8'));
    } catch {
      throw new Refusal(400, 'MALFORMED_BODY', 'the request body is not valid JSON');
    }
    if (body === null || typeof body !== 'object' || Array.isArray(body)) throw new Refusal(400, 'MALFORMED_BODY', 'the request body must be a JSON object');
    const parsed = fenceSchema.safeParse(body);
    if (!parsed.success) {
      throw new Refusal(400, 'INVALID_REQUEST', 'the request body does not name the task attempt', parsed.error.issues.map((i) => ({ path: formatPath(i.path), message: i.message })));
    }
    const f = parsed.data;
    const leaseNeeded = target === 'dispatcher';
    if (f.task_id !== fence.task_id || f.attempt !== fence.attempt || (leaseNeeded ? f.lease_token !== fence.lease_token : f.lease_token !== undefined && f.lease_token !== fence.lease_token)) {
      throw new Refusal(403, 'TASK_MISMATCH', "the task channel carries calls of this run's own task attempt only");
    }
    const base = target === 'dispatcher' ? opts.dispatcherUrl : opts.queryUrl;
    if (!base) throw new Refusal(503, 'UPSTREAM_NOT_CONFIGURED', `the ${target === 'dispatcher' ? 'Dispatcher' : 'Query Service'} URL is not configured for this run`);
    let upstream: Response;
    try {
      upstream = await fetch(`${base.replace(/\/+$/, '')}${path}`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'x-trace-task-capability': opts.capabilityToken },
        body: raw,
        redirect: 'manual',
        signal: AbortSignal.timeout(limits.upstreamTimeoutMs),
      });
    } catch (e) {
      if (e instanceof Error && (e.name === 'TimeoutError' || e.name === 'AbortError')) throw new Refusal(504, 'UPSTREAM_TIMEOUT', `${path} did not answer within ${limits.upstreamTimeoutMs} ms`);
      throw new Refusal(502, 'UPSTREAM_UNAVAILABLE', `${path} could not be reached`);
    }
    let answer = await readCapped(upstream, limits.maxResponseBytes);
    if (!answer) throw new Refusal(502, 'UPSTREAM_RESPONSE_TOO_LARGE', `the answer of ${path} is over the task channel's limit of ${limits.maxResponseBytes} bytes`);
    if (path === '/v1/task/credentials' && upstream.ok) answer = rewriteUploads(answer);
    const type = upstream.headers.get('content-type')?.toLowerCase().startsWith('application/json') ? 'application/json' : 'application/octet-stream';
    counts.forwarded++;
    send(res, upstream.status, answer, type);
  };

  const server = createServer((req, res) => {
    if (inFlight >= limits.maxConcurrent) {
      counts.refused++;
      req.resume();
      res.setHeader('connection', 'close');
      refuse(res, new Refusal(429, 'TOO_MANY_REQUESTS', `at most ${limits.maxConcurrent} task calls may be in flight at once`));
      return;
    }
    inFlight++;
    handle(req, res)
      .catch((e: unknown) => {
        const r = e instanceof Refusal ? e : new Refusal(500, 'INTERNAL', 'the task channel failed');
        counts.refused++;
        const route = CHANNEL_ROUTES[req.url ?? ''] || UPLOAD_PATH_RE.test(req.url ?? '') ? req.url : 'other';
        if (counts.refused <= MAX_REFUSAL_LOGS) {
          if (r.status >= 500) log.warn({ route, code: r.code }, 'task channel call failed');
          else log.warn({ route, method: req.method, code: r.code }, counts.refused === MAX_REFUSAL_LOGS ? 'task channel refused a call; further refusals of this run are not logged' : 'task channel refused a call');
        }
        if (!res.headersSent) {
          res.setHeader('connection', 'close');
          refuse(res, r);
        }
      })
      .finally(() => {
        inFlight--;
      });
  });
  // A run may not hold connections or half-sent requests open forever.
  server.requestTimeout = Math.max(limits.upstreamTimeoutMs + 5_000, 10_000);
  server.headersTimeout = 10_000;
  server.maxHeadersCount = 50;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.socketPath, () => {
      server.off('error', reject);
      resolve();
    });
  });
  await chmod(opts.socketPath, 0o600);
  if (opts.owner) await lchown(opts.socketPath, opts.owner.uid, opts.owner.gid);

  let closed = false;
  return {
    socketPath: opts.socketPath,
    counts,
    async close() {
      if (closed) return;
      closed = true;
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      });
    },
  };
}
