// trace-udf.mjs: a tiny, dependency-free client for Trace UDF bundles (Node.js 18+).
//
// Copy this file into your bundle, list it in bundle_manifest.json, and import it:
//
//   import { run, query, emit } from './trace-udf.mjs';
//   run(async (invocation) => {
//     const { rows } = await query('SELECT count(*) AS n FROM dataset', { dataset_uuid: invocation.inputs[0].dataset_uuid });
//     return { events: [], note: `saw ${rows[0][0]} rows` };
//   });
//
// Contract (see sdk/README.md): the runner writes the invocation JSON to stdin and reads exactly
// one JSON object from stdout. Logs go to stderr. Every platform call is a task-scoped HTTP call
// authenticated by the per-attempt capability token (header X-Trace-Task-Capability) and fenced
// by {task_id, attempt, lease_token} from the invocation. In the local sandbox there is no
// network: calls go over the Unix socket named by TRACE_TASK_SOCKET. Elsewhere (the Lambda
// runner) they go to TRACE_DISPATCHER_URL and TRACE_QUERY_URL.

import { request as httpRequest } from 'node:http';

const CAPABILITY_HEADER = 'X-Trace-Task-Capability';
const DEFAULT_TIMEOUT_MS = 30_000;

/** A non-2xx answer from a Trace endpoint: `status` is the HTTP status, `code` the stable code. */
export class TraceTaskError extends Error {
  constructor(message, status, code) {
    super(message);
    this.name = 'TraceTaskError';
    this.status = status;
    this.code = code;
  }
}

let invocationPromise;

/** Reads and parses the invocation from stdin (once; later calls return the same object). */
export function readInvocation() {
  invocationPromise ??= (async () => {
    const chunks = [];
    for await (const chunk of process.stdin) chunks.push(chunk);
    const text = Buffer.concat(chunks).toString('utf8');
    const inv = JSON.parse(text);
    if (inv === null || typeof inv !== 'object' || Array.isArray(inv)) throw new Error('invocation is not a JSON object');
    return inv;
  })();
  return invocationPromise;
}

function env(name) {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set; is this running under the Trace UDF runner?`);
  return v.replace(/\/+$/, '');
}

async function token() {
  return process.env.TRACE_TASK_CAPABILITY_TOKEN || (await readInvocation()).capability_token;
}

/** One request over the runner's Unix socket: `{ status, text }`. */
function viaSocket(socketPath, method, path, headers, payload, timeoutMs) {
  return new Promise((resolve, reject) => {
    const req = httpRequest({ socketPath, path, method, headers: { ...headers, 'content-length': Buffer.byteLength(payload) }, timeout: timeoutMs }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode, text: Buffer.concat(chunks).toString('utf8') }));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error(`${path}: no answer within ${timeoutMs} ms`)));
    req.on('error', reject);
    req.end(payload);
  });
}

/** POSTs to `service` (`dispatcher` or `query`; the socket carries both) and parses the answer. */
async function post(service, path, body, timeoutMs = DEFAULT_TIMEOUT_MS) {
  const headers = { 'content-type': 'application/json', [CAPABILITY_HEADER]: await token() };
  const payload = JSON.stringify(body);
  let status;
  let text;
  const socketPath = process.env.TRACE_TASK_SOCKET;
  if (socketPath) {
    ({ status, text } = await viaSocket(socketPath, 'POST', path, headers, payload, timeoutMs));
  } else {
    const base = env(service === 'query' ? 'TRACE_QUERY_URL' : 'TRACE_DISPATCHER_URL');
    const res = await fetch(`${base}${path}`, { method: 'POST', headers, body: payload, signal: AbortSignal.timeout(timeoutMs) });
    status = res.status;
    text = await res.text();
  }
  let parsed = null;
  try {
    parsed = text ? JSON.parse(text) : null;
  } catch {
    parsed = null;
  }
  if (status < 200 || status >= 300) {
    const msg = parsed && typeof parsed.error === 'string' ? parsed.error : `HTTP ${status}`;
    throw new TraceTaskError(`${path}: ${msg}`, status, parsed && parsed.code);
  }
  return parsed;
}

async function fence() {
  const inv = await readInvocation();
  return { task_id: inv.task_id, attempt: inv.attempt, lease_token: inv.lease_token };
}

/**
 * Runs read-only SQL against granted datasets through the Query Service
 * (POST /v1/task/query), only while this attempt holds its lease. One dataset (`dataset_uuid`)
 * is the relation `dataset`; `datasets: { blocks: uuid, logs: uuid }` binds each granted dataset
 * to its own relation name, for joins. Returns `{ columns, rows, truncated }`.
 */
export async function query(sql, { dataset_uuid, dataset_id, datasets, limit, timeoutMs } = {}) {
  const body = { ...(await fence()), sql };
  const ds = dataset_id ?? dataset_uuid;
  if (datasets !== undefined) body.datasets = datasets;
  else if (ds !== undefined) body.dataset_id = ds;
  if (limit !== undefined) body.limit = limit;
  return post('query', '/v1/task/query', body, timeoutMs);
}

/** Emits upstream events mid-task (POST /v1/task/events). */
export async function emit(events) {
  return post('dispatcher', '/v1/task/events', { ...(await fence()), events });
}

/**
 * Publishes a buffered batch already written to object storage
 * (POST /v1/task/buffer-publish): `{ batch_uri, content_type, batch_size_bytes, dedupe_scope }`.
 */
export async function publishBuffer({ batch_uri, content_type = 'application/jsonl', batch_size_bytes, dedupe_scope }) {
  return post('dispatcher', '/v1/task/buffer-publish', { ...(await fence()), batch_uri, content_type, batch_size_bytes, dedupe_scope });
}

/** Extends the lease (POST /v1/task/heartbeat). Call it periodically in long runs. */
export async function heartbeat() {
  return post('dispatcher', '/v1/task/heartbeat', await fence());
}

/**
 * Short-lived, prefix-scoped object-store credentials (POST /v1/task/credentials), plus signed
 * uploads into this attempt's prefixes when asked: `credentials({ uploads: [{ name, area }] })`.
 */
export async function credentials({ uploads } = {}) {
  return post('dispatcher', '/v1/task/credentials', { ...(await fence()), ...(uploads ? { uploads } : {}) });
}

/**
 * Writes `data` (a string or bytes) to `name` in this attempt's `buffers` (default) or `scratch`
 * prefix through a signed upload, and returns `{ uri, bytes }`; publish `uri` with
 * publishBuffer(). In the local sandbox the upload goes through the runner's socket.
 */
export async function upload(name, data, { area = 'buffers', timeoutMs = DEFAULT_TIMEOUT_MS } = {}) {
  const { uploads } = await credentials({ uploads: [{ name, area }] });
  const target = uploads[0];
  const body = typeof data === 'string' ? Buffer.from(data, 'utf8') : Buffer.from(data);
  let status;
  let text;
  const socketPath = process.env.TRACE_TASK_SOCKET;
  if (socketPath && target.url.startsWith('/')) {
    ({ status, text } = await viaSocket(socketPath, 'PUT', target.url, { ...target.headers, [CAPABILITY_HEADER]: await token() }, body, timeoutMs));
  } else {
    const res = await fetch(target.url, { method: target.method ?? 'PUT', headers: target.headers, body, signal: AbortSignal.timeout(timeoutMs) });
    status = res.status;
    text = await res.text();
  }
  if (status < 200 || status >= 300) {
    let msg = `HTTP ${status}`;
    let code;
    try {
      const parsed = JSON.parse(text);
      if (typeof parsed.error === 'string') msg = parsed.error;
      code = parsed.code;
    } catch {
      // not JSON
    }
    throw new TraceTaskError(`upload ${name}: ${msg}`, status, code);
  }
  return { uri: target.uri, bytes: body.length };
}

/**
 * Reports completion yourself (POST /v1/task/complete). Optional: by default the runner host
 * completes the task from your output object; use this only when your deployment says so.
 */
export async function complete({ status = 'Completed', ...rest } = {}) {
  return post('dispatcher', '/v1/task/complete', { ...(await fence()), status, ...rest });
}

let outputWritten = false;
const realStdoutWrite = process.stdout.write.bind(process.stdout);

/** Writes the one JSON object result to stdout. Call at most once. */
export function output(obj) {
  if (outputWritten) throw new Error('output() may be called only once');
  if (obj === null || typeof obj !== 'object' || Array.isArray(obj)) throw new Error('output must be a JSON object');
  outputWritten = true;
  return new Promise((resolve) => realStdoutWrite(JSON.stringify(obj), () => resolve()));
}

/**
 * Reads the invocation, calls `handler(invocation)`, and writes its return value (an object, or
 * `{}` when it returns nothing) as the output. While the handler runs, console.log/info/debug go
 * to stderr so stray logging cannot corrupt the output. A thrown error is printed to stderr
 * (message only) and the process exits with code 1.
 */
export async function run(handler) {
  console.log = console.error;
  console.info = console.error;
  console.debug = console.error;
  try {
    const inv = await readInvocation();
    const result = await handler(inv);
    await output(result ?? {});
  } catch (e) {
    process.stderr.write(`udf failed: ${e && e.message ? e.message : String(e)}\n`);
    process.exitCode = 1;
  }
}
