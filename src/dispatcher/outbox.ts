import type { Db, Queryable } from '../db/db.js';
import type { Logger } from '../core/log.js';
import type { Queue } from '../queue/queue.js';
import { BUFFER_QUEUE, TASK_QUEUE } from '../queue/queue.js';
import { routeEvent } from './routing.js';
import type { DatasetEvent } from './tasks/types.js';

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
WHERE id = $1`;

export class OutboxDrainer {
  constructor(private readonly d: OutboxDeps) {}

  /** Drains one batch; returns how many rows it took. */
  async drainOnce(): Promise<number> {
    const { db } = this.d;
    let rows: OutboxRow[] = [];
    const external: OutboxRow[] = [];
    try {
      await db.tx(async (q) => {
        const r = await q.query<OutboxRow>(TAKE, [this.d.batchSize]);
        rows = r.rows;
        if (rows.length === 0) return;
        const doneInTx: number[] = [];
        const wakeups: unknown[] = [];
        for (const row of rows) {
          if (row.kind === 'route_event') {
            const p = row.payload as { org_id: string; event: DatasetEvent; producer_task_id?: string };
            await routeEvent(q, p.org_id, p.event, p.producer_task_id ?? null);
            doneInTx.push(row.id);
          } else if (row.kind === 'enqueue_task' && this.d.sendInTx) {
            wakeups.push({ task_id: row.payload.task_id });
            doneInTx.push(row.id);
          } else {
            external.push(row);
          }
        }
        if (wakeups.length > 0) await this.d.sendInTx!(q, TASK_QUEUE, wakeups);
        if (doneInTx.length > 0) await q.query(DONE, [doneInTx]);
      });
    } catch (e) {
      // A batch that fails as a whole is retried row by row so one bad row cannot block the rest.
      this.d.log.warn({ err: errText(e) }, 'outbox batch failed; retrying rows one by one');
      for (const row of rows) await this.drainOne(row);
      return rows.length;
    }
    await this.runExternal(external);
    return rows.length;
  }

  private async drainOne(row: OutboxRow): Promise<void> {
    try {
      await this.d.db.tx(async (q) => {
        if (row.kind === 'route_event') {
          const p = row.payload as { org_id: string; event: DatasetEvent; producer_task_id?: string };
          await routeEvent(q, p.org_id, p.event, p.producer_task_id ?? null);
        } else if (row.kind === 'enqueue_task' && this.d.sendInTx) {
          await this.d.sendInTx(q, TASK_QUEUE, [{ task_id: row.payload.task_id }]);
        } else {
          return;
        }
        await q.query(DONE, [[row.id]]);
      });
      if (!(row.kind === 'route_event' || (row.kind === 'enqueue_task' && this.d.sendInTx))) await this.runExternal([row]);
    } catch (e) {
      await this.fail(row, e);
    }
  }

  private async runExternal(rows: OutboxRow[]): Promise<void> {
    if (rows.length === 0) return;
    const done: number[] = [];
    const enqueue = rows.filter((r) => r.kind === 'enqueue_task');
    if (enqueue.length > 0) {
      try {
        await this.d.queue.sendBatch(TASK_QUEUE, enqueue.map((r) => ({ task_id: r.payload.task_id })));
        done.push(...enqueue.map((r) => r.id));
      } catch (e) {
        for (const r of enqueue) await this.fail(r, e);
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
        await this.fail(r, e);
      }
    }
    if (done.length > 0) await this.d.db.query(DONE, [done]);
  }

  private async fail(row: OutboxRow, e: unknown): Promise<void> {
    const delay = this.d.backoffMs(row.attempts);
    const msg = errText(e);
    this.d.log.warn({ outbox_id: row.id, kind: row.kind, attempts: row.attempts, err: msg }, 'outbox side effect failed');
    await this.d.db.query(RETRY_LATER, [row.id, delay, this.d.maxAttempts, msg.slice(0, 1000)]).catch(() => undefined);
  }
}

function errText(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
