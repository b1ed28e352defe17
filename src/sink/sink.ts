/**
 * The buffer sink (ADR 0006, contracts/buffered_datasets.md): drains the `buffers` queue and, per
 * pointer message:
 *
 * 1. parses the trusted message; a batch already in the `buffer_batches` ledger is not written
 *    again: only its dataset event is re-reported (idempotent), then the message is acked;
 * 2. refuses a batch URI outside the publishing attempt's `buffers/{task_id}/{attempt}/` prefix;
 * 3. reads the artifact (at most 16 MiB; its size must equal the published `batch_size_bytes`),
 *    validates EVERY row against the dataset's schema; one bad row rejects the whole batch;
 * 4. in one Postgres data transaction (writers serialized per org and dataset): the ledger row,
 *    then the rows with `ON CONFLICT (org_id, dedupe_key) DO NOTHING`, attributed to the org,
 *    job, task and attempt of the trusted message (never to anything inside the rows);
 * 5. after commit, reports the dataset event (the `seq` range of the new rows) to the Dispatcher
 *    through `/internal/dataset-events`, then acks.
 *
 * Failures are never acked. A rejected batch is recorded in `buffer_rejections` and the message
 * is hidden for a growing delay; the queue dead-letters it after `maxReceives` receives
 * (operations.md default 10), and `trace sink dlq replay` puts it back. Other errors take the
 * same path.
 *
 * An unreachable dependency (the data database, or the Dispatcher and its state database when
 * the event is reported) is not the batch's fault and must not push it towards the dead-letter
 * queue: the sink keeps the message in hand (its visibility extended), waits with backoff and
 * tries it again, without receiving anything new meanwhile. Only a queue outage, which also stops
 * the visibility extension, lets such a message come back with one more receive.
 */
import type { Db } from '../db/db.js';
import type { Logger } from '../core/log.js';
import { DEFAULTS } from '../core/config.js';
import { isTraceError } from '../core/errors.js';
import { unavailableDependency } from '../core/dependency.js';
import { sleep } from '../core/retry.js';
import { backoffDelayMs } from '../core/backoff.js';
import { UUID_RE } from '../core/ids.js';
import type { ObjectStore } from '../objectstore/objectstore.js';
import { BUFFER_QUEUE, type Queue, type ReceivedMessage } from '../queue/queue.js';
import { alertEventsDataset } from '../alerting/alert-events.js';
import { BatchRejected, batchKey, parseBatch, parseBufferMessage, type BufferMessage } from './batch.js';
import type { DatasetEventReporter } from './events.js';
import { bufferedStorageRef, writeBufferedSnapshot } from './snapshot.js';
import type { BatchAttribution, BufferedDatasetSpec } from './types.js';

export const MAX_BATCH_BYTES = 16 * 1024 * 1024;

export interface SinkOptions {
  /** Postgres data. */
  data: Db;
  queue: Queue;
  store: ObjectStore;
  events: DatasetEventReporter;
  log: Logger;
  /** Buffered datasets this sink writes (default: alert_events). */
  datasets?: ReadonlyArray<BufferedDatasetSpec<unknown>>;
  queueName?: string;
  /** Receives before a message is dead-lettered (default 10). */
  maxReceives?: number;
  /** Visibility timeout while a message is processed (default 60 s). */
  visibilitySeconds?: number;
  /** Hide a failed message for min(max, base * 2^(receives-1)) seconds (default 2 s .. 5 min). */
  retryBaseSeconds?: number;
  retryMaxSeconds?: number;
  /** Messages per receive (default 10). */
  batchSize?: number;
  /** Long-poll wait (default 5 s). */
  pollWaitMs?: number;
  maxBatchBytes?: number;
  maxRows?: number;
}

export type ProcessOutcome = 'committed' | 'duplicate' | 'rejected' | 'failed';

export interface SinkStats {
  committed: number;
  duplicate: number;
  rejected: number;
  failed: number;
  rows_inserted: number;
  /** Tries that waited for an unreachable dependency (not counted as receives). */
  held: number;
}

/** What an infrastructure failure waits for: a named dependency, or the Dispatcher itself (unreachable, draining, 502-504). */
function waitsOn(e: unknown): string | undefined {
  if (e instanceof BatchRejected) return undefined;
  const d = unavailableDependency(e);
  if (d) return d;
  if (isTraceError(e) && (e.status === 502 || e.status === 503 || e.status === 504)) return 'dispatcher';
  return undefined;
}

/** Backoff while a held message waits for its dependency: 500 ms doubling to 10 s. */
const HOLD_BACKOFF = { baseMs: 500, maxMs: 10_000 };

export interface SinkHandle {
  /** Processes whatever is visible now (one receive); returns how many messages it handled. */
  drainOnce(): Promise<number>;
  /** Processes one received message (tests, benchmarks). */
  process(msg: ReceivedMessage): Promise<ProcessOutcome>;
  readonly stats: SinkStats;
  stop(): Promise<void>;
}

const LEDGER_GET = `SELECT publish_id, dataset, org_id, task_id, seq_start, seq_end FROM buffer_batches WHERE publish_id = $1`;
const LEDGER_INSERT = `
INSERT INTO buffer_batches (publish_id, org_id, dataset, task_id, attempt, job_id, batch_uri, rows_total, rows_inserted)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 0)
ON CONFLICT (publish_id) DO NOTHING RETURNING publish_id`;
const LEDGER_DONE = `UPDATE buffer_batches SET rows_inserted = $2, seq_start = $3, seq_end = $4 WHERE publish_id = $1`;
const REJECTION = `
INSERT INTO buffer_rejections (publish_id, org_id, dataset, task_id, receive_count, code, reason) VALUES ($1, $2, $3, $4, $5, $6, $7)`;

interface LedgerRow { publish_id: string; dataset: string; org_id: string; task_id: string; seq_start: number | null; seq_end: number | null }

export function startSink(opts: SinkOptions, run = true): SinkHandle {
  let stopped = false;
  const queueName = opts.queueName ?? BUFFER_QUEUE;
  const datasets = new Map((opts.datasets ?? [alertEventsDataset]).map((d) => [d.name, d]));
  const visibility = opts.visibilitySeconds ?? 60;
  const base = opts.retryBaseSeconds ?? 2;
  const max = opts.retryMaxSeconds ?? 300;
  const maxBytes = opts.maxBatchBytes ?? MAX_BATCH_BYTES;
  const maxRows = opts.maxRows ?? 100_000;
  const log = opts.log;
  opts.queue.setMaxReceives(queueName, opts.maxReceives ?? DEFAULTS.bufferDlqMaxReceives);
  const stats: SinkStats = { committed: 0, duplicate: 0, rejected: 0, failed: 0, rows_inserted: 0, held: 0 };

  // The Parquet copy of the commit is written before the event: a reported range is queryable.
  async function report(msg: BufferMessage, spec: BufferedDatasetSpec<unknown>, range: { start: number; end: number } | null): Promise<void> {
    if (!range) return;
    const copied = spec.snapshot ? await writeBufferedSnapshot(opts.data, opts.store, spec, msg.org_id, range) : null;
    await opts.events.report({
      org_id: msg.org_id, dataset: msg.dedupe_scope, publish_id: msg.publish_id, producer_task_id: msg.task_id, start: range.start, end: range.end,
      ...(copied ? { storage_ref: bufferedStorageRef(opts.store, msg.org_id, spec.name) } : {}),
    });
  }

  const rangeOf = (l: { seq_start: number | null; seq_end: number | null }) =>
    l.seq_start === null || l.seq_end === null ? null : { start: Number(l.seq_start), end: Number(l.seq_end) };

  async function handle(raw: unknown): Promise<{ outcome: 'committed' | 'duplicate'; msg: BufferMessage; inserted: number }> {
    const msg = parseBufferMessage(raw);
    const spec = datasets.get(msg.dedupe_scope);
    if (!spec) throw new BatchRejected('DATASET_NOT_BUFFERED', `this sink writes no buffered dataset named ${msg.dedupe_scope}`);
    const seen = (await opts.data.query<LedgerRow>(LEDGER_GET, [msg.publish_id])).rows[0];
    if (seen) {
      await report(msg, spec, rangeOf(seen));
      return { outcome: 'duplicate', msg, inserted: 0 };
    }
    const key = batchKey(opts.store, msg.batch_uri, msg.task_id, msg.attempt);
    const st = await opts.store.stat(key);
    if (!st) throw new BatchRejected('BATCH_MISSING', 'the batch artifact does not exist');
    if (st.size > maxBytes) throw new BatchRejected('BATCH_TOO_LARGE', `the batch is ${st.size} bytes; the limit is ${maxBytes}`);
    if (st.size !== msg.batch_size_bytes) throw new BatchRejected('BATCH_SIZE_MISMATCH', `the batch is ${st.size} bytes but ${msg.batch_size_bytes} were published`);
    let bytes: Uint8Array;
    try {
      bytes = await opts.store.get(key, { maxBytes });
    } catch (e) {
      if (isTraceError(e) && e.code === 'OBJECT_TOO_LARGE') throw new BatchRejected('BATCH_TOO_LARGE', `the batch is larger than ${maxBytes} bytes`);
      if (isTraceError(e) && e.code === 'OBJECT_NOT_FOUND') throw new BatchRejected('BATCH_MISSING', 'the batch artifact does not exist');
      throw e;
    }
    if (bytes.length !== msg.batch_size_bytes) throw new BatchRejected('BATCH_SIZE_MISMATCH', `the batch is ${bytes.length} bytes but ${msg.batch_size_bytes} were published`);
    const rows = parseBatch(bytes, spec, { maxRows });
    const a: BatchAttribution = { org_id: msg.org_id, publish_id: msg.publish_id, task_id: msg.task_id, attempt: msg.attempt, job_id: msg.job_id ?? null };
    const written = await opts.data.tx(async (q) => {
      await q.query('SELECT pg_advisory_xact_lock(hashtext($1))', [`sink:${msg.org_id}:${spec.name}`]);
      const led = await q.query(LEDGER_INSERT, [msg.publish_id, msg.org_id, spec.name, msg.task_id, msg.attempt, msg.job_id ?? null, msg.batch_uri, rows.length]);
      if (led.rowCount === 0) return null; // another sink committed it meanwhile
      const w = await spec.write(q, rows, a);
      await q.query(LEDGER_DONE, [msg.publish_id, w.inserted, w.seqStart, w.seqEnd]);
      return w;
    });
    if (!written) {
      const l = (await opts.data.query<LedgerRow>(LEDGER_GET, [msg.publish_id])).rows[0];
      if (l) await report(msg, spec, rangeOf(l));
      return { outcome: 'duplicate', msg, inserted: 0 };
    }
    await report(msg, spec, written.seqStart === null || written.seqEnd === null ? null : { start: written.seqStart, end: written.seqEnd });
    return { outcome: 'committed', msg, inserted: written.inserted };
  }

  async function processMessage(m: ReceivedMessage): Promise<ProcessOutcome> {
    const ids = idsOf(m.body);
    // Keep the message invisible for as long as this sink holds it.
    const keeper = setInterval(() => {
      opts.queue.changeVisibility(queueName, m.receipt, visibility).catch(() => undefined);
    }, Math.max(500, (visibility * 1000) / 2));
    let warned = false;
    try {
      for (let round = 0; ; round++) {
        try {
          const r = await handle(m.body);
          await opts.queue.ack(queueName, m.receipt).catch((e: unknown) => {
            // The batch is in the ledger: a redelivery only re-reports its event.
            log.warn({ ...ids, err: e instanceof Error ? e.message : String(e) }, 'could not ack a processed buffer batch; its redelivery is a no-op');
          });
          stats[r.outcome]++;
          stats.rows_inserted += r.inserted;
          log.info({ ...ids, outcome: r.outcome, rows_inserted: r.inserted, ...(round > 0 ? { held_tries: round } : {}) }, 'buffer batch processed');
          return r.outcome;
        } catch (e) {
          const dependency = waitsOn(e);
          if (dependency && !stopped) {
            stats.held++;
            const delay = backoffDelayMs(HOLD_BACKOFF, round);
            if (!warned) log.warn({ ...ids, dependency, err: e instanceof Error ? e.message : String(e) }, 'buffer batch waits for an unreachable dependency; held, not counted as a receive');
            warned = true;
            await sleep(delay, abort.signal);
            if (!stopped) continue;
          }
          if (dependency) {
            // Stopping: hand the message back for the next sink.
            await opts.queue.changeVisibility(queueName, m.receipt, 0).catch(() => undefined);
            stats.failed++;
            return 'failed';
          }
          return await failed(m, ids, e);
        }
      }
    } finally {
      clearInterval(keeper);
    }
  }

  async function failed(m: ReceivedMessage, ids: ReturnType<typeof idsOf>, e: unknown): Promise<ProcessOutcome> {
    const delay = Math.min(max, base * 2 ** Math.max(0, m.receiveCount - 1));
    if (e instanceof BatchRejected) {
      stats.rejected++;
      log.warn({ ...ids, code: e.code, reason: e.message, problems: e.problems.slice(0, 5), receive_count: m.receiveCount }, 'buffer batch rejected; nothing written');
      const reason = [e.message, ...e.problems.slice(0, 5).map((p) => `${p.path}: ${p.message}`)].join('; ').slice(0, 2000);
      await opts.data.query(REJECTION, [ids.publish_id ?? null, ids.org_id ?? null, ids.dataset ?? null, ids.task_id ?? null, m.receiveCount, e.code, reason])
        .catch((err: unknown) => log.warn({ err: err instanceof Error ? err.message : String(err) }, 'could not record the rejection'));
    } else {
      stats.failed++;
      log.warn({ ...ids, err: e instanceof Error ? e.message : String(e), receive_count: m.receiveCount }, 'buffer batch failed; will retry');
    }
    await opts.queue.changeVisibility(queueName, m.receipt, delay).catch(() => undefined);
    return e instanceof BatchRejected ? 'rejected' : 'failed';
  }

  const abort = new AbortController();
  let loop: Promise<void> | undefined;

  async function drainOnce(waitMs = 0): Promise<number> {
    const msgs = await opts.queue.receive(queueName, { maxMessages: opts.batchSize ?? 10, visibilityTimeoutSeconds: visibility, waitMs, signal: abort.signal });
    // Messages waiting behind one that is held for a dependency stay invisible too.
    const waiting = new Set(msgs);
    const keeper = setInterval(() => {
      for (const m of waiting) opts.queue.changeVisibility(queueName, m.receipt, visibility).catch(() => undefined);
    }, Math.max(500, (visibility * 1000) / 2));
    try {
      for (const m of msgs) {
        waiting.delete(m);
        if (stopped) {
          // Stopping: hand back what was received but not started.
          await opts.queue.changeVisibility(queueName, m.receipt, 0).catch(() => undefined);
          continue;
        }
        await processMessage(m);
      }
    } finally {
      clearInterval(keeper);
    }
    return msgs.length;
  }

  if (run) {
    loop = (async () => {
      let failures = 0;
      while (!stopped) {
        try {
          await drainOnce(opts.pollWaitMs ?? 5_000);
          if (failures > 0) log.info({ failures }, 'sink receiving again');
          failures = 0;
        } catch (e) {
          if (stopped) break;
          failures++;
          // One line per outage, then quiet retries with backoff (queue unreachable).
          if (failures === 1) log.error({ err: e instanceof Error ? e.message : String(e) }, 'sink receive failed; retrying with backoff');
          await sleep(backoffDelayMs({ baseMs: 250, maxMs: 5_000 }, failures - 1), abort.signal);
        }
      }
    })();
  }

  return {
    drainOnce: () => drainOnce(0),
    process: processMessage,
    stats,
    async stop() {
      stopped = true;
      abort.abort();
      await loop;
    },
  };
}

function idsOf(body: unknown): { publish_id?: string; org_id?: string; task_id?: string; attempt?: number; dataset?: string } {
  if (body === null || typeof body !== 'object') return {};
  const b = body as Record<string, unknown>;
  const s = (v: unknown) => (typeof v === 'string' && UUID_RE.test(v) ? v : undefined);
  const out: { publish_id?: string; org_id?: string; task_id?: string; attempt?: number; dataset?: string } = {};
  const pid = s(b.publish_id); if (pid) out.publish_id = pid;
  const org = s(b.org_id); if (org) out.org_id = org;
  const task = s(b.task_id); if (task) out.task_id = task;
  if (typeof b.attempt === 'number') out.attempt = b.attempt;
  if (typeof b.dedupe_scope === 'string' && /^[a-z][a-z0-9_]{0,127}$/.test(b.dedupe_scope)) out.dataset = b.dedupe_scope;
  return out;
}
