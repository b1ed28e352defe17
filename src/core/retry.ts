import { backoffDelayMs, type BackoffPolicy } from './backoff.js';

/**
 * Retries an idempotent operation on transient failures until a deadline: the one retry loop
 * behind every "keep trying while the lease lasts" in Trace (a worker's completion, events and
 * buffer publishes, a Delivery Service outcome). The deadline is read before every try, so a
 * heartbeat that extends the lease also extends the retrying.
 *
 * A try is started only when it can begin before the deadline. When the next backoff wait would
 * cross the deadline, the wait is shortened so one last try starts just before it (the time left is
 * used, whatever the jitter drew); the last error is thrown once no time is left, when the error
 * is not retryable, or when `signal` aborts.
 */
export interface RetryUntilOptions {
  /** Epoch milliseconds after which no new try starts. */
  deadline: () => number;
  /** Which failures are worth another try (transport errors, 5xx, unreachable dependencies). */
  retryable: (e: unknown) => boolean;
  /** Wait between tries: min(max, base * 2^n) * rand(0.5..1.5). Default 250 ms to 5 s. */
  backoff?: BackoffPolicy;
  signal?: AbortSignal;
  /** Called before each wait (logging). */
  onRetry?: (e: unknown, tryNo: number, delayMs: number) => void;
}

/** The last try starts at least this long before the deadline, so it is under way before it passes. */
const LAST_TRY_MARGIN_MS = 20;

export const DEADLINE_RETRY_BACKOFF: BackoffPolicy = { baseMs: 250, maxMs: 5_000 };

export async function retryUntil<T>(op: (tryNo: number) => Promise<T>, o: RetryUntilOptions): Promise<T> {
  const policy = o.backoff ?? DEADLINE_RETRY_BACKOFF;
  for (let tryNo = 0; ; tryNo++) {
    try {
      return await op(tryNo);
    } catch (e) {
      if (!o.retryable(e) || o.signal?.aborted) throw e;
      const left = o.deadline() - Date.now() - LAST_TRY_MARGIN_MS;
      if (left <= 0) throw e;
      const delay = Math.min(backoffDelayMs(policy, tryNo), left);
      o.onRetry?.(e, tryNo, delay);
      await sleep(delay, o.signal);
      // A timer can fire late on a busy machine: no try starts once the deadline has passed.
      if (o.signal?.aborted || Date.now() >= o.deadline()) throw e;
    }
  }
}

/** Resolves after `ms`, or at once when `signal` aborts. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const done = () => {
      clearTimeout(t);
      signal?.removeEventListener('abort', done);
      resolve();
    };
    const t = setTimeout(done, ms);
    signal?.addEventListener('abort', done, { once: true });
  });
}
