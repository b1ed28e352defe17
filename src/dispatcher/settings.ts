import { DEFAULTS, intFromEnv } from '../core/config.js';

/** Timings of the Dispatcher's lifecycle. Defaults are operations.md's; tests shrink them. */
export interface DispatcherSettings {
  /**
   * Ceiling on a task lease. A lease lasts the job's `heartbeat_timeout_seconds` and each heartbeat
   * extends it by that much; this caps both. The default equals the largest heartbeat timeout a
   * DAG may set, so every job's own timeout applies unless a deployment lowers the ceiling.
   */
  leaseSeconds: number;
  /** Task retry backoff: delay = min(max, base * 2^(attempt-1)) * rand(0.5..1.5). */
  retryBaseMs: number;
  retryMaxMs: number;
  outboxBaseMs: number;
  outboxMaxMs: number;
  outboxMaxAttempts: number;
  /**
   * Retry backoff after an infrastructure failure (a dependency unreachable), by the number of
   * such failures so far: short, because the task is also re-driven as soon as the Dispatcher sees
   * the dependency back. These attempts do not count toward max_attempts.
   */
  infraRetryBaseMs: number;
  infraRetryMaxMs: number;
  /** Released and infrastructure attempts a task may accumulate before further ones count. */
  maxUncountedAttempts: number;
  /** How often the Dispatcher probes the databases and the queue it can reach. */
  dependencyProbeMs: number;
  /** A Queued task with no activity for this long gets a fresh wake-up (lost wake-ups, queue outages). */
  requeueAfterSeconds: number;
  /** Fallback poll interval of the loops (they are also kicked in-process on every change). */
  loopIntervalMs: number;
  /** An always-on source whose task ended is restarted after this long. */
  sourceRestartSeconds: number;
  /** Batch size of each loop iteration. */
  batchSize: number;
  /** A manual trigger estimated to set off more tasks than this needs `confirm: true`. */
  triggerConfirmAbove: number;
  /** How often the reconcile loop looks for recorded events that were never routed. */
  reconcileIntervalMs: number;
  /** An event is reconciled only once it is this old (the outbox routes it first, normally). */
  reconcileGraceSeconds: number;
  /** Events older than this are not reconciled any more. */
  reconcileLookbackSeconds: number;
}

export function defaultSettings(overrides: Partial<DispatcherSettings> = {}): DispatcherSettings {
  return {
    leaseSeconds: DEFAULTS.leaseSeconds,
    retryBaseMs: 30_000,
    retryMaxMs: 10 * 60_000,
    outboxBaseMs: 1_000,
    outboxMaxMs: 5 * 60_000,
    outboxMaxAttempts: DEFAULTS.outboxMaxAttempts,
    infraRetryBaseMs: 2_000,
    infraRetryMaxMs: 60_000,
    maxUncountedAttempts: 100,
    dependencyProbeMs: 2_000,
    requeueAfterSeconds: 120,
    loopIntervalMs: 1_000,
    sourceRestartSeconds: 30,
    batchSize: 500,
    triggerConfirmAbove: 1_000,
    reconcileIntervalMs: 60_000,
    reconcileGraceSeconds: 30,
    reconcileLookbackSeconds: 86_400,
    ...overrides,
  };
}

/**
 * The timings operators may tune per deployment (operations.md: "keep these as defaults, but make
 * them configurable"). Unset variables keep the defaults; a bad value is a startup error naming it.
 */
export function dispatcherSettingsFromEnv(env: NodeJS.ProcessEnv): Partial<DispatcherSettings> {
  const d = defaultSettings();
  const out: Partial<DispatcherSettings> = {};
  const set = <K extends keyof DispatcherSettings>(key: K, name: string, min: number, max: number) => {
    const v = intFromEnv(env, name, d[key], { min, max });
    if (v !== d[key]) out[key] = v;
  };
  set('leaseSeconds', 'TRACE_LEASE_SECONDS', 1, 86_400);
  set('retryBaseMs', 'TRACE_TASK_RETRY_BASE_MS', 1, 86_400_000);
  set('retryMaxMs', 'TRACE_TASK_RETRY_MAX_MS', 1, 86_400_000);
  set('outboxBaseMs', 'TRACE_OUTBOX_RETRY_BASE_MS', 1, 3_600_000);
  set('outboxMaxMs', 'TRACE_OUTBOX_RETRY_MAX_MS', 1, 86_400_000);
  set('outboxMaxAttempts', 'TRACE_OUTBOX_MAX_ATTEMPTS', 1, 1000);
  set('infraRetryBaseMs', 'TRACE_INFRA_RETRY_BASE_MS', 1, 3_600_000);
  set('infraRetryMaxMs', 'TRACE_INFRA_RETRY_MAX_MS', 1, 86_400_000);
  set('requeueAfterSeconds', 'TRACE_REQUEUE_AFTER_SECONDS', 1, 86_400);
  set('triggerConfirmAbove', 'TRACE_TRIGGER_CONFIRM_ABOVE', 1, Number.MAX_SAFE_INTEGER);
  set('reconcileIntervalMs', 'TRACE_RECONCILE_INTERVAL_MS', 100, 86_400_000);
  set('reconcileGraceSeconds', 'TRACE_RECONCILE_GRACE_SECONDS', 0, 86_400);
  set('reconcileLookbackSeconds', 'TRACE_RECONCILE_LOOKBACK_SECONDS', 1, 31 * 86_400);
  return out;
}
