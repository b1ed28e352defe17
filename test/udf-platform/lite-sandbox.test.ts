/**
 * How `trace lite up` (startLite) sets up the UDF sandbox: probed once at start-up and recorded
 * in lite.json as `udf_sandbox`; the explicit unsafe-none opt-out logged at warn level; UDF tasks
 * failing with a reason that names the fix when the sandbox cannot start (other routes unaffected);
 * a malformed setting refused at start-up naming the variable; secrets.json kept at 0600.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { pino } from 'pino';
import { BACKENDS } from '../support/db.js';
import { startPlatform, waitFor, type TestPlatform } from '../support/platform.js';
import { startLite } from '../../src/lite/lite.js';
import { goodBundle } from '../udf/support/zips.js';

for (const backend of BACKENDS) {
  describe(`lite and the UDF sandbox (${backend})`, () => {
    it('records the bubblewrap sandbox in lite.json', async () => {
      const p = await startPlatform(backend);
      try {
        const written = JSON.parse(await readFile(join(p.info.home, 'lite.json'), 'utf8'));
        assert.equal(written.udf_sandbox, 'bubblewrap');
        assert.equal(written.udf_sandbox_reason, undefined);
        assert.equal(((await stat(join(p.info.home, 'secrets.json'))).mode & 0o777), 0o600);
      } finally {
        await p.close();
      }
    });

    it('runs without isolation only when TRACE_UDF_SANDBOX=unsafe-none says so, with a warn log and a lite.json entry', async () => {
      const lines: Array<Record<string, unknown>> = [];
      const log = pino({ level: 'info' }, new Writable({ write(chunk, _e, cb) { lines.push(JSON.parse(String(chunk)) as Record<string, unknown>); cb(); } }));
      const p = await startPlatform(backend, { env: { TRACE_UDF_SANDBOX: 'unsafe-none' }, log });
      try {
        assert.equal(JSON.parse(await readFile(join(p.info.home, 'lite.json'), 'utf8')).udf_sandbox, 'unsafe-none');
        const warn = lines.find((l) => l.udf_sandbox === 'unsafe-none');
        assert.ok(warn, 'a start-up log line names the mode');
        assert.equal(warn.level, 40);
        assert.match(String(warn.msg), /UDF SANDBOX DISABLED/);
      } finally {
        await p.close();
      }
    });

    describe('when the sandbox cannot start', () => {
      let p: TestPlatform;
      before(async () => {
        p = await startPlatform(backend, { env: { TRACE_UDF_BWRAP: '/nonexistent/bwrap' } });
      });
      after(async () => {
        await p?.close();
      });

      it('records why in lite.json and fails UDF tasks with the fix, while the rest of the platform works', async () => {
        const written = JSON.parse(await readFile(join(p.info.home, 'lite.json'), 'utf8'));
        assert.equal(written.udf_sandbox, 'unavailable');
        assert.match(written.udf_sandbox_reason, /bubblewrap is not installed .*apt-get install -y bubblewrap.*TRACE_UDF_SANDBOX=unsafe-none/);
        const zip = await goodBundle([{ name: 'index.mjs', data: 'process.stdout.write("{}")' }], { runtime: 'node', entrypoint: 'index.mjs' });
        const open = await p.api('POST', '/v1/udf/bundles', { runtime: 'node' });
        await fetch(open.body.upload.url, { method: 'PUT', body: zip, headers: open.body.upload.headers });
        assert.equal((await p.api('POST', `/v1/udf/bundles/${open.body.bundle_id}/finalize`, { sha256: createHash('sha256').update(zip).digest('hex') })).status, 200);
        const yaml = `name: refused
jobs:
  - name: src
    activation: source
    runtime: ecs_platform
    operator: cursor_emitter
    source: { kind: manual }
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
    udf:
      bundle_id: "${open.body.bundle_id}"
      entrypoint: index.mjs
`;
        assert.ok((await p.api('POST', '/v1/dags/refused/versions?activate=true', yaml)).status < 300);
        assert.ok((await p.api('POST', '/v1/dags/refused/jobs/src/trigger', { cursor: 1 })).status < 300);
        const t = await waitFor('the UDF task to fail', async () => {
          const r = await p.api('GET', '/v1/tasks?dag=refused&job=run&limit=1');
          const task = r.body.tasks?.[0];
          return task && task.status === 'Failed' ? task : undefined;
        }, 30_000);
        assert.match(t.error_message, /^sandbox_unavailable: the UDF sandbox is unavailable: bubblewrap is not installed .*apt-get install -y bubblewrap/);
        const src = (await p.api('GET', '/v1/tasks?dag=refused&job=src&limit=1')).body.tasks[0];
        assert.equal(src.status, 'Completed', 'platform operators still run');
      });
    });
  });
}

describe('lite start-up settings', () => {
  let home: string;
  before(async () => {
    home = await mkdtemp(join(tmpdir(), 'trace-lite-sb-'));
  });
  after(async () => {
    await rm(home, { recursive: true, force: true });
  });

  it('refuses a malformed sandbox setting before starting anything, naming the variable', async () => {
    await assert.rejects(startLite({ home, workers: 0, env: { TRACE_HOME: home, TRACE_UDF_SANDBOX: 'off' } }), /TRACE_UDF_SANDBOX must be one of bubblewrap, unsafe-none; got "off"/);
    await assert.rejects(startLite({ home, workers: 0, env: { TRACE_HOME: home, TRACE_UDF_MEMORY_MB: '12x' } }), /TRACE_UDF_MEMORY_MB must be a whole number/);
  });

  it('tightens a secrets.json found with a looser mode', async () => {
    const secrets = { worker_token: 'w'.repeat(43), task_capability_secret: 'c'.repeat(64), task_capability_kid: 'lite-test', user_jwt_secret: 'u'.repeat(64) };
    await writeFile(join(home, 'secrets.json'), JSON.stringify(secrets), { mode: 0o644 });
    const lite = await startLite({ home, workers: 0, ports: { dispatcher: 0, query: 0, gateway: 0, rpcGateway: 0 }, env: { TRACE_HOME: home } });
    try {
      assert.equal(((await stat(join(home, 'secrets.json'))).mode & 0o777), 0o600);
      assert.equal(lite.info.worker_token, secrets.worker_token, 'the same secrets are kept');
    } finally {
      await lite.stop();
    }
  });
});
