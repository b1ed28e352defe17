/**
 * Exponential backoff with jitter, as operations.md prescribes:
 * delay = min(max, base * 2^attempt) * rand(0.5..1.5).
 */
export interface BackoffPolicy {
  baseMs: number;
  maxMs: number;
}

export const TASK_BACKOFF: BackoffPolicy = { baseMs: 30_000, maxMs: 10 * 60_000 };
export const OUTBOX_BACKOFF: BackoffPolicy = { baseMs: 1_000, maxMs: 5 * 60_000 };
export const DELIVERY_BACKOFF: BackoffPolicy = { baseMs: 5_000, maxMs: 30 * 60_000 };

export function backoffDelayMs(policy: BackoffPolicy, attempt: number, rand: () => number = Math.random): number {
  const exp = Math.min(policy.maxMs, policy.baseMs * 2 ** Math.max(0, Math.min(attempt, 40)));
  return Math.round(exp * (0.5 + rand()));
}
