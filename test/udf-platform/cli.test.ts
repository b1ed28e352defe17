/**
 * `trace udf upload` and `trace sink dlq list|replay` against a running Dispatcher (the command
 * objects, run in process with TRACE_DISPATCHER_URL / TRACE_TOKEN), plus the guard that the
 * example bundles carry the current SDK files.
 */
import { after, before, describe, it } from 'node:test';
import { execFile } from 'node:child_process';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildBundleFromDir } from '../../src/cli/commands/udf.js';
import { UsageError } from '../../src/cli/args.js';
import { inspectBundle } from '../../src/udf/bundle.js';
import { buildUdfPlatform, type UdfPlatform } from './support.js';

const ROOT = new URL('../../', import.meta.url).pathname;

/**
 * Runs one command object in a child process (as the `trace` binary would), with the target in
 * its environment; returns its exit status, stdout and stderr.
 */
function runCommand(module: string, name: string, values: Record<string, unknown>, positionals: string[], env: Record<string, string>): Promise<{ code: number; out: string; err: string }> {
  const code = `
    const m = await import(${JSON.stringify(join(ROOT, module))});
    try { await m[${JSON.stringify(name)}].run({ values: ${JSON.stringify(values)}, positionals: ${JSON.stringify(positionals)} }); }
    catch (e) { process.stderr.write(JSON.stringify({ name: e.constructor.name, status: e.status, code: e.code, message: e.message })); process.exitCode = 1; }`;
  return new Promise((resolve) => {
    execFile(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', code], { cwd: ROOT, env: { ...process.env, ...env, NODE_ENV: 'test' } }, (err, stdout, stderr) => {
      resolve({ code: err ? 1 : 0, out: String(stdout), err: String(stderr) });
    });
  });
}

describe('example bundles', () => {
  it('carry the current SDK files byte for byte', async () => {
    assert.deepEqual(await readFile(join(ROOT, 'examples/udf/node-alert/trace-udf.mjs')), await readFile(join(ROOT, 'sdk/node/trace-udf.mjs')));
    assert.deepEqual(await readFile(join(ROOT, 'examples/udf/python-alert/trace_udf.py')), await readFile(join(ROOT, 'sdk/python/trace_udf.py')));
  });

  it('build into valid, deterministic bundles', async () => {
    const a = await buildBundleFromDir(join(ROOT, 'examples/udf/node-alert'));
    const b = await buildBundleFromDir(join(ROOT, 'examples/udf/node-alert'));
    assert.equal(a.sha256, b.sha256, 'same folder, same bytes');
    const m = (await inspectBundle(a.zip)).manifest;
    assert.deepEqual(m.files.map((f) => f.path), ['alert.mjs', 'index.mjs', 'trace-udf.mjs']);
    const py = await buildBundleFromDir(join(ROOT, 'examples/udf/python-alert'));
    assert.equal((await inspectBundle(py.zip)).manifest.entrypoint, 'main.py');
  });

  it('refuse symlinks and unknown runtimes', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'trace-cli-'));
    try {
      await writeFile(join(dir, 'run.sh'), 'echo hi');
      await assert.rejects(buildBundleFromDir(dir), UsageError);
      await writeFile(join(dir, 'index.mjs'), 'x');
      await symlink('/etc/passwd', join(dir, 'link'));
      await assert.rejects(buildBundleFromDir(dir), /symlink/);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('trace udf upload / trace sink dlq (postgres)', () => {
  let p: UdfPlatform;
  let env: Record<string, string>;
  before(async () => {
    p = await buildUdfPlatform('postgres', { worker: false, sink: false, delivery: false, query: false });
    env = { TRACE_DISPATCHER_URL: p.url, TRACE_TOKEN: p.adminToken, TRACE_GATEWAY_URL: '', TRACE_HOME: p.home };
  });
  after(async () => { await p.close(); });
  const udf = (values: Record<string, unknown>, positionals: string[]) => runCommand('src/cli/commands/udf.ts', 'udfUpload', values, positionals, env);
  const dlq = (name: string, values: Record<string, unknown>, positionals: string[]) => runCommand('src/cli/commands/sink.ts', name, values, positionals, env);

  it('uploads a folder and a zip and prints the finalized bundle', async () => {
    const r = await udf({ json: true }, [join(ROOT, 'examples/udf/python-alert')]);
    assert.equal(r.code, 0, r.err);
    const b = JSON.parse(r.out);
    assert.equal(b.status, 'Finalized');
    assert.equal(b.runtime, 'python');
    const row = (await p.dbs.state.query<{ sha256: string }>(`SELECT sha256 FROM udf_bundles WHERE id = $1`, [b.bundle_id])).rows[0]!;
    assert.equal(row.sha256, (await buildBundleFromDir(join(ROOT, 'examples/udf/python-alert'))).sha256);

    const dir = await mkdtemp(join(tmpdir(), 'trace-cli-'));
    try {
      const zipPath = join(dir, 'b.zip');
      await writeFile(zipPath, (await buildBundleFromDir(join(ROOT, 'examples/udf/node-alert'))).zip);
      const line = await udf({}, [zipPath]);
      assert.match(line.out, /^bundle [0-9a-f-]{36} \(node, entrypoint index\.mjs, 3 files/);
      await writeFile(zipPath, 'not a zip');
      // Without flags the CLI reads runtime and entrypoint from the zip's manifest, and says when it cannot.
      const unreadable = await udf({}, [zipPath]);
      assert.equal(JSON.parse(unreadable.err).name, 'UsageError');
      assert.match(JSON.parse(unreadable.err).message, /no readable bundle_manifest\.json; pass --runtime and --entrypoint/);
      const bad = await udf({ runtime: 'node', entrypoint: 'index.mjs' }, [zipPath]);
      assert.equal(bad.code, 1);
      const e = JSON.parse(bad.err);
      assert.equal(e.name, 'ApiError');
      assert.equal(e.status, 422);
      assert.equal(e.code, 'BUNDLE_INVALID');
      const missing = await udf({}, [join(dir, 'nope')]);
      assert.equal(JSON.parse(missing.err).name, 'UsageError');
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('lists and replays buffer dead letters', async () => {
    assert.match((await dlq('sinkDlqList', {}, [])).out, /no dead letters/);
    p.queue.setMaxReceives('buffers', 1);
    await p.queue.send('buffers', { publish_id: 'x', dedupe_scope: 'alert_events', task_id: 't', attempt: 1 });
    await p.queue.receive('buffers', { visibilityTimeoutSeconds: 0 });
    await p.queue.receive('buffers'); // moved to the dead letters on this receive
    const listed = JSON.parse((await dlq('sinkDlqList', { json: true }, [])).out);
    assert.equal(listed.dead_letters.length, 1);
    const id = listed.dead_letters[0].id;
    assert.match((await dlq('sinkDlqList', {}, [])).out, new RegExp(`^id .*\\n.*\\n${id} +alert_events`));
    assert.match((await dlq('sinkDlqReplay', {}, [id])).out, new RegExp(`replayed ${id} onto buffers`));
    assert.equal(await p.queue.depth('buffers'), 1);
    const again = await dlq('sinkDlqReplay', {}, [id]);
    assert.equal(JSON.parse(again.err).status, 404);
    assert.equal(JSON.parse((await dlq('sinkDlqReplay', {}, ['../x'])).err).name, 'UsageError');
  });
});
