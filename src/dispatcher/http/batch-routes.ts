/**
 * The batched worker contract, beside the per-task one: one request claims, completes or
 * heartbeats up to BATCH_MAX tasks.
 *
 * - `POST /internal/task-claim-batch` (worker token): the per-task claim for many task ids, in
 *   one statement; every claimed task comes with its payload and capability token.
 * - `POST /v1/task/complete-batch`, `POST /v1/task/heartbeat-batch`: every item carries its own
 *   `capability_token` and fencing triple and is checked exactly as the per-task route checks
 *   it, by the same transition. Items are answered one by one, in request order, with the HTTP
 *   status and body the per-task route would have given; a refused item changes nothing and
 *   never affects another. Completions run in one transaction, each item under a savepoint.
 *
 * A malformed batch (empty, more than BATCH_MAX items, a task id twice) is refused as a whole
 * with 400 naming the field, and changes nothing.
 */
import type { FastifyInstance } from 'fastify';
import type { z } from 'zod';
import { bindTaskRequest } from '../../auth/capability.js';
import { TraceError, badRequest, formatPath } from '../../core/errors.js';
import { parseInput } from '../../core/http.js';
import type { Queryable } from '../../db/db.js';
import type { DispatcherContext } from '../service.js';
import { completePlain, completeTask, type CompletionResult } from '../tasks/complete.js';
import { heartbeatTask } from '../tasks/heartbeat.js';
import { claimBatchBody, completeBatchBody, completeBatchItem, heartbeatBatchBody, heartbeatBatchItem } from './schemas.js';
import { completionOf, publishedRefCheck } from './task-routes.js';

/** One item's answer: what the per-task route would have answered (status and body). */
export interface ItemAnswer {
  task_id: string;
  status: number;
  body: Record<string, unknown>;
}

interface Admitted<T> {
  i: number;
  body: T;
}

export function batchRoutes(app: FastifyInstance, ctx: DispatcherContext): void {
  const { deps } = ctx;

  app.post('/internal/task-claim-batch', async (req) => {
    const body = parseInput(claimBatchBody, req.body);
    const results = await ctx.claimBatch(body.task_ids, body.worker_id);
    const claimed = results.filter((r) => r.status === 'Claimed').length;
    req.log.info({ worker_id: body.worker_id, asked: body.task_ids.length, claimed }, 'tasks claimed');
    return {
      results: results.map((r) => (r.status === 'Claimed'
        ? { task_id: r.task_id, status: 'Claimed', ...r.claimed }
        : { task_id: r.task_id, status: 'NotClaimed', reason: r.reason })),
    };
  });

  /**
   * Checks one item as the per-task route checks its request: the body's shape (400 naming
   * `items[i].field`), the capability token (401) and its binding to the body (403).
   */
  async function admit<T extends { task_id: string; attempt: number; capability_token: string }>(schema: z.ZodType<T>, raw: unknown, i: number): Promise<T> {
    const r = schema.safeParse(raw);
    if (!r.success) {
      const problems = r.error.issues.map((x) => ({ path: formatPath(['items', i, ...x.path]), message: x.message }));
      throw badRequest(`invalid request body: ${problems[0]!.path}: ${problems[0]!.message}`, 'INVALID_REQUEST', problems);
    }
    bindTaskRequest(await deps.capabilityVerifier.verify(r.data.capability_token), r.data);
    return r.data;
  }

  function refused(taskId: string, e: unknown, log: { error(o: object, m: string): void }): ItemAnswer {
    if (e instanceof TraceError) return { task_id: taskId, status: e.status, body: e.toJSON() };
    log.error({ task_id: taskId, err: e instanceof Error ? e.message : String(e) }, 'batch item failed');
    return { task_id: taskId, status: 500, body: { error: 'internal error', code: 'INTERNAL' } };
  }

  /** Admits every item (in parallel: token checks are independent); refused ones are answered at once. */
  async function admitAll<T extends { task_id: string; attempt: number; capability_token: string }>(
    schema: z.ZodType<T>,
    items: Array<{ task_id: string }>,
    answers: ItemAnswer[],
    log: { error(o: object, m: string): void },
  ): Promise<Array<Admitted<T>>> {
    const admitted: Array<Admitted<T>> = [];
    await Promise.all(items.map(async (raw, i) => {
      try {
        admitted.push({ i, body: await admit(schema, raw, i) });
      } catch (e) {
        answers[i] = refused(raw.task_id, e, log);
      }
    }));
    // Rows are locked in task-id order, so two batches naming the same tasks never deadlock.
    return admitted.sort((a, b) => (a.body.task_id < b.body.task_id ? -1 : a.body.task_id > b.body.task_id ? 1 : 0));
  }

  const checkRef = publishedRefCheck(ctx);
  /** One completion inside the batch transaction: the per-task route's transition, under a savepoint. */
  async function completeOne(q: Queryable, body: z.output<typeof completeBatchItem>): Promise<CompletionResult> {
    const completion = completionOf(body);
    const plain = await completePlain(q, body, completion);
    if (plain) return plain;
    await q.query('SAVEPOINT batch_item');
    try {
      const r = await completeTask(q, body, completion, (id) => ctx.jobs.require(id), ctx.retryDelayMs, ctx.completionHooks, checkRef);
      await q.query('RELEASE SAVEPOINT batch_item');
      return r;
    } catch (e) {
      await q.query('ROLLBACK TO SAVEPOINT batch_item');
      throw e;
    }
  }

  app.post('/v1/task/complete-batch', async (req) => {
    const { items } = parseInput(completeBatchBody, req.body);
    const answers: ItemAnswer[] = new Array<ItemAnswer>(items.length);
    const admitted = await admitAll(completeBatchItem, items, answers, req.log);
    const finished: Array<{ body: z.output<typeof completeBatchItem>; r: CompletionResult }> = [];
    if (admitted.length > 0) {
      const inTx: ItemAnswer[] = [];
      const done: typeof finished = [];
      await deps.state.tx(async (q) => {
        for (const { i, body } of admitted) {
          try {
            const r = await completeOne(q, body);
            done.push({ body, r });
            inTx[i] = { task_id: body.task_id, status: 200, body: { ok: true, status: r.status, ...(r.retry_at ? { retry_at: r.retry_at.toISOString() } : {}) } };
          } catch (e) {
            inTx[i] = refused(body.task_id, e, req.log);
          }
        }
      });
      // Only a committed transaction answers its items.
      inTx.forEach((a, i) => { answers[i] = a; });
      finished.push(...done);
    }
    if (finished.some((f) => f.r.woke)) ctx.kickOutbox();
    for (const { body, r } of finished) {
      if (r.applied) req.log.info({ task_id: body.task_id, attempt: body.attempt, status: r.status }, 'task finished');
    }
    return { results: answers };
  });

  app.post('/v1/task/heartbeat-batch', async (req) => {
    const { items } = parseInput(heartbeatBatchBody, req.body);
    const answers: ItemAnswer[] = new Array<ItemAnswer>(items.length);
    const admitted = await admitAll(heartbeatBatchItem, items, answers, req.log);
    if (admitted.length > 0) {
      const inTx: ItemAnswer[] = [];
      await deps.state.tx(async (q) => {
        for (const { i, body } of admitted) {
          try {
            const r = await heartbeatTask(q, body, deps.settings.leaseSeconds);
            inTx[i] = { task_id: body.task_id, status: 200, body: { ok: true, lease_expires_at: new Date(r.lease_expires_at).toISOString() } };
          } catch (e) {
            // heartbeatTask refuses without writing: a refusal needs no savepoint.
            if (!(e instanceof TraceError)) throw e;
            inTx[i] = refused(body.task_id, e, req.log);
          }
        }
      });
      inTx.forEach((a, i) => { answers[i] = a; });
    }
    return { results: answers };
  });
}
