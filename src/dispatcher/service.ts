import type { Db } from '../db/db.js';
import type { Logger } from '../core/log.js';
import type { Queue } from '../queue/queue.js';
import type { CapabilityIssuer, CapabilityVerifier } from '../auth/capability.js';
import type { UserVerifier } from '../auth/user.js';
import type { OperatorCatalog } from '../dag/catalog-types.js';
import type { ClaimedTask } from '../worker/payload.js';
import { backoffDelayMs } from '../core/backoff.js';
import { JobCache } from './jobs.js';
import type { DispatcherSettings } from './settings.js';
import { claimTask, claimTasks, type NotClaimedReason } from './tasks/claim.js';
import { claimedTask } from './payload.js';
import type { CompletionHook } from './tasks/complete.js';
import { releaseTask, type ReleasePolicy } from './tasks/release.js';
import { TraceError } from '../core/errors.js';
import { pingDb } from '../db/db.js';
import type { Dependency } from '../core/dependency.js';
import { DependencyMonitor, type Probe } from './dependencies.js';
import { redriveWaiting } from './tasks/retry.js';
import { inlineDagParser, type DagParser } from './dag-parser.js';
import type { DatasetStorage } from './publication.js';
import type { GcCollector } from './gc.js';

/**
 * Runs a leased `lambda` or `dispatcher` runtime task (the Dispatcher invokes, never a queue).
 * When `signal` aborts (the Dispatcher is stopping and the grace period is over) the executor
 * stops the work and releases the lease (`/internal/task-release`, reason shutdown) instead of
 * completing it.
 */
export interface TaskExecutor {
  execute(claimed: ClaimedTask, opts?: { signal?: AbortSignal }): Promise<void>;
}

/** A run the Dispatcher started for one of its own tasks. */
interface Run {
  claimed: ClaimedTask;
  abort: AbortController;
  done: Promise<void>;
}

export interface DispatcherDeps {
  state: Db;
  queue: Queue;
  /** The queue shares the state database: outbox wake-ups are written in the same transaction. */
  sendInTx?: (q: import('../db/db.js').Queryable, queue: string, bodies: unknown[]) => Promise<void>;
  issuer: CapabilityIssuer;
  capabilityVerifier: CapabilityVerifier;
  userVerifier: UserVerifier;
  workerToken: string;
  catalog: OperatorCatalog;
  /**
   * Parses and validates deployed DAG YAML (dag-parser.ts): a WorkerDagParser built with the
   * same registry options as `catalog` keeps that work off the event loop. Default: on the
   * calling thread with `catalog`. The Dispatcher closes it when it stops.
   */
  dagParser?: DagParser;
  /** Lets deploys use hidden (test) operators; never on in production. */
  allowHiddenOperators?: boolean;
  /** Executors per runtime for Dispatcher-invoked tasks. */
  executors: { lambda?: TaskExecutor; dispatcher?: TaskExecutor };
  orgId: string;
  settings: DispatcherSettings;
  log: Logger;
  /**
   * Where datasets may live: the platform's object store (task publications must lie in the
   * attempt's own prefix there) and the roots `POST /v1/datasets/{name}/register` may name. Without
   * it, publications are refused (OBJECT_STORE_NOT_CONFIGURED) and registrations admit no folder.
   */
  datasetStorage?: DatasetStorage;
  /**
   * Readiness probes of the other dependencies this Dispatcher reaches (the data database, a
   * queue database of its own). The state database is always probed.
   */
  probes?: Partial<Record<Dependency, Probe>>;
}

/** Shared state of one Dispatcher process: dependencies plus the caches and kicks the parts use. */
export class DispatcherContext {
  readonly jobs: JobCache;
  /** Plugins' parts of the Completed transition, in plugin order. */
  readonly completionHooks: CompletionHook[] = [];
  /** Plugins' parts of a garbage collection pass (gc.ts), in plugin order. */
  readonly gcCollectors: GcCollector[] = [];
  readonly monitor: DependencyMonitor;
  /** Runs of the Dispatcher's own tasks (runtime dispatcher and lambda), by `task_id:attempt`. */
  readonly runs = new Map<string, Run>();
  readonly dagParser: DagParser;
  private kicks = new Set<() => void>();
  private retryKicks = new Set<() => void>();
  private draining = false;

  constructor(readonly deps: DispatcherDeps) {
    this.jobs = new JobCache(deps.state);
    this.monitor = new DependencyMonitor(
      { state_database: (ms) => pingDb(deps.state, ms), ...deps.probes },
      deps.log,
      async (d) => {
        const n = await redriveWaiting(deps.state, d);
        if (n > 0) {
          deps.log.info({ dependency: d, tasks: n }, 're-driving tasks that waited for a dependency');
          for (const k of this.retryKicks) k();
        }
      },
    );
    this.dagParser = deps.dagParser ?? inlineDagParser(deps.catalog);
  }

  get isDraining(): boolean {
    return this.draining;
  }

  /** Stop leasing: no more claims (503 DISPATCHER_DRAINING) and no more invocations of the Dispatcher's own runtimes. */
  beginDrain(): void {
    this.draining = true;
  }

  releasePolicy = (): ReleasePolicy => {
    const s = this.deps.settings;
    return {
      maxUncounted: s.maxUncountedAttempts,
      infraDelayMs: (k) => backoffDelayMs({ baseMs: s.infraRetryBaseMs, maxMs: s.infraRetryMaxMs }, k),
      retryDelayMs: this.retryDelayMs,
    };
  };

  retryDelayMs = (attempt: number): number =>
    backoffDelayMs({ baseMs: this.deps.settings.retryBaseMs, maxMs: this.deps.settings.retryMaxMs }, Math.max(0, attempt - 1));

  outboxDelayMs = (attempt: number): number =>
    backoffDelayMs({ baseMs: this.deps.settings.outboxBaseMs, maxMs: this.deps.settings.outboxMaxMs }, Math.max(0, attempt - 1));

  /** Something was written to the outbox: wake the drain loop now rather than at its next poll. */
  kickOutbox(): void {
    for (const k of this.kicks) k();
  }

  onKick(fn: () => void): () => void {
    this.kicks.add(fn);
    return () => this.kicks.delete(fn);
  }

  /** The retry scheduler should look now (a dependency came back). */
  onRetryKick(fn: () => void): () => void {
    this.retryKicks.add(fn);
    return () => this.retryKicks.delete(fn);
  }

  /** Claim + payload + token: shared by the claim route and the Dispatcher's own invoker. */
  async claim(taskId: string, workerId: string): Promise<{ status: 'Claimed'; claimed: ClaimedTask } | { status: 'NotClaimed'; reason: NotClaimedReason }> {
    if (this.draining) throw new TraceError(503, 'DISPATCHER_DRAINING', 'the Dispatcher is shutting down and leases nothing; try again shortly');
    const r = await claimTask(this.deps.state, taskId, workerId, this.deps.settings.leaseSeconds);
    if ('reason' in r) return { status: 'NotClaimed', reason: r.reason };
    const job = await this.jobs.require(r.claimed.job_id);
    const claimed = await claimedTask(this.deps.state, r.claimed, job, this.deps.issuer);
    return { status: 'Claimed', claimed };
  }

  /** `claim` for many tasks in one statement (`/internal/task-claim-batch`); answers in the order of `taskIds`. */
  async claimBatch(taskIds: readonly string[], workerId: string): Promise<Array<{ task_id: string } & ({ status: 'Claimed'; claimed: ClaimedTask } | { status: 'NotClaimed'; reason: NotClaimedReason })>> {
    if (this.draining) throw new TraceError(503, 'DISPATCHER_DRAINING', 'the Dispatcher is shutting down and leases nothing; try again shortly');
    const rows = await claimTasks(this.deps.state, taskIds, workerId, this.deps.settings.leaseSeconds);
    return Promise.all(rows.map(async (r, i) => {
      const task_id = taskIds[i]!;
      if ('reason' in r) return { task_id, status: 'NotClaimed' as const, reason: r.reason };
      const job = await this.jobs.require(r.claimed.job_id);
      return { task_id, status: 'Claimed' as const, claimed: await claimedTask(this.deps.state, r.claimed, job, this.deps.issuer) };
    }));
  }

  /** Outbox `invoke_task`: lease the task for the Dispatcher and hand it to its runtime's executor. */
  async invoke(taskId: string): Promise<void> {
    const jobRow = await this.deps.state.query<{ job_id: string }>(`SELECT job_id FROM tasks WHERE id = $1`, [taskId]);
    const jobId = jobRow.rows[0]?.job_id;
    if (!jobId) return;
    const job = await this.jobs.require(jobId);
    const executor = job.runtime === 'lambda' ? this.deps.executors.lambda : job.runtime === 'dispatcher' ? this.deps.executors.dispatcher : undefined;
    if (!executor) throw new Error(`no executor configured for runtime ${job.runtime}`);
    const r = await this.claim(taskId, `dispatcher:${job.runtime}`);
    if (r.status === 'NotClaimed') return;
    // Fire and forget: the executor reports through the fenced task routes; a lost run is
    // recovered by lease expiry, like any worker crash. Runs are tracked so a shutdown can let
    // them finish, then release what is left.
    const key = `${taskId}:${r.claimed.attempt}`;
    const abort = new AbortController();
    const done = executor.execute(r.claimed, { signal: abort.signal })
      .catch((e: unknown) => {
        this.deps.log.error({ task_id: taskId, attempt: r.claimed.attempt, err: e instanceof Error ? e.message : String(e) }, 'executor failed');
      })
      .finally(() => this.runs.delete(key));
    this.runs.set(key, { claimed: r.claimed, abort, done });
  }

  /**
   * Lets the Dispatcher's own runs finish within `graceMs`, then aborts the rest (their executors
   * release the leases) and, for any run that does not settle shortly after, releases its lease
   * here. Returns how many runs had to be released.
   */
  async drainRuns(graceMs: number): Promise<number> {
    const log = this.deps.log;
    const waitAll = (ms: number) => new Promise<boolean>((resolve) => {
      const all = Promise.allSettled([...this.runs.values()].map((r) => r.done)).then(() => resolve(true));
      const t = setTimeout(() => resolve(false), ms);
      void all.then(() => clearTimeout(t));
    });
    if (this.runs.size === 0) return 0;
    log.info({ runs: this.runs.size, grace_ms: graceMs }, 'waiting for running tasks to finish');
    if (await waitAll(graceMs)) return 0;
    const left = [...this.runs.values()];
    log.warn({ runs: left.length }, 'grace period over; stopping the remaining runs and releasing their leases');
    for (const r of left) r.abort.abort();
    await waitAll(5_000);
    for (const r of [...this.runs.values()]) {
      const ref = { task_id: r.claimed.task.task_id, attempt: r.claimed.attempt, lease_token: r.claimed.lease_token };
      await this.deps.state.tx((q) => releaseTask(q, ref, { reason: 'shutdown' }, (id) => this.jobs.require(id), this.releasePolicy()))
        .catch((e: unknown) => log.warn({ task_id: ref.task_id, err: e instanceof Error ? e.message : String(e) }, 'could not release a lease; it will expire'));
    }
    return left.length;
  }
}
