/**
 * The runner through the real OS sandbox (bubblewrap, the default) and, where behaviour differs,
 * in the explicit unsafe-none mode: echo runs in both runtimes, the environment, the Node
 * permission model, timeouts and leftover processes, output and stderr caps, redaction, exit
 * codes, hash and bundle refusals. Every run must leave no run directory behind.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { randomUUID } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { detectNodeSandbox, runUdf, type RunUdfOptions, type UdfRunFailure, type UdfRunResult, type UdfRunSuccess } from '../../src/udf/runner.js';
import type { UdfSandbox } from '../../src/udf/sandbox/sandbox.js';
import { craftZip, goodBundle, manifestEntry, sha256, type BundleEntry, type ManifestOpts } from './support/zips.js';
import { processesWith, runDirs, startTestSandbox } from './support/sandbox.js';

const TOKEN = 'cap.token.' + 'x'.repeat(40);

let base: string;
let outsideFile: string;
let boxed: UdfSandbox & { dispose(): Promise<void> };
let unsafe: UdfSandbox & { dispose(): Promise<void> };
before(async () => {
  base = mkdtempSync(join(tmpdir(), 'trace-udf-runner-test-'));
  outsideFile = join(base, 'outside-secret.txt');
  writeFileSync(outsideFile, 'top secret');
  boxed = await startTestSandbox();
  assert.equal(boxed.state, 'bubblewrap', boxed.report.reason);
  unsafe = await startTestSandbox({ mode: 'unsafe-none', pythonPath: '/usr/bin/python3' });
});
after(async () => {
  await boxed?.dispose();
  await unsafe?.dispose();
  rmSync(base, { recursive: true, force: true });
});

async function bundle(files: BundleEntry[], opts: ManifestOpts = {}): Promise<{ bytes: Buffer; sha: string }> {
  const bytes = await goodBundle(files, opts);
  return { bytes, sha: sha256(bytes) };
}

const INVOCATION = { task_id: '00000000-0000-4000-8000-000000000001', attempt: 1, lease_token: '00000000-0000-4000-8000-000000000002', capability_token: TOKEN, config: { n: 7 } };

async function runIt(b: { bytes: Buffer; sha: string }, over: Partial<RunUdfOptions> = {}): Promise<UdfRunResult> {
  const sandbox = over.sandbox ?? boxed;
  const res = await runUdf({
    sandbox,
    bundle: b.bytes,
    expectedSha256: b.sha,
    invocation: INVOCATION,
    timeoutMs: 10_000,
    maxStdoutBytes: 1024 * 1024,
    maxStderrBytes: 16 * 1024,
    capabilityToken: TOKEN,
    dispatcherUrl: 'http://127.0.0.1:1',
    queryUrl: 'http://127.0.0.1:2',
    ...over,
  });
  // Whatever happened, the run directory is gone.
  assert.deepEqual(runDirs(sandbox), [], 'the run directory must be removed');
  return res;
}

function ok(r: UdfRunResult): UdfRunSuccess {
  assert.ok(r.ok, `expected success, got ${JSON.stringify(r)}`);
  return r;
}
function failed(r: UdfRunResult, kind: UdfRunFailure['failure']): UdfRunFailure {
  assert.ok(!r.ok, `expected ${kind}, got success ${JSON.stringify(r).slice(0, 300)}`);
  assert.equal(r.failure, kind, JSON.stringify(r).slice(0, 500));
  return r;
}

const NODE_ECHO = `
let raw = '';
for await (const c of process.stdin) raw += c;
const inv = JSON.parse(raw);
process.stderr.write('node udf says hi\\n');
process.stdout.write(JSON.stringify({ echo: inv, cwd: process.cwd(), home: process.env.HOME, runtime: 'node' }));
`;

const PY_ECHO = `
import json, os, sys
import helper
inv = json.load(sys.stdin)
print('python udf says hi', file=sys.stderr)
json.dump({"echo": inv, "cwd": os.getcwd(), "home": os.environ.get("HOME"), "runtime": "python", "helper": helper.VALUE, "flags": [sys.flags.isolated, sys.flags.no_site, sys.flags.dont_write_bytecode]}, sys.stdout)
`;

const SANDBOX_ENV = ['HOME', 'PATH', 'PWD', 'TMPDIR', 'TRACE_TASK_CAPABILITY_TOKEN', 'TRACE_TASK_SOCKET'];

describe('runUdf in the bubblewrap sandbox', () => {
  it('detects a working node permission model on this Node', async () => {
    const sb = await detectNodeSandbox();
    assert.ok(sb, 'Node 20+ must offer a working permission model');
    assert.match(sb.permissionFlag, /^--(experimental-)?permission$/);
  });

  it('runs a node bundle that echoes its invocation, from its read-only bundle directory', async () => {
    const r = ok(await runIt(await bundle([{ name: 'index.mjs', data: NODE_ECHO }])));
    assert.deepEqual(r.output.echo, INVOCATION);
    assert.equal(r.output.runtime, 'node');
    assert.equal(r.output.cwd, '/bundle');
    assert.equal(r.output.home, '/scratch');
    assert.match(r.stderr, /node udf says hi/);
    assert.equal(r.exitCode, 0);
    assert.ok(r.durationMs >= 0);
  });

  it('runs a python bundle that echoes its invocation and imports a vendored module, isolated', async () => {
    const r = ok(await runIt(await bundle([{ name: 'main.py', data: PY_ECHO }, { name: 'helper.py', data: 'VALUE = 41 + 1\n' }], { runtime: 'python' })));
    assert.deepEqual(r.output.echo, INVOCATION);
    assert.equal(r.output.helper, 42);
    assert.deepEqual(r.output.flags, [1, 1, 1]);
    assert.equal(r.output.cwd, '/bundle');
    assert.equal(r.output.home, '/scratch');
    assert.match(r.stderr, /python udf says hi/);
  });

  it("gives the UDF only the allowed environment, never the parent's secrets", async () => {
    process.env.TRACE_WORKER_TOKEN = 'worker-secret-value';
    process.env.PGPASSWORD = 'pg-secret-value';
    process.env.MY_MODE = 'from-parent-env';
    try {
      const nodeDump = { name: 'index.mjs', data: 'process.stdout.write(JSON.stringify({ env: process.env }))' };
      const pyDump = { name: 'main.py', data: 'import json, os, sys\njson.dump({"env": dict(os.environ)}, sys.stdout)\n' };
      const over = { envAllowlist: { MY_MODE: 'fast', NOT_REQUESTED: 'nope', TRACE_WORKER_TOKEN: 'smuggled' }, extraEnv: { TZ: 'UTC' } };
      // Python itself may add LC_CTYPE (PEP 538 locale coercion) after start; the runner does not set it.
      for (const [files, runtime] of [[[nodeDump], 'node'], [[pyDump], 'python']] as const) {
        const r = ok(await runIt(await bundle([...files], { runtime, env_allowlist: ['MY_MODE', 'NOT_SUPPLIED'] }), over));
        const env = r.output.env as Record<string, string>;
        assert.deepEqual(Object.keys(env).filter((k) => !(runtime === 'python' && k === 'LC_CTYPE')).sort(), [...SANDBOX_ENV, 'MY_MODE', 'TZ'].sort(), runtime);
        assert.equal(env.MY_MODE, 'fast');
        assert.equal(env.TRACE_TASK_CAPABILITY_TOKEN, TOKEN);
        assert.equal(env.TRACE_TASK_SOCKET, '/run/trace/task.sock');
        assert.equal(env.PATH, '/usr/local/bin:/usr/bin:/bin');
        assert.ok(!JSON.stringify(env).includes('worker-secret-value'));
        assert.ok(!JSON.stringify(env).includes('pg-secret-value'));
      }
    } finally {
      delete process.env.TRACE_WORKER_TOKEN;
      delete process.env.PGPASSWORD;
      delete process.env.MY_MODE;
    }
  });

  it('refuses extraEnv that would override runner-owned or interpreter variables', async () => {
    const b = await bundle([{ name: 'index.mjs', data: 'process.stdout.write("{}")' }]);
    for (const name of ['PATH', 'HOME', 'TMPDIR', 'TRACE_TASK_CAPABILITY_TOKEN', 'TRACE_TASK_SOCKET', 'NODE_OPTIONS', 'PYTHONPATH', 'LD_PRELOAD']) {
      await assert.rejects(runIt(b, { extraEnv: { [name]: 'x' } }), /extraEnv may not set/);
    }
  });

  for (const mode of ['bubblewrap', 'unsafe-none'] as const) {
    it(`denies reads outside the bundle, writes, child processes, workers, WASI, the inspector and addons under the node permission model (${mode})`, async () => {
      const probe = `
import fs from 'node:fs';
import cp from 'node:child_process';
import { Worker } from 'node:worker_threads';
import { WASI } from 'node:wasi';
import inspector from 'node:inspector';
const out = {};
const attempt = (k, fn) => { try { fn(); out[k] = 'allowed'; } catch (e) { out[k] = e.code || String(e); } };
attempt('passwd', () => fs.readFileSync('/etc/passwd'));
attempt('outside', () => fs.readFileSync("OUTSIDE"));
attempt('parentDir', () => fs.readdirSync('..'));
attempt('own', () => fs.readFileSync('data.txt'));
attempt('write', () => fs.writeFileSync('new.txt', 'x'));
attempt('spawn', () => cp.spawnSync('/bin/sh', ['-c', 'echo hi']));
attempt('exec', () => cp.execSync('id'));
attempt('worker', () => new Worker('1', { eval: true }));
attempt('wasi', () => new WASI({ version: 'preview1', preopens: { '/x': '/' } }));
attempt('inspector', () => inspector.open(0));
attempt('addon', () => process.dlopen({ exports: {} }, '/nonexistent.node'));
process.stdout.write(JSON.stringify(out));
`;
      const r = ok(await runIt(await bundle([{ name: 'index.mjs', data: probe.replace('"OUTSIDE"', JSON.stringify(outsideFile)) }, { name: 'data.txt', data: 'mine' }]), mode === 'unsafe-none' ? { sandbox: unsafe } : {}));
      assert.deepEqual(r.output, {
        passwd: 'ERR_ACCESS_DENIED',
        outside: 'ERR_ACCESS_DENIED',
        parentDir: 'ERR_ACCESS_DENIED',
        own: 'allowed',
        write: 'ERR_ACCESS_DENIED',
        spawn: 'ERR_ACCESS_DENIED',
        exec: 'ERR_ACCESS_DENIED',
        worker: 'ERR_ACCESS_DENIED',
        wasi: 'ERR_ACCESS_DENIED',
        inspector: 'ERR_ACCESS_DENIED',
        addon: 'ERR_DLOPEN_DISABLED',
      });
    });
  }

  it('lets a node UDF write and read its scratch directory, and nothing else', async () => {
    const nodeSandbox = await detectNodeSandbox();
    const code = `
import fs from 'node:fs';
const out = {};
try { fs.writeFileSync('/scratch/a.txt', 'kept'); out.scratch = fs.readFileSync('/scratch/a.txt', 'utf8'); } catch (e) { out.scratch = e.code; }
try { fs.writeFileSync('/bundle/b.txt', 'x'); out.bundle = 'written'; } catch (e) { out.bundle = e.code; }
process.stdout.write(JSON.stringify(out));`;
    const r = ok(await runIt(await bundle([{ name: 'index.mjs', data: code }])));
    assert.equal(r.output.scratch, nodeSandbox?.multiplePaths ? 'kept' : 'ERR_ACCESS_DENIED');
    assert.equal(r.output.bundle, 'ERR_ACCESS_DENIED');
  });

  it('kills a UDF that runs past its timeout, with every process it started', async () => {
    const hang = { name: 'index.mjs', data: 'setInterval(() => {}, 1000); process.stderr.write("hanging\\n");' };
    const t0 = Date.now();
    const r = failed(await runIt(await bundle([hang]), { timeoutMs: 400 }), 'timeout');
    assert.ok(Date.now() - t0 < 5000);
    assert.match(r.message, /did not finish within 400 ms/);
    // python can start processes, even ones that leave the session; all must die with the run.
    const marker = `leftover-${randomUUID()}`;
    const spawner = {
      name: 'main.py',
      data: `import os, subprocess, sys, time
p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "${marker}"], start_new_session=True)
print("CHILD", p.pid, file=sys.stderr, flush=True)
time.sleep(60)
`,
    };
    const r2 = failed(await runIt(await bundle([spawner], { runtime: 'python' }), { timeoutMs: 1500 }), 'timeout');
    assert.match(r2.stderr, /CHILD \d+/);
    assert.deepEqual(processesWith(marker), [], 'the grandchild must be dead when the run returns');
  });

  it('reaps processes a UDF leaves behind when it exits normally, even a setsid double fork', async () => {
    const marker = `daemon-${randomUUID()}`;
    const leaver = {
      name: 'main.py',
      data: `import os, sys, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(60)", "${marker}"])
    os._exit(0)
time.sleep(0.3)
print("{}")
`,
    };
    ok(await runIt(await bundle([leaver], { runtime: 'python' })));
    assert.deepEqual(processesWith(marker), [], 'the daemonised process must be dead when the run returns');
  });

  it('fails closed on stdout that is not exactly one JSON object', async () => {
    const cases: Array<[string, RegExp]> = [
      ['process.stdout.write("hello world")', /not a single JSON value/],
      ['process.stdout.write("[1,2]")', /exactly one JSON object/],
      ['process.stdout.write("null")', /exactly one JSON object/],
      ['process.stdout.write("{}{}")', /not a single JSON value/],
      ['process.stdout.write("{\\"a\\":1}\\n{\\"b\\":2}")', /not a single JSON value/],
      ['', /exactly one JSON object/],
    ];
    for (const [code, re] of cases) {
      const r = failed(await runIt(await bundle([{ name: 'index.mjs', data: code }])), 'bad_output');
      assert.match(r.message, re, code);
    }
    // Surrounding whitespace is fine.
    assert.deepEqual(ok(await runIt(await bundle([{ name: 'index.mjs', data: 'process.stdout.write("\\n  {\\"a\\": 1}\\n")' }]))).output, { a: 1 });
  });

  it('caps stdout: a flood is cut off and reported as bad_output', async () => {
    const flood = { name: 'index.mjs', data: 'const s = "x".repeat(1 << 16); for (;;) { process.stdout.write(s); await new Promise((r) => setImmediate(r)); }' };
    const t0 = Date.now();
    const r = failed(await runIt(await bundle([flood]), { maxStdoutBytes: 256 * 1024 }), 'bad_output');
    assert.match(r.message, /stdout exceeded 262144 bytes/);
    assert.ok(Date.now() - t0 < 5000);
  });

  it('caps stderr to its tail and redacts the capability token and allowlisted values', async () => {
    const noisy = {
      name: 'index.mjs',
      data: `
process.stderr.write('A'.repeat(50000));
process.stderr.write('token=' + process.env.TRACE_TASK_CAPABILITY_TOKEN + ' mode=' + process.env.MY_SECRET_MODE + '\\n');
process.stderr.write('B'.repeat(100) + process.env.TRACE_TASK_CAPABILITY_TOKEN.slice(0, 20));
process.stdout.write('{}');`,
    };
    const r = ok(await runIt(await bundle([noisy], { env_allowlist: ['MY_SECRET_MODE'] }), { maxStderrBytes: 200, envAllowlist: { MY_SECRET_MODE: 'supersecretvalue' } }));
    assert.ok(r.stderrTruncated);
    assert.ok(Buffer.byteLength(r.stderr) <= 200 + 20, `${Buffer.byteLength(r.stderr)}`);
    assert.ok(!r.stderr.includes(TOKEN));
    assert.ok(!r.stderr.includes('supersecretvalue'));
    assert.match(r.stderr, /token=\[redacted\] mode=\[redacted\]/);
    assert.ok(r.stderr.endsWith(TOKEN.slice(0, 20)), 'a prefix that is not the whole secret stays (it is not a secret by itself)');
  });

  it('a token cut at the start of the kept stderr window is redacted whole', async () => {
    const tricky = { name: 'index.mjs', data: `process.stderr.write('A'.repeat(1000) + process.env.TRACE_TASK_CAPABILITY_TOKEN + 'B'.repeat(30)); process.stdout.write('{}');` };
    const r = ok(await runIt(await bundle([tricky]), { maxStderrBytes: 40 }));
    assert.ok(!r.stderr.includes(TOKEN.slice(-10)), r.stderr);
    assert.match(r.stderr, /^\[redacted\]B{30}$/);
  });

  it('reports a non-zero exit with its code and stderr, and a signal by name', async () => {
    const r = failed(await runIt(await bundle([{ name: 'index.mjs', data: 'console.error("boom"); process.exit(3)' }])), 'exit_nonzero');
    assert.equal(r.exitCode, 3);
    assert.match(r.stderr, /boom/);
    const py = failed(await runIt(await bundle([{ name: 'main.py', data: 'raise ValueError("bad input")\n' }], { runtime: 'python' })), 'exit_nonzero');
    assert.equal(py.exitCode, 1);
    assert.match(py.stderr, /ValueError: bad input/);
    const sig = failed(await runIt(await bundle([{ name: 'main.py', data: 'import os, signal\nos.kill(os.getpid(), signal.SIGTERM)\n' }], { runtime: 'python' })), 'exit_nonzero');
    assert.equal(sig.signal, 'SIGTERM');
    assert.equal(sig.message, 'the UDF was killed by SIGTERM');
  });

  it('refuses a bundle whose bytes do not match the pinned hash, without extracting', async () => {
    const b = await bundle([{ name: 'index.mjs', data: 'process.stdout.write("{}")' }]);
    failed(await runIt({ bytes: b.bytes, sha: sha256('something else') }), 'hash_mismatch');
  });

  it('refuses an invalid bundle with the problems listed', async () => {
    const files = [{ name: 'index.mjs', data: 'process.stdout.write("{}")' }];
    const zip = craftZip([manifestEntry(files), { name: 'index.mjs', data: files[0]!.data }, { name: 'evil.mjs', data: 'x' }]).zip;
    const r = failed(await runIt({ bytes: zip, sha: sha256(zip) }), 'invalid_bundle');
    assert.ok(r.problems?.some((p) => /not declared/.test(p.message)));
    const b = await bundle(files);
    failed(await runIt(b, { expectedEntrypoint: 'other.mjs' }), 'invalid_bundle');
    failed(await runIt(b, { expectedRuntime: 'python' }), 'invalid_bundle');
    assert.ok(ok(await runIt(b, { expectedEntrypoint: 'index.mjs', expectedRuntime: 'node' })));
  });

  it('reads a bundle from a path', async () => {
    const b = await bundle([{ name: 'index.mjs', data: 'process.stdout.write(JSON.stringify({ fromPath: true }))' }]);
    const file = join(base, 'bundle.zip');
    writeFileSync(file, b.bytes);
    assert.deepEqual(ok(await runIt(b, { bundle: file })).output, { fromPath: true });
    failed(await runIt(b, { bundle: file, caps: { maxZipBytes: 10 } }), 'invalid_bundle');
  });

  it('refuses python bundles when the configured interpreter is missing, with the reason', async () => {
    const noPython = await startTestSandbox({ pythonPath: '/nonexistent/python3' });
    try {
      assert.equal(noPython.state, 'bubblewrap', 'node bundles still run');
      const b = await bundle([{ name: 'main.py', data: 'print("{}")' }], { runtime: 'python' });
      const r = failed(await runIt(b, { sandbox: noPython }), 'spawn_failed');
      assert.match(r.message, /python bundles cannot run: .*\/nonexistent\/python3.* was not found/);
      ok(await runIt(await bundle([{ name: 'index.mjs', data: 'process.stdout.write("{}")' }]), { sandbox: noPython }));
    } finally {
      await noPython.dispose();
    }
  });
});

describe('runUdf in unsafe-none mode (no OS isolation)', () => {
  it('runs in a host directory with the service URLs in its environment', async () => {
    const r = ok(await runIt(await bundle([{ name: 'index.mjs', data: NODE_ECHO }]), { sandbox: unsafe }));
    assert.deepEqual(r.output.echo, INVOCATION);
    assert.equal(r.output.home, r.output.cwd);
    assert.ok(String(r.output.cwd).startsWith(unsafe.area.dir), String(r.output.cwd));
    const env = ok(await runIt(await bundle([{ name: 'index.mjs', data: 'process.stdout.write(JSON.stringify(process.env))' }]), { sandbox: unsafe })).output;
    assert.deepEqual(Object.keys(env).sort(), ['HOME', 'PATH', 'TRACE_DISPATCHER_URL', 'TRACE_QUERY_URL', 'TRACE_TASK_CAPABILITY_TOKEN']);
  });

  it('kills the process group on timeout and after exit', async () => {
    const r = failed(await runIt(await bundle([{ name: 'index.mjs', data: 'setInterval(() => {}, 1000)' }]), { sandbox: unsafe, timeoutMs: 400 }), 'timeout');
    assert.equal(r.signal, 'SIGKILL');
    const marker = `group-${randomUUID()}`;
    const leaver = { name: 'main.py', data: `import subprocess, sys\nsubprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "${marker}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\nprint("{}")\n` };
    ok(await runIt(await bundle([leaver], { runtime: 'python' }), { sandbox: unsafe }));
    assert.deepEqual(processesWith(marker), [], 'a child in the group dies with it');
  });
});
