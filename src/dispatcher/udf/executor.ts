/**
 * The `runtime: lambda` executor (contracts/lambda_invocation.md). The Dispatcher has already
 * leased the task (claim: Queued -> Running, capability token minted); this executor:
 *
 * - jobs without a `udf` block (trusted platform operators on `runtime: lambda`): hands the
 *   claim to the `fallback` executor (the in-process one) unchanged;
 * - jobs with a `udf` block: loads the bundle record of the task's org (Finalized only), checks
 *   the job's entrypoint against the recorded one, builds the invocation payload (fencing triple,
 *   capability token, `udf {bundle_id, entrypoint, sha256, runtime}`, the full task payload and
 *   optional trusted context such as alert definitions), and invokes it: a local child process by
 *   default (`LocalProcessInvoker`: the runner verifies the pinned SHA-256 of the exact bytes it
 *   runs), or an injected invoker (`AwsLambdaInvoker`). While a local run lasts, the executor
 *   heartbeats the lease for it.
 *
 * Who completes: this trusted executor, from the run's outcome (`completionFromResult`). The UDF
 * reports through its output object (`events`, `outputs`, `datasets_published`, or
 * `{status: "Failed", error_message}`) and should not call `/v1/task/complete` itself. If it does
 * anyway, its completion stands: the executor's own call is then a no-op (same status) or 409
 * ALREADY_FINISHED, which it accepts. When the Dispatcher rejects what the UDF produced (events
 * on datasets it does not own, malformed fields, oversized outputs), the executor completes the
 * attempt as Failed with the reason, so a bad output never leaves a task Running. An asynchronous
 * Lambda (`accepted`) completes through the task routes itself; its lease is the safety net.
 */
import type { Db } from '../../db/db.js';
import type { Logger } from '../../core/log.js';
import { UUID_RE } from '../../core/ids.js';
import type { ObjectStore } from '../../objectstore/objectstore.js';
import type { ClaimedTask, CompleteBody, ReleaseBody, TaskPayload, TaskRef } from '../../worker/payload.js';
import { LeaseClock, callWhileLeased } from '../../worker/lease.js';
import { DependencyUnavailable, dependencyLabel, unavailableDependency, type Dependency } from '../../core/dependency.js';
import { TaskClient, apiErrorOf } from '../../worker/task-client.js';
import { heartbeatIntervalMs, heartbeatRetryMs } from '../../worker/run-task.js';
import type { LambdaInvocationPayload } from '../../udf/invocation.js';
import { LocalProcessInvoker, completionFromResult, type InvokeResult, type LocalProcessInvokerOptions, type UdfInvoker } from '../../udf/invoker.js';
import { DEFAULT_BUNDLE_CAPS } from '../../udf/manifest.js';
import type { UdfSandbox } from '../../udf/sandbox/sandbox.js';
import type { TaskExecutor } from '../service.js';
import { pinnedBundle, type PinnedBundle } from './bundles.js';

export interface UdfExecutorOptions {
  /** Postgres state: `udf_bundles`. */
  state: Db;
  /** Where finalized bundles are stored. */
  store: ObjectStore;
  /** The Dispatcher's own base URL (fenced task routes). */
  dispatcherUrl: () => string | undefined;
  /** Base URLs handed to local UDF processes (default: dispatcherUrl). */
  udfDispatcherUrl?: () => string | undefined;
  queryUrl: () => string | undefined;
  /** Replaces the local child-process runner (for example an AwsLambdaInvoker). */
  invoker?: UdfInvoker;
  /**
   * The OS sandbox of local runs (`UdfSandbox.start` at start-up). Without it, and without an
   * `invoker`, UDF tasks fail with `sandbox_unavailable`.
   */
  sandbox?: UdfSandbox;
  /** Extra options of the local runner (timeouts, output caps, env allowlist). */
  local?: Omit<LocalProcessInvokerOptions, 'loadBundle' | 'dispatcherUrl' | 'queryUrl' | 'sandbox'>;
  /** Trusted platform operators on `runtime: lambda` (no udf block). */
  fallback?: TaskExecutor;
  /** Trusted, per-task context merged into the invocation (e.g. `alert_definitions`). */
  context?: (task: TaskPayload) => Promise<Record<string, unknown> | undefined>;
  /** UDF runs at once in this process (default 4); others wait, heartbeating their leases. */
  maxConcurrent?: number;
  /** Heartbeat interval override (tests). */
  heartbeatMs?: number;
  /** The worker token: lets the executor release leases (`/internal/task-release`). */
  workerToken?: string;
  /**
   * Which dependency, if any, was seen unreachable since `since` (epoch ms): a failed run that
   * overlapped such an outage is released (not counted) instead of failed. The Dispatcher's
   * DependencyMonitor answers it.
   */
  dependencyOutage?: (since: number) => Dependency | undefined;
  log: Logger;
}

export type UdfRunOutcome = 'Completed' | 'Failed' | 'Canceled' | 'Released' | 'Lost' | 'Accepted' | 'Delegated';

/** Codes meaning this attempt no longer owns the task: nothing more is sent. */
const OWNERSHIP_CODES = new Set(['STALE_ATTEMPT', 'LEASE_MISMATCH', 'CAPABILITY_MISMATCH', 'INVALID_CAPABILITY', 'TASK_NOT_FOUND', 'TASK_NOT_RUNNING']);
/** Keys the executor owns in the invocation; trusted context may not override them. */
const RESERVED = new Set(['task_id', 'attempt', 'lease_token', 'lease_expires_at', 'capability_token', 'bundle_url', 'udf', 'org_id', 'job', 'operator', 'config', 'inputs', 'outputs', 'trigger', 'timeout_seconds', 'heartbeat_timeout_seconds', 'runtime']);

class Slots {
  private used = 0;
  private waiters: Array<() => void> = [];
  constructor(private readonly max: number) {}
  async acquire(): Promise<() => void> {
    if (this.used >= this.max) await new Promise<void>((r) => this.waiters.push(r));
    else this.used++;
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const next = this.waiters.shift();
      if (next) next();
      else this.used--;
    };
  }
}

const tail = (s: string | undefined, n: number) => (s && s.length > n ? `...${s.slice(s.length - n)}` : s ?? '');

export class UdfExecutor implements TaskExecutor {
  private readonly slots: Slots;
  private client: TaskClient | undefined;

  constructor(private readonly opts: UdfExecutorOptions) {
    this.slots = new Slots(Math.max(1, opts.maxConcurrent ?? 4));
  }

  async execute(claimed: ClaimedTask, o: { signal?: AbortSignal } = {}): Promise<void> {
    await this.run(claimed, o.signal);
  }

  /** Runs one leased attempt to its end; returns what happened (for tests and benchmarks). */
  async run(claimed: ClaimedTask, signal?: AbortSignal): Promise<UdfRunOutcome> {
    const task = claimed.task;
    if (!task.udf) {
      if (this.opts.fallback) {
        await this.opts.fallback.execute(claimed, signal ? { signal } : {});
        return 'Delegated';
      }
    }
    const url = this.opts.dispatcherUrl();
    if (!url) throw new Error('dispatcher URL not known yet');
    this.client ??= new TaskClient({ baseUrl: url, ...(this.opts.workerToken ? { workerToken: this.opts.workerToken } : {}) });
    const client = this.client;
    const ref: TaskRef = { task_id: task.task_id, attempt: claimed.attempt, lease_token: claimed.lease_token, capability_token: claimed.capability_token };
    const log = this.opts.log.child({ task_id: task.task_id, attempt: claimed.attempt, org_id: task.org_id, dag: task.job.dag_name, job: task.job.name, operator: task.operator });
    const lease = new LeaseClock(claimed.lease_expires_at);
    if (!task.udf) return this.complete(client, ref, lease, { status: 'Failed', error_message: `operator ${task.operator} has no udf block and no trusted executor is configured for runtime lambda` }, log);

    // Heartbeat the lease while waiting for a slot and while the run lasts.
    let lost: 'canceled' | 'lost' | undefined;
    const hbMs = this.opts.heartbeatMs ?? heartbeatIntervalMs(task, Date.parse(claimed.lease_expires_at) - Date.now());
    let timer: NodeJS.Timeout | undefined;
    let stopped = false;
    let hbFailures = 0;
    const beat = async () => {
      try {
        const r = await client.heartbeat(ref);
        lease.renewed(r.lease_expires_at);
        hbFailures = 0;
      } catch (e) {
        const err = apiErrorOf(e);
        if (err?.status === 409 && err.code === 'TASK_CANCELED') lost = 'canceled';
        else if (err && (OWNERSHIP_CODES.has(err.code) || err.status === 403 || err.status === 404)) lost = 'lost';
        else {
          if (hbFailures === 0) log.warn({ err: e instanceof Error ? e.message : String(e) }, 'heartbeat failed; retrying soon');
          hbFailures++;
        }
      }
      if (!stopped && lost === undefined) timer = setTimeout(beat, hbFailures > 0 ? Math.min(hbMs, heartbeatRetryMs(hbFailures)) : hbMs);
    };
    timer = setTimeout(beat, hbMs);

    const startedAt = Date.now();
    let result: InvokeResult | undefined;
    let unreachable: { dependency: Dependency; message: string } | undefined;
    const slot = await this.acquireSlot(signal);
    try {
      if (slot) result = await this.invoke(claimed, log, signal);
    } catch (e) {
      const dependency = unavailableDependency(e);
      if (!dependency) throw e;
      unreachable = { dependency, message: e instanceof Error ? e.message : String(e) };
    } finally {
      slot?.();
      stopped = true;
      clearTimeout(timer);
    }
    if (signal?.aborted) return this.release(client, ref, lease, { reason: 'shutdown' }, log);
    if (lost === 'canceled') return this.complete(client, ref, lease, { status: 'Canceled' }, log);
    if (lost === 'lost') {
      log.warn('the attempt lost its lease while the UDF ran; not completing');
      return 'Lost';
    }
    if (unreachable) {
      log.warn({ dependency: unreachable.dependency, err: unreachable.message }, 'udf not run: a dependency is unreachable');
      return this.release(client, ref, lease, { reason: 'infrastructure', dependency: unreachable.dependency, error_message: unreachable.message }, log);
    }
    if (!result) return 'Lost';
    if (result.status === 'accepted') {
      log.info({ request_id: result.requestId }, 'udf invocation accepted; the runner completes the task');
      return 'Accepted';
    }
    const body = completionFromResult(result) as CompleteBody | null;
    if (!body) return 'Accepted';
    if (result.status === 'failed') {
      const err = tail(result.stderr?.trim(), 500);
      body.error_message = `${body.error_message ?? 'the UDF failed'}${err ? ` | stderr: ${err}` : ''}`.slice(0, 4000);
      log.warn({ failure: result.failure, retryable: result.retryable }, 'udf run failed');
    }
    // A run that failed while a platform dependency it may have used (the data database behind
    // the Query Service, the queue) was unreachable is not charged to the task.
    const permanent = result.status === 'failed' && !result.retryable;
    const outage = body.status === 'Failed' && !permanent ? this.opts.dependencyOutage?.(startedAt) : undefined;
    if (outage) {
      const why = `the UDF failed while ${dependencyLabel(outage)} was unreachable: ${body.error_message ?? 'no message'}`.slice(0, 2000);
      log.warn({ dependency: outage }, 'udf failed during a dependency outage; releasing instead of failing');
      return this.release(client, ref, lease, { reason: 'infrastructure', dependency: outage, error_message: why }, log, () => this.complete(client, ref, lease, body, log));
    }
    return this.complete(client, ref, lease, body, log);
  }

  /** Waits for a run slot; resolves undefined when `signal` aborts first (the slot is handed back when it comes). */
  private async acquireSlot(signal?: AbortSignal): Promise<(() => void) | undefined> {
    if (signal?.aborted) return undefined;
    const pending = this.slots.acquire();
    if (!signal) return pending;
    return new Promise((resolve) => {
      const onAbort = () => {
        resolve(undefined);
        void pending.then((rel) => rel());
      };
      signal.addEventListener('abort', onAbort, { once: true });
      void pending.then((rel) => {
        if (signal.aborted) return;
        signal.removeEventListener('abort', onAbort);
        resolve(rel);
      });
    });
  }

  /** Gives the lease back (worker-only route); without a worker token or when refused, falls back. */
  private async release(client: TaskClient, ref: TaskRef, lease: LeaseClock, body: ReleaseBody, log: Logger, fallback?: () => Promise<UdfRunOutcome>): Promise<UdfRunOutcome> {
    try {
      await callWhileLeased(lease, () => client.release(ref, body), {
        what: 'release', log, ...(body.reason === 'shutdown' ? { notAfter: Date.now() + 10_000 } : {}),
      });
      log.info({ reason: body.reason, ...(body.dependency ? { dependency: body.dependency } : {}) }, 'udf task lease released');
      return 'Released';
    } catch (e) {
      log.warn({ err: e instanceof Error ? e.message : String(e), reason: body.reason }, 'could not release the udf task lease');
      if (fallback) return fallback();
      if (body.reason === 'infrastructure') {
        return this.complete(client, ref, lease, { status: 'Failed', error_message: body.error_message ?? `${body.dependency} unreachable` }, log);
      }
      return 'Lost';
    }
  }

  /** Runs the UDF; throws DependencyUnavailable when what the run needs first (bundle record, context) cannot be read. */
  private async invoke(claimed: ClaimedTask, log: Logger, signal?: AbortSignal): Promise<InvokeResult> {
    const task = claimed.task;
    const udf = task.udf!;
    let pinned: PinnedBundle | undefined;
    try {
      pinned = UUID_RE.test(udf.bundle_id) ? await pinnedBundle(this.opts.state, task.org_id, udf.bundle_id) : undefined;
    } catch (e) {
      if (unavailableDependency(e)) throw e;
      log.warn({ err: e instanceof Error ? e.message : String(e) }, 'bundle record lookup failed');
      return { status: 'failed', failure: 'bundle_unavailable', message: 'the UDF bundle record could not be read', retryable: true };
    }
    if (!pinned) return { status: 'failed', failure: 'bundle_unavailable', message: `no finalized UDF bundle ${udf.bundle_id.slice(0, 80)} in this org`, retryable: false };
    if (pinned.entrypoint !== udf.entrypoint) {
      return { status: 'failed', failure: 'invalid_bundle', message: 'the job udf.entrypoint does not match the entrypoint recorded for the bundle', retryable: false };
    }
    let extra: Record<string, unknown> = {};
    if (this.opts.context) {
      try {
        extra = (await this.opts.context(task)) ?? {};
      } catch (e) {
        const dependency = unavailableDependency(e);
        if (dependency) throw new DependencyUnavailable(dependency, `could not load the invocation context: ${e instanceof Error ? e.message : String(e)}`, { cause: e });
        log.warn({ err: e instanceof Error ? e.message : String(e) }, 'could not load the invocation context');
        return { status: 'failed', failure: 'invoke_error', message: 'the invocation context (alert definitions) could not be loaded', retryable: true };
      }
    }
    const payload: LambdaInvocationPayload = {
      ...Object.fromEntries(Object.entries(extra).filter(([k]) => !RESERVED.has(k))),
      task_id: task.task_id,
      attempt: claimed.attempt,
      lease_token: claimed.lease_token,
      lease_expires_at: claimed.lease_expires_at,
      capability_token: claimed.capability_token,
      udf: { bundle_id: pinned.id, entrypoint: pinned.entrypoint, sha256: pinned.sha256, runtime: pinned.runtime },
      org_id: task.org_id,
      job: task.job,
      operator: task.operator,
      config: task.config,
      inputs: task.inputs,
      outputs: task.outputs,
      trigger: task.trigger,
      timeout_seconds: task.timeout_seconds,
      heartbeat_timeout_seconds: task.heartbeat_timeout_seconds,
    };
    if (!this.opts.invoker && !this.opts.sandbox) {
      return { status: 'failed', failure: 'sandbox_unavailable', message: 'no UDF sandbox is configured for local runs; refusing to run untrusted code', retryable: false };
    }
    const invoker = this.opts.invoker ?? this.localInvoker(pinned, this.opts.sandbox!, log);
    if (!invoker) return { status: 'failed', failure: 'invoke_error', message: 'the UDF runner is not configured (no Dispatcher or Query Service URL)', retryable: true };
    return invoker.invoke(payload, signal ? { signal } : {});
  }

  private localInvoker(pinned: PinnedBundle, sandbox: UdfSandbox, log: Logger): UdfInvoker | undefined {
    const dispatcherUrl = (this.opts.udfDispatcherUrl ?? this.opts.dispatcherUrl)();
    const queryUrl = this.opts.queryUrl();
    if (!dispatcherUrl || !queryUrl) return undefined;
    const maxBytes = this.opts.local?.caps?.maxZipBytes ?? DEFAULT_BUNDLE_CAPS.maxZipBytes;
    return new LocalProcessInvoker({
      ...this.opts.local,
      sandbox,
      logger: log,
      dispatcherUrl,
      queryUrl,
      loadBundle: async () => ({ bytes: Buffer.from(await this.opts.store.get(pinned.object_key, { maxBytes })), sha256: pinned.sha256, runtime: pinned.runtime }),
    });
  }

  /** Completes the attempt (retried while the lease lasts), turning a rejected UDF output into a Failed completion. */
  private async complete(client: TaskClient, ref: TaskRef, lease: LeaseClock, body: CompleteBody, log: Logger): Promise<UdfRunOutcome> {
    try {
      await callWhileLeased(lease, () => client.complete(ref, body), { what: 'complete', log });
      log.info({ status: body.status }, 'udf task completed');
      return body.status;
    } catch (e) {
      const err = apiErrorOf(e);
      if (!err) {
        log.error({ err: e instanceof Error ? e.message : String(e) }, 'could not complete the udf task; the lease will expire and the Dispatcher retries');
        return 'Lost';
      }
      if (err.status === 409 && err.code === 'TASK_CANCELED') return body.status === 'Canceled' ? 'Canceled' : this.complete(client, ref, lease, { status: 'Canceled' }, log);
      if (err.status === 409 && err.code === 'ALREADY_FINISHED') {
        log.info('the UDF completed the task itself; its completion stands');
        return 'Lost';
      }
      if (OWNERSHIP_CODES.has(err.code)) {
        log.warn({ code: err.code }, 'completion refused: this attempt no longer owns the task');
        return 'Lost';
      }
      if (err.status >= 400 && err.status < 500 && body.status === 'Completed') {
        const msg = e instanceof Error ? e.message : String(e);
        return this.complete(client, ref, lease, { status: 'Failed', error_message: `the UDF output was rejected by the Dispatcher (${err.code}): ${msg}`.slice(0, 2000) }, log);
      }
      log.error({ code: err.code, status: err.status }, 'could not complete the udf task');
      return 'Lost';
    }
  }
}
