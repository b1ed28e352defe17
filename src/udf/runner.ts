/**
 * The local UDF runner: runs one untrusted bundle once (specs/udf_bundle_manifest.md, execution
 * contract v1) and reports a typed outcome. It never throws for anything the bundle does.
 *
 * Steps: verify the bundle's SHA-256 against the pinned hash, validate it (inspect), extract the
 * declared files into a fresh private 0700 directory, start the entrypoint there with an empty
 * environment plus exactly the variables listed below, write the invocation JSON to stdin,
 * read one JSON object from stdout (bounded), keep stderr (bounded, secrets redacted), kill the
 * whole process group on timeout and after exit, and remove the directory.
 *
 * Environment of the UDF process, nothing else:
 * - `PATH=/usr/local/bin:/usr/bin:/bin`, `HOME=<private dir>`
 * - `TRACE_TASK_CAPABILITY_TOKEN`, `TRACE_DISPATCHER_URL`, `TRACE_QUERY_URL`
 * - names in the manifest's `env_allowlist` that the caller supplies a value for (the caller's
 *   `envAllowlist` is the runner-owned allowlist; values never come from this process's env)
 * - the caller's `extraEnv` (trusted; may not override the names above or steer interpreters)
 *
 * Isolation, honestly stated:
 * - node: Node's permission model (`--permission` on Node 22.13+/23.5+, `--experimental-permission`
 *   on Node 20/21; detected at first use by a probe that checks the sandbox really denies) with
 *   `--allow-fs-read=<private dir>` only: no reads outside the bundle, no writes at all, no child
 *   processes, no worker threads, no native addons. Node documents this model as a seat belt for
 *   trusted code, not a boundary against malicious code. If no working flag is found, node
 *   bundles fail with `spawn_failed` (fail closed).
 * - python: `-I -S -B` (isolated mode: no PYTHON* variables, no user or system site-packages, no
 *   .pyc writes) with the bundle directory put first on `sys.path`. Python has no in-process
 *   sandbox: it can read whatever this OS user can.
 * - Neither runtime is network-restricted here. The UDF needs HTTP to the Dispatcher and Query
 *   Service only; restricting egress to those (Lambda in a VPC without NAT, a network namespace,
 *   a firewall) is the deployment's job. The production boundary is the platform-managed Lambda
 *   (or seccomp/containers), not this runner.
 */
import { execFile, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, readFile, realpath, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { isTraceError, type Problem } from '../core/errors.js';
import { extractBundle, inspectBundle } from './bundle.js';
import { ENV_NAME_RE, isReservedEnvName, resolveCaps, type BundleCaps, type BundleManifest, type BundleRuntime } from './manifest.js';

export type UdfFailureKind = 'hash_mismatch' | 'invalid_bundle' | 'timeout' | 'bad_output' | 'exit_nonzero' | 'spawn_failed';

export interface RunUdfOptions {
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
  /** Parent of the private directory; defaults to the OS temp directory. */
  workRoot?: string;
  caps?: Partial<BundleCaps>;
  /** Python interpreter; defaults to `python3` looked up on the UDF's minimal PATH. */
  pythonPath?: string;
  /** Node heap limit for the UDF (`--max-old-space-size`). */
  nodeMaxOldSpaceMb?: number;
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
const RUNNER_OWNED = new Set(['PATH', 'HOME', 'TRACE_TASK_CAPABILITY_TOKEN', 'TRACE_DISPATCHER_URL', 'TRACE_QUERY_URL']);

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
          return { permissionFlag: flag, warningFlag: warn };
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

function buildEnv(opts: RunUdfOptions, manifest: BundleManifest, dir: string): Record<string, string> {
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
  env.HOME = dir;
  env.TRACE_TASK_CAPABILITY_TOKEN = opts.capabilityToken;
  if (opts.dispatcherUrl) env.TRACE_DISPATCHER_URL = opts.dispatcherUrl;
  if (opts.queryUrl) env.TRACE_QUERY_URL = opts.queryUrl;
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

  let sandbox: NodeSandbox | null = null;
  if (manifest.runtime === 'node') {
    sandbox = await detectNodeSandbox();
    if (!sandbox) return failure('spawn_failed', 'this Node.js has no working permission model; refusing to run node bundles unsandboxed');
  }

  let dir: string;
  try {
    dir = (await extractBundle(bytes, manifest, opts.workRoot ?? tmpdir(), caps)).dir;
  } catch (e) {
    if (isTraceError(e) && e.code === 'BUNDLE_INVALID') return failure('invalid_bundle', e.message, e.problems ? { problems: e.problems } : {});
    throw e;
  }
  try {
    dir = await realpath(dir);
    const env = buildEnv(opts, manifest, dir);
    let file: string;
    let args: string[];
    if (manifest.runtime === 'node') {
      file = process.execPath;
      args = [sandbox!.permissionFlag, sandbox!.warningFlag, `--allow-fs-read=${dir}`, '--no-addons'];
      if (opts.nodeMaxOldSpaceMb) args.push(`--max-old-space-size=${Math.floor(opts.nodeMaxOldSpaceMb)}`);
      args.push(join(dir, manifest.entrypoint));
    } else {
      file = opts.pythonPath ?? 'python3';
      args = ['-I', '-S', '-B', '-c', PYTHON_BOOTSTRAP, dir, manifest.entrypoint];
    }
    return await execute(file, args, dir, env, opts);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

async function execute(file: string, args: string[], dir: string, env: Record<string, string>, opts: RunUdfOptions): Promise<UdfRunResult> {
  const secrets = secretsOf(opts);
  const margin = secrets.reduce((m, s) => Math.max(m, Buffer.byteLength(s)), 0);
  const errTail = new TailBuffer(opts.maxStderrBytes + margin);
  const outChunks: Buffer[] = [];
  let outBytes = 0;
  let outTooLarge = false;
  let timedOut = false;

  const started = performance.now();
  const child = spawn(file, args, { cwd: dir, env, detached: true, stdio: ['pipe', 'pipe', 'pipe'] });
  const killGroup = () => {
    if (child.pid === undefined) return;
    try {
      process.kill(-child.pid, 'SIGKILL');
    } catch {
      // already gone
    }
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

  child.stdout.on('data', (c: Buffer) => {
    if (outTooLarge) return;
    outBytes += c.length;
    if (outBytes > opts.maxStdoutBytes) {
      outTooLarge = true;
      outChunks.length = 0;
      killGroup();
      return;
    }
    outChunks.push(c);
  });
  child.stderr.on('data', (c: Buffer) => errTail.push(c));
  child.stdin.on('error', () => undefined); // the UDF may exit without reading stdin

  const spawnError = await spawned;
  if (spawnError) {
    return failure('spawn_failed', `could not start the ${file === process.execPath ? 'node' : 'python'} runtime (${(spawnError as NodeJS.ErrnoException).code ?? 'error'})`);
  }
  const timer = setTimeout(() => {
    timedOut = true;
    killGroup();
  }, opts.timeoutMs);
  child.stdin.end(JSON.stringify(opts.invocation));

  const { code, signal } = await exited;
  clearTimeout(timer);
  const durationMs = Math.round(performance.now() - started);
  // Anything the UDF left running in its group dies with it.
  killGroup();
  // Grandchildren that escaped the group could hold the pipes open: wait briefly, then cut.
  const drained = await Promise.race([Promise.all([outClosed, errClosed]).then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), 2000))]);
  if (!drained) {
    child.stdout.destroy();
    child.stderr.destroy();
  }

  const common = { ...finishStderr(errTail, opts.maxStderrBytes, secrets), durationMs, exitCode: code, signal: signal ?? null };
  if (timedOut) return { ok: false, failure: 'timeout', message: `the UDF did not finish within ${opts.timeoutMs} ms`, ...common };
  if (outTooLarge) return { ok: false, failure: 'bad_output', message: `stdout exceeded ${opts.maxStdoutBytes} bytes`, ...common };
  if (code !== 0) {
    const how = signal ? `was killed by ${signal}` : `exited with code ${code}`;
    return { ok: false, failure: 'exit_nonzero', message: `the UDF ${how}`, ...common };
  }
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
