import type { Db, Queryable } from '../db/db.js';
import type { Logger } from '../core/log.js';
import type { Queue } from '../queue/queue.js';
import { BUFFER_QUEUE, TASK_QUEUE } from '../queue/queue.js';
import { routeEvent } from './routing.js';
import type { DatasetEvent } from './tasks/types.js';
import { isTraceError } from '../core/errors.js';
import { isConnectionFailure, unavailableDependency } from '../core/dependency.js';

/**
 * The outbox drain: side effects recorded in the same transaction as the state change that
 * caused them are carried out here, at least once, with retries and backoff. Kinds:
 * - `enqueue_task` `{task_id}`: a wake-up on the task queue;
 * - `invoke_task` `{task_id}`: lease and invoke a `lambda` / `dispatcher` runtime task;
 * - `route_event` `{org_id, event, producer_task_id}`: create the dependent tasks;
 * - `buffer_publish` `{publish_id, ...}`: a pointer message on the buffer queue.
 */
export interface OutboxRow {
  id: number;
  kind: string;
  payload: Record<string, unknown>;
  attempts: number;
}

export interface OutboxDeps {
  db: Db;
  queue: Queue;
  /** Set when the queue lives in the state database: wake-ups are then written in the same transaction. */
  sendInTx?: (q: Queryable, queue: string, bodies: unknown[]) => Promise<void>;
  invoke(taskId: string): Promise<void>;
  log: Logger;
  batchSize: number;
  maxAttempts: number;
  backoffMs(attempt: number): number;
}

// Take a batch and hide it for a while (a soft lease), so a crash mid-drain retries it later.
// Taking a row counts an attempt; an attempt that failed on an unreachable dependency is handed
// back uncounted (RETRY_UNCOUNTED).
const TAKE = `
WITH b AS (
  SELECT id FROM outbox WHERE status = 'Pending' AND available_at <= now()
  ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED
)
UPDATE outbox o SET available_at = now() + interval '60 seconds', attempts = o.attempts + 1
FROM b WHERE o.id = b.id
RETURNING o.id, o.kind, o.payload, o.attempts`;

const DONE = `UPDATE outbox SET status = 'Done', processed_at = now(), last_error = NULL WHERE id = ANY ($1::bigint[])`;

const RETRY_LATER = `
UPDATE outbox SET status = CASE WHEN attempts >= $3 THEN 'Failed' ELSE 'Pending' END,
       available_at = now() + make_interval(secs => $2 / 1000.0), last_error = $4
WHERE id = $1
RETURNING status`;

const RETRY_UNCOUNTED = `
UPDATE outbox SET attempts = greatest(0, attempts - 1), available_at = now() + make_interval(secs => $2 / 1000.0), last_error = $3
WHERE id = ANY ($1::bigint[]) AND status = 'Pending'`;

/** Longest wait of a row whose side effect failed on an unreachable dependency (it is retried, uncounted, until it is back). */
const INFRA_RETRY_CAP_MS = 10_000;

/**
 * The side effect could not run because a dependency (the queue, the state database) was
 * unreachable or overloaded, or the Dispatcher is draining: pgqueue's DependencyUnavailable,
 * socket errors, a 503, and the AWS SDK's 5xx, throttling and timeout answers (SQS).
 */
function isInfrastructure(e: unknown): boolean {
  if (unavailableDependency(e) !== undefined || isConnectionFailure(e)) return true;
  if (isTraceError(e)) return e.status === 503;
  const aws = e as { $metadata?: { httpStatusCode?: number }; $retryable?: unknown; name?: unknown };
  return (aws.$metadata?.httpStatusCode ?? 0) >= 500 || aws.$retryable !== undefined || aws.name === 'TimeoutError';
}

/**
 * Drains the outbox in batches. The fast path carries out a whole batch in one transaction. If
 * that transaction fails for a reason other than a lost connection, the batch is taken again
 * with every in-transaction row in its own savepoint: the bad row is rolled back alone and
 * recorded with its attempt counted, the others commit. A bad row is then hidden by its backoff,
 * so later batches take the fast path again; after `maxAttempts` it ends `Failed` with an
 * error-level `alert` log line (operations.md runbook: fix the cause, reset it to Pending).
 */
export class OutboxDrainer {
  /** Consecutive infrastructure failures, for the uncounted retry delay. */
  private infraStreak = 0;

  constructor(private readonly d: OutboxDeps) {}

  /** Drains one batch; returns how many rows it took. */
  async drainOnce(): Promise<number> {
    try {
      return await this.drainBatch(false);
    } catch (e) {
      // A lost state database leaves nothing to isolate: the loop retries at its next turn.
      if (isInfrastructure(e)) throw e;
      this.d.log.warn({ err: errText(e) }, 'outbox batch failed; taking it again with each row isolated');
      return this.drainBatch(true);
    }
  }

  private async drainBatch(isolate: boolean): Promise<number> {
    const { db } = this.d;
    let rows: OutboxRow[] = [];
    const external: OutboxRow[] = [];
    await db.tx(async (q) => {
      rows = (await q.query<OutboxRow>(TAKE, [this.d.batchSize])).rows;
      if (rows.length === 0) return;
      const doneInTx: number[] = [];
      const wakeups: OutboxRow[] = [];
      for (const row of rows) {
        if (row.kind === 'route_event') {
          const p = row.payload as { org_id: string; event: DatasetEvent; producer_task_id?: string };
          const route = () => routeEvent(q, p.org_id, p.event, p.producer_task_id ?? null);
          if (!isolate) {
            await route();
            doneInTx.push(row.id);
          } else if (await this.isolated(q, row, route)) doneInTx.push(row.id);
        } else if (row.kind === 'enqueue_task' && this.d.sendInTx) {
          wakeups.push(row);
        } else {
          external.push(row);
        }
      }
      if (wakeups.length > 0) {
        const send = (list: OutboxRow[]) => this.d.sendInTx!(q, TASK_QUEUE, list.map((r) => ({ task_id: r.payload.task_id })));
        if (!isolate) {
          await send(wakeups);
          doneInTx.push(...wakeups.map((r) => r.id));
        } else {
          for (const w of wakeups) if (await this.isolated(q, w, () => send([w]))) doneInTx.push(w.id);
        }
      }
      if (doneInTx.length > 0) await q.query(DONE, [doneInTx]);
    });
    await this.runExternal(external);
    return rows.length;
  }

  /** Runs one row's in-transaction effect in a savepoint; a failure undoes only this row and records it (counted). */
  private async isolated(q: Queryable, row: OutboxRow, effect: () => Promise<unknown>): Promise<boolean> {
    await q.query('SAVEPOINT outbox_row');
    try {
      await effect();
      await q.query('RELEASE SAVEPOINT outbox_row');
      return true;
    } catch (e) {
      if (isInfrastructure(e)) throw e;
      await q.query('ROLLBACK TO SAVEPOINT outbox_row');
      await this.recordFailure(q, row, e);
      return false;
    }
  }

  private async runExternal(rows: OutboxRow[]): Promise<void> {
    if (rows.length === 0) return;
    const done: number[] = [];
    const infra: OutboxRow[] = [];
    let infraError: unknown;
    const failed = async (r: OutboxRow, e: unknown) => {
      if (isInfrastructure(e)) {
        infra.push(r);
        infraError ??= e;
      } else {
        await this.recordFailure(this.d.db, r, e).catch((err: unknown) => this.d.log.warn({ outbox_id: r.id, err: errText(err) }, 'could not record an outbox failure; the row is retried after its soft lease'));
      }
    };
    const enqueue = rows.filter((r) => r.kind === 'enqueue_task');
    if (enqueue.length > 0) {
      try {
        await this.d.queue.sendBatch(TASK_QUEUE, enqueue.map((r) => ({ task_id: r.payload.task_id })));
        done.push(...enqueue.map((r) => r.id));
      } catch (e) {
        for (const r of enqueue) await failed(r, e);
      }
    }
    for (const r of rows) {
      if (r.kind === 'enqueue_task') continue;
      try {
        if (r.kind === 'buffer_publish') await this.d.queue.send(BUFFER_QUEUE, r.payload);
        else if (r.kind === 'invoke_task') await this.d.invoke(String(r.payload.task_id));
        else throw new Error(`unknown outbox kind ${r.kind}`);
        done.push(r.id);
      } catch (e) {
        await failed(r, e);
      }
    }
    if (infra.length > 0) {
      const delay = Math.min(INFRA_RETRY_CAP_MS, this.d.backoffMs(++this.infraStreak));
      this.d.log.warn({ rows: infra.length, err: errText(infraError), retry_in_ms: delay }, 'outbox side effects wait for an unreachable dependency (not counted as attempts)');
      await this.d.db.query(RETRY_UNCOUNTED, [infra.map((r) => r.id), delay, errText(infraError).slice(0, 1000)])
        .catch((err: unknown) => this.d.log.warn({ err: errText(err) }, 'could not record the outbox retry; the rows are retried after their soft lease'));
    } else if (done.length > 0) {
      this.infraStreak = 0;
    }
    if (done.length > 0) await this.d.db.query(DONE, [done]);
  }

  /** Backs a failed row off (its attempt counts); at maxAttempts it ends Failed with an alert line. */
  private async recordFailure(q: Queryable, row: OutboxRow, e: unknown): Promise<void> {
    const delay = this.d.backoffMs(row.attempts);
    const msg = errText(e);
    const r = await q.query<{ status: string }>(RETRY_LATER, [row.id, delay, this.d.maxAttempts, msg.slice(0, 1000)]);
    if (r.rows[0]?.status === 'Failed') {
      this.d.log.error({ alert: 'outbox_row_failed', outbox_id: row.id, kind: row.kind, attempts: row.attempts, err: msg },
        `outbox side effect failed ${row.attempts} times and is now Failed; fix the cause, then set the row back to Pending`);
    } else {
      this.d.log.warn({ outbox_id: row.id, kind: row.kind, attempts: row.attempts, retry_in_ms: delay, err: msg }, 'outbox side effect failed');
    }
  }
}

function errText(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
