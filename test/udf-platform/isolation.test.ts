/**
 * The UDF sandbox against the attacks found on a real `trace lite up`, on the embedded profile
 * (PGlite) and on real Postgres:
 *
 * 1. the escalation chain (parent environment -> TRACE_HOME -> secrets.json -> a minted admin
 *    token -> admin routes; Postgres and Dispatcher TCP; another instance's home; writes outside
 *    scratch; a setsid + double-forked process left behind) as a hostile Python and a hostile Node
 *    bundle, run by a platform started as its own process with TRACE_HOME in its environment. In
 *    the sandbox every step fails; in unsafe-none the same bundles succeed (so these tests fail if
 *    the boundary is removed);
 * 2. a Node bundle behind a cron source that SIGKILLs its parent: the platform survives every
 *    firing, the tasks fail with a clear error, other routes answer;
 * 3. a bundle that forks forever, one that allocates 8 GB and one that sleeps past its timeout:
 *    each fails with a clear error while the platform answers, and leaves no process and no run
 *    directory behind.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomUUID } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { BACKENDS, createPgDatabase } from '../support/db.js';
import { startPlatform, waitFor, type TestPlatform } from '../support/platform.js';
import { goodBundle } from '../udf/support/zips.js';
import { killAll, processesWith, runDirs } from '../udf/support/sandbox.js';
import { HOSTILE_NODE, HOSTILE_PY, reportOf } from './fixtures/hostile.js';

const ROOT = new URL('../../', import.meta.url).pathname;

interface ChildLite {
  info: { dispatcher_url: string; admin_token: string; pid: number; home: string; udf_sandbox: string };
  proc: ChildProcess;
  home: string;
  stop(): Promise<void>;
}

async function startChildLite(backend: 'postgres' | 'pglite', mode: 'bubblewrap' | 'unsafe-none'): Promise<ChildLite> {
  const home = await mkdtemp(join(tmpdir(), 'trace-iso-'));
  const drops: Array<() => Promise<void>> = [];
  const env: NodeJS.ProcessEnv = { PATH: process.env.PATH, HOME: process.env.HOME, NODE_ENV: 'test', TRACE_HOME: home, TRACE_UDF_SANDBOX: mode };
  if (backend === 'postgres') {
    const s = await createPgDatabase('trace_iso_s');
    const d = await createPgDatabase('trace_iso_d');
    drops.push(s.drop, d.drop);
    env.TRACE_STATE_DATABASE_URL = s.url;
    env.TRACE_DATA_DATABASE_URL = d.url;
  }
  const proc = spawn(process.execPath, ['--import', 'tsx', join(ROOT, 'test/udf-platform/fixtures/lite-child.ts')], { cwd: ROOT, env, stdio: ['ignore', 'pipe', 'inherit'] });
  const line = await new Promise<string>((resolve, reject) => {
    const rl = createInterface({ input: proc.stdout! });
    rl.once('line', (l) => resolve(l));
    proc.once('exit', (code) => reject(new Error(`the platform exited with ${code} before it was ready`)));
  });
  const info = JSON.parse(line) as ChildLite['info'];
  return {
    info, proc, home,
    async stop() {
      const exited = new Promise((r) => proc.once('exit', r));
      proc.kill('SIGTERM');
      await exited;
      for (const d of drops) await d();
      await rm(home, { recursive: true, force: true });
    },
  };
}

async function api(info: ChildLite['info'], method: string, path: string, body?: unknown): Promise<{ status: number; body: any }> {
  const headers: Record<string, string> = { authorization: `Bearer ${info.admin_token}` };
  let payload: string | undefined;
  if (body !== undefined) {
    payload = typeof body === 'string' ? body : JSON.stringify(body);
    headers['content-type'] = typeof body === 'string' ? 'application/yaml' : 'application/json';
  }
  const res = await fetch(`${info.dispatcher_url}${path}`, { method, headers, ...(payload !== undefined ? { body: payload } : {}) });
  const text = await res.text();
  let parsed: unknown = text;
  try { parsed = JSON.parse(text); } catch { /* text */ }
  return { status: res.status, body: parsed };
}

async function upload(info: ChildLite['info'], zip: Buffer, runtime: 'node' | 'python'): Promise<string> {
  const open = await api(info, 'POST', '/v1/udf/bundles', { runtime });
  assert.equal(open.status, 201, JSON.stringify(open.body));
  const put = await fetch(open.body.upload.url, { method: 'PUT', body: zip, headers: open.body.upload.headers });
  assert.equal(put.status, 200);
  const fin = await api(info, 'POST', `/v1/udf/bundles/${open.body.bundle_id}/finalize`, { sha256: createHash('sha256').update(zip).digest('hex') });
  assert.equal(fin.status, 200, JSON.stringify(fin.body));
  return open.body.bundle_id as string;
}

/** A source (manual or cron) feeding one UDF job (`run`); UDF jobs are reactive. */
function udfDag(name: string, bundleId: string, entrypoint: string, opts: { source?: string; timeout?: number; config?: Record<string, unknown> } = {}): string {
  return `name: ${name}
jobs:
  - name: src
    activation: source
    runtime: ecs_platform
    operator: cursor_emitter
    source: ${opts.source ?? '{ kind: manual }'}
    outputs: 1
  - name: run
    activation: reactive
    runtime: lambda
    operator: udf
    execution_strategy: PerUpdate
    inputs:
      - from: { job: src, output: 0 }
    outputs: 1
    update_strategy: replace
    max_attempts: 1
    timeout_seconds: ${opts.timeout ?? 60}
    config: ${JSON.stringify(opts.config ?? {})}
    udf:
      bundle_id: "${bundleId}"
      entrypoint: ${entrypoint}
`;
}

type Api = (method: string, path: string, body?: unknown) => Promise<{ status: number; body: any }>;

/** Deploys the DAG, fires its source once and returns the UDF task once it runs. */
async function startRun(call: Api, name: string, yaml: string): Promise<string> {
  const dep = await call('POST', `/v1/dags/${name}/versions?activate=true`, yaml);
  assert.ok(dep.status < 300, JSON.stringify(dep.body));
  const trig = await call('POST', `/v1/dags/${name}/jobs/src/trigger`, { cursor: 1 });
  assert.ok(trig.status < 300, JSON.stringify(trig.body));
  return waitFor(`the ${name} UDF task`, async () => {
    const r = await call('GET', `/v1/tasks?dag=${name}&job=run&limit=1`);
    const t = r.body.tasks?.[0];
    return t && t.status !== 'Queued' ? (t.task_id as string) : undefined;
  }, 60_000);
}

async function finished(call: Api, id: string): Promise<{ status: string; error_message: string | null }> {
  return waitFor(`task ${id} to finish`, async () => {
    const t = await call('GET', `/v1/tasks/${id}`);
    return ['Completed', 'Failed'].includes(t.body.status) ? t.body : undefined;
  }, 90_000);
}

async function runHostile(info: ChildLite['info'], name: string, bundleId: string, entrypoint: string, config: Record<string, unknown>): Promise<{ status: string; error_message: string | null }> {
  const call: Api = (m, path, body) => api(info, m, path, body);
  return finished(call, await startRun(call, name, udfDag(name, bundleId, entrypoint, { config })));
}

for (const backend of BACKENDS) {
  describe(`the escalation chain of an attack run against trace lite up (${backend})`, () => {
    let work: string;
    let otherHome: string;
    before(async () => {
      work = await mkdtemp(join(tmpdir(), 'trace-iso-work-'));
      // Another instance on the same host, with its own secrets.
      otherHome = join(work, 'other-home');
      await mkdir(otherHome, { mode: 0o700 });
      await writeFile(join(otherHome, 'secrets.json'), JSON.stringify({ worker_token: randomUUID(), user_jwt_secret: randomUUID() }), { mode: 0o600 });
    });
    after(async () => {
      await rm(work, { recursive: true, force: true });
    });

    for (const mode of ['bubblewrap', 'unsafe-none'] as const) {
      it(`${mode}: ${mode === 'bubblewrap' ? 'every step fails for a Python and a Node bundle' : 'the same bundles succeed (the tests have teeth)'}`, async () => {
        const lite = await startChildLite(backend, mode);
        const marker = `iso-${randomUUID()}`;
        const outside = join(work, `pwned-${mode}`);
        try {
          assert.equal(lite.info.udf_sandbox, mode, 'lite.json records the sandbox mode');
          const port = Number(new URL(lite.info.dispatcher_url).port);
          const config = { dispatcher_port: port, other_home: otherHome, outside, marker };
          const pyId = await upload(lite.info, await goodBundle([{ name: 'main.py', data: HOSTILE_PY }], { runtime: 'python', entrypoint: 'main.py' }), 'python');
          const py = reportOf((await runHostile(lite.info, 'hostile_py', pyId, 'main.py', config)).error_message);
          const nodeId = await upload(lite.info, await goodBundle([{ name: 'index.mjs', data: HOSTILE_NODE }], { runtime: 'node', entrypoint: 'index.mjs' }), 'node');
          const node = reportOf((await runHostile(lite.info, 'hostile_node', nodeId, 'index.mjs', config)).error_message);
          const secrets = JSON.parse(await readFile(join(lite.home, 'secrets.json'), 'utf8')) as Record<string, string>;
          const leftovers = processesWith(marker);
          if (mode === 'bubblewrap') {
            assert.equal(py.trace_home, false, 'no TRACE_HOME in anything the UDF can read');
            assert.notEqual(py.ppid, lite.info.pid, 'the parent it sees is not the platform');
            assert.equal(py.secrets, undefined, 'secrets.json was not read');
            assert.equal(py.admin_status, undefined, 'no admin token was minted');
            assert.notEqual(py.postgres, 'connected');
            assert.notEqual(py.dispatcher_tcp, 'connected');
            assert.equal(py.other_home, 'FileNotFoundError', "another instance's home is not even visible");
            assert.deepEqual(py.wrote, [], 'nothing was written outside scratch');
            assert.equal(py.home_write, 'written', 'its own scratch is writable');
            assert.equal(existsSync(outside), false);
            assert.equal(existsSync(`/tmp/${marker}`), false);
            assert.deepEqual(leftovers, [], 'the setsid + double-forked process is gone');
            for (const v of Object.values(secrets)) assert.ok(!JSON.stringify(py).includes(v));
            assert.notEqual(node.ppid, lite.info.pid);
            assert.deepEqual(node.ifaces, ['lo']);
            assert.notEqual(node.postgres, 'connected');
            assert.notEqual(node.dispatcher_tcp, 'connected');
          } else {
            try {
              assert.equal(py.parent_environ, 'read');
              assert.equal(py.ppid, lite.info.pid);
              assert.equal(py.trace_home, true, 'the parent environment names TRACE_HOME');
              assert.deepEqual(py.secrets, Object.keys(secrets).sort(), 'secrets.json is readable');
              assert.equal(py.admin_status, 200, 'a minted admin token opens admin routes');
              assert.equal(py.postgres, 'connected');
              assert.equal(py.dispatcher_tcp, 'connected');
              assert.deepEqual(py.other_home, ['user_jwt_secret', 'worker_token']);
              assert.ok(py.wrote.includes(outside));
              assert.ok(leftovers.length > 0, 'the daemonised process outlives the run');
              assert.equal(node.ppid, lite.info.pid, 'a Node UDF sees the platform as its parent');
              assert.equal(node.signal_parent, 'allowed', 'and could signal it');
              assert.equal(node.postgres, 'connected');
              assert.equal(node.dispatcher_tcp, 'connected');
            } finally {
              killAll(leftovers);
              await rm(`/tmp/${marker}`, { force: true });
            }
          }
        } finally {
          await lite.stop();
        }
      });
    }
  });

  describe(`hostile and runaway bundles on the lite platform (${backend})`, () => {
    let p: TestPlatform;
    before(async () => {
      p = await startPlatform(backend, { workers: 1, env: { TRACE_UDF_MAX_PROCESSES: '32', TRACE_UDF_MEMORY_MB: '256' } });
      assert.equal(p.info.udf_sandbox, 'bubblewrap');
      assert.deepEqual(JSON.parse(await readFile(join(p.info.home, 'lite.json'), 'utf8')).udf_sandbox, 'bubblewrap');
    });
    after(async () => {
      await p?.close();
    });

    const bundle = async (name: string, data: string, runtime: 'node' | 'python') => {
      const zip = await goodBundle([{ name, data }], { runtime, entrypoint: name });
      const open = await p.api('POST', '/v1/udf/bundles', { runtime });
      await fetch(open.body.upload.url, { method: 'PUT', body: zip, headers: open.body.upload.headers });
      const fin = await p.api('POST', `/v1/udf/bundles/${open.body.bundle_id}/finalize`, { sha256: createHash('sha256').update(zip).digest('hex') });
      assert.equal(fin.status, 200, JSON.stringify(fin.body));
      return open.body.bundle_id as string;
    };
    const call: Api = (m, path, body) => p.api(m, path, body);
    const runOnce = async (dag: string, bundleId: string, entry: string, timeout = 60) => {
      const id = await startRun(call, dag, udfDag(dag, bundleId, entry, { timeout }));
      // The platform answers while the bundle runs.
      assert.equal((await p.api('GET', '/v1/datasets')).status, 200);
      return finished(call, id) as Promise<{ status: string; error_message: string }>;
    };
    /**
     * The runner removes a run's directory last, after its process tree is gone (the task may be
     * marked Failed by the lease reaper a moment before the runner's own kill lands).
     */
    const clean = async (marker: string) => {
      await waitFor('the run directory to be removed', async () => runDirs(p.udfSandbox).length === 0, 30_000);
      assert.deepEqual(processesWith(marker), [], 'no process of the run is left');
    };
    /** The runner's own timeout, or the lease reaper's when it fires first at the same deadline. */
    const timedOut = (seconds: number) => new RegExp(`timeout: the UDF did not finish within ${seconds * 1000} ms; all its processes were killed|timed out after ${seconds} s`);

    it('a bundle that forks forever is contained and killed at its timeout', async () => {
      const entry = `forker_${randomUUID().replace(/-/g, '')}.py`;
      const id = await bundle(entry, 'import os, time\nwhile True:\n    try:\n        if os.fork() == 0:\n            time.sleep(600)\n            os._exit(0)\n    except OSError:\n        time.sleep(0.05)\n', 'python');
      const t = await runOnce('fork_forever', id, entry, 3);
      assert.equal(t.status, 'Failed');
      assert.match(t.error_message, timedOut(3));
      await clean(entry);
    });

    it('a bundle that allocates 8 GB fails with an out-of-memory error', async () => {
      const entry = `hog_${randomUUID().replace(/-/g, '')}.py`;
      const id = await bundle(entry, 'b = bytearray(8 * 1024 ** 3)\n', 'python');
      const t = await runOnce('memory_hog', id, entry);
      assert.equal(t.status, 'Failed');
      assert.match(t.error_message, /exit_nonzero: the UDF exited with code 1 \(it ran out of memory; the limit is 256 MiB per process\)/);
      assert.match(t.error_message, /MemoryError/);
      await clean(entry);
    });

    it('a bundle that sleeps past its timeout is killed', async () => {
      const entry = `sleeper_${randomUUID().replace(/-/g, '')}.mjs`;
      const id = await bundle(entry, 'setInterval(() => {}, 1000);\n', 'node');
      const t = await runOnce('sleeper', id, entry, 2);
      assert.equal(t.status, 'Failed');
      assert.match(t.error_message, timedOut(2));
      await clean(entry);
    });

    it('a Node bundle behind a cron source that kills its parent: the platform survives every firing', async () => {
      const entry = `parricide_${randomUUID().replace(/-/g, '')}.mjs`;
      const id = await bundle(entry, `
let sent = [];
for (const sig of ['SIGKILL', 'SIGTERM']) { try { process.kill(process.ppid, sig); sent.push(sig); } catch (e) { sent.push(e.code); } }
process.stderr.write('tried to kill parent ' + process.ppid + ': ' + sent.join(',') + '\\n');
process.exit(9);
`, 'node');
      const dep = await p.api('POST', '/v1/dags/parricide/versions?activate=true', udfDag('parricide', id, entry, { source: '{ kind: cron, schedule: "@every 1s" }' }));
      assert.ok(dep.status < 300, JSON.stringify(dep.body));
      const failed = await waitFor('three firings to fail', async () => {
        const r = await p.api('GET', '/v1/tasks?dag=parricide&job=run&status=Failed&limit=10');
        return r.body.tasks.length >= 3 ? r.body.tasks : undefined;
      }, 60_000);
      for (const t of failed) assert.match(t.error_message, /exit_nonzero: the UDF exited with code 9 \| stderr: tried to kill parent 1: /);
      assert.equal((await p.api('GET', '/v1/datasets')).status, 200, 'the Dispatcher answers');
      assert.equal((await fetch(`${p.info.gateway_url}/v1/datasets`, { headers: { authorization: `Bearer ${p.admin}` } })).status, 200, 'the Gateway answers');
      assert.equal((await fetch(`${p.info.query_url}/v1/query`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{}' })).status, 401, 'the Query Service answers');
      // Stop the schedule: a version with a manual source replaces it.
      assert.ok((await p.api('POST', '/v1/dags/parricide/versions?activate=true', udfDag('parricide', id, entry))).status < 300);
    });
  });
}
