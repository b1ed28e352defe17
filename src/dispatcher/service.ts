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
import { claimTask, type NotClaimedReason } from './tasks/claim.js';
import { claimedTask } from './payload.js';
import type { CompletionHook } from './tasks/complete.js';

/** Runs a leased `lambda` or `dispatcher` runtime task (the Dispatcher invokes, never a queue). */
export interface TaskExecutor {
  execute(claimed: ClaimedTask): Promise<void>;
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
  /** Lets deploys use hidden (test) operators; never on in production. */
  allowHiddenOperators?: boolean;
  /** Executors per runtime for Dispatcher-invoked tasks. */
  executors: { lambda?: TaskExecutor; dispatcher?: TaskExecutor };
  orgId: string;
  settings: DispatcherSettings;
  log: Logger;
}

/** Shared state of one Dispatcher process: dependencies plus the caches and kicks the parts use. */
export class DispatcherContext {
  readonly jobs: JobCache;
  /** Plugins' parts of the Completed transition, in plugin order. */
  readonly completionHooks: CompletionHook[] = [];
  private kicks = new Set<() => void>();

  constructor(readonly deps: DispatcherDeps) {
    this.jobs = new JobCache(deps.state);
  }

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

  /** Claim + payload + token: shared by the claim route and the Dispatcher's own invoker. */
  async claim(taskId: string, workerId: string): Promise<{ status: 'Claimed'; claimed: ClaimedTask } | { status: 'NotClaimed'; reason: NotClaimedReason }> {
    const r = await claimTask(this.deps.state, taskId, workerId, this.deps.settings.leaseSeconds);
    if ('reason' in r) return { status: 'NotClaimed', reason: r.reason };
    const job = await this.jobs.require(r.claimed.job_id);
    const claimed = await claimedTask(this.deps.state, r.claimed, job, this.deps.issuer);
    return { status: 'Claimed', claimed };
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
    // recovered by lease expiry, like any worker crash.
    executor.execute(r.claimed).catch((e: unknown) => {
      this.deps.log.error({ task_id: taskId, attempt: r.claimed.attempt, err: e instanceof Error ? e.message : String(e) }, 'executor failed');
    });
  }
}
