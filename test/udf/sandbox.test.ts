/**
 * The sandbox itself: start-up detection (bubblewrap found and proven by a probe run, refused with
 * a reason that names the fix when it cannot start, the explicit unsafe-none opt-out), what a
 * sandboxed process can see and do (Python has no in-process seat belt, so it shows the OS
 * boundary alone), the resource limits, and cleanup: every run's files and processes go away,
 * also when the platform process is killed mid-run (the next start sweeps what it left).
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { Writable } from 'node:stream';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { pino } from 'pino';
import { runUdf, type RunUdfOptions, type UdfRunFailure, type UdfRunResult } from '../../src/udf/runner.js';
import { LocalProcessInvoker } from '../../src/udf/invoker.js';
import { defaultSandboxConfig, sandboxConfigFromEnv, SandboxConfigError } from '../../src/udf/sandbox/config.js';
import { processStartTime } from '../../src/udf/sandbox/workarea.js';
import { UdfSandbox as UdfSandboxClass } from '../../src/udf/sandbox/sandbox.js';
import type { UdfSandbox } from '../../src/udf/sandbox/sandbox.js';
import { goodBundle, sha256, type BundleEntry, type ManifestOpts } from './support/zips.js';
import { isRoot, processesWith, runDirs, startTestSandbox, testWorkRoot } from './support/sandbox.js';

const ROOT = new URL('../../', import.meta.url).pathname;
const TOKEN = `cap.${'t'.repeat(40)}`;
const INVOCATION = { task_id: randomUUID(), attempt: 1, lease_token: randomUUID(), capability_token: TOKEN };

let sb: UdfSandbox & { dispose(): Promise<void> };
before(async () => {
  sb = await startTestSandbox({ limits: { memoryMb: 256, processes: 32, fileSizeMb: 1, openFiles: 64, scratchMb: 2 } });
  assert.equal(sb.state, 'bubblewrap', sb.report.reason);
});
after(async () => {
  await sb?.dispose();
});

async function run(files: BundleEntry[], opts: ManifestOpts = {}, over: Partial<RunUdfOptions> = {}): Promise<UdfRunResult> {
  const bytes = await goodBundle(files, opts);
  const sandbox = over.sandbox ?? sb;
  const r = await runUdf({
    sandbox, bundle: bytes, expectedSha256: sha256(bytes), invocation: INVOCATION, timeoutMs: 20_000,
    maxStdoutBytes: 1 << 20, maxStderrBytes: 8192, capabilityToken: TOKEN, ...over,
  });
  assert.deepEqual(runDirs(sandbox), [], 'the run directory is removed');
  return r;
}
const py = (data: string) => [{ name: 'main.py', data }];
function failedWith(r: UdfRunResult, kind: UdfRunFailure['failure']): UdfRunFailure {
  assert.ok(!r.ok, `expected ${kind}, got ${JSON.stringify(r).slice(0, 400)}`);
  assert.equal(r.failure, kind, JSON.stringify(r).slice(0, 600));
  return r;
}

describe('sandbox start-up', () => {
  it('finds bubblewrap, resolves the runtimes and proves the boundary with a probe run', () => {
    const r = sb.report;
    assert.equal(r.state, 'bubblewrap');
    assert.match(r.bwrap!.version, /^\d+\.\d+/);
    assert.equal(r.runtimes.node?.ok, true);
    assert.equal(r.runtimes.python?.ok, true, r.runtimes.python?.reason);
    assert.deepEqual(sb.summary(), { udf_sandbox: 'bubblewrap' });
    if (isRoot) {
      assert.equal(r.identity?.dropsRoot, true);
      assert.notEqual(r.identity?.uid, 0);
    }
  });

  it('runs when the temporary directory is private to the platform (TMPDIR mode 0700): the default work root moves to /tmp', { skip: !isRoot && 'only root drops to a sandbox uid' }, async () => {
    const priv = join('/tmp', `trace-priv-${randomUUID().slice(0, 8)}`);
    mkdirSync(priv, { mode: 0o700 });
    const saved = process.env.TMPDIR;
    process.env.TMPDIR = priv;
    let moved: UdfSandbox | undefined;
    try {
      moved = await UdfSandboxClass.start({ config: defaultSandboxConfig() });
      assert.equal(moved.state, 'bubblewrap', moved.report.reason);
      assert.ok(moved.area.root.startsWith('/tmp/trace-udf-'), moved.area.root);
      const bytes = await goodBundle([{ name: 'index.mjs', data: 'process.stdout.write(JSON.stringify({outputs:[{ok:1}]}))' }]);
      const r = await runUdf({
        sandbox: moved, bundle: bytes, expectedSha256: sha256(bytes), invocation: INVOCATION, timeoutMs: 20_000,
        maxStdoutBytes: 1 << 20, maxStderrBytes: 8192, capabilityToken: TOKEN,
      });
      assert.ok(r.ok, JSON.stringify(r).slice(0, 600));
    } finally {
      if (saved === undefined) delete process.env.TMPDIR;
      else process.env.TMPDIR = saved;
      await moved?.close();
      await rm(priv, { recursive: true, force: true });
    }
  });

  it('refuses to run anything when bubblewrap is missing, naming the fix and the opt-out', async () => {
    const none = await startTestSandbox({ bwrapPath: '/nonexistent/bwrap' });
    try {
      assert.equal(none.state, 'unavailable');
      assert.match(none.report.reason!, /bubblewrap is not installed/);
      assert.match(none.report.reason!, /apt-get install -y bubblewrap/);
      assert.match(none.report.reason!, /TRACE_UDF_SANDBOX=unsafe-none/);
      assert.equal(none.summary().udf_sandbox, 'unavailable');
      const r = failedWith(await run([{ name: 'index.mjs', data: 'process.stdout.write("{}")' }], {}, { sandbox: none }), 'sandbox_unavailable');
      assert.match(r.message, /^the UDF sandbox is unavailable: bubblewrap is not installed/);
      const bytes = await goodBundle(py('print("{}")'), { runtime: 'python' });
      const inv = new LocalProcessInvoker({ sandbox: none, loadBundle: async () => ({ bytes, sha256: sha256(bytes) }), dispatcherUrl: 'http://127.0.0.1:1', queryUrl: 'http://127.0.0.1:1' });
      const res = await inv.invoke({ ...INVOCATION, udf: { bundle_id: 'b', entrypoint: 'main.py' } });
      assert.equal(res.status, 'failed');
      assert.equal((res as { retryable: boolean }).retryable, false, 'retrying cannot help until an operator acts');
    } finally {
      await none.dispose();
    }
  });

  it('runs without isolation only when asked to, and says so loudly', async () => {
    const lines: Array<Record<string, unknown>> = [];
    const log = pino({ level: 'info' }, new Writable({ write(chunk, _e, cb) { lines.push(JSON.parse(String(chunk)) as Record<string, unknown>); cb(); } }));
    const unsafe = await startTestSandbox({ mode: 'unsafe-none' }, log);
    try {
      assert.equal(unsafe.state, 'unsafe-none');
      assert.deepEqual(unsafe.summary(), { udf_sandbox: 'unsafe-none' });
      const warn = lines.find((l) => l.udf_sandbox === 'unsafe-none');
      assert.ok(warn, 'a start-up log line names the mode');
      assert.equal(warn.level, 40, 'at warn level');
      assert.match(String(warn.msg), /UDF SANDBOX DISABLED/);
    } finally {
      await unsafe.dispose();
    }
  });

  it('reads its settings from TRACE_UDF_* and names a bad variable', () => {
    const c = sandboxConfigFromEnv({ TRACE_UDF_SANDBOX: 'unsafe-none', TRACE_UDF_MEMORY_MB: '300', TRACE_UDF_MAX_PROCESSES: '20', TRACE_UDF_SANDBOX_UID: '12345', TRACE_UDF_WORK_ROOT: '/tmp/x' });
    assert.equal(c.mode, 'unsafe-none');
    assert.equal(c.limits.memoryMb, 300);
    assert.equal(c.limits.processes, 20);
    assert.equal(c.uid, 12345);
    assert.equal(c.gid, 12345);
    assert.equal(c.workRoot, '/tmp/x');
    assert.equal(sandboxConfigFromEnv({}).mode, 'bubblewrap', 'the sandbox is the default');
    assert.throws(() => sandboxConfigFromEnv({ TRACE_UDF_SANDBOX: 'none' }), (e: Error) => e instanceof SandboxConfigError && /TRACE_UDF_SANDBOX must be one of bubblewrap, unsafe-none/.test(e.message));
    assert.throws(() => sandboxConfigFromEnv({ TRACE_UDF_MEMORY_MB: 'lots' }), /TRACE_UDF_MEMORY_MB must be a whole number/);
    assert.throws(() => sandboxConfigFromEnv({ TRACE_UDF_MAX_PROCESSES: '2' }), /TRACE_UDF_MAX_PROCESSES must be between 16/);
    assert.throws(() => sandboxConfigFromEnv({ TRACE_UDF_WORK_ROOT: 'relative/dir' }), /TRACE_UDF_WORK_ROOT must be an absolute path/);
  });

  it('refuses a work root too long for the run sockets', async () => {
    await assert.rejects(startTestSandbox({ workRoot: `/tmp/${'d'.repeat(90)}` }), /too long/);
  });
});

describe('inside the sandbox (python: no in-process seat belt)', () => {
  it('sees only its runtime, bundle, scratch and channel; no host files, no network, not root', async () => {
    const r = await run(py(`
import json, os, socket, sys
out = {"uid": os.getuid(), "pid": os.getpid(), "ppid": os.getppid(), "root": sorted(os.listdir("/")), "hostname": socket.gethostname()}
out["procs"] = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
for name, path in [("passwd", "/etc/passwd"), ("home", os.path.expanduser("~root") + "/.bashrc"), ("hosts", "/etc/hosts")]:
    try:
        open(path).read(); out[name] = "read"
    except Exception as e:
        out[name] = type(e).__name__
try:
    socket.create_connection(("127.0.0.1", 5432), timeout=2); out["pg"] = "connected"
except Exception as e:
    out["pg"] = type(e).__name__
try:
    socket.create_connection(("1.1.1.1", 53), timeout=2); out["internet"] = "connected"
except Exception as e:
    out["internet"] = type(e).__name__
out["ifaces"] = sorted(n for _, n in socket.if_nameindex())
caps = [l for l in open("/proc/self/status") if l.startswith(("CapEff", "NoNewPrivs"))]
out["caps"] = "".join(caps)
for name, path in [("bundle", "/bundle/x"), ("root", "/x"), ("dev", "/dev/x"), ("channel", "/run/trace/x")]:
    try:
        open(path, "w").write("x"); out["write_" + name] = "written"
    except Exception as e:
        out["write_" + name] = type(e).__name__
open("/scratch/mine", "w").write("ok")
out["scratch"] = sorted(os.listdir("/scratch"))
json.dump(out, sys.stdout)
`), { runtime: 'python' });
    assert.ok(r.ok, JSON.stringify(r));
    const o = r.output as Record<string, any>;
    if (isRoot) assert.notEqual(o.uid, 0, 'never root on the host');
    assert.equal(o.pid > 1 && o.pid < 10, true, `its own PID namespace (pid ${o.pid})`);
    assert.equal(o.ppid, 1, 'its parent is the namespace init, not the platform');
    assert.ok(o.procs.length <= 4, `sees only its own processes: ${o.procs}`);
    assert.equal(o.hostname, 'udf');
    assert.deepEqual(o.root.filter((n: string) => !['bundle', 'dev', 'lib', 'lib64', 'proc', 'run', 'scratch', 'usr', 'root'].includes(n)), [], `root: ${o.root}`);
    assert.equal(o.passwd, 'FileNotFoundError');
    assert.equal(o.hosts, 'FileNotFoundError');
    assert.notEqual(o.home, 'read');
    assert.equal(o.pg, 'ConnectionRefusedError');
    assert.ok(['OSError', 'TimeoutError'].includes(o.internet), o.internet);
    assert.deepEqual(o.ifaces, ['lo']);
    assert.match(o.caps, /CapEff:\s+0000000000000000/);
    assert.match(o.caps, /NoNewPrivs:\s+1/);
    for (const k of ['write_bundle', 'write_root', 'write_dev', 'write_channel']) assert.equal(o[k], 'OSError', k);
    assert.deepEqual(o.scratch, ['mine']);
  });

  it('gets a fresh scratch directory every run', async () => {
    const code = 'import json, os, sys\nseen = sorted(os.listdir("/scratch"))\nopen("/scratch/left-behind", "w").write("x")\njson.dump({"seen": seen}, sys.stdout)\n';
    for (let i = 0; i < 2; i++) {
      const r = await run(py(code), { runtime: 'python' });
      assert.ok(r.ok, JSON.stringify(r));
      assert.deepEqual(r.output.seen, []);
    }
  });

  it('cannot create user namespaces of its own or regain privileges', async () => {
    const r = await run(py(`
import ctypes, json, os, sys
libc = ctypes.CDLL(None, use_errno=True)
out = {"unshare": libc.unshare(0x10000000), "errno": ctypes.get_errno()}
try:
    os.setuid(0); out["setuid"] = "root"
except Exception as e:
    out["setuid"] = type(e).__name__
json.dump(out, sys.stdout)
`), { runtime: 'python' });
    assert.ok(r.ok, JSON.stringify(r));
    assert.equal(r.output.unshare, -1, 'unshare(CLONE_NEWUSER) is refused');
    assert.match(String(r.output.setuid), /Error$/, 'setuid(0) is refused');
  });
});

describe('resource limits', () => {
  it('caps the processes of a run: a fork bomb hits the limit and dies with the run', async () => {
    const marker = `forker_${randomUUID().replace(/-/g, '')}.py`;
    const r = failedWith(await run([{ name: marker, data: `import os, sys, time
n = 0
while True:
    try:
        if os.fork() == 0:
            time.sleep(600)
            os._exit(0)
        n += 1
    except OSError as e:
        print("fork limit reached after %d forks: errno %d" % (n, e.errno), file=sys.stderr, flush=True)
        time.sleep(600)
` }], { runtime: 'python', entrypoint: marker }, { timeoutMs: 3000 }), 'timeout');
    const forks = Number(/fork limit reached after (\d+) forks: errno 11/.exec(r.stderr)?.[1]);
    assert.ok(forks > 0 && forks < 32, `stopped at the limit of 32 processes: ${r.stderr}`);
    assert.deepEqual(processesWith(marker), [], 'every forked process is gone');
  });

  it('caps memory: an 8 GB allocation fails with a clear error (python and node)', async () => {
    const p = failedWith(await run(py('b = bytearray(8 * 1024 ** 3)\n'), { runtime: 'python' }), 'exit_nonzero');
    assert.match(p.message, /ran out of memory; the limit is 256 MiB per process/);
    assert.match(p.stderr, /MemoryError/);
    const n = failedWith(await run([{ name: 'index.mjs', data: 'const a = []; for (let i = 0; i < 512; i++) a.push(Buffer.alloc(16 * 1024 * 1024, 1)); process.stdout.write("{}");' }]), 'exit_nonzero');
    assert.match(n.message, /ran out of memory; the limit is 256 MiB per process/);
  });

  it('caps file sizes, the scratch size and open files', async () => {
    const r = await run(py(`
import json, os, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
out = {}
try:
    with open("/scratch/big", "wb") as f:
        f.write(b"x" * (1024 * 1024 + 1))
    out["fsize"] = "written"
except OSError as e:
    out["fsize"] = e.errno
os.remove("/scratch/big")
total = 0
try:
    for i in range(10):
        with open("/scratch/part%d" % i, "wb") as f:
            f.write(b"x" * (512 * 1024))
        total += 512 * 1024
    out["scratch"] = "unbounded"
except OSError as e:
    out["scratch"] = e.errno
out["scratch_bytes"] = total
fds = []
try:
    for i in range(1000):
        fds.append(os.open("/dev/null", os.O_RDONLY))
    out["nofile"] = "unbounded"
except OSError as e:
    out["nofile"] = len(fds)
json.dump(out, sys.stdout)
`), { runtime: 'python' });
    assert.ok(r.ok, JSON.stringify(r));
    assert.equal(r.output.fsize, 27, 'EFBIG past the 1 MiB file limit');
    assert.equal(r.output.scratch, 28, 'ENOSPC when the 2 MiB scratch is full');
    assert.ok(Number(r.output.scratch_bytes) <= 2 * 1024 * 1024);
    assert.ok(Number(r.output.nofile) < 64, `open files capped: ${r.output.nofile}`);
  });

  it('kills a process that burns more CPU time than allowed, naming the signal', async () => {
    const cpu = await startTestSandbox({ limits: { memoryMb: 256, processes: 32, fileSizeMb: 1, openFiles: 64, scratchMb: 2, cpuSeconds: 1 } });
    try {
      const r = failedWith(await run(py('while True:\n    pass\n'), { runtime: 'python' }, { sandbox: cpu, timeoutMs: 20_000 }), 'exit_nonzero');
      assert.equal(r.signal, 'SIGXCPU');
      assert.match(r.message, /killed by SIGXCPU: a process used more than its CPU time limit of 1 s/);
    } finally {
      await cpu.dispose();
    }
  });
});

describe('cleanup after a crash', () => {
  it('a killed platform takes its runs down with it; the next start removes what it left', async () => {
    const workRoot = testWorkRoot();
    const id = randomUUID();
    const marker = `crash-${id}`;
    // The marker is assembled inside the platform process, so only the UDF's command line has it.
    const script = `
const marker = ['crash', ${JSON.stringify(id)}].join('-');
import { UdfSandbox } from ${JSON.stringify(join(ROOT, 'src/udf/sandbox/sandbox.ts'))};
import { defaultSandboxConfig } from ${JSON.stringify(join(ROOT, 'src/udf/sandbox/config.ts'))};
import { runUdf } from ${JSON.stringify(join(ROOT, 'src/udf/runner.ts'))};
import { goodBundle, sha256 } from ${JSON.stringify(join(ROOT, 'test/udf/support/zips.ts'))};
const sb = await UdfSandbox.start({ config: defaultSandboxConfig({ workRoot: ${JSON.stringify(workRoot)} }) });
const bytes = await goodBundle([{ name: 'main.py', data: 'import os, sys, time\\nif os.fork() == 0:\\n    os.setsid()\\n    os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(600)", "' + marker + '"])\\ntime.sleep(600)\\n' }], { runtime: 'python' });
await runUdf({ sandbox: sb, bundle: bytes, expectedSha256: sha256(bytes), invocation: ${JSON.stringify(INVOCATION)}, timeoutMs: 600000, maxStdoutBytes: 1000, maxStderrBytes: 1000, capabilityToken: 'x'.repeat(20) });
`;
    const platform = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { cwd: ROOT, stdio: 'ignore', env: { ...process.env, NODE_ENV: 'test' } });
    try {
      await waitUntil('the UDF process is running', () => processesWith(marker).length > 0, 60_000);
      const instance = readdirSync(workRoot).find((n) => n.startsWith(`${platform.pid}-`))!;
      assert.ok(instance, 'the platform has its instance directory');
      assert.ok(readdirSync(join(workRoot, instance)).some((n) => n !== 'view'), 'a run directory exists while the UDF runs');
      platform.kill('SIGKILL');
      await waitUntil('the sandbox dies with the platform', () => processesWith(marker).length === 0, 10_000);
      assert.ok(existsSync(join(workRoot, instance)), 'the crash left its directory behind');
      // A live process's directory must survive the sweep.
      const live = join(workRoot, `${process.pid}-${processStartTime(process.pid)}-abcdef`);
      mkdirSync(live, { mode: 0o700 });
      writeFileSync(join(live, 'keep'), 'x');
      const next = await startTestSandbox({ workRoot });
      try {
        assert.equal(next.report.swept, 1);
        assert.equal(existsSync(join(workRoot, instance)), false, 'the next start removed it');
        assert.ok(existsSync(join(live, 'keep')), 'directories of live processes are kept');
      } finally {
        await next.close();
      }
    } finally {
      platform.kill('SIGKILL');
      await rm(workRoot, { recursive: true, force: true });
    }
  });
});

async function waitUntil(what: string, fn: () => boolean, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!fn()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
