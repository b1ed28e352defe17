/**
 * The lease a runner holds, and the one retry policy for fenced task calls.
 *
 * Every task-scoped call a runner makes (complete, events, buffer publish, release) is
 * idempotent on the Dispatcher, so when the Dispatcher or its state database is unreachable the
 * runner keeps trying with backoff for as long as its lease lasts: finished work is not thrown
 * away because of an outage shorter than the lease. `callWhileLeased` is that loop; the queue
 * worker, the Dispatcher's in-process executor and the UDF executor all use it (with the batched
 * client, each task's call still retries against its own lease; the batching happens beneath).
 *
 * Times are local: the lease's remaining time is taken from `lease_expires_at` when the claim or a
 * heartbeat answer arrives (clocks are assumed in sync, as for token expiry).
 */
import { isConnectionFailure } from '../core/dependency.js';
import { retryUntil, type RetryUntilOptions } from '../core/retry.js';
import type { Logger } from '../core/log.js';
import { apiErrorOf, TaskApiError } from './task-client.js';

export class LeaseClock {
  #expiresAt: number;

  constructor(leaseExpiresAt: string, now = Date.now()) {
    this.#expiresAt = LeaseClock.parse(leaseExpiresAt, now);
  }

  private static parse(s: string, now: number): number {
    const t = Date.parse(s);
    // A lease is at least a second and at most a day; anything else is a clock or parse problem.
    return Number.isFinite(t) ? Math.min(now + 86_400_000, Math.max(now + 1_000, t)) : now + 60_000;
  }

  /** An accepted heartbeat moved the lease on. */
  renewed(leaseExpiresAt: string, now = Date.now()): void {
    this.#expiresAt = Math.max(this.#expiresAt, LeaseClock.parse(leaseExpiresAt, now));
  }

  get expiresAt(): number {
    return this.#expiresAt;
  }

  /**
   * When retrying stops: a margin before expiry (5 % of what is left, 1 to 10 s) so the last try
   * still lands while the lease holds.
   */
  retryDeadline(now = Date.now()): number {
    const left = this.#expiresAt - now;
    return this.#expiresAt - Math.min(10_000, Math.max(1_000, left * 0.05));
  }
}

/** Transport failures, timeouts, 5xx answers (the Dispatcher or its database is down): worth another try. */
export function isTransientTaskError(e: unknown): boolean {
  if (e instanceof TaskApiError) return e.transient;
  const err = apiErrorOf(e);
  if (err) return err.status >= 500;
  return isConnectionFailure(e);
}

export interface LeasedCallOptions {
  /** Stop earlier than the lease (epoch ms), e.g. a shutdown's own deadline. */
  notAfter?: number;
  signal?: AbortSignal;
  log?: Logger;
  /** What is being retried, for the log line. */
  what: string;
}

/** Runs a fenced task call, retrying transient failures with backoff until the lease is about to run out. */
export function callWhileLeased<T>(lease: LeaseClock, op: () => Promise<T>, o: LeasedCallOptions): Promise<T> {
  let warned = false;
  const opts: RetryUntilOptions = {
    deadline: () => Math.min(lease.retryDeadline(), o.notAfter ?? Infinity),
    retryable: isTransientTaskError,
    onRetry: (e, tryNo, delayMs) => {
      // One warning per call, then debug: an outage must not flood the log.
      const fields = { what: o.what, try: tryNo + 1, retry_in_ms: delayMs, lease_left_ms: lease.expiresAt - Date.now(), err: e instanceof Error ? e.message : String(e) };
      if (!warned) o.log?.warn(fields, 'task call failed; retrying while the lease lasts');
      else o.log?.debug(fields, 'task call failed again; retrying');
      warned = true;
    },
    ...(o.signal ? { signal: o.signal } : {}),
  };
  return retryUntil(() => op(), opts);
}
