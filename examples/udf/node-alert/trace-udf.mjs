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
// by {task_id, attempt, lease_token} from the invocation.

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

async function post(base, path, body, timeoutMs = DEFAULT_TIMEOUT_MS) {
  const res = await fetch(`${base}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', [CAPABILITY_HEADER]: await token() },
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(timeoutMs),
  });
  const text = await res.text();
  let parsed = null;
  try {
    parsed = text ? JSON.parse(text) : null;
  } catch {
    parsed = null;
  }
  if (!res.ok) {
    const msg = parsed && typeof parsed.error === 'string' ? parsed.error : `HTTP ${res.status}`;
    throw new TraceTaskError(`${path}: ${msg}`, res.status, parsed && parsed.code);
  }
  return parsed;
}

async function fence() {
  const inv = await readInvocation();
  return { task_id: inv.task_id, attempt: inv.attempt, lease_token: inv.lease_token };
}

/**
 * Runs read-only SQL against a granted dataset through the Query Service
 * (POST ${TRACE_QUERY_URL}/v1/task/query). The dataset is the relation `dataset`.
 * Returns `{ columns, rows, truncated }`.
 */
export async function query(sql, { dataset_uuid, dataset_id, limit, timeoutMs } = {}) {
  const inv = await readInvocation();
  const body = { task_id: inv.task_id, attempt: inv.attempt, sql };
  const ds = dataset_id ?? dataset_uuid;
  if (ds !== undefined) body.dataset_id = ds;
  if (limit !== undefined) body.limit = limit;
  return post(env('TRACE_QUERY_URL'), '/v1/task/query', body, timeoutMs);
}

/** Emits upstream events mid-task (POST /v1/task/events). */
export async function emit(events) {
  return post(env('TRACE_DISPATCHER_URL'), '/v1/task/events', { ...(await fence()), events });
}

/**
 * Publishes a buffered batch already written to object storage
 * (POST /v1/task/buffer-publish): `{ batch_uri, content_type, batch_size_bytes, dedupe_scope }`.
 */
export async function publishBuffer({ batch_uri, content_type = 'application/jsonl', batch_size_bytes, dedupe_scope }) {
  return post(env('TRACE_DISPATCHER_URL'), '/v1/task/buffer-publish', { ...(await fence()), batch_uri, content_type, batch_size_bytes, dedupe_scope });
}

/** Extends the lease (POST /v1/task/heartbeat). Call it periodically in long runs. */
export async function heartbeat() {
  return post(env('TRACE_DISPATCHER_URL'), '/v1/task/heartbeat', await fence());
}

/** Short-lived, prefix-scoped object-store credentials (POST /v1/task/credentials). */
export async function credentials() {
  return post(env('TRACE_DISPATCHER_URL'), '/v1/task/credentials', await fence());
}

/**
 * Reports completion yourself (POST /v1/task/complete). Optional: by default the runner host
 * completes the task from your output object; use this only when your deployment says so.
 */
export async function complete({ status = 'Completed', ...rest } = {}) {
  return post(env('TRACE_DISPATCHER_URL'), '/v1/task/complete', { ...(await fence()), status, ...rest });
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
