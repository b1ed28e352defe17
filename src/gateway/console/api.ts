/**
 * The console's only way to data: the user API, called server-side with the signed-in user's
 * own token, so every page gets exactly the answers and refusals (401, 403, org scoping, read
 * roles) the API gives that user. Only routes in the Gateway allowlist (routes.ts) plus the
 * Dispatcher's sink dead-letter admin routes (which the console shows; they are not in the public
 * allowlist) can be called. Each answer is checked against a zod schema of the fields the pages use.
 */
import { z } from 'zod';
import { TraceError } from '../../core/errors.js';
import { ROUTES, RouteTable, type RouteRule } from '../routes.js';
import { canonicalTarget } from '../target.js';

/** Dispatcher admin routes only the console calls (the admin role is checked there). */
export const CONSOLE_ONLY_ROUTES: readonly RouteRule[] = [
  { methods: ['GET'], pattern: '/v1/sink/dead-letters', upstream: 'dispatcher', audience: 'admin', rateClass: 'default' },
  { methods: ['POST'], pattern: '/v1/sink/dead-letters/{id}/replay', upstream: 'dispatcher', audience: 'admin', rateClass: 'default' },
];

const table = new RouteTable([...ROUTES, ...CONSOLE_ONLY_ROUTES]);

/** An error answer of the API, in its stable shape. */
export class ApiError extends Error {
  constructor(readonly status: number, readonly code: string, message: string) {
    super(message);
    this.name = 'ApiError';
  }
}

const errorShape = z.looseObject({ error: z.string(), code: z.string() });
const ts = z.string();
const nullable = <T extends z.ZodType>(t: T) => t.nullable().optional();

export const schemas = {
  dags: z.looseObject({
    dags: z.array(z.looseObject({
      dag_name: z.string(),
      active_version: z.string().nullable(),
      versions: z.array(z.looseObject({ dag_version_id: z.string(), yaml_hash: z.string(), created_at: ts, active: z.boolean(), jobs: z.number() })),
    })),
  }),
  tasks: z.looseObject({
    tasks: z.array(z.looseObject({
      task_id: z.string(), dag_name: z.string(), job_name: z.string(), status: z.string(), attempt: z.number(), max_attempts: z.number(),
      worker_id: nullable(z.string()), lease_expires_at: nullable(ts), next_retry_at: nullable(ts), error_message: nullable(z.string()),
      waiting_on: nullable(z.string()), created_at: ts, started_at: nullable(ts), completed_at: nullable(ts), trigger: z.unknown(), inputs: z.unknown(),
      attempts: z.array(z.looseObject({ attempt: z.number(), status: z.string(), worker_id: nullable(z.string()), started_at: ts, finished_at: nullable(ts), error_message: nullable(z.string()) })),
    })),
  }),
  datasets: z.looseObject({
    datasets: z.array(z.looseObject({
      name: z.string(), dataset_uuid: z.string(), kind: z.string(), current_version: z.string().nullable(), updated_at: ts,
      producer: z.looseObject({ dag_name: z.string(), job_name: z.string(), output_index: z.number() }).nullable(),
    })),
  }),
  datasetVersions: z.looseObject({
    name: z.string(), dataset_uuid: z.string(), current_version: z.string().nullable(),
    versions: z.array(z.looseObject({
      dataset_version: z.string(), current: z.boolean(), created_at: ts, config_hash: z.string().nullable(), storage_location: z.string().nullable(),
      range_start: z.number().nullable(), range_end: z.number().nullable(),
      partitions: z.array(z.looseObject({
        partition_key: z.string(), materialized_at: ts, row_count: z.number().nullable(), bytes: z.number().nullable(), location: z.string().nullable(),
        producer: z.looseObject({
          task_id: z.string(), attempt: z.number().nullable(), dag_name: z.string(), job_name: z.string(), status: z.string(),
          inputs: z.array(z.looseObject({ dataset_uuid: z.string(), dataset_name: z.string().nullable(), dataset_version: z.string().nullable(), partition_key: z.string().nullable() })),
        }).nullable(),
      })),
    })),
  }),
  chainSync: z.looseObject({
    jobs: z.array(z.looseObject({
      name: z.string(), chain_id: z.number(), state: z.string(), reason: z.string().nullable(), paused: z.boolean(),
      head: z.array(z.looseObject({ rpc_pool: z.string(), head_block: z.number().nullable(), age_seconds: z.number().nullable(), last_error: z.string().nullable() })).nullable(),
      streams: z.array(z.looseObject({
        dataset_key: z.string(), dataset_name: z.string(), state: z.string(), next_block: z.number(), target: z.number().nullable(),
        committed_through: z.number(), committed_blocks: z.number(), rows: z.number(), rate_blocks_per_second: z.number(),
        inflight: z.looseObject({ total: z.number(), queued: z.number(), running: z.number(), retrying: z.number(), gave_up: z.number() }),
        blocked_reason: z.string().nullable(), last_error: z.looseObject({ message: z.string() }).nullable(),
      })),
    })),
  }),
  alerts: z.looseObject({
    alerts: z.array(z.looseObject({ id: z.string(), name: z.string(), enabled: z.boolean(), visibility: z.string(), channels: z.array(z.looseObject({ name: z.string(), type: z.string() })) })),
  }),
  alert: z.looseObject({ id: z.string(), name: z.string() }),
  deliveries: z.looseObject({
    deliveries: z.array(z.looseObject({
      delivery_id: z.string(), channel: z.string(), status: z.string(), attempt: z.number(), max_attempts: z.number(),
      last_status_code: z.number().nullable(), error_message: z.string().nullable(), created_at: ts, delivered_at: z.string().nullable(),
      event: z.looseObject({ severity: z.string(), event_time: ts, dedupe_key: z.string() }),
    })),
  }),
  deadLetters: z.looseObject({
    queue: z.string(),
    dead_letters: z.array(z.looseObject({ id: z.string(), receive_count: z.number(), dead_at: ts, last_error: z.string().nullable(), message: z.unknown() })),
  }),
  replay: z.looseObject({ ok: z.literal(true), id: z.string() }),
  any: z.unknown(),
};

export interface ApiClientOptions {
  dispatcherUrl: string;
  timeoutMs: number;
  requestId: string;
}

export interface ApiClient {
  get<T>(path: string, schema: z.ZodType<T>, query?: Record<string, string | undefined>): Promise<T>;
  post<T>(path: string, schema: z.ZodType<T>, body?: unknown): Promise<T>;
}

/** A client bound to one user's token for one console request. */
export function apiClient(opts: ApiClientOptions, token: string): ApiClient {
  const call = async <T>(method: 'GET' | 'POST', path: string, schema: z.ZodType<T>, query: Record<string, string | undefined>, body?: unknown): Promise<T> => {
    const target = canonicalTarget(path, 4096);
    const allowed = table.matchPath(target.segments).some((m) => (m.rule.methods as readonly string[]).includes(method));
    if (!allowed) throw new TypeError(`console may not call ${method} ${path}`);
    const qs = new URLSearchParams(Object.entries(query).filter((e): e is [string, string] => e[1] !== undefined)).toString();
    const url = `${opts.dispatcherUrl.replace(/\/$/, '')}${target.path}${qs === '' ? '' : `?${qs}`}`;
    const headers: Record<string, string> = { authorization: `Bearer ${token}`, accept: 'application/json', 'x-request-id': opts.requestId };
    if (body !== undefined) headers['content-type'] = 'application/json';
    let res: Response;
    try {
      res = await fetch(url, { method, headers, signal: AbortSignal.timeout(opts.timeoutMs), ...(body !== undefined ? { body: JSON.stringify(body) } : {}) });
    } catch (e) {
      const timeout = e instanceof Error && e.name === 'TimeoutError';
      throw timeout ? new TraceError(504, 'UPSTREAM_TIMEOUT', 'the Dispatcher did not answer in time') : new TraceError(502, 'UPSTREAM_UNAVAILABLE', 'the Dispatcher is not reachable');
    }
    const text = await res.text();
    let json: unknown;
    try {
      json = JSON.parse(text);
    } catch {
      throw new TraceError(502, 'UPSTREAM_BAD_RESPONSE', `the Dispatcher answered ${res.status} without JSON`);
    }
    if (!res.ok) {
      const e = errorShape.safeParse(json);
      throw e.success ? new ApiError(res.status, e.data.code, e.data.error) : new ApiError(res.status, 'UPSTREAM_ERROR', `the Dispatcher answered ${res.status}`);
    }
    const r = schema.safeParse(json);
    if (!r.success) throw new TraceError(502, 'UPSTREAM_BAD_RESPONSE', `unexpected answer from ${method} ${target.path}: ${r.error.issues[0]?.message ?? 'invalid'}`);
    return r.data;
  };
  return {
    get: (path, schema, query = {}) => call('GET', path, schema, query),
    post: (path, schema, body) => call('POST', path, schema, {}, body),
  };
}
