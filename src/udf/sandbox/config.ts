/**
 * Configuration of the UDF sandbox: which isolation to use, the resource limits of one run, the
 * unprivileged identity a root platform drops to, and where runs keep their files. Read once at
 * start-up from the environment (`sandboxConfigFromEnv`); every value has a default.
 */
import { tmpdir } from 'node:os';
import { isAbsolute, join } from 'node:path';

/**
 * `bubblewrap`: every run in fresh user, PID, mount, network, IPC and UTS namespaces (the
 * default; runs are refused when it cannot start). `unsafe-none`: no OS isolation at all, an
 * explicit operator opt-in for machines without user namespaces.
 */
export type SandboxMode = 'bubblewrap' | 'unsafe-none';

export const SANDBOX_MODES: readonly SandboxMode[] = ['bubblewrap', 'unsafe-none'];

export interface SandboxLimits {
  /** RLIMIT_DATA of every process in the sandbox (heap, anonymous mappings), MiB. */
  memoryMb: number;
  /** RLIMIT_NPROC inside the sandbox's user namespace: processes and threads of one run. */
  processes: number;
  /** RLIMIT_CPU per process, seconds; unset: the run's timeout rounded up. */
  cpuSeconds?: number;
  /** RLIMIT_FSIZE: the largest file a run may write, MiB. */
  fileSizeMb: number;
  /** RLIMIT_NOFILE: open file descriptors per process. */
  openFiles: number;
  /** Size of the private scratch tmpfs (`/scratch`), MiB. */
  scratchMb: number;
}

export const DEFAULT_LIMITS: SandboxLimits = {
  memoryMb: 512,
  processes: 64,
  fileSizeMb: 64,
  openFiles: 256,
  scratchMb: 64,
};

export interface ChannelLimits {
  /** Largest request body the task channel forwards. */
  maxRequestBytes: number;
  /** Largest upstream answer the task channel passes back. */
  maxResponseBytes: number;
  /** Upstream timeout of one forwarded call. */
  upstreamTimeoutMs: number;
  /** Calls one run may have in flight at once. */
  maxConcurrent: number;
}

export const DEFAULT_CHANNEL_LIMITS: ChannelLimits = {
  maxRequestBytes: 1024 * 1024,
  maxResponseBytes: 16 * 1024 * 1024,
  upstreamTimeoutMs: 120_000,
  maxConcurrent: 8,
};

export interface SandboxConfig {
  mode: SandboxMode;
  limits: SandboxLimits;
  channel: ChannelLimits;
  /** Identity of sandboxed processes when the platform runs as root (never used otherwise). */
  uid: number;
  gid: number;
  /** Runner-owned root of per-run directories; stale ones are removed at start-up. */
  workRoot: string;
  /** The bubblewrap binary; default `bwrap` on PATH. */
  bwrapPath?: string;
  /** The Python interpreter for python bundles; default `python3` on PATH. */
  pythonPath?: string;
}

/** A uid/gid no account on a normal host uses (outside the ranges systemd and nspawn hand out). */
export const DEFAULT_SANDBOX_UID = 1_999_999_000;

/** Where the default work root moves when the temporary directory is closed to the sandbox uid. */
export const FALLBACK_WORK_PARENT = '/tmp';

export function defaultWorkRoot(): string {
  const uid = typeof process.getuid === 'function' ? process.getuid() : 0;
  return join(tmpdir(), `trace-udf-${uid}`);
}

export function defaultSandboxConfig(over: Partial<SandboxConfig> = {}): SandboxConfig {
  return {
    mode: 'bubblewrap',
    uid: DEFAULT_SANDBOX_UID,
    gid: DEFAULT_SANDBOX_UID,
    workRoot: defaultWorkRoot(),
    ...over,
    limits: { ...DEFAULT_LIMITS, ...over.limits },
    channel: { ...DEFAULT_CHANNEL_LIMITS, ...over.channel },
  };
}

/** A configuration variable with a bad value; the message names the variable. */
export class SandboxConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'SandboxConfigError';
  }
}

function intVar(env: NodeJS.ProcessEnv, name: string, min: number, max: number): number | undefined {
  const raw = env[name]?.trim();
  if (raw === undefined || raw === '') return undefined;
  if (!/^\d+$/.test(raw)) throw new SandboxConfigError(`${name} must be a whole number between ${min} and ${max}; got ${JSON.stringify(raw.slice(0, 40))}`);
  const n = Number(raw);
  if (n < min || n > max) throw new SandboxConfigError(`${name} must be between ${min} and ${max}; got ${n}`);
  return n;
}

/**
 * Reads `TRACE_UDF_*` variables (see src/udf/sandbox/README.md). Throws SandboxConfigError
 * naming the variable when a value is malformed.
 */
export function sandboxConfigFromEnv(env: NodeJS.ProcessEnv = process.env): SandboxConfig {
  const modeRaw = env.TRACE_UDF_SANDBOX?.trim();
  let mode: SandboxMode = 'bubblewrap';
  if (modeRaw) {
    if (!(SANDBOX_MODES as readonly string[]).includes(modeRaw)) {
      throw new SandboxConfigError(`TRACE_UDF_SANDBOX must be one of ${SANDBOX_MODES.join(', ')}; got ${JSON.stringify(modeRaw.slice(0, 40))}`);
    }
    mode = modeRaw as SandboxMode;
  }
  const limits: SandboxLimits = { ...DEFAULT_LIMITS };
  const set = <K extends keyof SandboxLimits>(k: K, v: number | undefined) => {
    if (v !== undefined) limits[k] = v;
  };
  set('memoryMb', intVar(env, 'TRACE_UDF_MEMORY_MB', 64, 1024 * 1024));
  set('processes', intVar(env, 'TRACE_UDF_MAX_PROCESSES', 16, 100_000));
  set('cpuSeconds', intVar(env, 'TRACE_UDF_CPU_SECONDS', 1, 86_400));
  set('fileSizeMb', intVar(env, 'TRACE_UDF_FILE_SIZE_MB', 1, 1024 * 1024));
  set('openFiles', intVar(env, 'TRACE_UDF_OPEN_FILES', 32, 1_048_576));
  set('scratchMb', intVar(env, 'TRACE_UDF_SCRATCH_MB', 1, 1024 * 1024));
  const uid = intVar(env, 'TRACE_UDF_SANDBOX_UID', 1, 4_294_967_294);
  const gid = intVar(env, 'TRACE_UDF_SANDBOX_GID', 1, 4_294_967_294);
  const workRoot = env.TRACE_UDF_WORK_ROOT?.trim();
  if (workRoot !== undefined && workRoot !== '' && !isAbsolute(workRoot)) throw new SandboxConfigError(`TRACE_UDF_WORK_ROOT must be an absolute path; got ${JSON.stringify(workRoot.slice(0, 200))}`);
  const cfg = defaultSandboxConfig({ mode, limits });
  if (uid !== undefined) {
    cfg.uid = uid;
    cfg.gid = gid ?? uid;
  } else if (gid !== undefined) cfg.gid = gid;
  if (workRoot) cfg.workRoot = workRoot;
  const bwrap = env.TRACE_UDF_BWRAP?.trim();
  if (bwrap) cfg.bwrapPath = bwrap;
  const python = env.TRACE_UDF_PYTHON?.trim();
  if (python) cfg.pythonPath = python;
  return cfg;
}
