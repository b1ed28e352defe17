/**
 * `UdfSandbox`: the OS boundary around every local UDF run. Created once at start-up, it finds
 * bubblewrap, resolves the runtimes, opens the work area (sweeping what crashed runs left),
 * and proves the boundary with a real probe run. It then builds the command line of each run:
 *
 *   [unshare --mount -- sh -c 'mount --bind ...; exec "$@"'  (root only, when a runtime lives
 *    where the sandbox uid cannot reach, e.g. under /root: a private mount namespace that binds
 *    it at a reachable path; every step execs, so bwrap stays the platform's own child and
 *    --die-with-parent holds)]
 *   [setpriv --reuid U --regid U --clear-groups --inh-caps=-all --bounding-set=-all --no-new-privs]
 *   bwrap --unshare-all --unshare-user --disable-userns --die-with-parent --new-session --cap-drop ALL
 *         --ro-bind <runtime files> ... --ro-bind <bundle> /bundle --tmpfs /scratch (size-bounded)
 *         --ro-bind <channel dir> /run/trace --proc /proc --dev /dev --remount-ro /dev --remount-ro /
 *         --json-status-fd 3 --
 *   prlimit --data --nproc --cpu --fsize --nofile --core=0 -- <runtime> <args>
 *
 * When the boundary cannot be built, `state` is `unavailable` with a reason that names the fix,
 * and the runner refuses untrusted runtimes; `unsafe-none` is the explicit opt-out.
 */
import { spawn } from 'node:child_process';
import { mkdir, stat, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import type { Logger } from '../../core/log.js';
import { silentLogger } from '../../core/log.js';
import { defaultSandboxConfig, defaultWorkRoot, FALLBACK_WORK_PARENT, type SandboxConfig, type SandboxLimits, type SandboxMode } from './config.js';
import { reachableBy, resolveNode, traversableBy, resolvePrlimit, resolvePython, which, type ResolvedHelper, type ResolvedRuntime, type RoMount } from './runtimes.js';
import { chownTree, createRunDir, openWorkArea, removeDir, type RunOwner, type WorkArea } from './workarea.js';

export type SandboxState = 'bubblewrap' | 'unsafe-none' | 'unavailable';
export type RuntimeKind = 'node' | 'python';

/** Where the sandbox places things (fixed paths inside every run). */
export const SANDBOX_PATHS = {
  bundle: '/bundle',
  scratch: '/scratch',
  channelDir: '/run/trace',
  socket: '/run/trace/task.sock',
} as const;

const FIX = 'or set TRACE_UDF_SANDBOX=unsafe-none to run UDFs without any isolation (unsafe)';

export interface RuntimeReport {
  ok: boolean;
  exe?: string;
  version?: string;
  /** Why this runtime cannot run (sandbox refuses it). */
  reason?: string;
}

export interface SandboxReport {
  configured: SandboxMode;
  state: SandboxState;
  /** Why the sandbox is unavailable, naming the fix. */
  reason?: string;
  bwrap?: { path: string; version: string };
  /** The identity sandboxed processes run as on the host. */
  identity?: { uid: number; gid: number; dropsRoot: boolean };
  runtimes: Partial<Record<RuntimeKind, RuntimeReport>>;
  limits: SandboxLimits;
  /** Directories of crashed runs removed at start-up. */
  swept: number;
}

interface Prepared {
  runtime: ResolvedRuntime;
  /** prlimit, bound at its own path. */
  prlimit: string;
  /** Runtime + prlimit mounts, with sources rewritten to staging paths where needed. */
  mounts: RoMount[];
  /** Staging binds (root only): host source -> a path the sandbox uid can reach. */
  staged: RoMount[];
}

/** Binds `n` (source, target) pairs in the private mount namespace, then execs the rest. */
const STAGE_SCRIPT = 'set -e\nn=$1; shift\nwhile [ "$n" -gt 0 ]; do mount --bind "$1" "$2"; shift 2; n=$((n-1)); done\nexec "$@"';

export interface SandboxCommand {
  file: string;
  args: string[];
  /** The bwrap `--json-status-fd` (child pid, exit code) is fd 3 of the spawned process. */
  statusFd: 3;
}

export interface LaunchSpec {
  runtime: RuntimeKind;
  /** Host directory bound read-only at /bundle. */
  bundleDir: string;
  /** Host directory (holding the channel socket) bound read-only at /run/trace. */
  channelDir: string;
  /** Interpreter arguments (after the interpreter itself), paths as seen inside. */
  argv: string[];
  timeoutMs: number;
}

export interface StartOptions {
  config?: SandboxConfig;
  log?: Logger;
}

function firstLine(s: string): string {
  return s.trim().split('\n').find((l) => l.trim() !== '')?.trim().slice(0, 300) ?? '';
}

function spawnCollect(file: string, args: string[], opts: { input?: string; timeoutMs: number; env?: NodeJS.ProcessEnv }): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(file, args, { env: opts.env ?? {}, stdio: ['pipe', 'pipe', 'pipe', 'pipe'], detached: true });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => { if (stdout.length < 65536) stdout += c.toString('utf8'); });
    child.stderr.on('data', (c: Buffer) => { if (stderr.length < 65536) stderr += c.toString('utf8'); });
    (child.stdio[3] as NodeJS.ReadableStream | null)?.resume();
    child.stdin.on('error', () => undefined);
    child.stdin.end(opts.input ?? '');
    const timer = setTimeout(() => {
      try {
        if (child.pid) process.kill(-child.pid, 'SIGKILL');
      } catch {
        // gone
      }
    }, opts.timeoutMs);
    child.once('error', (e) => {
      clearTimeout(timer);
      resolve({ code: null, stdout, stderr: stderr + String(e.message) });
    });
    child.once('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

const PROBE_JS = `
const fs = require('fs');
const os = require('os');
const out = { uid: process.getuid(), pid: process.pid, ifaces: Object.keys(os.networkInterfaces()), root: fs.readdirSync('/').sort() };
try { fs.writeFileSync('/scratch/probe', 'x'); out.scratch = 'written'; } catch (e) { out.scratch = e.code; }
try { fs.writeFileSync('/probe', 'x'); out.rootfs = 'written'; } catch (e) { out.rootfs = e.code; }
try { fs.readFileSync('/etc/passwd'); out.passwd = 'read'; } catch (e) { out.passwd = e.code; }
const limits = fs.readFileSync('/proc/self/limits', 'utf8');
out.nproc = /Max processes\\s+(\\d+)/.exec(limits)?.[1];
out.data = /Max data size\\s+(\\d+)/.exec(limits)?.[1];
process.stdout.write(JSON.stringify(out));
`;

export class UdfSandbox {
  private node?: Prepared;
  private python?: Prepared;
  private pythonReason?: string;
  private bwrap = '';
  private setpriv?: string;
  private stageTools?: { unshare: string; sh: string };
  private disableUserns = false;
  private viewDirs: string[] = [];

  private constructor(
    readonly config: SandboxConfig,
    private readonly log: Logger,
    readonly area: WorkArea,
    readonly report: SandboxReport,
    private readonly owner: RunOwner | undefined,
  ) {}

  get state(): SandboxState {
    return this.report.state;
  }

  /**
   * Probes and opens the sandbox. Never throws for an environment that cannot sandbox: the result
   * is then `unavailable` with the reason. Throws only when the work area cannot be created.
   */
  static async start(opts: StartOptions = {}): Promise<UdfSandbox> {
    const config = opts.config ?? defaultSandboxConfig();
    const log = opts.log ?? silentLogger;
    const isRoot = typeof process.getuid === 'function' && process.getuid() === 0;
    const useOwner = config.mode === 'bubblewrap' && isRoot ? { uid: config.uid, gid: config.gid } : undefined;
    let workRoot = config.workRoot;
    // Run directories are bound into the sandbox as its uid: their parent must be one it can
    // traverse. A private TMPDIR (mode 0700) is not; the default then moves to /tmp.
    if (useOwner && workRoot === defaultWorkRoot() && !(await traversableBy(dirname(workRoot), useOwner.uid, useOwner.gid))) {
      const moved = join(FALLBACK_WORK_PARENT, `trace-udf-${process.getuid?.() ?? 0}`);
      log.info({ work_root: moved, unreachable: dirname(workRoot) }, 'the temporary directory is closed to the sandbox uid; UDF run directories go under /tmp instead');
      workRoot = moved;
    }
    const area = await openWorkArea(workRoot, useOwner);
    if (area.swept.length > 0) log.info({ removed: area.swept.length, work_root: area.root }, 'removed the directories of UDF runs that a crashed process left behind');
    const report: SandboxReport = { configured: config.mode, state: config.mode === 'unsafe-none' ? 'unsafe-none' : 'unavailable', runtimes: {}, limits: config.limits, swept: area.swept.length };
    const sb = new UdfSandbox(config, log, area, report, useOwner);
    if (config.mode === 'unsafe-none') {
      report.runtimes.node = { ok: true, exe: process.execPath, version: process.version };
      report.runtimes.python = { ok: true, exe: config.pythonPath ?? 'python3' };
      log.warn({ udf_sandbox: 'unsafe-none', uid: isRoot ? 0 : process.getuid?.() },
        'UDF SANDBOX DISABLED (TRACE_UDF_SANDBOX=unsafe-none): untrusted UDF code runs as this OS user with its files, network and processes in reach; use only on a machine that holds nothing worth protecting');
      return sb;
    }
    try {
      await sb.probe(isRoot);
      report.state = 'bubblewrap';
      log.info({ udf_sandbox: 'bubblewrap', bwrap: report.bwrap?.version, uid: report.identity?.uid, drops_root: report.identity?.dropsRoot, node: report.runtimes.node?.ok, python: report.runtimes.python?.ok, python_reason: report.runtimes.python?.reason }, 'UDF sandbox ready');
    } catch (e) {
      report.state = 'unavailable';
      report.reason = e instanceof Error ? e.message : String(e);
      log.warn({ udf_sandbox: 'unavailable', reason: report.reason }, 'UDF sandbox unavailable: UDF tasks will fail until it is fixed');
    }
    return sb;
  }

  private async probe(isRoot: boolean): Promise<void> {
    const cfg = this.config;
    if (process.platform !== 'linux') throw new Error(`the UDF sandbox needs Linux namespaces and this is ${process.platform}; run UDFs on Linux, ${FIX}`);
    const bwrap = await which(cfg.bwrapPath ?? 'bwrap', `${process.env.PATH ?? ''}:/usr/bin:/bin`);
    if (!bwrap) throw new Error(`bubblewrap is not installed (no ${cfg.bwrapPath ?? 'bwrap'} found); install it (Debian/Ubuntu: apt-get install -y bubblewrap), ${FIX}`);
    this.bwrap = bwrap;
    const version = firstLine((await spawnCollect(bwrap, ['--version'], { timeoutMs: 10_000 })).stdout);
    const help = (await spawnCollect(bwrap, ['--help'], { timeoutMs: 10_000 })).stdout;
    const missing = ['--size', '--json-status-fd', '--die-with-parent', '--remount-ro', '--cap-drop'].filter((f) => !help.includes(f));
    if (missing.length > 0) throw new Error(`${version || bwrap} lacks ${missing.join(', ')}; install bubblewrap 0.8 or newer, ${FIX}`);
    this.disableUserns = help.includes('--disable-userns');
    this.report.bwrap = { path: bwrap, version: version.replace(/^bubblewrap\s+/, '') };
    if (isRoot) {
      const setpriv = await which('setpriv', '/usr/bin:/bin:/usr/sbin:/sbin');
      if (!setpriv) throw new Error(`the platform runs as root and setpriv (util-linux) is missing, so runs cannot drop to the sandbox uid; install util-linux or run the platform as an unprivileged user, ${FIX}`);
      this.setpriv = setpriv;
    }
    const myUid = process.getuid?.() ?? 0;
    const myGid = process.getgid?.() ?? 0;
    this.report.identity = isRoot ? { uid: cfg.uid, gid: cfg.gid, dropsRoot: true } : { uid: myUid, gid: myGid, dropsRoot: false };
    let prlimit: ResolvedHelper;
    try {
      prlimit = await resolvePrlimit();
    } catch (e) {
      throw new Error(`${e instanceof Error ? e.message : String(e)}, ${FIX}`, { cause: e });
    }
    this.node = await this.prepare(await resolveNode(), prlimit, 'node');
    this.report.runtimes.node = { ok: true, exe: this.node.runtime.exe, version: this.node.runtime.version };
    await this.runProbe('node', PROBE_JS, isRoot);
    try {
      this.python = await this.prepare(await resolvePython(cfg.pythonPath ?? 'python3'), prlimit, 'python');
      const r = await this.probeRun('python', 'import os, sys\nsys.stdout.write(str(os.getuid()))\n');
      if (r.code !== 0) throw new Error(`a probe run of ${this.python.runtime.exe} in the sandbox failed (exit ${r.code}): ${firstLine(r.stderr)}`);
      this.report.runtimes.python = { ok: true, exe: this.python.runtime.exe, version: this.python.runtime.version };
    } catch (e) {
      this.python = undefined;
      this.pythonReason = `python bundles cannot run: ${e instanceof Error ? e.message : String(e)}; install python3 or point TRACE_UDF_PYTHON at an interpreter`;
      this.report.runtimes.python = { ok: false, reason: this.pythonReason };
    }
  }

  /** Mount list of one runtime (+ prlimit), staging sources the sandbox uid cannot reach. */
  private async prepare(runtime: ResolvedRuntime, prlimit: ResolvedHelper, kind: RuntimeKind): Promise<Prepared> {
    const all: RoMount[] = [];
    const dests = new Set<string>();
    for (const m of [...runtime.mounts, ...prlimit.mounts]) {
      if (dests.has(m.dest)) continue;
      dests.add(m.dest);
      all.push(m);
    }
    if (!this.owner) return { runtime, prlimit: prlimit.exe, mounts: all, staged: [] };
    const staged: RoMount[] = [];
    const mounts: RoMount[] = [];
    for (const m of all) {
      if (await reachableBy(m.src, this.owner.uid, this.owner.gid)) {
        mounts.push(m);
        continue;
      }
      // Still root, in a private mount namespace, the source is bound where the sandbox uid can reach it.
      if (!this.stageTools) {
        const sys = '/usr/bin:/bin:/usr/sbin:/sbin';
        const [unshare, sh, mount] = await Promise.all([which('unshare', sys), which('sh', sys), which('mount', sys)]);
        if (!unshare || !sh || !mount) throw new Error(`${m.src} is not reachable by the sandbox uid ${this.owner.uid} and unshare, sh or mount (util-linux) is missing to stage it; install the runtime where other users can read it`);
        this.stageTools = { unshare, sh };
      }
      const view = join(this.area.dir, 'view');
      if (!this.viewDirs.includes(view)) {
        await mkdir(view, { mode: 0o711 });
        this.viewDirs.push(view);
      }
      const point = join(view, `${kind}-${staged.length}`);
      const st = await stat(m.src);
      if (st.isDirectory()) await mkdir(point, { mode: 0o755 });
      else await writeFile(point, '', { mode: 0o644 });
      staged.push({ src: m.src, dest: point });
      mounts.push({ src: point, dest: m.dest });
    }
    return { runtime, prlimit: prlimit.exe, mounts, staged };
  }

  /** A probe run through the full launch path; throws with the reason when it misbehaves. */
  private async runProbe(kind: RuntimeKind, code: string, isRoot: boolean): Promise<void> {
    const r = await this.probeRun(kind, code);
    if (r.code !== 0) {
      const why = firstLine(r.stderr);
      const userns = /namespace|userns|uid map|setting up uid|Operation not permitted|No permissions/i.test(why);
      throw new Error(`a probe run in the sandbox failed (exit ${r.code}): ${why || 'no message'}${userns ? '; unprivileged user namespaces must be enabled (sysctl kernel.unprivileged_userns_clone=1 and user.max_user_namespaces > 0; on Ubuntu 24.04 also kernel.apparmor_restrict_unprivileged_userns=0 or an AppArmor profile for bwrap)' : ''}, ${FIX}`);
    }
    let got: { uid: number; pid: number; ifaces: string[]; root: string[]; scratch: string; rootfs: string; passwd: string; nproc?: string; data?: string };
    try {
      got = JSON.parse(r.stdout) as typeof got;
    } catch {
      throw new Error(`a probe run in the sandbox printed no report, ${FIX}`);
    }
    const expectUid = isRoot ? this.config.uid : (process.getuid?.() ?? -1);
    const problems: string[] = [];
    if (got.uid !== expectUid) problems.push(`it ran as uid ${got.uid}, not ${expectUid}`);
    if (got.ifaces.some((i) => i !== 'lo')) problems.push(`it saw network interfaces ${got.ifaces.join(', ')}`);
    if (got.scratch !== 'written') problems.push(`it could not write its scratch directory (${got.scratch})`);
    if (got.rootfs === 'written') problems.push('it could write to /');
    if (got.passwd === 'read') problems.push('it could read /etc/passwd');
    if (got.nproc !== String(this.config.limits.processes)) problems.push(`its process limit was ${got.nproc}`);
    if (problems.length > 0) throw new Error(`the sandbox probe found the boundary incomplete: ${problems.join('; ')}, ${FIX}`);
  }

  private async probeRun(kind: RuntimeKind, code: string): Promise<{ code: number | null; stdout: string; stderr: string }> {
    const run = await this.createRun();
    try {
      const bundleDir = join(run, 'bundle');
      const chanDir = join(run, 'chan');
      await mkdir(bundleDir, { mode: 0o700 });
      await mkdir(chanDir, { mode: 0o700 });
      const file = kind === 'node' ? 'probe.js' : 'probe.py';
      await writeFile(join(bundleDir, file), code, { mode: 0o600 });
      await this.handOver(run);
      const argv = kind === 'node' ? [`${SANDBOX_PATHS.bundle}/${file}`] : ['-I', '-S', '-B', `${SANDBOX_PATHS.bundle}/${file}`];
      const cmd = this.command({ runtime: kind, bundleDir, channelDir: chanDir, argv, timeoutMs: 20_000 });
      return await spawnCollect(cmd.file, cmd.args, { timeoutMs: 20_000, env: { PATH: '/usr/bin:/bin' } });
    } finally {
      await removeDir(run);
    }
  }

  /** Why a runtime cannot run here, or undefined when it can. */
  refusal(kind: RuntimeKind): string | undefined {
    if (this.report.state === 'unsafe-none') return undefined;
    if (this.report.state === 'unavailable') return `the UDF sandbox is unavailable: ${this.report.reason ?? 'unknown reason'}`;
    if (kind === 'python' && !this.python) return this.pythonReason ?? 'python bundles cannot run in the sandbox';
    return undefined;
  }

  /**
   * The interpreter a runtime uses: the real binary in the sandbox; in unsafe-none the configured
   * Python (default `python3`, looked up on the UDF's minimal PATH) and this Node.
   */
  interpreter(kind: RuntimeKind): string | undefined {
    if (this.report.state === 'unsafe-none') return kind === 'node' ? process.execPath : (this.config.pythonPath ?? 'python3');
    return (kind === 'node' ? this.node : this.python)?.runtime.exe;
  }

  /** A fresh run directory under this instance (handed to the sandbox uid on root platforms). */
  createRun(): Promise<string> {
    return createRunDir(this.area, this.owner);
  }

  /** Hands everything under a run directory to the sandbox uid (root platforms; no-op otherwise). */
  async handOver(runDir: string): Promise<void> {
    if (!this.owner) return;
    await chownTree(runDir, this.owner);
  }

  /** The owner a run's files and channel socket must have (root platforms only). */
  get runOwner(): RunOwner | undefined {
    return this.owner;
  }

  /** The full command line of one sandboxed run. */
  command(spec: LaunchSpec): SandboxCommand {
    if (this.report.state === 'unsafe-none') throw new Error('unsafe-none runs are not launched through the sandbox');
    const prep = spec.runtime === 'node' ? this.node : this.python;
    if (!prep) throw new Error(this.refusal(spec.runtime) ?? `the ${spec.runtime} runtime is not prepared`);
    const lim = this.config.limits;
    const mib = 1024 * 1024;
    const cpu = lim.cpuSeconds ?? Math.max(1, Math.ceil(spec.timeoutMs / 1000));
    const bw: string[] = [
      '--unshare-all', '--unshare-user', ...(this.disableUserns ? ['--disable-userns'] : []),
      '--die-with-parent', '--new-session', '--cap-drop', 'ALL', '--hostname', 'udf',
    ];
    for (const m of prep.mounts) bw.push('--ro-bind', m.src, m.dest);
    bw.push(
      '--ro-bind', spec.bundleDir, SANDBOX_PATHS.bundle,
      '--size', String(lim.scratchMb * mib), '--perms', '0700', '--tmpfs', SANDBOX_PATHS.scratch,
      '--ro-bind', spec.channelDir, SANDBOX_PATHS.channelDir,
      '--proc', '/proc',
      '--dev', '/dev',
      '--remount-ro', '/dev',
      '--remount-ro', '/',
      '--chdir', SANDBOX_PATHS.bundle,
      '--json-status-fd', '3',
      '--',
    );
    bw.push(
      prep.prlimit,
      `--data=${lim.memoryMb * mib}`,
      `--nproc=${lim.processes}`,
      `--cpu=${cpu}:${cpu + 1}`,
      `--fsize=${lim.fileSizeMb * mib}`,
      `--nofile=${lim.openFiles}`,
      '--core=0',
      '--',
      prep.runtime.exe,
      ...spec.argv,
    );
    let file = this.bwrap;
    let args = bw;
    if (this.setpriv && this.owner) {
      args = [`--reuid=${this.owner.uid}`, `--regid=${this.owner.gid}`, '--clear-groups', '--inh-caps=-all', '--bounding-set=-all', '--no-new-privs', '--', this.bwrap, ...args];
      file = this.setpriv;
      if (prep.staged.length > 0 && this.stageTools) {
        const pairs = prep.staged.flatMap((s) => [s.src, s.dest]);
        args = ['--mount', '--propagation', 'private', '--', this.stageTools.sh, '-c', STAGE_SCRIPT, 'trace-stage', String(prep.staged.length), ...pairs, file, ...args];
        file = this.stageTools.unshare;
      }
    }
    return { file, args, statusFd: 3 };
  }

  /** The lite.json / log summary. */
  summary(): { udf_sandbox: SandboxState; udf_sandbox_reason?: string } {
    return this.report.reason ? { udf_sandbox: this.report.state, udf_sandbox_reason: this.report.reason } : { udf_sandbox: this.report.state };
  }

  /** Removes this instance's directory (runs in progress must have ended). */
  async close(): Promise<void> {
    await removeDir(this.area.dir);
  }
}
