/**
 * The Delivery Service loop (containers/delivery_service.md): the only part of the alerting path
 * with outbound egress. Several instances may run at once against one Postgres data database.
 *
 * Each round: fail deliveries whose last allowed attempt lost its lease; lease up to `batchSize`
 * due deliveries (`FOR UPDATE SKIP LOCKED`, lease column `leased_until`, the attempt counted at
 * lease time); send each with `sendWebhook` (SSRF defenses, https only unless the development
 * loopback switch is on, no redirects, tight timeouts) with `Idempotency-Key: <delivery_id>` and
 * `delivery_id` in the JSON body; record the outcome, fenced by the lease:
 * - 2xx: Delivered;
 * - retryable (408, 429, 5xx, network) and attempts left: Pending again after
 *   max(backoff, Retry-After), backoff = min(30 min, 5 s * 2^(attempt-1)) * rand(0.5..1.5)
 *   (`DELIVERY_BACKOFF`); no attempts left (default 12): Failed (terminal);
 * - terminal (policy refusal, redirect, other 4xx): Failed at once;
 * - the definition was deleted or disabled, or the channel is gone: Canceled (nothing sent).
 * Every outbound request leaves an `alert_delivery_attempts` row attributed to
 * `(org_id, delivery_id)`. The router's NOTIFY wakes the loop; it also polls.
 */
import { hostname } from 'node:os';
import { randomBytes } from 'node:crypto';
import type { Db } from '../../db/db.js';
import type { Logger } from '../../core/log.js';
import { backoffDelayMs, DELIVERY_BACKOFF, type BackoffPolicy } from '../../core/backoff.js';
import { DEFAULT_SHUTDOWN_GRACE_SECONDS } from '../../core/config.js';
import { isConnectionFailure } from '../../core/dependency.js';
import { retryUntil, sleep } from '../../core/retry.js';
import { sendWebhook, type SendWebhookInput, type SendWebhookResult } from '../net/index.js';
import { DELIVERY_CHANNEL, failExhausted, leaseDue, recordOutcome, sendContext, type LeasedDelivery, type Outcome } from './store.js';

export interface DeliveryOptions {
  /** Postgres data. */
  data: Db;
  log: Logger;
  /** Lease owner id (default `${hostname}:${pid}:<random>`). */
  owner?: string;
  batchSize?: number;
  /** Sends in flight at once (default 8). */
  concurrency?: number;
  /** Lease per delivery; must exceed the send timeout (default 60 s). */
  leaseSeconds?: number;
  /** Poll interval when idle (default 1 s; a NOTIFY wakes it sooner). */
  pollMs?: number;
  backoff?: BackoffPolicy;
  /** Overrides each row's max_attempts (default: the row's, 12). */
  maxAttempts?: number;
  /** Development only: http:// and loopback destinations. */
  allowHttpLoopback?: boolean;
  /** How long stop() lets sends in flight finish before aborting them (default 25 s). */
  stopGraceMs?: number;
  /** Sender knobs (timeouts, resolver, CA, deny list, transport for tests). */
  send?: Partial<Pick<SendWebhookInput, 'timeoutMs' | 'connectTimeoutMs' | 'lookup' | 'ca' | 'transport' | 'deniedAddresses' | 'maxResponseBytes'>>;
}

export interface DeliveryStats {
  leased: number;
  delivered: number;
  retried: number;
  failed: number;
  canceled: number;
  lost_leases: number;
}

export interface DeliveryHandle {
  /** One round (tests, benchmarks); returns how many deliveries it leased. */
  drainOnce(): Promise<number>;
  kick(): void;
  readonly stats: DeliveryStats;
  readonly owner: string;
  stop(): Promise<void>;
}

const MAX_ERROR = 1000;

export function startDelivery(opts: DeliveryOptions, run = true): DeliveryHandle {
  const owner = opts.owner ?? `${hostname()}:${process.pid}:${randomBytes(4).toString('hex')}`;
  const batchSize = opts.batchSize ?? 20;
  const concurrency = Math.max(1, opts.concurrency ?? 8);
  const leaseSeconds = opts.leaseSeconds ?? 60;
  const pollMs = opts.pollMs ?? 1000;
  const backoff = opts.backoff ?? DELIVERY_BACKOFF;
  const log = opts.log.child({ delivery_owner: owner });
  const stats: DeliveryStats = { leased: 0, delivered: 0, retried: 0, failed: 0, canceled: 0, lost_leases: 0 };
  const abort = new AbortController();

  async function deliver(d: LeasedDelivery): Promise<void> {
    const started = new Date();
    const maxAttempts = opts.maxAttempts ?? d.max_attempts;
    const dlog = log.child({ org_id: d.org_id, delivery_id: d.id, attempt: d.attempt, channel: d.channel });
    // Reads and the outcome write are retried while the lease holds: a data database outage in
    // the middle of a send must not lose its outcome (and send it again after the lease expires).
    const leaseEnd = started.getTime() + leaseSeconds * 1000 - Math.min(5_000, leaseSeconds * 100);
    const whileLeased = <T>(what: string, op: () => Promise<T>) => retryUntil(op, {
      deadline: () => leaseEnd,
      retryable: isConnectionFailure,
      onRetry: (e, tryNo) => {
        if (tryNo === 0) dlog.warn({ what, err: e instanceof Error ? e.message : String(e) }, 'data database unreachable; retrying while the delivery lease holds');
      },
    });
    let outcome: Outcome;
    const ctx = await whileLeased('read', () => sendContext(opts.data, d));
    const channel = ctx?.definition?.channels.find((c) => c.name === d.channel);
    if (!ctx || !ctx.definition || ctx.definition.deleted || !ctx.definition.enabled || !channel) {
      const why = !ctx ? 'the alert event no longer exists' : !ctx.definition || ctx.definition.deleted ? 'the alert definition was deleted'
        : !ctx.definition.enabled ? 'the alert definition is disabled' : `the definition has no channel ${d.channel}`;
      outcome = { status: 'Canceled', error: why, audit: { started_at: started, outcome: 'canceled' } };
    } else if (channel.type !== 'webhook') {
      outcome = { status: 'Failed', error: `channel type ${channel.type.slice(0, 40)} is not supported`, audit: { started_at: started, outcome: 'terminal' } };
    } else {
      const body = {
        delivery_id: d.id,
        alert_event_id: ctx.event.id,
        alert_definition_id: ctx.definition.id,
        alert_name: ctx.definition.name,
        channel: d.channel,
        severity: ctx.event.severity,
        event_time: new Date(ctx.event.event_time).toISOString(),
        dedupe_key: ctx.event.dedupe_key,
        payload: ctx.event.payload,
        attempt: d.attempt,
      };
      const res: SendWebhookResult = await sendWebhook({
        ...opts.send,
        url: channel.url,
        body,
        headers: { ...(channel.headers ?? {}), 'Idempotency-Key': d.id },
        ...(opts.allowHttpLoopback ? { allowHttpLoopback: true } : {}),
        signal: abort.signal,
        logger: dlog,
      });
      const audit = { started_at: started, outcome: res.outcome, address: res.address ?? null, duration_ms: res.durationMs } as const;
      const error = res.error ? res.error.slice(0, MAX_ERROR) : null;
      if (res.outcome === 'delivered') {
        outcome = { status: 'Delivered', status_code: res.status ?? null, error: null, audit };
      } else if (res.outcome === 'retryable' && d.attempt < maxAttempts) {
        const delay = Math.max(backoffDelayMs(backoff, d.attempt - 1), Math.min(res.retryAfterMs ?? 0, backoff.maxMs));
        outcome = { status: 'Pending', next_attempt_at: new Date(Date.now() + delay), status_code: res.status ?? null, error, audit };
      } else {
        const why = res.outcome === 'retryable' ? `gave up after ${d.attempt} attempts: ${error ?? 'failed'}` : error ?? 'refused';
        outcome = { status: 'Failed', status_code: res.status ?? null, error: why.slice(0, MAX_ERROR), audit };
      }
    }
    const kept = await whileLeased('record', () => recordOutcome(opts.data, d, owner, outcome));
    if (!kept) {
      stats.lost_leases++;
      dlog.warn('the delivery lease expired before the outcome was recorded; another instance owns it now');
      return;
    }
    if (outcome.status === 'Delivered') stats.delivered++;
    else if (outcome.status === 'Pending') stats.retried++;
    else if (outcome.status === 'Failed') stats.failed++;
    else stats.canceled++;
    if (outcome.status === 'Failed') dlog.warn({ error: outcome.error }, 'alert delivery failed (terminal)');
  }

  async function drainOnce(): Promise<number> {
    const exhausted = await failExhausted(opts.data);
    if (exhausted > 0) {
      stats.failed += exhausted;
      log.warn({ deliveries: exhausted }, 'deliveries failed: their final attempt never reported');
    }
    const leased = await leaseDue(opts.data, owner, batchSize, leaseSeconds);
    stats.leased += leased.length;
    let next = 0;
    const workers = Array.from({ length: Math.min(concurrency, leased.length) }, async () => {
      while (next < leased.length) {
        const d = leased[next++]!;
        try {
          await deliver(d);
        } catch (e) {
          // The lease expires and another round retries it (the attempt stays counted).
          log.error({ delivery_id: d.id, err: e instanceof Error ? e.message : String(e) }, 'delivery round failed');
        }
      }
    });
    await Promise.all(workers);
    return leased.length;
  }

  let wake: (() => void) | undefined;
  let kicked = false;
  let stopped = false;
  let loop: Promise<void> | undefined;
  let unlisten: (() => Promise<void>) | undefined;
  const kick = () => {
    kicked = true;
    wake?.();
  };

  if (run) {
    loop = (async () => {
      try {
        unlisten = await opts.data.listen(DELIVERY_CHANNEL, kick);
      } catch (e) {
        log.warn({ err: e instanceof Error ? e.message : String(e) }, 'could not LISTEN for new deliveries; polling only');
      }
      let failures = 0;
      while (!stopped) {
        kicked = false;
        let n = 0;
        try {
          n = await drainOnce();
          if (failures > 0) log.info({ failures }, 'delivery rounds succeed again');
          failures = 0;
        } catch (e) {
          if (!stopped) {
            // One line per outage (the data database is unreachable), then quiet retries with backoff.
            failures++;
            if (failures === 1) log.error({ err: e instanceof Error ? e.message : String(e) }, 'delivery round failed; retrying with backoff');
            await sleep(backoffDelayMs({ baseMs: 250, maxMs: 5_000 }, failures - 1), abort.signal);
            continue;
          }
        }
        if (stopped) break;
        if (n >= batchSize || kicked) continue;
        await new Promise<void>((resolve) => {
          const t = setTimeout(resolve, pollMs);
          wake = () => { clearTimeout(t); resolve(); };
        });
        wake = undefined;
      }
    })();
  }

  return {
    drainOnce,
    kick,
    stats,
    owner,
    async stop() {
      // No new leases; sends in flight finish within the grace period, then they are aborted
      // (an aborted send is recorded as a retryable attempt).
      stopped = true;
      wake?.();
      let t: NodeJS.Timeout | undefined;
      const graceOver = new Promise<void>((r) => { t = setTimeout(r, opts.stopGraceMs ?? DEFAULT_SHUTDOWN_GRACE_SECONDS * 1000); });
      await Promise.race([loop, graceOver]);
      clearTimeout(t);
      abort.abort();
      await loop;
      if (unlisten) await unlisten().catch(() => undefined);
    },
  };
}
