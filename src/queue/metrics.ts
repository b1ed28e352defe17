import type { Registry } from 'prom-client';
import { scrapeGauge } from '../core/ops.js';
import type { Queue } from './queue.js';

/** Dead letters are counted up to this many per queue (a bounded read at scrape time). */
export const DLQ_COUNT_CAP = 1000;

/**
 * Queue depth (visible plus in flight) and dead-letter count of each named queue, read at
 * scrape time through the Queue interface (pgqueue or SQS).
 */
export function queueGauges(registry: Registry, queue: Queue, queues: readonly string[]): void {
  scrapeGauge(registry, {
    name: 'trace_queue_depth',
    help: 'Messages in a queue, visible plus in flight (delayed ones excluded)',
    labelNames: ['queue'],
    read: async () => Promise.all(queues.map(async (q) => ({ labels: { queue: q }, value: await queue.depth(q) }))),
  });
  scrapeGauge(registry, {
    name: 'trace_queue_dead_letters',
    help: `Messages in a queue's dead-letter queue (counted up to ${DLQ_COUNT_CAP})`,
    labelNames: ['queue'],
    read: async () => Promise.all(queues.map(async (q) => ({ labels: { queue: q }, value: (await queue.listDeadLetters(q, DLQ_COUNT_CAP)).length }))),
  });
}
