/**
 * The local UDF runner: runs one untrusted bundle once (specs/udf_bundle_manifest.md, execution
 * contract v1) and reports a typed outcome. It never throws for anything the bundle does.
 *
 * Steps: verify the bundle's SHA-256 against the pinned hash, validate it (inspect), extract the
 * declared files into a fresh run directory under the sandbox's work area, start the entrypoint
 * with an empty environment plus exactly the variables listed below, write the invocation JSON
 * to stdin, read one JSON object from stdout (bounded), keep stderr (bounded, secrets redacted),
 * kill everything the run started on timeout and after exit, and remove the run directory.
 *
 * Isolation comes from the `UdfSandbox` passed in (src/udf/sandbox/README.md):
 * - `bubblewrap` (default): fresh user, PID, mount, network, IPC and UTS namespaces, an
 *   unprivileged uid, read-only runtime and bundle, a size-bounded `/scratch`, rlimits, no
 *   network; the task routes are reached through a per-run Unix socket the runner owns and
 *   filters (`TRACE_TASK_SOCKET`). Node also keeps its permission model inside.
 * - `unavailable`: every run fails with `sandbox_unavailable` and the reason (fail closed).
 * - `unsafe-none` (explicit opt-in): the child runs as this OS user in its own process group,
 *   Node under its permission model, Python under `-I -S -B`, with `TRACE_DISPATCHER_URL` and
 *   `TRACE_QUERY_URL` to reach the services directly. Nothing else is enforced.
 *
 * Environment of the UDF process, nothing else:
 * - `PATH=/usr/local/bin:/usr/bin:/bin`, `HOME` (and `TMPDIR` in the sandbox: `/scratch`)
 * - `TRACE_TASK_CAPABILITY_TOKEN`; `TRACE_TASK_SOCKET` in the sandbox, `TRACE_DISPATCHER_URL`
 *   and `TRACE_QUERY_URL` in unsafe-none
 * - names in the manifest's `env_allowlist` that the caller supplies a value for (the caller's
 *   `envAllowlist` is the runner-owned allowlist; values never come from this process's env)
 * - the caller's `extraEnv` (trusted; may not override the names above or steer interpreters)
 */
import { execFile, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, readFile, realpath, rm, stat, writeFile } from 'node:fs/promises';
import { constants as osConstants, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { isTraceError, type Problem } from '../core/errors.js';
import { silentLogger, type Logger } from '../core/log.js';
import { extractBundle, inspectBundle } from './bundle.js';
import { ENV_NAME_RE, isReservedEnvName, resolveCaps, type BundleCaps, type BundleManifest, type BundleRuntime } from './manifest.js';
import { openTaskChannel, type TaskChannel, type TaskFence } from './sandbox/channel.js';
import { SANDBOX_PATHS, type UdfSandbox } from './sandbox/sandbox.js';
import { RUN_SOCKET, processStartTime, removeDir } from './sandbox/workarea.js';

export type UdfFailureKind = 'hash_mismatch' | 'invalid_bundle' | 'timeout' | 'bad_output' | 'exit_nonzero' | 'spawn_failed' | 'sandbox_unavailable';

export interface RunUdfOptions {
  /** The isolation every run goes through (created once at start-up). */
  sandbox: UdfSandbox;
  /** The bundle zip: a path or its bytes. */
  bundle: string | Buffer;
  /** The SHA-256 pinned at upload; the bytes must hash to it. */
  expectedSha256: string;
  /** Written to the UDF's stdin as JSON. */
  invocation: Record<string, unknown>;
  timeoutMs: number;
  maxStdoutBytes: number;
  maxStderrBytes: number;
  /**
   * The runner-owned env allowlist with its values: a name the manifest lists in
   * `env_allowlist` is set only when it is a key here. Values never come from this process's env.
   */
  envAllowlist?: Record<string, string>;
  capabilityToken: string;
  dispatcherUrl?: string;
  queryUrl?: string;
  /** Further trusted variables from the caller. */
  extraEnv?: Record<string, string>;
  /** When set, the manifest entrypoint must equal it (the DAG's `udf.entrypoint`). */
  expectedEntrypoint?: string;
  /** When set, the manifest runtime must equal it (the runtime recorded at upload). */
  expectedRuntime?: BundleRuntime;
  caps?: Partial<BundleCaps>;
  /** Node heap limit for the UDF (`--max-old-space-size`). */
  nodeMaxOldSpaceMb?: number;
  /** Aborting ends the run at once, its whole process tree with it (the host is shutting down). */
  signal?: AbortSignal;
  /**
   * The attempt the task channel accepts calls for; default: `task_id`, `attempt` and
   * `lease_token` of the invocation.
   */
  fence?: TaskFence;
  /** Where the task channel logs what it refuses (never tokens). */
  log?: Logger;
}

interface RunCommon {
  /** Tail of stderr, at most maxStderrBytes, with the token and env values redacted. */
  stderr: string;
  stderrTruncated: boolean;
  durationMs: number;
}

export interface UdfRunSuccess extends RunCommon {
  ok: true;
  output: Record<string, unknown>;
  exitCode: 0;
}

export interface UdfRunFailure extends RunCommon {
  ok: false;
  failure: UdfFailureKind;
  /** A safe sentence: never the token, never raw output. */
  message: string;
  problems?: Problem[];
  exitCode: number | null;
  signal: string | null;
}

export type UdfRunResult = UdfRunSuccess | UdfRunFailure;

export const MINIMAL_PATH = '/usr/local/bin:/usr/bin:/bin';

/** Variables the runner owns; extraEnv may not set them. */
const RUNNER_OWNED = new Set(['PATH', 'HOME', 'TMPDIR', 'TRACE_TASK_CAPABILITY_TOKEN', 'TRACE_TASK_SOCKET', 'TRACE_DISPATCHER_URL', 'TRACE_QUERY_URL']);

const PYTHON_BOOTSTRAP = [
  'import sys, runpy',
  'd, e = sys.argv[1], sys.argv[2]',
  'sys.path.insert(0, d)',
  'sys.argv = [e]',
  "runpy.run_path(e, run_name='__main__')",
].join('\n');

// ---------------------------------------------------------------------------------------------
// Node sandbox detection.

export interface NodeSandbox {
  /** `--permission` or `--experimental-permission`. */
  permissionFlag: string;
  /** `--disable-warning=ExperimentalWarning` or `--no-warnings`. */
  warningFlag: string;
  /** This Node accepts several `--allow-fs-*` flags (bundle read, scratch read and write). */
  multiplePaths: boolean;
}

function run(file: string, args: string[], cwd: string): Promise<{ code: number; stdout: string }> {
  return new Promise((res) => {
    execFile(file, args, { cwd, env: {}, timeout: 15_000 }, (err, stdout) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? ((err as { code: number }).code) : 1) : 0;
      res({ code, stdout: String(stdout) });
    });
  });
}

const PROBE_JS = `
const fs = require('fs');
const out = {};
try { fs.readFileSync(__dirname + '/own.txt'); out.own = 'read'; } catch (e) { out.own = e.code || 'error'; }
try { fs.readFileSync(process.argv[2]); out.outside = 'read'; } catch (e) { out.outside = e.code || 'error'; }
try { require('child_process').spawnSync(process.execPath, ['-e', '0']); out.child = 'ran'; } catch (e) { out.child = e.code || 'error'; }
try { fs.writeFileSync(__dirname + '/w.txt', 'x'); out.write = 'ok'; } catch (e) { out.write = e.code || 'error'; }
if (process.argv[3]) {
  try { fs.writeFileSync(process.argv[3] + '/s.txt', 'x'); out.scratch = fs.readFileSync(process.argv[3] + '/s.txt', 'utf8'); } catch (e) { out.scratch = e.code || 'error'; }
}
process.stdout.write(JSON.stringify(out));
`;

async function probeNodeSandbox(): Promise<NodeSandbox | null> {
  const base = await mkdtemp(join(tmpdir(), 'trace-udf-probe-'));
  try {
    const dir = join(base, 'sandbox');
    await mkdir(dir, { mode: 0o700 });
    await writeFile(join(dir, 'probe.js'), PROBE_JS);
    await writeFile(join(dir, 'own.txt'), 'ok');
    const outside = join(base, 'outside.txt');
    await writeFile(outside, 'secret');
    const warn = (await run(process.execPath, ['--disable-warning=ExperimentalWarning', '-e', '0'], dir)).code === 0
      ? '--disable-warning=ExperimentalWarning'
      : '--no-warnings';
    for (const flag of ['--permission', '--experimental-permission']) {
      const r = await run(process.execPath, [flag, warn, `--allow-fs-read=${dir}`, join(dir, 'probe.js'), outside], dir);
      if (r.code !== 0) continue;
      try {
        const got = JSON.parse(r.stdout) as Record<string, string>;
        if (got.own === 'read' && got.outside === 'ERR_ACCESS_DENIED' && got.child === 'ERR_ACCESS_DENIED' && got.write === 'ERR_ACCESS_DENIED') {
          const scratch = join(base, 'scratch');
          await mkdir(scratch, { mode: 0o700 });
          const m = await run(process.execPath, [flag, warn, `--allow-fs-read=${dir}`, `--allow-fs-read=${scratch}`, `--allow-fs-write=${scratch}`, join(dir, 'probe.js'), outside, scratch], dir);
          let multiplePaths = false;
          try {
            const g = JSON.parse(m.stdout) as Record<string, string>;
            multiplePaths = m.code === 0 && g.own === 'read' && g.outside === 'ERR_ACCESS_DENIED' && g.write === 'ERR_ACCESS_DENIED' && g.scratch === 'x';
          } catch {
            multiplePaths = false;
          }
          return { permissionFlag: flag, warningFlag: warn, multiplePaths };
        }
      } catch {
        // not this flag
      }
    }
    return null;
  } finally {
    await rm(base, { recursive: true, force: true });
  }
}

let sandboxProbe: Promise<NodeSandbox | null> | undefined;

/** The Node permission-model flags that really work on this Node, probed once per process. */
export function detectNodeSandbox(): Promise<NodeSandbox | null> {
  sandboxProbe ??= probeNodeSandbox().catch(() => null);
  return sandboxProbe;
}

// ---------------------------------------------------------------------------------------------

function failure(kind: UdfFailureKind, message: string, extra: Partial<UdfRunFailure> = {}): UdfRunFailure {
  return { ok: false, failure: kind, message, stderr: '', stderrTruncated: false, exitCode: null, signal: null, durationMs: 0, ...extra };
}

type Placement = { kind: 'sandbox' } | { kind: 'host'; dir: string };

function buildEnv(opts: RunUdfOptions, manifest: BundleManifest, where: Placement): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [name, value] of Object.entries(opts.extraEnv ?? {})) {
    if (!ENV_NAME_RE.test(name) || RUNNER_OWNED.has(name) || /^(NODE_|PYTHON|LD_|DYLD_)/.test(name)) {
      throw new Error(`extraEnv may not set ${JSON.stringify(name)}`);
    }
    env[name] = value;
  }
  const values = opts.envAllowlist ?? {};
  for (const name of manifest.env_allowlist ?? []) {
    if (isReservedEnvName(name) || !Object.prototype.hasOwnProperty.call(values, name)) continue;
    const v = values[name];
    if (typeof v === 'string') env[name] = v;
  }
  env.PATH = MINIMAL_PATH;
  env.TRACE_TASK_CAPABILITY_TOKEN = opts.capabilityToken;
  if (where.kind === 'sandbox') {
    env.HOME = SANDBOX_PATHS.scratch;
    env.TMPDIR = SANDBOX_PATHS.scratch;
    env.TRACE_TASK_SOCKET = SANDBOX_PATHS.socket;
  } else {
    env.HOME = where.dir;
    if (opts.dispatcherUrl) env.TRACE_DISPATCHER_URL = opts.dispatcherUrl;
    if (opts.queryUrl) env.TRACE_QUERY_URL = opts.queryUrl;
  }
  return env;
}

/** Strings that must never appear in returned stderr. */
function secretsOf(opts: RunUdfOptions): Buffer[] {
  const out = [opts.capabilityToken, ...Object.values(opts.envAllowlist ?? {})].filter((s) => typeof s === 'string' && s.length >= 6);
  return [...new Set(out)].map((s) => Buffer.from(s, 'utf8'));
}

/** Keeps the last `keep` bytes of a stream. */
class TailBuffer {
  private chunks: Buffer[] = [];
  private held = 0;
  total = 0;
  constructor(private readonly keep: number) {}
  push(chunk: Buffer): void {
    this.total += chunk.length;
    this.chunks.push(chunk);
    this.held += chunk.length;
    while (this.chunks.length > 1 && this.held - this.chunks[0]!.length >= this.keep) {
      this.held -= this.chunks.shift()!.length;
    }
  }
  bytes(): Buffer {
    const all = Buffer.concat(this.chunks);
    return all.length > this.keep ? all.subarray(all.length - this.keep) : all;
  }
}

/**
 * The last `max` bytes of stderr with every secret occurrence replaced. The window holds `max`
 * plus the longest secret's length, so any occurrence that reaches into the kept region lies
 * wholly inside the window and is found; a partly kept occurrence is replaced whole.
 */
function finishStderr(tail: TailBuffer, max: number, secrets: Buffer[]): { stderr: string; stderrTruncated: boolean } {
  const win = tail.bytes();
  const start = Math.max(0, win.length - max);
  const ranges: Array<[number, number]> = [];
  for (const s of secrets) {
    for (let i = win.indexOf(s); i !== -1; i = win.indexOf(s, i + 1)) ranges.push([i, i + s.length]);
  }
  ranges.sort((a, b) => a[0] - b[0]);
  const parts: Buffer[] = [];
  let cursor = start;
  for (const [a, b] of ranges) {
    if (b <= cursor) continue;
    const from = Math.max(a, cursor);
    parts.push(win.subarray(cursor, from), Buffer.from('[redacted]'));
    cursor = b;
  }
  parts.push(win.subarray(Math.min(cursor, win.length)));
  return { stderr: Buffer.concat(parts).toString('utf8'), stderrTruncated: tail.total > max };
}

async function loadBytes(bundle: string | Buffer, caps: BundleCaps): Promise<Buffer | string> {
  if (Buffer.isBuffer(bundle)) return bundle;
  const st = await stat(bundle);
  if (st.size > caps.maxZipBytes) return `bundle is ${st.size} bytes; the limit is ${caps.maxZipBytes}`;
  return readFile(bundle);
}

function fenceOf(opts: RunUdfOptions): TaskFence | undefined {
  if (opts.fence) return opts.fence;
  const inv = opts.invocation;
  if (typeof inv.task_id === 'string' && typeof inv.attempt === 'number' && typeof inv.lease_token === 'string') {
    return { task_id: inv.task_id, attempt: inv.attempt, lease_token: inv.lease_token };
  }
  return undefined;
}

/** Runs one UDF bundle to completion. See the module comment for the exact contract. */
export async function runUdf(opts: RunUdfOptions): Promise<UdfRunResult> {
  const caps = resolveCaps(opts.caps);
  const loaded = await loadBytes(opts.bundle, caps);
  if (typeof loaded === 'string') return failure('invalid_bundle', loaded);
  const bytes = loaded;
  // Hash first, once, over the exact bytes everything below reads (no re-reading a path).
  const actual = createHash('sha256').update(bytes).digest('hex');
  if (actual !== opts.expectedSha256.toLowerCase()) {
    return failure('hash_mismatch', 'bundle SHA-256 does not match the pinned hash');
  }
  let manifest: BundleManifest;
  try {
    manifest = (await inspectBundle(bytes, caps)).manifest;
  } catch (e) {
    if (isTraceError(e) && e.code === 'BUNDLE_INVALID') return failure('invalid_bundle', e.message, e.problems ? { problems: e.problems } : {});
    throw e;
  }
  if (opts.expectedEntrypoint !== undefined && opts.expectedEntrypoint !== manifest.entrypoint) {
    return failure('invalid_bundle', 'the job entrypoint does not match bundle_manifest.json entrypoint', {
      problems: [{ path: 'entrypoint', message: 'must equal the udf.entrypoint of the job' }],
    });
  }
  if (opts.expectedRuntime !== undefined && opts.expectedRuntime !== manifest.runtime) {
    return failure('invalid_bundle', 'the bundle runtime does not match the runtime recorded at upload', {
      problems: [{ path: 'runtime', message: `must be ${opts.expectedRuntime}` }],
    });
  }

  const sandbox = opts.sandbox;
  if (sandbox.state === 'unavailable') return failure('sandbox_unavailable', sandbox.refusal(manifest.runtime)!);
  const refusal = sandbox.refusal(manifest.runtime);
  if (refusal) return failure('spawn_failed', refusal);

  let nodeSandbox: NodeSandbox | null = null;
  if (manifest.runtime === 'node') {
    nodeSandbox = await detectNodeSandbox();
    if (!nodeSandbox) return failure('spawn_failed', 'this Node.js has no working permission model; refusing to run node bundles');
  }

  const runDir = await sandbox.createRun();
  let channel: TaskChannel | undefined;
  try {
    let bundleDir: string;
    try {
      bundleDir = (await extractBundle(bytes, manifest, runDir, caps)).dir;
    } catch (e) {
      if (isTraceError(e) && e.code === 'BUNDLE_INVALID') return failure('invalid_bundle', e.message, e.problems ? { problems: e.problems } : {});
      throw e;
    }
    bundleDir = await realpath(bundleDir);

    if (sandbox.state === 'unsafe-none') {
      const env = buildEnv(opts, manifest, { kind: 'host', dir: bundleDir });
      let file: string;
      let args: string[];
      if (manifest.runtime === 'node') {
        file = process.execPath;
        args = [nodeSandbox!.permissionFlag, nodeSandbox!.warningFlag, `--allow-fs-read=${bundleDir}`, '--no-addons'];
        if (opts.nodeMaxOldSpaceMb) args.push(`--max-old-space-size=${Math.floor(opts.nodeMaxOldSpaceMb)}`);
        args.push(join(bundleDir, manifest.entrypoint));
      } else {
        file = sandbox.interpreter('python') ?? 'python3';
        args = ['-I', '-S', '-B', '-c', PYTHON_BOOTSTRAP, bundleDir, manifest.entrypoint];
      }
      return await execute({ file, args, cwd: bundleDir, env, opts, sandboxed: false, runtime: manifest.runtime });
    }

    const socketPath = join(runDir, RUN_SOCKET);
    const channelDir = dirname(socketPath);
    await mkdir(channelDir, { mode: 0o700 });
    await sandbox.handOver(runDir);
    const fence = fenceOf(opts);
    if (!fence) return failure('spawn_failed', 'the invocation names no task attempt (task_id, attempt, lease_token) for the task channel');
    channel = await openTaskChannel({
      socketPath,
      ...(opts.dispatcherUrl ? { dispatcherUrl: opts.dispatcherUrl } : {}),
      ...(opts.queryUrl ? { queryUrl: opts.queryUrl } : {}),
      capabilityToken: opts.capabilityToken,
      fence,
      limits: sandbox.config.channel,
      ...(sandbox.runOwner ? { owner: sandbox.runOwner } : {}),
      log: opts.log ?? silentLogger,
    });
    const env = buildEnv(opts, manifest, { kind: 'sandbox' });
    const entry = `${SANDBOX_PATHS.bundle}/${manifest.entrypoint}`;
    let argv: string[];
    if (manifest.runtime === 'node') {
      const ns = nodeSandbox!;
      argv = [ns.permissionFlag, ns.warningFlag, `--allow-fs-read=${SANDBOX_PATHS.bundle}`];
      if (ns.multiplePaths) argv.push(`--allow-fs-read=${SANDBOX_PATHS.scratch}`, `--allow-fs-write=${SANDBOX_PATHS.scratch}`);
      argv.push('--no-addons');
      if (opts.nodeMaxOldSpaceMb) argv.push(`--max-old-space-size=${Math.floor(opts.nodeMaxOldSpaceMb)}`);
      argv.push(entry);
    } else {
      argv = ['-I', '-S', '-B', '-c', PYTHON_BOOTSTRAP, SANDBOX_PATHS.bundle, manifest.entrypoint];
    }
    const cmd = sandbox.command({ runtime: manifest.runtime, bundleDir, channelDir, argv, timeoutMs: opts.timeoutMs });
    return await execute({ file: cmd.file, args: cmd.args, cwd: runDir, env, opts, sandboxed: true, runtime: manifest.runtime });
  } finally {
    await channel?.close();
    await removeDir(runDir);
  }
}

interface ExecSpec {
  file: string;
  args: string[];
  cwd: string;
  env: Record<string, string>;
  opts: RunUdfOptions;
  /** Spawned through the sandbox: fd 3 carries bwrap's JSON status (child pid, exit code). */
  sandboxed: boolean;
  runtime: BundleRuntime;
}

const SIGNAL_NAMES = new Map<number, string>(Object.entries(osConstants.signals).map(([name, n]) => [n, name]));
const OUT_OF_MEMORY = /MemoryError|heap out of memory|Array buffer allocation failed|Cannot allocate memory|std::bad_alloc|out of memory/i;

function describeExit(code: number | null, signal: string | null, stderr: string, spec: ExecSpec): string {
  const lim = spec.opts.sandbox.config.limits;
  let msg = signal ? `the UDF was killed by ${signal}` : `the UDF exited with code ${code}`;
  if (signal === 'SIGXCPU') msg += `: a process used more than its CPU time limit of ${lim.cpuSeconds ?? Math.max(1, Math.ceil(spec.opts.timeoutMs / 1000))} s`;
  else if (signal === 'SIGXFSZ') msg += `: it wrote a file larger than the limit of ${lim.fileSizeMb} MiB`;
  if (spec.sandboxed && OUT_OF_MEMORY.test(stderr)) msg += ` (it ran out of memory; the limit is ${lim.memoryMb} MiB per process)`;
  return msg;
}

async function execute(spec: ExecSpec): Promise<UdfRunResult> {
  const { opts } = spec;
  const secrets = secretsOf(opts);
  const margin = secrets.reduce((m, s) => Math.max(m, Buffer.byteLength(s)), 0);
  const errTail = new TailBuffer(opts.maxStderrBytes + margin);
  const outChunks: Buffer[] = [];
  let outBytes = 0;
  let outTooLarge = false;
  let timedOut = false;
  let sandboxPid: number | undefined;
  let sandboxStart: string | undefined;
  let statusText = '';

  const started = performance.now();
  const child = spawn(spec.file, spec.args, {
    cwd: spec.cwd,
    env: spec.env,
    detached: true,
    stdio: spec.sandboxed ? ['pipe', 'pipe', 'pipe', 'pipe'] : ['pipe', 'pipe', 'pipe'],
  });
  const killGroup = () => {
    if (child.pid === undefined) return;
    try {
      process.kill(-child.pid, 'SIGKILL');
    } catch {
      // already gone
    }
  };
  let fallback: NodeJS.Timeout | undefined;
  /**
   * Ends the run. In the sandbox, killing the namespace's first process makes the kernel kill
   * every process in the PID namespace (setsid or double-forked ones included); bwrap exits only
   * after that, so the exit event below means the whole tree is gone.
   */
  const killRun = () => {
    if (spec.sandboxed && sandboxPid !== undefined) {
      // Only while it is still that process (same start time): a reaped pid may be reused.
      if (child.exitCode === null && child.signalCode === null && processStartTime(sandboxPid) === sandboxStart) {
        try {
          process.kill(sandboxPid, 'SIGKILL');
        } catch {
          // already gone
        }
      }
      fallback ??= setTimeout(killGroup, 5_000);
      return;
    }
    killGroup();
  };
  const spawned = new Promise<Error | null>((res) => {
    child.once('spawn', () => res(null));
    child.once('error', (err) => res(err));
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((res) => {
    child.once('exit', (code, signal) => res({ code, signal }));
  });
  const closed = (s: NodeJS.ReadableStream) => new Promise<void>((res) => {
    s.once('close', () => res());
    s.once('error', () => res());
  });
  const outClosed = closed(child.stdout);
  const errClosed = closed(child.stderr);
  const status = spec.sandboxed ? (child.stdio[3] as NodeJS.ReadableStream | null) : null;
  status?.on('data', (c: Buffer) => {
    if (statusText.length > 4096) return;
    statusText += c.toString('utf8');
    const pid = /"child-pid"\s*:\s*(\d+)/.exec(statusText);
    if (pid && sandboxPid === undefined) {
      sandboxPid = Number(pid[1]);
      sandboxStart = processStartTime(sandboxPid);
      if (timedOut || outTooLarge || opts.signal?.aborted) killRun();
    }
  });
  status?.on('error', () => undefined);

  child.stdout.on('data', (c: Buffer) => {
    if (outTooLarge) return;
    outBytes += c.length;
    if (outBytes > opts.maxStdoutBytes) {
      outTooLarge = true;
      outChunks.length = 0;
      killRun();
      return;
    }
    outChunks.push(c);
  });
  child.stderr.on('data', (c: Buffer) => errTail.push(c));
  child.stdin.on('error', () => undefined); // the UDF may exit without reading stdin

  const spawnError = await spawned;
  if (spawnError) {
    return failure('spawn_failed', `could not start the ${spec.runtime} runtime (${(spawnError as NodeJS.ErrnoException).code ?? 'error'})`);
  }
  const timer = setTimeout(() => {
    timedOut = true;
    killRun();
  }, opts.timeoutMs);
  const abort = () => killRun();
  if (opts.signal?.aborted) abort();
  opts.signal?.addEventListener('abort', abort, { once: true });
  child.stdin.end(JSON.stringify(opts.invocation));

  const { code, signal: hostSignal } = await exited;
  clearTimeout(timer);
  opts.signal?.removeEventListener('abort', abort);
  if (fallback) clearTimeout(fallback);
  const durationMs = Math.round(performance.now() - started);
  // Anything left in the group dies with it (unsafe-none: the UDF's own process group).
  killGroup();
  // Grandchildren that escaped the group could hold the pipes open: wait briefly, then cut.
  const drained = await Promise.race([Promise.all([outClosed, errClosed]).then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), 2000))]);
  if (!drained) {
    child.stdout.destroy();
    child.stderr.destroy();
  }
  status?.removeAllListeners('data');

  // bwrap reports a signalled child as 128 + the signal number.
  let signal: string | null = hostSignal ?? null;
  if (spec.sandboxed && signal === null && code !== null && code > 128 && SIGNAL_NAMES.has(code - 128)) signal = SIGNAL_NAMES.get(code - 128)!;
  const tail = finishStderr(errTail, opts.maxStderrBytes, secrets);
  const common = { ...tail, durationMs, exitCode: code, signal };
  if (timedOut) return { ok: false, failure: 'timeout', message: `the UDF did not finish within ${opts.timeoutMs} ms; all its processes were killed`, ...common };
  if (outTooLarge) return { ok: false, failure: 'bad_output', message: `stdout exceeded ${opts.maxStdoutBytes} bytes`, ...common };
  // The sandbox itself failed to set up (bwrap, setpriv or prlimit speak first, then exit 1).
  const setup = /^(bwrap|setpriv|prlimit|unshare|mount): .*/.exec(tail.stderr.trimStart());
  if (spec.sandboxed && code !== 0 && (sandboxPid === undefined || (code === 1 && setup))) {
    return { ok: false, failure: 'spawn_failed', message: `the sandbox could not start (${(setup?.[0] ?? 'no message').slice(0, 300)})`, ...common };
  }
  if (code !== 0) return { ok: false, failure: 'exit_nonzero', message: describeExit(code, signal, tail.stderr, spec), ...common };
  const text = Buffer.concat(outChunks).toString('utf8').trim();
  let output: unknown;
  try {
    output = text === '' ? undefined : JSON.parse(text);
  } catch {
    return { ok: false, failure: 'bad_output', message: 'stdout is not a single JSON value', ...common };
  }
  if (output === null || typeof output !== 'object' || Array.isArray(output)) {
    return { ok: false, failure: 'bad_output', message: 'stdout must be exactly one JSON object', ...common };
  }
  return { ok: true, output: output as Record<string, unknown>, stderr: common.stderr, stderrTruncated: common.stderrTruncated, durationMs, exitCode: 0 };
}
