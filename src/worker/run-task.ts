/**
 * Runs one claimed task attempt to its end: heartbeats while the operator runs, enforces the
 * task's timeout, maps the operator's events to its outputs and completes the attempt, fenced
 * by `(task_id, attempt, lease_token)` and the capability token.
 *
 * Used by the queue-woken worker and by the Dispatcher itself (`runtime: dispatcher`, in-process
 * `lambda`), so it knows nothing about queues: it needs only a `TaskApi` and a registry.
 *
 * Outcomes:
 * - `Completed`: the completion (events + operator state) was accepted;
 * - `Failed`: the operator threw, timed out, was unknown, or produced something the Dispatcher
 *   rejected; the attempt was completed as Failed (the Dispatcher decides about retries);
 * - `Canceled`: the task was canceled (heartbeat or completion answered 409 TASK_CANCELED);
 * - `Released`: the lease was given back without using up an attempt (`/internal/task-release`):
 *   the caller aborted (shutdown; the task is queued again at once), or the operator failed
 *   because a dependency was unreachable (a DependencyUnavailable: the task waits for it);
 * - `Lost`: this attempt no longer owns the task (403 stale attempt / lease mismatch, 404, the
 *   attempt is over), or the Dispatcher could not be reached before the lease ran out. Nothing
 *   more is sent; the lease expires and the Dispatcher retries.
 *
 * Every call after the operator ran (events, completion, release) is retried with backoff while
 * the lease lasts (`callWhileLeased`), so an outage of the Dispatcher or its state database that
 * is shorter than the lease loses no finished work.
 */
import type { Logger } from '../core/log.js';
import type { Operator, OperatorContext, OperatorEvent, OperatorResult } from '../operators/types.js';
import { EVENTS_PER_REQUEST, toWireEvents } from './events.js';
import type { ClaimedTask, CompleteBody, ReleaseBody, TaskEvent, TaskPayload, TaskRef } from './payload.js';
import { apiErrorOf, type TaskApi } from './task-client.js';
import { unavailableDependency } from '../core/dependency.js';
import { LeaseClock, callWhileLeased } from './lease.js';

export type RunOutcome = 'Completed' | 'Failed' | 'Canceled' | 'Released' | 'Lost';

/** How long a shutdown waits for its release to be accepted before leaving the lease to expire. */
const SHUTDOWN_RELEASE_MS = 10_000;

export interface RunTaskDeps {
  client: TaskApi;
  registry: ReadonlyMap<string, Operator>;
  log: Logger;
  /** Heartbeat interval; default min(30 s, heartbeat_timeout_seconds / 4). */
  heartbeatMs?: number;
  /** How many times an operator is re-run after a STATE_CONFLICT completion (default 5). */
  maxStateConflictRetries?: number;
  /** Aborting it stops the run without completing (shutdown): the lease is released (`Released`), or left to expire (`Lost`). */
  signal?: AbortSignal;
}

type StopReason = 'timeout' | 'canceled' | 'lost' | 'shutdown';

/** The abort reason the operator sees on `ctx.signal`. */
export class TaskAborted extends Error {
  readonly reason: StopReason;
  constructor(reason: StopReason) {
    super(`task aborted: ${reason}`);
    this.name = 'TaskAborted';
    this.reason = reason;
  }
}

const MAX_ERROR_MESSAGE = 1_000;

function shortMessage(e: unknown): string {
  const m = e instanceof Error ? e.message : typeof e === 'string' ? e : 'non-error thrown';
  return m.length > MAX_ERROR_MESSAGE ? `${m.slice(0, MAX_ERROR_MESSAGE - 3)}...` : m;
}

/** Errors that mean this attempt no longer owns the task. */
function ownershipLost(e: unknown): boolean {
  const err = apiErrorOf(e);
  if (!err) return false;
  return err.status === 401 || err.status === 403 || err.status === 404 || (err.status === 409 && err.code !== 'TASK_CANCELED' && err.code !== 'STATE_CONFLICT');
}

function isCanceled(e: unknown): boolean {
  const err = apiErrorOf(e);
  return err !== undefined && err.status === 409 && err.code === 'TASK_CANCELED';
}

/**
 * Heartbeat often enough that one or two missed beats never lose the lease: at most every 30 s,
 * a quarter of the job's heartbeat timeout, and a third of the lease the claim granted.
 */
export function heartbeatIntervalMs(task: Pick<TaskPayload, 'heartbeat_timeout_seconds'>, leaseMs?: number): number {
  const hb = task.heartbeat_timeout_seconds;
  let ms = Math.min(30_000, Number.isFinite(hb) && hb > 0 ? (hb * 1000) / 4 : 30_000);
  if (leaseMs !== undefined && Number.isFinite(leaseMs) && leaseMs > 0) ms = Math.min(ms, leaseMs / 3);
  return Math.max(10, ms);
}

/** How long the end of a run waits for a heartbeat already in flight. */
const HB_DRAIN_MS = 2_000;

/** Wait before retrying a failed heartbeat: 1 s doubling to 8 s (never longer than the regular interval). */
export function heartbeatRetryMs(failures: number): number {
  return Math.min(8_000, 1_000 * 2 ** Math.max(0, failures - 1));
}

function chunks<T>(items: T[], size: number): T[][] {
  const out: T[][] = [];
  for (let i = 0; i < items.length; i += size) out.push(items.slice(i, i + size));
  return out;
}

/** Runs the operator, settling as soon as `signal` aborts even if the operator ignores it. */
function raceAbort(op: Operator, ctx: OperatorContext, signal: AbortSignal): Promise<OperatorResult> {
  return new Promise<OperatorResult>((resolve, reject) => {
    if (signal.aborted) {
      reject(signal.reason);
      return;
    }
    const onAbort = () => reject(signal.reason);
    signal.addEventListener('abort', onAbort, { once: true });
    Promise.resolve()
      .then(() => op.run(ctx))
      .then(
        (r) => {
          signal.removeEventListener('abort', onAbort);
          resolve(r ?? {});
        },
        (e: unknown) => {
          signal.removeEventListener('abort', onAbort);
          reject(e);
        },
      );
  });
}

export async function runClaimedTask(claimed: ClaimedTask, deps: RunTaskDeps): Promise<RunOutcome> {
  const { client } = deps;
  let task = claimed.task;
  const ref: TaskRef = {
    task_id: task.task_id,
    attempt: claimed.attempt,
    lease_token: claimed.lease_token,
    capability_token: claimed.capability_token,
  };
  const log = deps.log.child({
    task_id: task.task_id,
    attempt: claimed.attempt,
    org_id: task.org_id,
    dag: task.job.dag_name,
    job: task.job.name,
    operator: task.operator,
  });

  const lease = new LeaseClock(claimed.lease_expires_at);
  /**
   * A fenced call, retried while the lease lasts. A shutdown past its grace period (`deps.signal`)
   * ends the retrying too, so the process can exit; a release passes its own deadline instead.
   */
  const leased = <T>(what: string, op: () => Promise<T>, notAfter?: number) =>
    callWhileLeased(lease, op, {
      what, log,
      ...(notAfter === undefined ? (deps.signal ? { signal: deps.signal } : {}) : { notAfter }),
    });

  /** Gives the lease back; falls back to `fallback` when the Dispatcher refuses or cannot be reached. */
  const release = async (body: ReleaseBody, fallback: () => Promise<RunOutcome> | RunOutcome, notAfter?: number): Promise<RunOutcome> => {
    if (!client.release) return fallback();
    try {
      await leased('release', () => client.release!(ref, body), notAfter);
      log.info({ reason: body.reason, ...(body.dependency ? { dependency: body.dependency } : {}) }, 'lease released');
      return 'Released';
    } catch (e) {
      if (isCanceled(e)) return completeWith({ status: 'Canceled' });
      // No (valid) worker token here: this runner cannot release; fall back.
      if (apiErrorOf(e)?.status === 401) return fallback();
      if (ownershipLost(e)) {
        log.warn({ err: shortMessage(e) }, 'release refused: this attempt no longer owns the task');
        return 'Lost';
      }
      log.warn({ err: shortMessage(e), reason: body.reason }, 'could not release the lease');
      return fallback();
    }
  };

  /** Maps a failed completion call to an outcome (possibly completing again as Failed/Canceled). */
  const onCompleteError = async (e: unknown, body: CompleteBody): Promise<RunOutcome> => {
    if (isCanceled(e)) return body.status === 'Canceled' ? 'Canceled' : completeWith({ status: 'Canceled' });
    if (ownershipLost(e)) {
      log.warn({ err: shortMessage(e) }, 'completion refused: this attempt no longer owns the task');
      return 'Lost';
    }
    const err = apiErrorOf(e);
    if (err && err.status >= 400 && err.status < 500 && body.status === 'Completed') {
      // The Dispatcher rejected what the operator produced (malformed events, too large, ...).
      return completeWith({ status: 'Failed', error_message: `completion rejected by the Dispatcher: ${shortMessage(e)}` });
    }
    log.error({ err: shortMessage(e), status: body.status, lease_left_ms: lease.expiresAt - Date.now() }, 'could not complete the task before the lease ran out; the Dispatcher retries it');
    return 'Lost';
  };
  /** Completes the attempt; maps the Dispatcher's answer to an outcome. */
  const completeWith = async (body: CompleteBody): Promise<RunOutcome> => {
    try {
      await leased('complete', () => client.complete(ref, body));
      log.info({ status: body.status, ...(body.error_message ? { error_message: body.error_message } : {}) }, 'task completed');
      return body.status;
    } catch (e) {
      return onCompleteError(e, body);
    }
  };
  const fail = (message: string) => completeWith({ status: 'Failed', error_message: message });

  const operator = deps.registry.get(task.operator);
  if (!operator) {
    const known = [...deps.registry.keys()].sort().join(', ');
    log.error('unknown operator');
    return fail(`unknown operator "${task.operator.slice(0, 100)}": this worker runs ${known || 'no operators'}`);
  }

  const controller = new AbortController();
  let stopReason: StopReason | undefined;
  const stop = (reason: StopReason) => {
    if (stopReason !== undefined) return;
    stopReason = reason;
    log.info({ reason }, 'stopping the operator');
    controller.abort(new TaskAborted(reason));
  };
  const onExternalAbort = () => stop('shutdown');
  if (deps.signal?.aborted) stop('shutdown');
  else deps.signal?.addEventListener('abort', onExternalAbort, { once: true });

  // setTimeout fires at once beyond 2^31-1 ms (~24.8 days): clamp.
  const timeoutMs = task.timeout_seconds > 0 ? Math.min(task.timeout_seconds * 1000, 2_147_483_647) : undefined;
  const timeoutTimer = timeoutMs === undefined ? undefined : setTimeout(() => stop('timeout'), timeoutMs);

  // Heartbeats: one at a time, every interval, until the run ends.
  const hbMs = deps.heartbeatMs ?? heartbeatIntervalMs(task, Date.parse(claimed.lease_expires_at) - Date.now());
  let hbTimer: NodeJS.Timeout | undefined;
  let hbStopped = false;
  let hbFailures = 0;
  let hbInFlight: Promise<void> | undefined;
  const beat = () => {
    hbInFlight = beatOnce();
  };
  const beatOnce = async () => {
    try {
      const r = await client.heartbeat(ref);
      lease.renewed(r.lease_expires_at);
      hbFailures = 0;
    } catch (e) {
      if (isCanceled(e)) stop('canceled');
      else if (ownershipLost(e)) stop('lost');
      else {
        if (hbFailures === 0) log.warn({ err: shortMessage(e) }, 'heartbeat failed; retrying soon');
        hbFailures++;
      }
    }
    // After a failed beat, try again soon (the lease is not getting longer meanwhile).
    if (!hbStopped) hbTimer = setTimeout(beat, hbFailures > 0 ? Math.min(hbMs, heartbeatRetryMs(hbFailures)) : hbMs);
  };
  hbTimer = setTimeout(beat, hbMs);

  /** Sends events through `/v1/task/events`, in chunks. */
  const sendEvents = async (wire: TaskEvent[]) => {
    for (const chunk of chunks(wire, EVENTS_PER_REQUEST)) {
      try {
        await leased('events', () => client.events(ref, chunk));
      } catch (e) {
        if (isCanceled(e)) stop('canceled');
        else if (ownershipLost(e)) stop('lost');
        throw e;
      }
    }
  };

  const afterStop = (reason: StopReason): Promise<RunOutcome> | RunOutcome => {
    switch (reason) {
      case 'timeout':
        return fail(`timeout: the task ran longer than its timeout_seconds (${task.timeout_seconds} s)`);
      case 'canceled':
        return completeWith({ status: 'Canceled' });
      case 'shutdown':
        // Give the lease back so the next runner starts at once, without using up an attempt.
        return release({ reason: 'shutdown' }, () => {
          log.warn('run abandoned at shutdown; its lease will expire');
          return 'Lost';
        }, Date.now() + SHUTDOWN_RELEASE_MS);
      default:
        log.warn({ reason }, 'run abandoned without completing');
        return 'Lost';
    }
  };

  const maxRetries = deps.maxStateConflictRetries ?? 5;
  try {
    for (let round = 0; ; round++) {
      const ctx: OperatorContext = {
        task,
        signal: controller.signal,
        log,
        capabilityToken: claimed.capability_token,
        emit: async (events: OperatorEvent[]) => {
          if (stopReason !== undefined) throw new TaskAborted(stopReason);
          await sendEvents(toWireEvents(task, events));
        },
      };

      let result: OperatorResult;
      try {
        result = await raceAbort(operator, ctx, controller.signal);
      } catch (e) {
        if (stopReason !== undefined) return await afterStop(stopReason);
        const dependency = unavailableDependency(e);
        if (dependency) {
          // Not the task's fault: wait for the dependency without using up an attempt.
          log.warn({ dependency, err: shortMessage(e) }, 'operator failed: a dependency is unreachable');
          return await release({ reason: 'infrastructure', dependency, error_message: shortMessage(e) }, () => fail(shortMessage(e)));
        }
        log.warn({ err: shortMessage(e) }, 'operator failed');
        return await fail(shortMessage(e));
      }
      if (stopReason !== undefined) return await afterStop(stopReason);

      let wire: TaskEvent[];
      try {
        wire = toWireEvents(task, result.events ?? []);
      } catch (e) {
        return await fail(shortMessage(e));
      }
      const state = result.operator_state ?? [];
      // Events ride on the completion so they commit atomically with operator state. Only a
      // stateless result with more events than one request carries sends the leading ones
      // ahead through /v1/task/events (events are idempotent per producing task).
      if (state.length === 0 && wire.length > EVENTS_PER_REQUEST) {
        const tail = wire.length - (wire.length % EVENTS_PER_REQUEST || EVENTS_PER_REQUEST);
        try {
          await sendEvents(wire.slice(0, tail));
        } catch (e) {
          if (stopReason !== undefined) return await afterStop(stopReason);
          return await fail(`could not send events: ${shortMessage(e)}`);
        }
        wire = wire.slice(tail);
      }

      const body: CompleteBody = { status: 'Completed', events: wire };
      if (state.length > 0) body.operator_state = state;
      if (result.outputs !== undefined) body.outputs = result.outputs;
      if (result.datasets_published !== undefined) body.datasets_published = result.datasets_published;

      try {
        await leased('complete', () => client.complete(ref, body));
        log.info({ events: wire.length, state_writes: state.length }, 'task completed');
        return 'Completed';
      } catch (e) {
        const err = apiErrorOf(e);
        if (!(err?.status === 409 && err.code === 'STATE_CONFLICT')) return await onCompleteError(e, body);
        if (round >= maxRetries) {
          return await fail(`operator state kept changing underneath this task (${round + 1} STATE_CONFLICT answers); giving up this attempt`);
        }
        log.info({ round: round + 1 }, 'operator state conflict; re-fetching state and re-running the operator');
        let fetched;
        try {
          fetched = await leased('fetch', () => client.fetch(task.task_id));
        } catch (fe) {
          const fErr = apiErrorOf(fe);
          if (fErr && (fErr.status === 403 || fErr.status === 404)) return 'Lost';
          return await fail(`operator state conflict, and re-fetching the task failed: ${shortMessage(fe)}`);
        }
        if (fetched.attempt !== ref.attempt) return 'Lost';
        if (fetched.status === 'Canceled') return await completeWith({ status: 'Canceled' });
        if (fetched.status === 'Completed' || fetched.status === 'Queued') return 'Lost';
        if (stopReason !== undefined) return await afterStop(stopReason);
        task = fetched.task;
      }
    }
  } finally {
    hbStopped = true;
    clearTimeout(hbTimer);
    clearTimeout(timeoutTimer);
    deps.signal?.removeEventListener('abort', onExternalAbort);
    // A beat already on the wire ends before the run does (bounded: a slow Dispatcher never holds the runner).
    if (hbInFlight) await Promise.race([hbInFlight, new Promise<void>((r) => setTimeout(r, HB_DRAIN_MS).unref())]);
  }
}
