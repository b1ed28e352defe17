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
  /** Garbage collection (gc.ts): how often the Dispatcher runs a pass; 0 = never (only `POST /v1/gc`). */
  gcIntervalMs: number;
  /** Chain sync objects a compaction replaced (and views no longer current) go after this long. */
  gcSupersededRetentionSeconds: number;
  /** Staging objects no commit lists (failed or abandoned attempts) go after this long. */
  gcStagingRetentionSeconds: number;
  /** `Done` outbox rows go this long after they were processed. */
  gcOutboxRetentionSeconds: number;
  /** Attempts and events of finished tasks go this long after the task finished. */
  gcTaskHistoryRetentionSeconds: number;
  /** Rows and objects one pass removes at most. */
  gcBatch: number;
  /**
   * Dataset versions gc keeps per dataset however old: the newest this many (the current one is
   * always kept besides), so the previous version stays for a rollback. At least 1.
   */
  gcKeepVersions: number;
  /** How often the reconcile loop looks for recorded events that were never routed. */
  reconcileIntervalMs: number;
  /** An event is reconciled only once it is this old (the outbox routes it first, normally). */
  reconcileGraceSeconds: number;
  /** Events older than this are not reconciled any more. */
  reconcileLookbackSeconds: number;
  /** A signed webhook delivery whose timestamp is further than this from the clock is refused (401). */
  webhookToleranceSeconds: number;
  /** Largest webhook body accepted (413 above); the body travels in the task's trigger. */
  webhookMaxBodyBytes: number;
  /** Token bucket per webhook path: this many deliveries a minute, with a burst of as many (429 above). */
  webhookRatePerMinute: number;
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
    gcIntervalMs: 0,
    gcSupersededRetentionSeconds: 86_400,
    gcStagingRetentionSeconds: 7 * 86_400,
    gcOutboxRetentionSeconds: 7 * 86_400,
    gcTaskHistoryRetentionSeconds: 30 * 86_400,
    gcBatch: 10_000,
    gcKeepVersions: 2,
    reconcileIntervalMs: 60_000,
    reconcileGraceSeconds: 30,
    reconcileLookbackSeconds: 86_400,
    webhookToleranceSeconds: 300,
    webhookMaxBodyBytes: 256 * 1024,
    webhookRatePerMinute: 60,
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
  const v = intFromEnv(env, 'TRACE_GC_INTERVAL_MS', d.gcIntervalMs, { min: 0, max: 86_400_000 });
  if (v !== d.gcIntervalMs) out.gcIntervalMs = v;
  set('gcBatch', 'TRACE_GC_BATCH', 1, 1_000_000);
  set('gcKeepVersions', 'TRACE_GC_KEEP_VERSIONS', 1, 1_000_000);
  const dur = <K extends keyof DispatcherSettings>(key: K, name: string) => {
    const s = durationSecondsFromEnv(env, name, d[key]);
    if (s !== d[key]) out[key] = s as DispatcherSettings[K];
  };
  dur('gcSupersededRetentionSeconds', 'TRACE_GC_SUPERSEDED_RETENTION');
  dur('gcStagingRetentionSeconds', 'TRACE_GC_STAGING_RETENTION');
  dur('gcOutboxRetentionSeconds', 'TRACE_GC_OUTBOX_RETENTION');
  dur('gcTaskHistoryRetentionSeconds', 'TRACE_GC_TASK_HISTORY_RETENTION');
  set('reconcileIntervalMs', 'TRACE_RECONCILE_INTERVAL_MS', 100, 86_400_000);
  set('reconcileGraceSeconds', 'TRACE_RECONCILE_GRACE_SECONDS', 0, 86_400);
  set('reconcileLookbackSeconds', 'TRACE_RECONCILE_LOOKBACK_SECONDS', 1, 31 * 86_400);
  set('webhookToleranceSeconds', 'TRACE_WEBHOOK_TOLERANCE_SECONDS', 1, 86_400);
  set('webhookMaxBodyBytes', 'TRACE_WEBHOOK_MAX_BODY_BYTES', 1, 1024 * 1024);
  set('webhookRatePerMinute', 'TRACE_WEBHOOK_RATE_PER_MINUTE', 1, 1_000_000);
  return out;
}

const UNIT_SECONDS: Record<string, number> = { s: 1, m: 60, h: 3_600, d: 86_400 };

/** A retention: seconds (`3600`) or a number with a unit `s`, `m`, `h`, `d` (`36h`, `7d`); 0 is allowed. */
export function durationSecondsFromEnv(env: NodeJS.ProcessEnv, name: string, fallback: number): number {
  const raw = env[name]?.trim();
  if (raw === undefined || raw === '') return fallback;
  const m = /^(\d+)([smhd]?)$/.exec(raw);
  const n = m ? Number(m[1]) * UNIT_SECONDS[m[2] || 's']! : NaN;
  if (!Number.isSafeInteger(n) || n > 3_650 * 86_400) {
    throw new Error(`${name} must be a duration like 3600, 36h or 7d, at most 3650d (got "${raw.slice(0, 40)}")`);
  }
  return n;
}
