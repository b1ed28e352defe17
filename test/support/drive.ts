import type { TestPlatform } from './platform.js';

/** Drives the worker contract by hand over HTTP, as a worker would. */
export async function claim(p: TestPlatform, taskId: string, workerId = 'test-worker', token = p.info.worker_token): Promise<{ status: number; body: any }> {
  return post(p, '/internal/task-claim', { task_id: taskId, worker_id: workerId }, { 'x-trace-worker-token': token });
}

/** POST JSON to a running service (anything with a base `url`); the body comes back parsed when it is JSON. */
export async function post(p: { url: string }, path: string, body: unknown, headers: Record<string, string> = {}): Promise<{ status: number; body: any }> {
  const res = await fetch(`${p.url}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
  const text = await res.text();
  let parsed: unknown = text;
  try { parsed = JSON.parse(text); } catch { /* keep text */ }
  return { status: res.status, body: parsed };
}

export interface Lease {
  task_id: string;
  attempt: number;
  lease_token: string;
  capability_token: string;
  task: any;
}

export async function claimOk(p: TestPlatform, taskId: string, workerId = 'test-worker'): Promise<Lease> {
  const r = await claim(p, taskId, workerId);
  if (r.body.status !== 'Claimed') throw new Error(`expected Claimed, got ${JSON.stringify(r.body)}`);
  return { task_id: taskId, attempt: r.body.attempt, lease_token: r.body.lease_token, capability_token: r.body.capability_token, task: r.body.task };
}

export function taskCall(p: TestPlatform, route: 'heartbeat' | 'complete' | 'events' | 'buffer-publish', lease: Lease, extra: Record<string, unknown> = {}, token = lease.capability_token) {
  return post(p, `/v1/task/${route}`, { task_id: lease.task_id, attempt: lease.attempt, lease_token: lease.lease_token, ...extra }, { 'x-trace-task-capability': token });
}

export async function taskRow(p: TestPlatform, id: string): Promise<any> {
  const r = await p.dbs.state.query(`SELECT status, attempt, lease_token, error_message, next_retry_at FROM tasks WHERE id = $1`, [id]);
  return r.rows[0];
}

export async function deploy(p: TestPlatform, yaml: string): Promise<any> {
  const name = /^name:\s*(\S+)/m.exec(yaml)![1]!;
  const r = await p.api('POST', `/v1/dags/${name}/versions?activate=true`, yaml);
  if (r.status >= 300) throw new Error(`deploy failed: ${JSON.stringify(r.body)}`);
  return r.body;
}

export async function trigger(p: TestPlatform, dag: string, job: string, body: Record<string, unknown> = {}): Promise<string> {
  const r = await p.api('POST', `/v1/dags/${dag}/jobs/${job}/trigger`, body);
  if (r.status >= 300) throw new Error(`trigger failed: ${JSON.stringify(r.body)}`);
  return r.body.task_id;
}

/** A two-job DAG of test operators: a manual source feeding a reactive job. */
export function twoJobDag(opts: {
  name?: string; srcOp?: string; srcConfig?: Record<string, unknown>; downOp?: string; downConfig?: Record<string, unknown>; maxAttempts?: number; maxConcurrency?: number;
  /** More YAML lines for the `down` job (each starting with a newline and four spaces). */
  downExtra?: string;
  /** Publishes `<name>_src` and `<name>_down`, the outputs of both jobs. */
  publish?: boolean;
} = {}): string {
  const cfg = (c: Record<string, unknown> | undefined) => (c ? `\n    config: ${JSON.stringify(c)}` : '');
  return `name: ${opts.name ?? 'life'}
jobs:
  - name: src
    activation: source
    runtime: ecs_platform
    operator: ${opts.srcOp ?? 'test_emit'}
    source: { kind: manual }
    outputs: 1
    max_attempts: ${opts.maxAttempts ?? 3}${cfg(opts.srcConfig ?? { events: [] })}${opts.maxConcurrency ? `\n    scaling: { max_concurrency: ${opts.maxConcurrency} }` : ''}
  - name: down
    activation: reactive
    runtime: ecs_platform
    operator: ${opts.downOp ?? 'noop'}
    execution_strategy: PerUpdate
    inputs:
      - from: { job: src, output: 0 }
    outputs: 1
    update_strategy: replace${cfg(opts.downConfig)}${opts.downExtra ?? ''}
${opts.publish ? `publish:\n  ${opts.name ?? 'life'}_src:\n    from: { job: src, output: 0 }\n  ${opts.name ?? 'life'}_down:\n    from: { job: down, output: 0 }\n` : ''}`;
}
