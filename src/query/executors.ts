/**
 * The Query Service's side of query execution: a warm pool of executor processes
 * (src/query/executor/main.ts) and the only code that talks to them.
 *
 * - Executors are started in advance, each a child process with a scrubbed environment, its own
 *   process group, an OS data-segment limit (`ulimit -d`, so an allocation past the cap fails
 *   inside the engine) and DuckDB's own `memory_limit` below that.
 * - One statement per executor at a time. A query waits in a bounded queue when every executor
 *   is busy or its caller already holds `maxPerCaller` of them (429 QUERY_BUSY beyond the queue),
 *   so one caller cannot take every executor.
 * - At the deadline the executor's whole process group is killed (SIGKILL) and the query answers
 *   504 QUERY_TIMEOUT; while a query runs its executor's resident memory is polled from /proc and
 *   over the cap the executor is killed and the query answers 422 QUERY_RESOURCE_LIMIT. An
 *   executor that dies on its own fails only its query (500 QUERY_EXECUTOR_CRASHED). Every
 *   executor that ends is replaced, and its spill directory removed. The caller whose query ended
 *   an executor keeps holding that slot until the replacement is ready, so a caller whose queries
 *   keep getting killed cannot take the executors others are waiting for while replacements start.
 * - Nothing here waits on DuckDB: this process's event loop and libuv thread pool only move
 *   messages, so health, dataset and registration routes beside the Query Service keep answering
 *   whatever the queries do.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { basename, dirname, join, sep } from 'node:path';
import { TraceError } from '../core/errors.js';
import { moduleEntry } from '../core/entry.js';
import { silentLogger, type Logger } from '../core/log.js';
import type { QueryColumn, RelationGrant, S3Settings } from './executor/engine.js';
import type { ExecutorError, ExportSpec, FromExecutor, ToExecutor } from './executor/protocol.js';
import { ensureSpillRoot, executorDirName, processStartTime, removeDir, removeStaleExecutorDirs } from './executor/spill.js';

export interface ExecutorPoolOptions {
  /** Executor processes, the most queries running at once. */
  size: number;
  /** Queries allowed to wait for an executor; beyond that 429 QUERY_BUSY. */
  maxQueued: number;
  /** Executors one caller (a user, a task) may hold at once; more of its queries wait. */
  maxPerCaller: number;
  /** Resident memory (and data-segment limit) of one executor, in bytes. */
  memoryCapBytes: number;
  /** DuckDB `memory_limit` of each instance (default: half the cap). */
  memoryLimit?: string;
  threads: number;
  maxTempDirectorySize: string;
  /** Where the owned spill root is created (spill.ts): default /dev/shm, else the OS tmpdir. */
  tempRoot?: string;
  /** Locked instances each executor keeps for reuse (0: a fresh one per query), and their idle time. */
  maxInstances: number;
  idleMs: number;
  /** How often a busy executor's memory is read. */
  memoryPollMs: number;
  /** An executor that is not ready this long after its start is killed. */
  startTimeoutMs: number;
  /**
   * Also set the OS data-segment limit (`ulimit -d`) to the cap, so allocations past it fail
   * inside the engine and the executor survives (default true where /bin/sh exists). Off, only
   * the RSS poll enforces the cap, by killing the executor.
   */
  osMemoryLimit: boolean;
  /**
   * Niceness of the executors (0 to 19, default 5): under CPU contention the service's own
   * routes and the rest of the platform in the process win over running queries.
   */
  nice: number;
  s3?: S3Settings;
  log?: Logger;
}

export const EXECUTOR_DEFAULTS = {
  size: 4,
  maxQueued: 16,
  maxPerCaller: 2,
  memoryCapBytes: 2 * 1024 ** 3,
  threads: 2,
  maxTempDirectorySize: '4GB',
  maxInstances: 4,
  idleMs: 60_000,
  memoryPollMs: 100,
  startTimeoutMs: 30_000,
  osMemoryLimit: true,
  nice: 5,
} as const;

export interface ExecuteRequest {
  /** Who runs it (for fairness): `user:<id>` or `task:<id>`. */
  caller: string;
  sql: string;
  relations: RelationGrant[];
  limit: number;
  maxBytes: number;
  timeoutMs: number;
  /** `rows` (default), `check` (the SQL gate only) or `export` (the whole result as a file). */
  action?: 'rows' | 'check' | 'export';
  export?: ExportSpec;
}

export interface ExecuteResult {
  columns: QueryColumn[];
  rowCount: number;
  truncated: boolean;
  /** The response body `{columns, rows, truncated}`, already JSON. */
  body: string;
  /** For an export: the written file, inside the executor's own directory (the caller removes it). */
  file?: string;
}

interface Job {
  req: ExecuteRequest;
  key: string;
  /** Handed to an executor (and counted against its caller). */
  assigned: boolean;
  resolve(r: ExecuteResult): void;
  reject(e: TraceError): void;
  settled: boolean;
}

type State = 'starting' | 'idle' | 'busy' | 'dying' | 'dead';

interface Executor {
  proc: ChildProcess;
  pid: number;
  /** Its directory under the spill root. */
  dir: string;
  state: State;
  /** Whether it ever reported ready (an executor that dies before counts as a failed start). */
  started: boolean;
  job: Job | undefined;
  jobId: number;
  /** The grant key of its last query: the same grant goes back to the same warm instance. */
  lastKey: string | undefined;
  lastUsed: number;
  deadline: NodeJS.Timeout | undefined;
  /** Why this pool killed it, if it did. */
  killedFor: 'timeout' | 'memory' | 'close' | 'start' | undefined;
  /**
   * The caller whose slot this executor holds: set on an executor that one of the caller's
   * queries ended, carried to its replacement, released when the replacement is ready.
   */
  charge: string | undefined;
  startTimer: NodeJS.Timeout | undefined;
  stderrTail: string;
}

const mib = (b: number) => Math.round(b / (1024 * 1024));

/** Resident set size of `pid` in bytes (VmRSS), or undefined when unknown. */
export function residentBytes(pid: number): number | undefined {
  try {
    const m = /VmRSS:\s+(\d+)\s+kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : undefined;
  } catch {
    return undefined;
  }
}

const ENV_PASSED = ['PATH', 'HOME', 'TZ', 'LANG', 'LC_ALL'];

/**
 * `$1`: data-segment limit in KiB (0: none); `$2`: niceness; the rest: the executor's command.
 * `nice` is used when installed (coreutils); without it the executor runs at normal priority.
 */
const EXECUTOR_SHELL = [
  'if [ "$1" != 0 ]; then ulimit -d "$1" || exit 97; fi',
  'n="$2"; shift 2',
  'if [ "$n" != 0 ] && command -v nice >/dev/null 2>&1; then exec nice -n "$n" "$@"; fi',
  'exec "$@"',
].join('\n');

export class ExecutorPool {
  private readonly opts: Required<Omit<ExecutorPoolOptions, 's3' | 'log' | 'tempRoot' | 'memoryLimit'>> & Pick<ExecutorPoolOptions, 's3'> & { memoryLimit: string };
  private readonly log: Logger;
  private readonly root: string;
  private readonly executors = new Set<Executor>();
  private readonly queue: Job[] = [];
  private readonly running = new Map<string, number>();
  private readonly poll: NodeJS.Timeout;
  private nextJobId = 1;
  private closed = false;
  private failures = 0;
  private respawnTimer: NodeJS.Timeout | undefined;
  private readyWaiters: Array<() => void> = [];

  constructor(opts: Partial<ExecutorPoolOptions> = {}) {
    const memoryCapBytes = Math.max(128 * 1024 ** 2, opts.memoryCapBytes ?? EXECUTOR_DEFAULTS.memoryCapBytes);
    this.opts = {
      size: Math.max(1, Math.trunc(opts.size ?? EXECUTOR_DEFAULTS.size)),
      maxQueued: Math.max(0, Math.trunc(opts.maxQueued ?? EXECUTOR_DEFAULTS.maxQueued)),
      maxPerCaller: Math.max(1, Math.trunc(opts.maxPerCaller ?? EXECUTOR_DEFAULTS.maxPerCaller)),
      memoryCapBytes,
      memoryLimit: opts.memoryLimit ?? `${Math.max(64, Math.floor(mib(memoryCapBytes) / 2))}MB`,
      threads: opts.threads ?? EXECUTOR_DEFAULTS.threads,
      maxTempDirectorySize: opts.maxTempDirectorySize ?? EXECUTOR_DEFAULTS.maxTempDirectorySize,
      maxInstances: Math.max(0, opts.maxInstances ?? EXECUTOR_DEFAULTS.maxInstances),
      idleMs: Math.max(1, opts.idleMs ?? EXECUTOR_DEFAULTS.idleMs),
      memoryPollMs: Math.max(10, opts.memoryPollMs ?? EXECUTOR_DEFAULTS.memoryPollMs),
      startTimeoutMs: Math.max(1_000, opts.startTimeoutMs ?? EXECUTOR_DEFAULTS.startTimeoutMs),
      osMemoryLimit: (opts.osMemoryLimit ?? EXECUTOR_DEFAULTS.osMemoryLimit) && process.platform !== 'win32',
      nice: Math.max(0, Math.min(19, Math.trunc(opts.nice ?? EXECUTOR_DEFAULTS.nice))),
      ...(opts.s3 ? { s3: opts.s3 } : {}),
    };
    this.log = opts.log ?? silentLogger;
    this.root = ensureSpillRoot(opts.tempRoot);
    const stale = removeStaleExecutorDirs(this.root);
    if (stale.length > 0) this.log.info({ event: 'query_spill_cleaned', removed: stale.length }, 'removed spill directories of executors that are gone');
    this.poll = setInterval(() => this.checkMemory(), this.opts.memoryPollMs);
    this.poll.unref();
    for (let i = 0; i < this.opts.size; i++) this.spawnOne();
  }

  /** The owned spill root. */
  get spillRoot(): string {
    return this.root;
  }

  /** Executors by state, and queries waiting. */
  stats(): { starting: number; idle: number; busy: number; queued: number } {
    const s = { starting: 0, idle: 0, busy: 0, queued: this.queue.length };
    for (const e of this.executors) if (e.state === 'starting' || e.state === 'idle' || e.state === 'busy') s[e.state]++;
    return s;
  }

  /** Process ids of the executors alive now (for operators and tests). */
  pids(): number[] {
    return [...this.executors].filter((e) => e.state !== 'dead').map((e) => e.pid);
  }

  /** Process ids of the executors running a query now (tests). */
  busyPids(): number[] {
    return [...this.executors].filter((e) => e.state === 'busy').map((e) => e.pid);
  }

  /** Resolves once every executor has started (or after `timeoutMs`, whichever comes first). */
  async ready(timeoutMs = this.opts.startTimeoutMs): Promise<void> {
    const all = () => {
      const s = this.stats();
      return s.starting === 0 && s.idle + s.busy >= this.opts.size;
    };
    if (all()) return;
    await new Promise<void>((resolve) => {
      const done = () => {
        clearTimeout(t);
        this.readyWaiters = this.readyWaiters.filter((w) => w !== check);
        resolve();
      };
      const check = () => {
        if (all() || this.closed) done();
      };
      const t = setTimeout(done, timeoutMs);
      this.readyWaiters.push(check);
    });
  }

  /**
   * Runs one statement on an executor. Rejects with a TraceError: the executor's own answer
   * (gate rejections, engine errors), 504 at the deadline, 422 over the memory cap, 500 when the
   * executor crashed, 429 when the queue is full, 503 when no executor can be started.
   */
  execute(req: ExecuteRequest): Promise<ExecuteResult> {
    if (this.closed) return Promise.reject(new TraceError(503, 'QUERY_SERVICE_CLOSING', 'the Query Service is shutting down'));
    if (this.unavailable()) {
      return Promise.reject(new TraceError(503, 'QUERY_EXECUTOR_UNAVAILABLE', 'no query executor could be started; see the Query Service log'));
    }
    return new Promise<ExecuteResult>((resolve, reject) => {
      const job: Job = { req, key: JSON.stringify(req.relations.map((r) => [r.name, r.files, r.where ?? null])), assigned: false, resolve, reject, settled: false };
      if (!this.canStartNow(job) && this.queue.length >= this.opts.maxQueued) {
        reject(new TraceError(429, 'QUERY_BUSY', 'the Query Service is at its concurrency limit; retry shortly'));
        return;
      }
      this.queue.push(job);
      this.pump();
    });
  }

  /** Kills every executor and fails queued queries; resolves when all have exited. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.poll);
    if (this.respawnTimer) clearTimeout(this.respawnTimer);
    for (const j of this.queue.splice(0)) this.settle(j, new TraceError(503, 'QUERY_SERVICE_CLOSING', 'the Query Service is shutting down'));
    const exits: Array<Promise<void>> = [];
    for (const e of this.executors) {
      if (e.state === 'dead') continue;
      exits.push(new Promise<void>((resolve) => e.proc.once('exit', () => resolve())));
      e.proc.ref(); // so this process waits for the exit
      this.kill(e, 'close');
    }
    for (const w of this.readyWaiters.splice(0)) w();
    await Promise.all(exits);
  }

  // -------------------------------------------------------------------------------------------

  private unavailable(): boolean {
    return this.failures >= 3 && ![...this.executors].some((e) => e.state === 'idle' || e.state === 'busy');
  }

  private callerBusy(caller: string): boolean {
    return (this.running.get(caller) ?? 0) >= this.opts.maxPerCaller;
  }

  private canStartNow(job: Job): boolean {
    return !this.callerBusy(job.req.caller) && [...this.executors].some((e) => e.state === 'idle');
  }

  /** Hands waiting queries to idle executors: first in first out, skipping callers at their cap. */
  private pump(): void {
    for (let i = 0; i < this.queue.length; ) {
      const job = this.queue[i]!;
      if (this.callerBusy(job.req.caller)) {
        i++;
        continue;
      }
      const idle = [...this.executors].filter((e) => e.state === 'idle');
      if (idle.length === 0) return;
      const warm = idle.find((e) => e.lastKey === job.key);
      const exec = warm ?? idle.sort((a, b) => a.lastUsed - b.lastUsed)[0]!;
      this.queue.splice(i, 1);
      this.assign(exec, job);
    }
  }

  private assign(e: Executor, job: Job): void {
    e.state = 'busy';
    e.job = job;
    e.jobId = this.nextJobId++;
    e.lastKey = job.key;
    job.assigned = true;
    this.running.set(job.req.caller, (this.running.get(job.req.caller) ?? 0) + 1);
    const timeoutMs = Math.max(1, job.req.timeoutMs);
    e.deadline = setTimeout(() => {
      this.settle(job, new TraceError(504, 'QUERY_TIMEOUT', `the query did not finish within ${timeoutMs >= 1000 ? `${timeoutMs / 1000} s` : `${timeoutMs} ms`}; narrow it (filters, LIMIT) or split the work`), e);
      this.log.info({ event: 'query_executor_killed', reason: 'timeout', pid: e.pid }, 'query executor killed at the deadline');
      this.kill(e, 'timeout');
    }, timeoutMs);
    const msg: ToExecutor = { t: 'run', id: e.jobId, sql: job.req.sql, relations: job.req.relations, limit: job.req.limit, maxBytes: job.req.maxBytes, timeoutMs, ...(job.req.action ? { action: job.req.action } : {}), ...(job.req.export ? { export: job.req.export } : {}) };
    try {
      e.proc.send(msg, (err) => {
        if (err) this.kill(e, undefined);
      });
    } catch {
      this.kill(e, undefined);
    }
  }

  /**
   * Ends a job once. Its caller's slot is freed, or, with `ending` (the executor the job ends
   * with), handed to that executor to hold until its replacement is ready.
   */
  private settle(job: Job, outcome: ExecuteResult | TraceError, ending?: Executor): void {
    if (job.settled) return;
    job.settled = true;
    if (!job.assigned) {
      // A waiting query holds no slot.
    } else if (ending && ending.charge === undefined) {
      ending.charge = job.req.caller;
    } else {
      this.release(job.req.caller);
    }
    if (outcome instanceof TraceError) job.reject(outcome);
    else job.resolve(outcome);
  }

  private release(caller: string | undefined): void {
    if (caller === undefined) return;
    const n = (this.running.get(caller) ?? 1) - 1;
    if (n <= 0) this.running.delete(caller);
    else this.running.set(caller, n);
  }

  private finishJob(e: Executor, outcome: ExecuteResult | TraceError): void {
    const job = e.job;
    if (e.deadline) clearTimeout(e.deadline);
    e.deadline = undefined;
    e.job = undefined;
    e.lastUsed = Date.now();
    if (e.state === 'busy') e.state = 'idle';
    if (job) this.settle(job, outcome);
    this.pump();
  }

  private onMessage(e: Executor, m: FromExecutor): void {
    if (m.t === 'ready') {
      if (e.state !== 'starting') return;
      if (e.startTimer) clearTimeout(e.startTimer);
      e.startTimer = undefined;
      e.state = 'idle';
      e.started = true;
      e.stderrTail = '';
      e.dir = m.dir;
      this.failures = 0;
      this.release(e.charge);
      e.charge = undefined;
      for (const w of [...this.readyWaiters]) w();
      this.pump();
    } else if (m.t === 'done') {
      if (e.state !== 'busy' || m.id !== e.jobId) return;
      if (m.ok) {
        // The file name is the service's own; only the directory is the executor's.
        const spec = e.job?.req.action === 'export' ? e.job.req.export : undefined;
        const file = spec ? join(e.dir, basename(spec.name)) : undefined;
        // The directory is the executor's word: only a file under the owned spill root is read.
        if (file !== undefined && (dirname(file) === this.root || !file.startsWith(`${this.root}${sep}`))) {
          this.finishJob(e, new TraceError(500, 'QUERY_EXECUTOR_FAILED', 'the executor wrote its export outside its directory'));
        } else {
          this.finishJob(e, { columns: m.columns, rowCount: m.rowCount, truncated: m.truncated, body: m.body, ...(file ? { file } : {}) });
        }
      }
      else this.finishJob(e, fromExecutorError(m.error));
    } else if (m.t === 'fatal') {
      this.log.error({ event: 'query_executor_failed', pid: e.pid, err: m.message }, 'query executor could not start');
    }
  }

  private spawnOne(charge?: string): void {
    if (this.closed) return this.release(charge);
    const entry = moduleEntry(import.meta.url, './executor/main.js');
    const env: NodeJS.ProcessEnv = {};
    for (const k of ENV_PASSED) if (process.env[k] !== undefined) env[k] = process.env[k];
    // V8's heap stays small: results are capped at a few MiB, the engine's memory is not V8's.
    const heapMb = Math.max(64, Math.min(512, Math.floor(mib(this.opts.memoryCapBytes) / 4)));
    const nodeArgs = [...entry.execArgv, `--max-old-space-size=${heapMb}`, entry.file];
    const options = { env, detached: process.platform !== 'win32', stdio: ['ignore', 'ignore', 'pipe', 'ipc'] as ('ignore' | 'pipe' | 'ipc')[], serialization: 'advanced' as const };
    // On POSIX a shell sets the data-segment limit and the niceness, then becomes the executor.
    const proc = process.platform !== 'win32'
      ? spawn('/bin/sh', ['-c', EXECUTOR_SHELL, 'trace-query-executor', this.opts.osMemoryLimit ? String(Math.floor(this.opts.memoryCapBytes / 1024)) : '0', String(this.opts.nice), process.execPath, ...nodeArgs], options)
      : spawn(process.execPath, nodeArgs, options);
    const pid = proc.pid;
    if (pid === undefined) {
      proc.once('error', () => undefined);
      this.failures++;
      this.log.error({ event: 'query_executor_failed' }, 'query executor could not be spawned');
      this.release(charge);
      this.scheduleRespawn();
      return;
    }
    const start = processStartTime(pid) ?? '0';
    const e: Executor = {
      proc, pid, dir: join(this.root, executorDirName(pid, start)), state: 'starting', started: false, job: undefined, jobId: 0,
      lastKey: undefined, lastUsed: 0, deadline: undefined, killedFor: undefined, charge, startTimer: undefined, stderrTail: '',
    };
    this.executors.add(e);
    // Executors never keep the service's process alive; a running query's deadline timer does.
    proc.unref();
    proc.channel?.unref();
    // Before it is ready the executor has seen no query: its stderr may explain a failed start.
    proc.stderr?.setEncoding('utf8');
    proc.stderr?.on('data', (d: string) => {
      if (e.state === 'starting') e.stderrTail = (e.stderrTail + d).slice(-2000);
    });
    proc.on('message', (m: FromExecutor) => this.onMessage(e, m));
    proc.once('error', () => this.kill(e, undefined));
    proc.once('exit', (code, signal) => this.onExit(e, code, signal));
    e.startTimer = setTimeout(() => {
      if (e.state === 'starting') this.kill(e, 'start');
    }, this.opts.startTimeoutMs);
    e.startTimer.unref();
    const init: ToExecutor = {
      t: 'init', spillRoot: this.root, memoryLimit: this.opts.memoryLimit, threads: this.opts.threads,
      maxTempDirectorySize: this.opts.maxTempDirectorySize, maxInstances: this.opts.maxInstances, idleMs: this.opts.idleMs,
      ...(this.opts.s3 ? { s3: this.opts.s3 } : {}),
    };
    try {
      proc.send(init, (err) => {
        if (err) this.kill(e, undefined);
      });
    } catch {
      this.kill(e, undefined);
    }
  }

  private kill(e: Executor, why: Executor['killedFor']): void {
    if (e.state === 'dead') return;
    e.killedFor ??= why;
    e.state = 'dying';
    try {
      if (process.platform !== 'win32') process.kill(-e.pid, 'SIGKILL');
      else e.proc.kill('SIGKILL');
    } catch {
      try { e.proc.kill('SIGKILL'); } catch { /* already gone */ }
    }
  }

  private onExit(e: Executor, code: number | null, signal: NodeJS.Signals | null): void {
    const wasStarting = !e.started;
    e.state = 'dead';
    this.executors.delete(e);
    if (e.startTimer) clearTimeout(e.startTimer);
    removeDir(e.dir);
    if (e.job) {
      const job = e.job;
      if (e.deadline) clearTimeout(e.deadline);
      e.job = undefined;
      if (!e.killedFor) this.log.error({ event: 'query_executor_crashed', pid: e.pid, code, signal }, 'query executor crashed during a query');
      this.settle(job, new TraceError(500, 'QUERY_EXECUTOR_CRASHED', `the query executor stopped unexpectedly (${signal ?? `exit code ${code}`}); the query did not complete`), e);
    }
    const charge = e.charge;
    e.charge = undefined;
    if (wasStarting && e.killedFor !== 'close') {
      this.failures++;
      this.log.error({ event: 'query_executor_failed', pid: e.pid, code, signal, stderr: e.stderrTail.trim() || undefined }, 'query executor exited before it was ready');
    }
    if (this.closed) return this.release(charge);
    if (this.unavailable()) {
      for (const j of this.queue.splice(0)) this.settle(j, new TraceError(503, 'QUERY_EXECUTOR_UNAVAILABLE', 'no query executor could be started; see the Query Service log'));
    }
    if (wasStarting) {
      this.release(charge);
      this.scheduleRespawn();
    } else {
      this.spawnOne(charge);
    }
    this.pump();
  }

  private scheduleRespawn(): void {
    if (this.closed || this.respawnTimer) return;
    const delay = Math.min(30_000, 250 * 2 ** Math.min(this.failures, 7));
    this.respawnTimer = setTimeout(() => {
      this.respawnTimer = undefined;
      const missing = this.opts.size - [...this.executors].filter((x) => x.state !== 'dead').length;
      for (let i = 0; i < missing; i++) this.spawnOne();
    }, delay);
    this.respawnTimer.unref();
  }

  /** Kills a busy executor whose resident memory is over the cap. */
  private checkMemory(): void {
    for (const e of this.executors) {
      if (e.state !== 'busy' || !e.job) continue;
      const rss = residentBytes(e.pid);
      if (rss === undefined || rss <= this.opts.memoryCapBytes) continue;
      this.log.info({ event: 'query_executor_killed', reason: 'memory', pid: e.pid, rss_mib: mib(rss) }, 'query executor killed over its memory cap');
      this.settle(e.job, new TraceError(422, 'QUERY_RESOURCE_LIMIT', `the query used more than ${mib(this.opts.memoryCapBytes)} MiB of memory; narrow it (filters, LIMIT, fewer columns)`), e);
      this.kill(e, 'memory');
    }
  }
}

function fromExecutorError(err: ExecutorError): TraceError {
  const status = Number.isInteger(err.status) && err.status >= 400 && err.status <= 599 ? err.status : 500;
  return new TraceError(status, typeof err.code === 'string' ? err.code : 'QUERY_FAILED', typeof err.message === 'string' ? err.message : 'query failed', err.rule ? { extra: { rule: err.rule } } : {});
}
