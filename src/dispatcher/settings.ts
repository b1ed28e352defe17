import { DEFAULTS } from '../core/config.js';

/** Timings of the Dispatcher's lifecycle. Defaults are operations.md's; tests shrink them. */
export interface DispatcherSettings {
  leaseSeconds: number;
  /** Task retry backoff: delay = min(max, base * 2^(attempt-1)) * rand(0.5..1.5). */
  retryBaseMs: number;
  retryMaxMs: number;
  outboxBaseMs: number;
  outboxMaxMs: number;
  outboxMaxAttempts: number;
  /** A Queued task with no activity for this long gets a fresh wake-up (lost wake-ups, queue outages). */
  requeueAfterSeconds: number;
  /** Fallback poll interval of the loops (they are also kicked in-process on every change). */
  loopIntervalMs: number;
  /** An always-on source whose task ended is restarted after this long. */
  sourceRestartSeconds: number;
  /** Batch size of each loop iteration. */
  batchSize: number;
}

export function defaultSettings(overrides: Partial<DispatcherSettings> = {}): DispatcherSettings {
  return {
    leaseSeconds: DEFAULTS.leaseSeconds,
    retryBaseMs: 30_000,
    retryMaxMs: 10 * 60_000,
    outboxBaseMs: 1_000,
    outboxMaxMs: 5 * 60_000,
    outboxMaxAttempts: DEFAULTS.outboxMaxAttempts,
    requeueAfterSeconds: 120,
    loopIntervalMs: 1_000,
    sourceRestartSeconds: 30,
    batchSize: 500,
    ...overrides,
  };
}
