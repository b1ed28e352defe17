/**
 * The UDF executor against hostile or broken bundles, with the real Dispatcher, Query Service
 * and child-process runner: a bundle hunting for secrets in its environment (and, for Node, in
 * the parent's), a bundle querying a dataset it was not granted, a bundle whose output the
 * Dispatcher rejects, a tampered bundle object (hash mismatch), a wrong entrypoint, an unknown
 * bundle, a timeout. Each ends as a Failed completion (never stuck Running) with nothing written;
 * trusted `runtime: lambda` operators without a udf block still run in process.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { BACKENDS } from '../support/db.js';
import { goodBundle } from '../udf/support/zips.js';
import {
  buildUdfPlatform, deployDag, registerParquetDataset, triggerJob, uploadBundle, waitTask, TEST_SECRETS, type UdfPlatform,
} from './support.js';

const SDK = new URL('../../sdk/node/trace-udf.mjs', import.meta.url).pathname;
const CANARY = `canary-${randomUUID()}`;

const ENV_NODE = `
import { readFileSync, readdirSync } from 'node:fs';
import { request } from 'node:http';
const tryRead = (f) => { try { return readFileSync(f, 'utf8').slice(0, 4000); } catch (e) { return 'ERR:' + (e.code || 'error'); } };
const tryList = (d) => { try { return readdirSync(d).join(','); } catch (e) { return 'ERR:' + (e.code || 'error'); } };
// The only way out is the task channel socket: a worker-only route is not forwarded.
const claim = await new Promise((resolve) => {
  const req = request({ socketPath: process.env.TRACE_TASK_SOCKET, path: '/internal/task-claim', method: 'POST', headers: { 'content-type': 'application/json' } }, (res) => { res.resume(); resolve(res.statusCode); });
  req.on('error', () => resolve('ERR'));
  req.end(JSON.stringify({ task_id: '${randomUUID()}', worker_id: 'x' }));
});
const out = {
  env: process.env,
  parent_environ: tryRead('/proc/' + process.ppid + '/environ'),
  self_environ: tryRead('/proc/self/environ'),
  passwd: tryRead('/etc/passwd'),
  tmp: tryList('/tmp'),
  claim,
};
process.stdout.write(JSON.stringify({ outputs: [out] }));
`;

const ENV_PY = `
import json, os, sys
json.dump({"outputs": [{"env": dict(os.environ)}]}, sys.stdout)
`;

for (const backend of BACKENDS) {
  describe(`hostile UDF bundles (${backend})`, () => {
    let p: UdfPlatform;
    let granted: { dataset_uuid: string };
    let other: { dataset_uuid: string };
    const saved: Record<string, string | undefined> = {};
    before(async () => {
      // Secrets the Dispatcher process holds in its environment: none may reach a UDF.
      for (const [k, v] of Object.entries({ TRACE_WORKER_TOKEN: TEST_SECRETS.worker, TRACE_TASK_CAPABILITY_SECRET: TEST_SECRETS.capability, TRACE_CANARY_SECRET: CANARY, AWS_SECRET_ACCESS_KEY: CANARY })) {
        saved[k] = process.env[k];
        process.env[k] = v;
      }
      p = await buildUdfPlatform(backend, { sink: false, delivery: false, worker: false, settings: { leaseSeconds: 30 } });
      saved.TRACE_STATE_DATABASE_URL = process.env.TRACE_STATE_DATABASE_URL;
      process.env.TRACE_STATE_DATABASE_URL = p.dbs.stateUrl;
      granted = await registerParquetDataset(p, 'granted_ds', `SELECT 1::INTEGER AS x`);
      other = await registerParquetDataset(p, 'secret_ds', `SELECT 42::INTEGER AS x, 'classified' AS note`);
    });
    after(async () => {
      for (const [k, v] of Object.entries(saved)) {
        if (v === undefined) delete process.env[k];
        else process.env[k] = v;
      }
      await p.close();
    });

    const job = (name: string, bundleId: string, entrypoint: string, extra = '') => `
  - name: ${name}
    activation: reactive
    runtime: lambda
    operator: udf
    execution_strategy: PerUpdate
    inputs:
      - from: { dataset: granted_ds }
    outputs: 1
    update_strategy: replace
    max_attempts: 1
    timeout_seconds: 20${extra}
    udf:
      bundle_id: "${bundleId}"
      entrypoint: ${entrypoint}`;
    const runJob = async (dag: string, jobs: string, name: string) => {
      await deployDag(p, `name: ${dag}\njobs:${jobs}\n`);
      const t = await triggerJob(p, dag, name, { cursor: 1 });
      return { id: t, ...(await waitTask(p, t, ['Completed', 'Failed'], 40_000)) };
    };
    const bundle = async (files: Array<{ name: string; data: string }>, runtime = 'node') => {
      const r = await uploadBundle(p, await goodBundle(files, { runtime, entrypoint: files[0]!.name }));
      assert.equal(r.status, 200, JSON.stringify(r.body));
      return r.bundle_id;
    };

    it('a Node bundle reading the environment finds only its own variables; the parent, files and worker routes are out of reach', async () => {
      const id = await bundle([{ name: 'index.mjs', data: ENV_NODE }]);
      const t = await runJob('hostile_env_node', job('snoop', id, 'index.mjs'), 'snoop');
      assert.equal(t.status, 'Completed', t.error_message ?? '');
      const out = (t.outputs as Array<Record<string, any>>)[0]!;
      assert.deepEqual(Object.keys(out.env).sort(), ['HOME', 'PATH', 'PWD', 'TMPDIR', 'TRACE_TASK_CAPABILITY_TOKEN', 'TRACE_TASK_SOCKET']);
      assert.match(out.parent_environ, /^ERR:/, 'the parent process environment is not readable');
      assert.match(out.passwd, /^ERR:/);
      assert.match(out.tmp, /^ERR:/);
      assert.equal(out.claim, 404, 'the task channel does not forward /internal/*');
      const text = JSON.stringify(t.outputs);
      for (const secret of [CANARY, TEST_SECRETS.worker, TEST_SECRETS.capability, TEST_SECRETS.user, p.dbs.stateUrl, p.dbs.dataUrl]) {
        if (secret.length > 10) assert.ok(!text.includes(secret), 'no platform secret reached the UDF');
      }
    });

    it('a Python bundle reading the environment finds only its own variables', async () => {
      const id = await bundle([{ name: 'main.py', data: ENV_PY }], 'python');
      const t = await runJob('hostile_env_py', job('snoop', id, 'main.py'), 'snoop');
      assert.equal(t.status, 'Completed', t.error_message ?? '');
      const env = (t.outputs as Array<{ env: Record<string, string> }>)[0]!.env;
      assert.deepEqual(Object.keys(env).filter((k) => k !== 'LC_CTYPE').sort(), ['HOME', 'PATH', 'PWD', 'TMPDIR', 'TRACE_TASK_CAPABILITY_TOKEN', 'TRACE_TASK_SOCKET']);
      assert.ok(!JSON.stringify(env).includes(CANARY));
    });

    it('a bundle querying a dataset it was not granted is refused and fails, reading nothing', async () => {
      const sdk = (await import('node:fs')).readFileSync(SDK, 'utf8');
      const id = await bundle([
        { name: 'index.mjs', data: `import { run, query } from './trace-udf.mjs';\nrun(async (inv) => { const r = await query('SELECT * FROM dataset', { dataset_uuid: inv.config.target }); return { outputs: [r] }; });\n` },
        { name: 'trace-udf.mjs', data: sdk },
      ]);
      const t = await runJob('hostile_query', job('peek', id, 'index.mjs', `\n    config: { target: "${other.dataset_uuid}" }`), 'peek');
      assert.equal(t.status, 'Failed');
      assert.match(t.error_message ?? '', /not granted/);
      assert.ok(!JSON.stringify(t.outputs ?? '').includes('classified'));
      const audited = await p.dbs.data.query(`SELECT 1 FROM query_audit WHERE dataset_id = $1`, [other.dataset_uuid]);
      assert.equal(audited.rows.length, 0);
      assert.ok(granted.dataset_uuid);
    });

    it('an output the Dispatcher rejects ends as a Failed completion, never stuck Running', async () => {
      const id = await bundle([{ name: 'index.mjs', data: `process.stdout.write(JSON.stringify({ events: [{ dataset_uuid: '${randomUUID()}', dataset_version: '${randomUUID()}', cursor: 1 }] }));\n` }]);
      const t = await runJob('hostile_output', job('liar', id, 'index.mjs'), 'liar');
      assert.equal(t.status, 'Failed');
      assert.match(t.error_message ?? '', /output was rejected by the Dispatcher \(EVENT_NOT_OWNED\)/);
      const malformed = await bundle([{ name: 'index.mjs', data: `process.stdout.write(JSON.stringify({ events: [{ nonsense: true }] }));\n` }]);
      const t2 = await runJob('hostile_output2', job('liar2', malformed, 'index.mjs'), 'liar2');
      assert.equal(t2.status, 'Failed');
      assert.match(t2.error_message ?? '', /rejected/);
      const notJson = await bundle([{ name: 'index.mjs', data: `process.stdout.write('hello');\n` }]);
      const t3 = await runJob('hostile_output3', job('noise', notJson, 'index.mjs'), 'noise');
      assert.equal(t3.status, 'Failed');
      assert.match(t3.error_message ?? '', /bad_output/);
    });

    it('a tampered bundle object fails the hash check; a wrong entrypoint or unknown bundle fails too', async () => {
      const id = await bundle([{ name: 'index.mjs', data: `process.stdout.write('{}');\n` }]);
      const key = (await p.dbs.state.query<{ object_key: string }>(`SELECT object_key FROM udf_bundles WHERE id = $1`, [id])).rows[0]!.object_key;
      await p.store.put(key, await goodBundle([{ name: 'index.mjs', data: `process.stdout.write(JSON.stringify({ outputs: ['evil'] }));\n` }], { runtime: 'node', entrypoint: 'index.mjs' }));
      const t = await runJob('hostile_hash', job('tampered', id, 'index.mjs'), 'tampered');
      assert.equal(t.status, 'Failed');
      assert.match(t.error_message ?? '', /hash_mismatch/);
      const good = await bundle([{ name: 'index.mjs', data: `process.stdout.write('{}');\n` }]);
      const wrong = await runJob('hostile_entry', job('entry', good, 'other.mjs'), 'entry');
      assert.equal(wrong.status, 'Failed');
      assert.match(wrong.error_message ?? '', /entrypoint/);
      const ghost = await runJob('hostile_ghost', job('ghost', randomUUID(), 'index.mjs'), 'ghost');
      assert.equal(ghost.status, 'Failed');
      assert.match(ghost.error_message ?? '', /no finalized UDF bundle/);
    });

    it('a bundle that runs past its timeout is killed and fails', async () => {
      const id = await bundle([{ name: 'index.mjs', data: `setInterval(() => {}, 1000);\n` }]);
      const t = await runJob('hostile_slow', job('slow', id, 'index.mjs').replace('timeout_seconds: 20', 'timeout_seconds: 1'), 'slow');
      assert.equal(t.status, 'Failed');
      assert.match(t.error_message ?? '', /timeout|timed out/, 'killed by the runner or timed out by the reaper, whichever comes first');
    });

    it('trusted lambda operators without a udf block still run in process', async () => {
      await deployDag(p, `name: trusted_lambda
jobs:
  - name: src
    activation: source
    runtime: lambda
    operator: noop
    source: { kind: manual }
    outputs: 1
`);
      const t = await triggerJob(p, 'trusted_lambda', 'src', {});
      const r = await waitTask(p, t, ['Completed', 'Failed']);
      assert.equal(r.status, 'Completed');
    });
  });
}
