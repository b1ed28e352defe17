/**
 * The batched worker contract on the worker side: a `WorkerTaskApi` that claims, completes and
 * heartbeats many tasks per request (`/internal/task-claim-batch`, `/v1/task/complete-batch`,
 * `/v1/task/heartbeat-batch`) while the task runner keeps calling it one task at a time.
 *
 * Batches form by themselves, with no waiting: a call is sent at once when no request of its
 * kind is in flight; calls made while one is in flight go together in the next request, as soon
 * as it returns (at most `batchMax` per request). At low load every call is a request of its own,
 * as on the per-task routes; under load, one request carries what piled up during the last one.
 * Each item settles on its own, exactly as the per-task call would have (the same answer, or a
 * `TaskApiError` with the item's status and code), so the runner's fencing, retry and outcome
 * logic is unchanged.
 *
 * A Dispatcher without the batch routes (404 / 405) is detected on first use; from then on this
 * client uses the per-task routes only. Completions too large to share a request go per task.
 */
import type { Logger } from '../core/log.js';
import type { BufferPublishBody, ClaimResponse, CompleteBody, FetchResponse, ReleaseBody, TaskEvent, TaskRef } from './payload.js';
import {
  apiErrorOf,
  batchItemResult,
  completeAnswerSchema,
  heartbeatAnswerSchema,
  type BatchItemAnswer,
  TaskClient,
  type WorkerTaskApi,
} from './task-client.js';

/** Most items the Dispatcher takes in one batch request. */
export const BATCH_MAX = 100;
/** A completion body larger than this goes through the per-task route. */
const ITEM_BYTES_MAX = 64 * 1024;
/** A batch request stays under this many bytes of bodies (the Dispatcher accepts 1 MiB). */
const BATCH_BYTES_MAX = 512 * 1024;

/** The answer of a Dispatcher that does not know a route: it predates the batch contract. */
export function batchRouteMissing(e: unknown): boolean {
  const err = apiErrorOf(e);
  return err !== undefined && ((err.status === 404 && err.code === 'NOT_FOUND') || err.status === 405);
}

interface Pending<I, R> {
  key: string;
  item: I;
  bytes: number;
  resolve(r: R): void;
  reject(e: unknown): void;
}

/**
 * Coalesces single calls into batch requests, one request in flight at a time. `send` answers
 * one settled result per item, in order: a value or the error that item stands for.
 */
class Coalescer<I, R> {
  readonly #pending: Array<Pending<I, R>> = [];
  #busy = false;

  constructor(
    private readonly max: () => number,
    private readonly send: (items: I[]) => Promise<Array<PromiseSettledResult<R>>>,
  ) {}

  submit(key: string, item: I, bytes = 0): Promise<R> {
    return new Promise<R>((resolve, reject) => {
      this.#pending.push({ key, item, bytes, resolve, reject });
      this.#pump();
    });
  }

  #pump(): void {
    if (this.#busy || this.#pending.length === 0) return;
    // One item per task in a request (the Dispatcher refuses repeats); a repeat waits for the next.
    const take: Array<Pending<I, R>> = [];
    const keys = new Set<string>();
    let bytes = 0;
    for (let i = 0; i < this.#pending.length && take.length < this.max();) {
      const p = this.#pending[i]!;
      if (keys.has(p.key) || (take.length > 0 && bytes + p.bytes > BATCH_BYTES_MAX)) {
        i++;
        continue;
      }
      keys.add(p.key);
      bytes += p.bytes;
      take.push(p);
      this.#pending.splice(i, 1);
    }
    this.#busy = true;
    void this.send(take.map((p) => p.item))
      .then(
        (results) => take.forEach((p, i) => {
          const r = results[i]!;
          if (r.status === 'fulfilled') p.resolve(r.value);
          else p.reject(r.reason);
        }),
        (e: unknown) => take.forEach((p) => p.reject(e)),
      )
      .finally(() => {
        this.#busy = false;
        this.#pump();
      });
  }
}

export interface BatchingOptions {
  /** Most tasks per batch request, 2 to BATCH_MAX (default BATCH_MAX). */
  batchMax?: number;
  log?: Logger;
}

export class BatchingTaskClient implements WorkerTaskApi {
  readonly #inner: TaskClient;
  readonly #max: number;
  readonly #log: Logger | undefined;
  /** Whether the Dispatcher has the batch routes (unknown until the first answer says otherwise). */
  #batchRoutes = true;
  readonly #completions: Coalescer<{ ref: TaskRef; body: CompleteBody }, { ok: true; status: string }>;
  readonly #heartbeats: Coalescer<TaskRef, { ok: true; lease_expires_at: string }>;

  constructor(inner: TaskClient, opts: BatchingOptions = {}) {
    this.#inner = inner;
    this.#max = Math.max(2, Math.min(BATCH_MAX, Math.floor(opts.batchMax ?? BATCH_MAX)));
    this.#log = opts.log;
    this.#completions = new Coalescer(() => this.#max, async (items) => {
      if (this.#batchRoutes) {
        try {
          const answers = await this.#inner.completeBatch(items);
          return settle(answers, (a) => batchItemResult('/v1/task/complete-batch', completeAnswerSchema, a));
        } catch (e) {
          if (!this.#routeMissing(e) && apiErrorOf(e)?.status !== 413) throw e;
        }
      }
      return Promise.allSettled(items.map((x) => this.#inner.complete(x.ref, x.body)));
    });
    this.#heartbeats = new Coalescer(() => this.#max, async (refs) => {
      if (this.#batchRoutes) {
        try {
          const answers = await this.#inner.heartbeatBatch(refs);
          return settle(answers, (a) => batchItemResult('/v1/task/heartbeat-batch', heartbeatAnswerSchema, a));
        } catch (e) {
          if (!this.#routeMissing(e)) throw e;
        }
      }
      return Promise.allSettled(refs.map((r) => this.#inner.heartbeat(r)));
    });
  }

  /** Whether batch requests are still in use (false once the Dispatcher turned out not to have them). */
  get batched(): boolean {
    return this.#batchRoutes;
  }

  #routeMissing(e: unknown): boolean {
    if (!batchRouteMissing(e)) return false;
    if (this.#batchRoutes) this.#log?.warn('the Dispatcher has no batch routes; using the per-task routes');
    this.#batchRoutes = false;
    return true;
  }

  claim(taskId: string, workerId: string): Promise<ClaimResponse> {
    return this.#inner.claim(taskId, workerId);
  }

  claimMany(taskIds: readonly string[], workerId: string): Array<Promise<ClaimResponse>> {
    const out: Array<Promise<ClaimResponse>> = [];
    for (let i = 0; i < taskIds.length; i += this.#max) out.push(...this.#claimChunk(taskIds.slice(i, i + this.#max), workerId));
    return out;
  }

  #claimChunk(ids: string[], workerId: string): Array<Promise<ClaimResponse>> {
    const perTask = () => ids.map((id) => this.#inner.claim(id, workerId));
    if (!this.#batchRoutes) return perTask();
    const all: Promise<Array<Promise<ClaimResponse>>> = this.#inner.claimBatch(ids, workerId).then(
      (results) => results.map((r) => Promise.resolve(r)),
      (e: unknown) => {
        if (!this.#routeMissing(e)) throw e;
        return perTask();
      },
    );
    return ids.map((_, i) => all.then((list) => list[i]!));
  }

  complete(ref: TaskRef, body: CompleteBody): Promise<{ ok: true; status: string }> {
    const bytes = JSON.stringify(body).length;
    if (!this.#batchRoutes || bytes > ITEM_BYTES_MAX) return this.#inner.complete(ref, body);
    return this.#completions.submit(ref.task_id, { ref, body }, bytes);
  }

  heartbeat(ref: TaskRef): Promise<{ ok: true; lease_expires_at: string }> {
    if (!this.#batchRoutes) return this.#inner.heartbeat(ref);
    return this.#heartbeats.submit(ref.task_id, ref);
  }

  fetch(taskId: string): Promise<FetchResponse> {
    return this.#inner.fetch(taskId);
  }

  events(ref: TaskRef, events: TaskEvent[]): Promise<{ ok: true; accepted: number; routed: number }> {
    return this.#inner.events(ref, events);
  }

  bufferPublish(ref: TaskRef, body: BufferPublishBody): Promise<{ ok: true; publish_id: string }> {
    return this.#inner.bufferPublish(ref, body);
  }

  release(ref: TaskRef, body: ReleaseBody): Promise<{ ok: true; status: string }> {
    return this.#inner.release(ref, body);
  }
}

function settle<R>(answers: BatchItemAnswer[], parse: (a: BatchItemAnswer) => R): Array<PromiseSettledResult<R>> {
  return answers.map((a) => {
    try {
      return { status: 'fulfilled', value: parse(a) };
    } catch (e) {
      return { status: 'rejected', reason: e };
    }
  });
}

/**
 * The task client a worker process uses: batched by default, the per-task routes when
 * `batchMax` is 1 (`trace worker --batch-max 1`). One factory for `trace worker` and the
 * workers of `trace lite up`, so both speak the same contract.
 */
export function workerTaskClient(opts: { baseUrl: string; workerToken: string; batchMax?: number; log?: Logger }): WorkerTaskApi {
  const http = new TaskClient({ baseUrl: opts.baseUrl, workerToken: opts.workerToken });
  const batchMax = opts.batchMax ?? BATCH_MAX;
  return batchMax > 1 ? new BatchingTaskClient(http, { batchMax, ...(opts.log ? { log: opts.log } : {}) }) : http;
}
