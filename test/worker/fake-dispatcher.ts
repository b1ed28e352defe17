/**
 * A small fake Dispatcher speaking the worker wire contract over real HTTP on 127.0.0.1. It
 * records every request and checks the contract on each one (which credential header goes
 * where, the fencing triple in task-scoped bodies); violations land in `problems`. Routes can
 * be overridden per test with `on(path, handler)`.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { randomUUID } from 'node:crypto';
import type { ClaimedTask, TaskPayload } from '../../src/worker/payload.js';

export interface Recorded {
  method: string;
  path: string;
  headers: IncomingMessage['headers'];
  body: Record<string, unknown> | undefined;
  at: number;
}

export interface Reply {
  status: number;
  body: unknown;
}

export type Handler = (req: Recorded, fake: FakeDispatcher) => Reply | undefined | Promise<Reply | undefined>;

export interface FakeTask {
  payload: TaskPayload;
  status: 'Queued' | 'Running' | 'Completed' | 'Failed' | 'Canceled';
  attempt: number;
  lease_token: string;
  capability_token: string;
  completions: Array<Record<string, unknown>>;
}

export const WORKER_TOKEN = 'worker-token-for-tests';

let seq = 0;

/** A task payload with sensible defaults (two outputs). */
export function makeTask(over: Partial<TaskPayload> = {}): TaskPayload {
  seq++;
  return {
    task_id: randomUUID(),
    attempt: 1,
    org_id: '00000000-0000-4000-8000-000000000001',
    job: { id: randomUUID(), dag_name: 'test_dag', name: `job_${seq}` },
    operator: 'noop',
    runtime: 'ecs_platform',
    config: {},
    timeout_seconds: 60,
    heartbeat_timeout_seconds: 120,
    trigger: { kind: 'event' },
    inputs: [],
    outputs: [
      { output_index: 0, dataset_uuid: '11111111-1111-4111-8111-111111111111', dataset_version: '22222222-2222-4222-8222-222222222222' },
      { output_index: 1, dataset_uuid: '33333333-3333-4333-8333-333333333333', dataset_version: '44444444-4444-4444-8444-444444444444' },
    ],
    operator_state: [],
    ...over,
  };
}

export class FakeDispatcher {
  readonly requests: Recorded[] = [];
  readonly problems: string[] = [];
  readonly tasks = new Map<string, FakeTask>();
  /** Operator state per job: state_key -> {state, version}. */
  readonly state = new Map<string, { state: Record<string, unknown>; version: number }>();
  private readonly handlers = new Map<string, Handler[]>();
  private server: Server | undefined;
  url = '';

  async start(): Promise<this> {
    this.server = createServer((req, res) => void this.dispatch(req, res));
    await new Promise<void>((r) => this.server!.listen(0, '127.0.0.1', r));
    this.url = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
    return this;
  }

  async close(): Promise<void> {
    if (!this.server) return;
    this.server.closeAllConnections();
    await new Promise<void>((r) => this.server!.close(() => r()));
  }

  /** Adds a task in Queued state; returns it. Operator state of the payload seeds `state`. */
  addTask(payload: TaskPayload, status: FakeTask['status'] = 'Queued'): FakeTask {
    const t: FakeTask = { payload, status, attempt: payload.attempt, lease_token: randomUUID(), capability_token: `cap-${randomUUID()}`, completions: [] };
    for (const s of payload.operator_state) this.state.set(s.state_key, { state: s.state, version: s.version });
    this.tasks.set(payload.task_id, t);
    return t;
  }

  /** What a successful claim of `t` returns (for calling runClaimedTask directly). */
  claimed(t: FakeTask, leaseMs = 120_000): ClaimedTask {
    t.status = 'Running';
    return {
      attempt: t.attempt,
      lease_token: t.lease_token,
      lease_expires_at: new Date(Date.now() + leaseMs).toISOString(),
      capability_token: t.capability_token,
      task: this.payloadOf(t),
    };
  }

  /** Prepends a route handler; returning undefined falls through to the next / the default. */
  on(path: string, h: Handler): void {
    this.handlers.set(path, [h, ...(this.handlers.get(path) ?? [])]);
  }

  /** Removes every override (back to the default routes). */
  clearHandlers(): void {
    this.handlers.clear();
  }

  count(path: string): number {
    return this.requests.filter((r) => r.path === path).length;
  }

  bodies(path: string): Array<Record<string, unknown>> {
    return this.requests.filter((r) => r.path === path).map((r) => r.body ?? {});
  }

  private payloadOf(t: FakeTask): TaskPayload {
    const operator_state = [...this.state.entries()].map(([state_key, v]) => ({ state_key, state: v.state, version: v.version }));
    return { ...t.payload, attempt: t.attempt, operator_state };
  }

  private async dispatch(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    const text = Buffer.concat(chunks).toString('utf8');
    let body: Record<string, unknown> | undefined;
    if (text !== '') {
      try {
        body = JSON.parse(text) as Record<string, unknown>;
      } catch {
        this.problems.push(`${req.url}: body is not JSON`);
      }
    }
    const url = new URL(req.url ?? '/', 'http://x');
    const rec: Recorded = { method: req.method ?? '', path: url.pathname, headers: req.headers, body, at: Date.now() };
    if (url.searchParams.has('task_id')) rec.body = { task_id: url.searchParams.get('task_id') };
    this.requests.push(rec);
    const reply = (await this.handle(rec)) ?? { status: 404, body: { error: 'no such route', code: 'NOT_FOUND' } };
    res.writeHead(reply.status, { 'content-type': 'application/json' });
    res.end(JSON.stringify(reply.body));
  }

  private async handle(rec: Recorded): Promise<Reply | undefined> {
    const worker = rec.headers['x-trace-worker-token'];
    const cap = rec.headers['x-trace-task-capability'];
    if (rec.path.startsWith('/internal/')) {
      if (cap !== undefined) this.problems.push(`${rec.path}: capability token sent to a worker-only route`);
      if (worker !== WORKER_TOKEN) return { status: 401, body: { error: 'bad worker token', code: 'UNAUTHORIZED' } };
    } else if (rec.path.startsWith('/v1/task/')) {
      if (worker !== undefined) this.problems.push(`${rec.path}: worker token sent to a task-scoped route`);
      const t = this.tasks.get(String(rec.body?.task_id));
      if (!t) return { status: 404, body: { error: 'task not found', code: 'TASK_NOT_FOUND' } };
      if (cap !== t.capability_token) {
        this.problems.push(`${rec.path}: wrong capability token`);
        return { status: 401, body: { error: 'bad capability token', code: 'UNAUTHORIZED' } };
      }
      if (rec.body?.attempt !== t.attempt) this.problems.push(`${rec.path}: attempt ${String(rec.body?.attempt)} != ${t.attempt}`);
      if (rec.body?.lease_token !== t.lease_token) this.problems.push(`${rec.path}: wrong lease token`);
    }
    for (const h of this.handlers.get(rec.path) ?? []) {
      const r = await h(rec, this);
      if (r) return r;
    }
    return this.defaultRoute(rec);
  }

  private defaultRoute(rec: Recorded): Reply | undefined {
    const b = rec.body ?? {};
    const t = this.tasks.get(String(b.task_id));
    switch (rec.path) {
      case '/internal/task-claim': {
        if (typeof b.worker_id !== 'string' || b.worker_id === '') this.problems.push('claim without worker_id');
        if (!t) return { status: 200, body: { status: 'NotClaimed', reason: 'NotFound' } };
        if (t.status !== 'Queued') return { status: 200, body: { status: 'NotClaimed', reason: t.status === 'Running' ? 'AlreadyRunning' : t.status } };
        return { status: 200, body: { status: 'Claimed', ...this.claimed(t) } };
      }
      case '/internal/task-fetch':
        if (!t) return { status: 404, body: { error: 'task not found', code: 'TASK_NOT_FOUND' } };
        return { status: 200, body: { task_id: t.payload.task_id, status: t.status, attempt: t.attempt, task: this.payloadOf(t) } };
      case '/v1/task/heartbeat':
        return { status: 200, body: { ok: true, lease_expires_at: new Date(Date.now() + 120_000).toISOString() } };
      case '/v1/task/events': {
        const n = Array.isArray(b.events) ? b.events.length : 0;
        return { status: 200, body: { ok: true, accepted: n, routed: n } };
      }
      case '/v1/task/complete': {
        if (!t) return undefined;
        if (t.status !== 'Running') {
          if (t.status === b.status) return { status: 200, body: { ok: true, status: t.status } };
          if (t.status === 'Canceled') return { status: 409, body: { error: 'canceled', code: 'TASK_CANCELED' } };
          return { status: 409, body: { error: 'already finished', code: 'ALREADY_FINISHED' } };
        }
        const writes = (b.operator_state ?? []) as Array<{ state_key: string; expected_version: number | null; state: Record<string, unknown> }>;
        if (b.status === 'Completed') {
          for (const w of writes) {
            const cur = this.state.get(w.state_key);
            if ((cur?.version ?? null) !== w.expected_version) {
              return { status: 409, body: { error: `operator state ${w.state_key} changed`, code: 'STATE_CONFLICT' } };
            }
          }
          for (const w of writes) this.state.set(w.state_key, { state: w.state, version: (this.state.get(w.state_key)?.version ?? 0) + 1 });
        }
        t.status = b.status as FakeTask['status'];
        t.completions.push(b);
        return { status: 200, body: { ok: true, status: t.status } };
      }
      case '/v1/task/buffer-publish':
        return { status: 200, body: { ok: true, publish_id: randomUUID() } };
      case '/internal/task-release': {
        if (!t) return { status: 404, body: { error: 'task not found', code: 'TASK_NOT_FOUND' } };
        if (b.attempt !== t.attempt || b.lease_token !== t.lease_token) return { status: 403, body: { error: 'stale', code: 'STALE_ATTEMPT' } };
        t.status = b.reason === 'shutdown' ? 'Queued' : 'Failed';
        t.completions.push({ released: b.reason, ...b });
        return { status: 200, body: { ok: true, status: t.status } };
      }
      default:
        return undefined;
    }
  }
}
