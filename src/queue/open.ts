import type { Db } from '../db/db.js';
import { TraceError } from '../core/errors.js';
import type { Queue } from './queue.js';
import { PgQueue } from './pgqueue.js';
import { SqsQueue } from './sqs.js';

export type OpenQueueOptions =
  | { kind: 'pgqueue'; db: Db }
  | { kind: 'sqs'; region?: string; queueUrls: Record<string, string>; dlqUrls?: Record<string, string> };

/**
 * Opens the wake-up queue of a profile: pgqueue over a database the caller owns (close() leaves
 * it open), or SQS with one URL per queue name (`{ tasks, buffers }`) and optional redrive DLQs.
 */
export function openQueue(opts: { kind: 'pgqueue'; db: Db }): PgQueue;
export function openQueue(opts: { kind: 'sqs'; region?: string; queueUrls: Record<string, string>; dlqUrls?: Record<string, string> }): SqsQueue;
export function openQueue(opts: OpenQueueOptions): Queue;
export function openQueue(opts: OpenQueueOptions): Queue {
  switch (opts.kind) {
    case 'pgqueue':
      return new PgQueue(opts.db);
    case 'sqs':
      return new SqsQueue({
        queueUrls: opts.queueUrls,
        ...(opts.dlqUrls ? { dlqUrls: opts.dlqUrls } : {}),
        ...(opts.region ? { region: opts.region } : {}),
      });
    default:
      throw new TraceError(500, 'QUEUE_NOT_CONFIGURED', 'unknown queue kind (expected pgqueue or sqs)');
  }
}
