import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, readFile, access } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startLite } from '../../src/lite/lite.js';
import { FAST, waitFor } from '../support/platform.js';
import { twoJobDag } from '../support/drive.js';

async function call(url: string, token: string, method: string, path: string, body?: unknown, headers: Record<string, string> = {}) {
  const res = await fetch(`${url}${path}`, {
    method,
    headers: { authorization: `Bearer ${token}`, ...(body !== undefined ? { 'content-type': typeof body === 'string' ? 'application/yaml' : 'application/json' } : {}), ...headers },
    ...(body !== undefined ? { body: typeof body === 'string' ? body : JSON.stringify(body) } : {}),
  });
  return { status: res.status, body: await res.json() as any };
}

test('embedded: lite resumes queued, running and retrying tasks after a restart', async () => {
  const home = await mkdtemp(join(tmpdir(), 'trace-restart-'));
  const opts = { home, env: { TRACE_HOME: home }, ports: { dispatcher: 0, query: 0, gateway: 0, rpcGateway: 0 }, includeTestOperators: true, heartbeatMs: 300, settings: { ...FAST, retryBaseMs: 1500, retryMaxMs: 1500 } };
  try {
    const a = await startLite({ ...opts, workers: 0 });
    const info = JSON.parse(await readFile(join(home, 'lite.json'), 'utf8'));
    assert.equal(info.dispatcher_url, a.info.dispatcher_url, 'lite.json carries the URLs');
    assert.equal(info.profile, 'embedded');
    const u = a.info.dispatcher_url;
    const t = a.info.admin_token;
    assert.equal((await call(u, t, 'POST', '/v1/dags/life/versions?activate=true', twoJobDag())).status, 201);
    const ids: string[] = [];
    for (let i = 0; i < 3; i++) ids.push((await call(u, t, 'POST', '/v1/dags/life/jobs/src/trigger', {})).body.task_id);
    const claim = (id: string) => call(u, t, 'POST', '/internal/task-claim', { task_id: id, worker_id: 'before-restart' }, { 'x-trace-worker-token': a.info.worker_token });
    const running = await claim(ids[1]!);
    assert.equal(running.body.status, 'Claimed');
    const retrying = await claim(ids[2]!);
    const failed = await fetch(`${u}/v1/task/complete`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-trace-task-capability': retrying.body.capability_token },
      body: JSON.stringify({ task_id: ids[2], attempt: 1, lease_token: retrying.body.lease_token, status: 'Failed', error_message: 'transient' }),
    });
    assert.equal(failed.status, 200);
    await a.stop();
    await assert.rejects(access(join(home, 'lite.json')), 'lite.json is removed on a clean stop');

    const b = await startLite({ ...opts, workers: 1 });
    try {
      const done = await waitFor('all three completed', async () => {
        const r = await call(b.info.dispatcher_url, b.info.admin_token, 'GET', '/v1/tasks?dag=life');
        const ts = r.body.tasks as Array<{ task_id: string; status: string; attempts: Array<{ status: string }> }>;
        return ts.length === 3 && ts.every((x) => x.status === 'Completed') ? ts : undefined;
      }, 30_000);
      const byId = new Map(done.map((x) => [x.task_id, x]));
      assert.deepEqual(byId.get(ids[0]!)!.attempts.map((x) => x.status), ['Completed'], 'queued task ran after restart');
      assert.deepEqual(byId.get(ids[1]!)!.attempts.map((x) => x.status), ['TimedOut', 'Completed'], 'running task was reaped and retried');
      assert.deepEqual(byId.get(ids[2]!)!.attempts.map((x) => x.status), ['Failed', 'Completed'], 'retrying task was retried');
    } finally {
      await b.stop();
    }
  } finally {
    await rm(home, { recursive: true, force: true });
  }
});
