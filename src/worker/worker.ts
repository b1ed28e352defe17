/*
 * TRUST BOUNDARY. The worker wrapper (everything under src/worker/ and src/operators/ except
 * the process wiring in src/worker/main.ts, and the cryo_ingest operator that writes Postgres
 * data) must never import src/db, src/dispatcher, `pg` or `@electric-sql/pglite`: a worker holds
 * no state-database credentials. It needs only a Queue (wake-ups), the Dispatcher URL and the
 * worker token. test/worker/import-boundary.test.ts enforces this rule.
 *
 * The queue-woken worker loop: long-poll the task queue for `{task_id}` wake-ups (as many as
 * there are free slots), claim the tasks from the Dispatcher (all of one receive in one batch
 * request when the client has `claimMany`, else one by one), run each claimed attempt (keeping
 * its message invisible meanwhile), then ack. Workers are dumb: retries, scheduling and recovery belong to the Dispatcher, and the
 * queue is only a wake-up (a lost or duplicated message is harmless; the lease decides).
 */
import { setMaxListeners } from 'node:events';
import { z } from 'zod';
import { DEFAULT_SHUTDOWN_GRACE_SECONDS } from '../core/config.js';
import type { Logger } from '../core/log.js';
import type { Queue, ReceivedMessage } from '../queue/queue.js';
import type { Operator } from '../operators/types.js';
import { runClaimedTask, type RunOutcome } from './run-task.js';
import { apiErrorOf, type WorkerTaskApi } from './task-client.js';
import type { ClaimResponse } from './payload.js';
import { isTransientTaskError } from './lease.js';

export interface WorkerOptions {
  queue: Queue;
  client: WorkerTaskApi;
  /** Recorded on the lease; default in `trace worker` is `${hostname}:${pid}`. */
  workerId: string;
  /** Tasks run at once (default 4). */
  concurrency?: number;
  registry: ReadonlyMap<string, Operator>;
  log: Logger;
  queueName?: string;
  /** Visibility timeout of received messages; extended every half of it while a task runs (default 60). */
  visibilityTimeoutSeconds?: number;
  /** Long-poll wait per receive (default 10 s). */
  pollWaitMs?: number;
  /** How long stop() waits for running tasks before stopping them and releasing their leases (default 25 s). */
  stopGraceMs?: number;
  /** Heartbeat interval override (tests). */
  heartbeatMs?: number;
}

export interface WorkerHandle {
  /**
   * Stops receiving (no new claims), waits for in-flight tasks up to the grace period, then stops
   * the rest and releases their leases (`/internal/task-release`, reason shutdown): the Dispatcher
   * queues them again at once, without using up an attempt.
   */
  stop(opts?: { graceMs?: number }): Promise<void>;
  /** Tasks currently being claimed or run. */
  readonly inFlight: number;
}

const wakeUpSchema = z.looseObject({ task_id: z.uuid() });

/** Longest wait before a wake-up whose claim failed on an unreachable Dispatcher is tried again. */
const CLAIM_RETRY_CAP_S = 5;

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const t = setTimeout(done, ms);
    function done() {
      signal?.removeEventListener('abort', done);
      clearTimeout(t);
      resolve();
    }
    signal?.addEventListener('abort', done, { once: true });
  });
}

export function startWorker(opts: WorkerOptions): WorkerHandle {
  const { queue, client, workerId, registry } = opts;
  const concurrency = Math.max(1, Math.floor(opts.concurrency ?? 4));
  const queueName = opts.queueName ?? 'tasks';
  const visibility = Math.max(1, Math.floor(opts.visibilityTimeoutSeconds ?? 60));
  const pollWaitMs = opts.pollWaitMs ?? 10_000;
  const defaultGraceMs = opts.stopGraceMs ?? DEFAULT_SHUTDOWN_GRACE_SECONDS * 1000;
  const log = opts.log.child({ worker_id: workerId });

  const receiveAbort = new AbortController();
  const shutdownAbort = new AbortController();
  // Every running task listens for shutdown on this one signal (and its lease retries may add
  // one more each), so `concurrency` tasks are expected listeners, not a leak.
  setMaxListeners(Math.max(10, concurrency * 3), shutdownAbort.signal);
  const inflight = new Set<Promise<void>>();
  let slotWaiter: (() => void) | undefined;
  let stopping = false;
  let stopPromise: Promise<void> | undefined;

  const wakeSlotWaiter = () => {
    const w = slotWaiter;
    slotWaiter = undefined;
    w?.();
  };

  // Acks are coalesced for a few milliseconds into one batch: one round trip for many tasks.
  let pendingAcks: string[] = [];
  let ackFlush: Promise<void> | undefined;
  async function flushAcks(): Promise<void> {
    await new Promise((r) => setTimeout(r, 2));
    const batch = pendingAcks;
    pendingAcks = [];
    ackFlush = undefined;
    try {
      await queue.ackBatch(queueName, batch);
    } catch (e) {
      log.warn({ err: e instanceof Error ? e.message : String(e), count: batch.length }, 'queue ack failed; the wake-ups will be redelivered (harmless)');
    }
  }
  async function ack(m: ReceivedMessage<unknown>, _log2: Logger) {
    pendingAcks.push(m.receipt);
    ackFlush ??= flushAcks();
    await ackFlush;
  }

  /**
   * Claims the tasks of a whole receive in batch requests (`claimMany`), at once: each wake-up
   * gets the answer for its task. A task woken twice in one receive is claimed once; its other
   * wake-ups are answered AlreadyRunning (and dropped, as the per-task claim would).
   */
  function claimAll(msgs: Array<ReceivedMessage<unknown>>): Map<string, Promise<ClaimResponse>> {
    const out = new Map<string, Promise<ClaimResponse>>();
    if (!client.claimMany) return out;
    const first = new Map<string, string>();
    for (const m of msgs) {
      const parsed = wakeUpSchema.safeParse(m.body);
      if (!parsed.success) continue;
      if (first.has(parsed.data.task_id)) out.set(m.id, Promise.resolve({ status: 'NotClaimed', reason: 'AlreadyRunning' }));
      else first.set(parsed.data.task_id, m.id);
    }
    if (first.size === 0) return out;
    const answers = client.claimMany([...first.keys()], workerId);
    [...first.values()].forEach((id, i) => out.set(id, answers[i]!));
    return out;
  }

  async function handle(m: ReceivedMessage<unknown>, claimed?: Promise<ClaimResponse>): Promise<void> {
    const parsed = wakeUpSchema.safeParse(m.body);
    if (!parsed.success) {
      log.warn({ message_id: m.id }, 'dropping a malformed task wake-up (expected {task_id: uuid})');
      await ack(m, log);
      return;
    }
    const taskId = parsed.data.task_id;
    const tlog = log.child({ task_id: taskId });

    let claim;
    try {
      claim = await (claimed ?? client.claim(taskId, workerId));
    } catch (e) {
      const err = apiErrorOf(e);
      // A malformed or unknown task id will never be claimable: drop the wake-up.
      if (err && (err.status === 400 || err.status === 404)) {
        tlog.error({ err: e instanceof Error ? e.message : String(e) }, 'claim refused; dropping the wake-up');
        await ack(m, tlog);
        return;
      }
      // The Dispatcher is down, restarting or draining: try this wake-up again within seconds
      // (1, 2, 4, then every 5 s) rather than after the whole visibility timeout, so work resumes
      // soon after it is back. A bad worker token waits the full timeout.
      const transient = isTransientTaskError(e);
      const retryIn = transient ? Math.min(visibility, CLAIM_RETRY_CAP_S, 2 ** Math.min(m.receiveCount - 1, 5)) : visibility;
      tlog.warn({ err: e instanceof Error ? e.message : String(e), retry_in_s: retryIn }, 'claim failed; the wake-up comes back later');
      if (transient) await queue.changeVisibility(queueName, m.receipt, retryIn).catch(() => undefined);
      return;
    }
    if (claim.status === 'NotClaimed') {
      tlog.debug({ reason: claim.reason }, 'not claimed');
      await ack(m, tlog);
      return;
    }

    // Keep the wake-up invisible while the task runs; the lease, not the queue, is what counts.
    const extendEveryMs = Math.max(500, (visibility * 1000) / 2);
    const extender = setInterval(() => {
      queue.changeVisibility(queueName, m.receipt, visibility).catch((e: unknown) => {
        tlog.warn({ err: e instanceof Error ? e.message : String(e) }, 'could not extend message visibility');
      });
    }, extendEveryMs);
    let outcome: RunOutcome;
    try {
      outcome = await runClaimedTask(claim, {
        client,
        registry,
        log: log,
        signal: shutdownAbort.signal,
        ...(opts.heartbeatMs === undefined ? {} : { heartbeatMs: opts.heartbeatMs }),
      });
    } catch (e) {
      tlog.error({ err: e instanceof Error ? e.message : String(e) }, 'task runner crashed');
      outcome = 'Lost';
    } finally {
      clearInterval(extender);
    }
    tlog.debug({ outcome }, 'task run finished');
    await ack(m, tlog);
  }

  async function loop(): Promise<void> {
    let failures = 0;
    while (!stopping) {
      if (inflight.size >= concurrency) {
        await new Promise<void>((r) => {
          slotWaiter = r;
        });
        continue;
      }
      let msgs: Array<ReceivedMessage<unknown>>;
      try {
        msgs = await queue.receive<unknown>(queueName, {
          maxMessages: concurrency - inflight.size,
          visibilityTimeoutSeconds: visibility,
          waitMs: pollWaitMs,
          signal: receiveAbort.signal,
        });
        if (failures > 0) log.info({ failures }, 'queue receives succeed again');
        failures = 0;
      } catch (e) {
        if (stopping) break;
        failures++;
        // One line when an outage starts, then one every 20 failures.
        if (failures === 1 || failures % 20 === 0) log.error({ err: e instanceof Error ? e.message : String(e), failures }, 'queue receive failed; backing off');
        await sleep(Math.min(5_000, 100 * 2 ** Math.min(failures, 6)), receiveAbort.signal);
        continue;
      }
      const claims = stopping ? new Map<string, Promise<ClaimResponse>>() : claimAll(msgs);
      for (const m of msgs) {
        if (stopping && !claims.has(m.id)) {
          // Received during shutdown: hand it straight back instead of claiming.
          await queue.changeVisibility(queueName, m.receipt, 0).catch(() => undefined);
          continue;
        }
        const p: Promise<void> = handle(m, claims.get(m.id))
          .catch((e: unknown) => log.error({ err: e instanceof Error ? e.message : String(e) }, 'wake-up handler failed'))
          .finally(() => {
            inflight.delete(p);
            wakeSlotWaiter();
          });
        inflight.add(p);
      }
    }
  }

  const loopDone = loop().catch((e: unknown) => {
    log.error({ err: e instanceof Error ? e.message : String(e) }, 'worker loop crashed');
  });
  log.info({ concurrency, queue: queueName }, 'worker started');

  return {
    get inFlight() {
      return inflight.size;
    },
    stop(stopOpts = {}) {
      stopPromise ??= (async () => {
        const graceMs = stopOpts.graceMs ?? defaultGraceMs;
        stopping = true;
        receiveAbort.abort();
        wakeSlotWaiter();
        await loopDone;
        const all = Promise.allSettled([...inflight]);
        let graceTimer: NodeJS.Timeout | undefined;
        const timedOut = await Promise.race([
          all.then(() => false),
          new Promise<boolean>((r) => {
            graceTimer = setTimeout(() => r(true), graceMs);
          }),
        ]);
        clearTimeout(graceTimer);
        if (timedOut) {
          log.warn({ in_flight: inflight.size }, 'grace period over; stopping running tasks and releasing their leases');
          shutdownAbort.abort();
          await Promise.allSettled([...inflight]);
        }
        log.info('worker stopped');
      })();
      return stopPromise;
    },
  };
}
