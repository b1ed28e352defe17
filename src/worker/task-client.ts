/**
 * HTTP client for the Dispatcher's worker-facing routes.
 *
 * Two credentials, never mixed on one request:
 * - the worker token (`X-Trace-Worker-Token`) goes only to `/internal/*` (claim, fetch, JWKS);
 * - the per-attempt capability token (`X-Trace-Task-Capability`) goes only to `/v1/task/*`,
 *   whose bodies always carry the fencing triple `{task_id, attempt, lease_token}`. The batch
 *   routes (`/v1/task/complete-batch`, `/v1/task/heartbeat-batch`) carry no credential header:
 *   each item holds its own capability token next to its fencing triple.
 *
 * Transient failures (connection errors, timeouts, 5xx) are retried a few times with a short
 * jittered backoff; 4xx answers are final and surface as a `TaskApiError` carrying the
 * Dispatcher's status and stable code. Every call the client makes is idempotent on the
 * Dispatcher side (a repeated completion is a no-op, events are deduplicated), so retrying a
 * request whose answer was lost is safe.
 */
import { HttpTransportError, httpRequest, type HttpResult } from '../core/http-client.js';
import { z } from 'zod';
import { TraceError } from '../core/errors.js';
import { backoffDelayMs, type BackoffPolicy } from '../core/backoff.js';
import type {
  BufferPublishBody,
  ClaimResponse,
  CompleteBody,
  FetchResponse,
  ReleaseBody,
  TaskEvent,
  TaskRef,
} from './payload.js';

/** A Dispatcher answer that was not 2xx, or a transport failure that outlived the retries. */
export class TaskApiError extends TraceError {
  readonly route: string;
  /** True for transport failures, timeouts and 5xx (the request may not have been processed). */
  readonly transient: boolean;

  constructor(status: number, code: string, message: string, route: string, opts: { transient?: boolean; cause?: unknown } = {}) {
    super(status, code, message, opts.cause === undefined ? {} : { cause: opts.cause });
    this.name = 'TaskApiError';
    this.route = route;
    this.transient = opts.transient ?? false;
  }
}

/** Duck-typed view of any error carrying an HTTP status and a stable code (TaskApiError, TraceError). */
export function apiErrorOf(e: unknown): { status: number; code: string } | undefined {
  if (typeof e !== 'object' || e === null) return undefined;
  const { status, code } = e as { status?: unknown; code?: unknown };
  return typeof status === 'number' && typeof code === 'string' ? { status, code } : undefined;
}

/**
 * The Dispatcher operations the task runner needs. `TaskClient` implements it over HTTP; the
 * Dispatcher may implement it in process for `runtime: dispatcher` tasks (throwing errors that
 * carry `status` and `code`, such as TraceError).
 */
export interface TaskApi {
  fetch(taskId: string): Promise<FetchResponse>;
  heartbeat(ref: TaskRef): Promise<{ ok: true; lease_expires_at: string }>;
  events(ref: TaskRef, events: TaskEvent[]): Promise<{ ok: true; accepted: number; routed: number }>;
  complete(ref: TaskRef, body: CompleteBody): Promise<{ ok: true; status: string }>;
  bufferPublish(ref: TaskRef, body: BufferPublishBody): Promise<{ ok: true; publish_id: string }>;
  /**
   * Gives the lease back without finishing (worker-only: needs the worker token). Absent or
   * refused, the runner falls back to a Failed completion (infrastructure) or to lease expiry
   * (shutdown).
   */
  release?(ref: TaskRef, body: ReleaseBody): Promise<{ ok: true; status: string }>;
}

/** What the queue-woken worker needs: the task API plus the worker-only claim. */
export interface WorkerTaskApi extends TaskApi {
  claim(taskId: string, workerId: string): Promise<ClaimResponse>;
  /**
   * Claims many tasks at once (ids distinct); one answer per id, in order, each settling on its
   * own. Absent: the worker claims task by task.
   */
  claimMany?(taskIds: readonly string[], workerId: string): Array<Promise<ClaimResponse>>;
}

/** One item of a batch answer: the HTTP status and body the per-task route would have given. */
export interface BatchItemAnswer {
  task_id: string;
  status: number;
  body: Record<string, unknown>;
}

/** One answer of `/internal/task-claim-batch`. */
export type ClaimBatchResult = { task_id: string } & ClaimResponse;

export interface TaskClientOptions {
  /** Dispatcher base URL, e.g. `http://127.0.0.1:8081`. */
  baseUrl: string;
  /** Required for `/internal/*` calls; absent for callers that only hold a capability token. */
  workerToken?: string;
  /** Per-request timeout (default 10 s). */
  timeoutMs?: number;
  /** Retries after the first try for transient failures (default 3). */
  retries?: number;
  /** Backoff between retries (default 100 ms doubling to 2 s, jittered). */
  retryBackoff?: BackoffPolicy;
}

const DEFAULT_RETRY: BackoffPolicy = { baseMs: 100, maxMs: 2_000 };

// --- response schemas (the Dispatcher is trusted, but a wrong answer should fail loudly) ---

const cursorSchema = z.union([z.number(), z.string()]);

const taskPayloadSchema = z.looseObject({
  task_id: z.string(),
  attempt: z.number().int(),
  org_id: z.string(),
  job: z.looseObject({ id: z.string(), dag_name: z.string(), name: z.string() }),
  operator: z.string(),
  runtime: z.enum(['ecs_platform', 'lambda', 'dispatcher']),
  config: z.record(z.string(), z.unknown()),
  timeout_seconds: z.number(),
  heartbeat_timeout_seconds: z.number(),
  trigger: z.looseObject({
    kind: z.enum(['event', 'manual', 'cron']),
    cursor: cursorSchema.optional(),
    start: z.number().optional(),
    end: z.number().optional(),
    partition_key: z.string().optional(),
    fired_at: z.string().optional(),
  }),
  inputs: z.array(z.looseObject({
    dataset_uuid: z.string(),
    dataset_version: z.string(),
    cursor: cursorSchema.optional(),
    partition_key: z.string().optional(),
    start: z.number().optional(),
    end: z.number().optional(),
    where: z.record(z.string(), z.unknown()).optional(),
    last_cursor: z.string().nullable().optional(),
    cursor_column: z.string().nullable().optional(),
  })),
  outputs: z.array(z.looseObject({ output_index: z.number().int(), dataset_uuid: z.string(), dataset_version: z.string() })),
  operator_state: z.array(z.looseObject({ state_key: z.string(), state: z.record(z.string(), z.unknown()), version: z.number() })),
  udf: z.looseObject({ bundle_id: z.string(), entrypoint: z.string() }).optional(),
});

const claimSchema = z.union([
  z.looseObject({
    status: z.literal('Claimed'),
    attempt: z.number().int(),
    lease_token: z.string(),
    lease_expires_at: z.string(),
    capability_token: z.string(),
    task: taskPayloadSchema,
  }),
  z.looseObject({
    status: z.literal('NotClaimed'),
    reason: z.enum(['AlreadyRunning', 'Completed', 'Canceled', 'NotFound', 'Throttled', 'NotQueued']),
  }),
]);

const fetchSchema = z.looseObject({
  task_id: z.string(),
  status: z.enum(['Queued', 'Running', 'Completed', 'Failed', 'Canceled']),
  attempt: z.number().int(),
  task: taskPayloadSchema,
});

const heartbeatSchema = z.looseObject({ ok: z.literal(true), lease_expires_at: z.string() });
const eventsSchema = z.looseObject({ ok: z.literal(true), accepted: z.number(), routed: z.number() });
const completeSchema = z.looseObject({ ok: z.literal(true), status: z.string() });
const publishSchema = z.looseObject({ ok: z.literal(true), publish_id: z.string() });
const releaseSchema = z.looseObject({ ok: z.literal(true), status: z.string() });
const batchAnswersSchema = z.looseObject({
  results: z.array(z.looseObject({ task_id: z.string(), status: z.number().int(), body: z.record(z.string(), z.unknown()) })),
});
const claimBatchSchema = z.looseObject({ results: z.array(z.looseObject({ task_id: z.string() })) });

/** Parses the answer of one batch item into the per-task route's answer, or the error it stands for. */
export function batchItemResult<T>(route: string, schema: z.ZodType<T>, a: BatchItemAnswer): T {
  if (a.status < 200 || a.status >= 300) throw taskApiErrorFrom(a.status, a.body, route);
  const r = schema.safeParse(a.body);
  if (!r.success) throw new TaskApiError(502, 'BAD_DISPATCHER_RESPONSE', `unexpected item shape from ${route}`, route);
  return r.data;
}
export { completeSchema as completeAnswerSchema, heartbeatSchema as heartbeatAnswerSchema };

type Auth = { kind: 'worker' } | { kind: 'task'; capabilityToken: string } | { kind: 'items' };

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

export class TaskClient implements WorkerTaskApi {
  readonly baseUrl: string;
  readonly #workerToken: string | undefined;
  readonly #timeoutMs: number;
  readonly #retries: number;
  readonly #backoff: BackoffPolicy;

  constructor(opts: TaskClientOptions) {
    this.baseUrl = opts.baseUrl.replace(/\/+$/, '');
    this.#workerToken = opts.workerToken;
    this.#timeoutMs = opts.timeoutMs ?? 10_000;
    this.#retries = opts.retries ?? 3;
    this.#backoff = opts.retryBackoff ?? DEFAULT_RETRY;
  }

  /** `POST /internal/task-claim`: acquire the lease for the task's current attempt. */
  async claim(taskId: string, workerId: string): Promise<ClaimResponse> {
    const body = await this.#call('POST', '/internal/task-claim', { kind: 'worker' }, { task_id: taskId, worker_id: workerId });
    return this.#parse('/internal/task-claim', claimSchema, body) as ClaimResponse;
  }

  /**
   * `POST /internal/task-claim-batch`: the claim of many tasks (distinct ids, at most 100) in one
   * request; one answer per id, in order, each as the per-task claim answers.
   */
  async claimBatch(taskIds: readonly string[], workerId: string): Promise<ClaimBatchResult[]> {
    const route = '/internal/task-claim-batch';
    const body = this.#parse(route, claimBatchSchema, await this.#call('POST', route, { kind: 'worker' }, { task_ids: taskIds, worker_id: workerId }));
    if (body.results.length !== taskIds.length || body.results.some((r, i) => r.task_id !== taskIds[i])) {
      throw new TaskApiError(502, 'BAD_DISPATCHER_RESPONSE', `answers from ${route} do not match the task ids asked for`, route);
    }
    return body.results.map((r) => ({ task_id: r.task_id, ...this.#parse(route, claimSchema, r) as ClaimResponse }));
  }

  /** `POST /v1/task/complete-batch`: one answer per item, in order (see `batchItemResult`). */
  async completeBatch(items: ReadonlyArray<{ ref: TaskRef; body: CompleteBody }>): Promise<BatchItemAnswer[]> {
    return this.#batch('/v1/task/complete-batch', items.map(({ ref, body }) => ({ ...body, ...fenced(ref) })));
  }

  /** `POST /v1/task/heartbeat-batch`: one answer per lease, in order. */
  async heartbeatBatch(refs: readonly TaskRef[]): Promise<BatchItemAnswer[]> {
    return this.#batch('/v1/task/heartbeat-batch', refs.map(fenced));
  }

  async #batch(route: string, items: Array<{ task_id: string }>): Promise<BatchItemAnswer[]> {
    const body = this.#parse(route, batchAnswersSchema, await this.#call('POST', route, { kind: 'items' }, { items }));
    if (body.results.length !== items.length || body.results.some((r, i) => r.task_id !== items[i]!.task_id)) {
      throw new TaskApiError(502, 'BAD_DISPATCHER_RESPONSE', `answers from ${route} do not match the items sent`, route);
    }
    return body.results;
  }

  /** `GET /internal/task-fetch`: read the task and its fresh operator state (no lease change). */
  async fetch(taskId: string): Promise<FetchResponse> {
    const route = `/internal/task-fetch?task_id=${encodeURIComponent(taskId)}`;
    const body = await this.#call('GET', route, { kind: 'worker' });
    return this.#parse('/internal/task-fetch', fetchSchema, body) as FetchResponse;
  }

  /** `GET /internal/jwks/task`: the public keys that verify capability tokens. */
  async jwks(): Promise<{ keys: Array<Record<string, unknown>> }> {
    const body = await this.#call('GET', '/internal/jwks/task', { kind: 'worker' });
    return this.#parse('/internal/jwks/task', z.looseObject({ keys: z.array(z.record(z.string(), z.unknown())) }), body);
  }

  async heartbeat(ref: TaskRef): Promise<{ ok: true; lease_expires_at: string }> {
    return this.#parse('/v1/task/heartbeat', heartbeatSchema, await this.#task('/v1/task/heartbeat', ref, {}));
  }

  async events(ref: TaskRef, events: TaskEvent[]): Promise<{ ok: true; accepted: number; routed: number }> {
    return this.#parse('/v1/task/events', eventsSchema, await this.#task('/v1/task/events', ref, { events }));
  }

  async complete(ref: TaskRef, body: CompleteBody): Promise<{ ok: true; status: string }> {
    return this.#parse('/v1/task/complete', completeSchema, await this.#task('/v1/task/complete', ref, { ...body }));
  }

  async bufferPublish(ref: TaskRef, body: BufferPublishBody): Promise<{ ok: true; publish_id: string }> {
    return this.#parse('/v1/task/buffer-publish', publishSchema, await this.#task('/v1/task/buffer-publish', ref, { ...body }));
  }

  /** `POST /internal/task-release` (worker token; the fencing triple in the body). */
  async release(ref: TaskRef, body: ReleaseBody): Promise<{ ok: true; status: string }> {
    const payload = { ...body, task_id: ref.task_id, attempt: ref.attempt, lease_token: ref.lease_token };
    return this.#parse('/internal/task-release', releaseSchema, await this.#call('POST', '/internal/task-release', { kind: 'worker' }, payload));
  }

  #task(route: string, ref: TaskRef, extra: Record<string, unknown>): Promise<unknown> {
    // The fencing triple goes last so a caller-supplied body can never override it.
    const body = { ...extra, task_id: ref.task_id, attempt: ref.attempt, lease_token: ref.lease_token };
    return this.#call('POST', route, { kind: 'task', capabilityToken: ref.capability_token }, body);
  }

  #parse<T>(route: string, schema: z.ZodType<T>, body: unknown): T {
    const r = schema.safeParse(body);
    if (!r.success) throw new TaskApiError(502, 'BAD_DISPATCHER_RESPONSE', `unexpected response shape from ${route}`, route);
    return r.data;
  }

  async #call(method: 'GET' | 'POST', route: string, auth: Auth, body?: unknown): Promise<unknown> {
    const path = route.split('?')[0]!;
    const headers: Record<string, string> = { accept: 'application/json' };
    if (auth.kind === 'worker') {
      if (this.#workerToken === undefined) throw new TaskApiError(401, 'WORKER_TOKEN_MISSING', `no worker token configured for ${path}`, path);
      headers['x-trace-worker-token'] = this.#workerToken;
    } else if (auth.kind === 'task') {
      headers['x-trace-task-capability'] = auth.capabilityToken;
    }
    const payload = body === undefined ? undefined : JSON.stringify(body);
    if (payload !== undefined) headers['content-type'] = 'application/json';

    let lastError: TaskApiError | undefined;
    for (let tryNo = 0; tryNo <= this.#retries; tryNo++) {
      if (tryNo > 0) await sleep(backoffDelayMs(this.#backoff, tryNo - 1));
      let res: HttpResult;
      try {
        res = await httpRequest(this.baseUrl + route, {
          method,
          headers,
          ...(payload === undefined ? {} : { body: payload }),
          timeoutMs: this.#timeoutMs,
        });
      } catch (e) {
        const timedOut = e instanceof HttpTransportError && e.timedOut;
        lastError = timedOut
          ? new TaskApiError(504, 'DISPATCHER_TIMEOUT', `no answer from the Dispatcher on ${path} within ${this.#timeoutMs} ms`, path, { transient: true })
          : new TaskApiError(503, 'DISPATCHER_UNREACHABLE', `cannot reach the Dispatcher on ${path}: ${transportReason(e)}`, path, { transient: true, cause: e });
        continue;
      }
      const text = res.text;
      const json = parseJson(text);
      if (res.status >= 200 && res.status < 300) {
        if (json === undefined) throw new TaskApiError(502, 'BAD_DISPATCHER_RESPONSE', `non-JSON response from ${path}`, path);
        return json;
      }
      const err = taskApiErrorFrom(res.status, json, path);
      if (res.status >= 500) {
        lastError = err;
        continue;
      }
      throw err;
    }
    throw lastError!;
  }
}

function parseJson(text: string): unknown {
  if (text === '') return undefined;
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return undefined;
  }
}

/** A batch item's fencing triple and capability token (the triple last, so no body can override it). */
function fenced(ref: TaskRef): { task_id: string; attempt: number; lease_token: string; capability_token: string } {
  return { task_id: ref.task_id, attempt: ref.attempt, lease_token: ref.lease_token, capability_token: ref.capability_token };
}

/** The error a non-2xx answer (or batch item) in the stable error shape stands for. */
export function taskApiErrorFrom(status: number, json: unknown, path: string): TaskApiError {
  const o = (typeof json === 'object' && json !== null ? json : {}) as { error?: unknown; code?: unknown };
  const code = typeof o.code === 'string' && o.code !== '' ? o.code : `HTTP_${status}`;
  const reason = typeof o.error === 'string' && o.error !== '' ? o.error.slice(0, 300) : 'no error message';
  return new TaskApiError(status, code, `Dispatcher answered ${status} ${code} on ${path}: ${reason}`, path, { transient: status >= 500 });
}

function transportReason(e: unknown): string {
  if (e instanceof HttpTransportError) return e.code === 'TRANSPORT_ERROR' ? e.message : e.code;
  const cause = e instanceof Error ? (e.cause as { code?: unknown } | undefined) : undefined;
  if (cause && typeof cause.code === 'string') return cause.code;
  return e instanceof Error ? e.message : 'transport error';
}
