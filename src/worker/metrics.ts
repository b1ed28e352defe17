import { Gauge, type Registry } from 'prom-client';
import { queueGauges } from '../queue/metrics.js';
import { TASK_QUEUE, type Queue } from '../queue/queue.js';
import type { WorkerHandle } from './worker.js';

/** A worker pool's signals: tasks claimed or running now, and the task queue it receives from. */
export function workerMetrics(registry: Registry, workers: readonly WorkerHandle[], queue: Queue): void {
  new Gauge({
    name: 'trace_worker_tasks_in_flight',
    help: 'Tasks this process\'s workers are claiming or running now',
    registers: [registry],
    collect() { this.set(workers.reduce((n, w) => n + w.inFlight, 0)); },
  });
  queueGauges(registry, queue, [TASK_QUEUE]);
}
