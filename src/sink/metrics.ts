/**
 * The sink's Prometheus signals: its running totals (committed, duplicate, rejected, failed,
 * held batches; rows inserted), the buffer queue's depth and dead letters, and the sink lag (age
 * of the oldest buffer message not yet committed), read at scrape time with bounded queries.
 */
import type { Registry } from 'prom-client';
import { scrapeGauge, statsCounter } from '../core/ops.js';
import type { Queryable } from '../db/db.js';
import { queueGauges } from '../queue/metrics.js';
import { BUFFER_QUEUE, type Queue } from '../queue/queue.js';
import type { SinkStats } from './sink.js';

/** pgqueue only: the age of the oldest message on the buffer queue (0 when it is empty). */
export const SINK_LAG_SQL = `
SELECT coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8 AS lag_s
FROM queue_messages WHERE queue = $1::text`;

export function sinkMetrics(registry: Registry, deps: { stats: SinkStats; queue: Queue; queueDb?: Queryable }): void {
  statsCounter(registry, {
    name: 'trace_sink_batches_total',
    help: 'Buffer batches the sink handled, by outcome (committed, duplicate, rejected, failed, held)',
    label: 'outcome',
    read: () => {
      const { committed, duplicate, rejected, failed, held } = deps.stats;
      return { committed, duplicate, rejected, failed, held };
    },
  });
  statsCounter(registry, {
    name: 'trace_sink_rows_total',
    help: 'Rows the sink inserted into buffered datasets',
    label: 'kind',
    read: () => ({ inserted: deps.stats.rows_inserted }),
  });
  queueGauges(registry, deps.queue, [BUFFER_QUEUE]);
  const queueDb = deps.queueDb;
  if (queueDb) {
    scrapeGauge(registry, {
      name: 'trace_sink_lag_seconds',
      help: 'Age of the oldest buffer message not yet committed by a sink, 0 when none waits',
      read: async () => [{ value: Number((await queueDb.query<{ lag_s: number }>(SINK_LAG_SQL, [BUFFER_QUEUE])).rows[0]!.lag_s) }],
    });
  }
}
