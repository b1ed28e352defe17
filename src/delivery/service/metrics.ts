/**
 * The Delivery Service's Prometheus signals: its running totals by outcome (delivered, retried,
 * failed for good, canceled, lost leases) and, read from Postgres data at scrape time with
 * bounded queries, the deliveries waiting and the age of the oldest one due.
 */
import type { Registry } from 'prom-client';
import { scrapeGauge, statsCounter } from '../../core/ops.js';
import type { Queryable } from '../../db/db.js';
import type { DeliveryStats } from './service.js';

/** Counts above this are reported as this. */
export const COUNT_CAP = 100_000;

/** Pending deliveries (partial index alert_deliveries_due) and how late the oldest due one is. */
export const DELIVERY_BACKLOG_SQL = `
SELECT (SELECT count(*)::int FROM (SELECT 1 FROM alert_deliveries WHERE status = 'Pending' LIMIT ${COUNT_CAP}) p) AS pending,
       (SELECT coalesce(extract(epoch FROM now() - min(next_attempt_at)), 0)::float8
          FROM alert_deliveries WHERE status = 'Pending' AND next_attempt_at <= now()) AS lag_s`;

export function deliveryMetrics(registry: Registry, deps: { stats: DeliveryStats; data: Queryable }): void {
  statsCounter(registry, {
    name: 'trace_delivery_outcomes_total',
    help: 'Delivery attempts of this instance by outcome; failed = gave up for good (terminal failure or attempts used up)',
    label: 'outcome',
    read: () => {
      const { delivered, retried, failed, canceled, lost_leases } = deps.stats;
      return { delivered, retried, failed, canceled, lost_lease: lost_leases };
    },
  });
  const backlog = async () => (await deps.data.query<{ pending: number; lag_s: number }>(DELIVERY_BACKLOG_SQL)).rows[0]!;
  scrapeGauge(registry, {
    name: 'trace_delivery_pending',
    help: `Alert deliveries not yet delivered or given up (counted up to ${COUNT_CAP})`,
    read: async () => [{ value: Number((await backlog()).pending) }],
  });
  scrapeGauge(registry, {
    name: 'trace_delivery_lag_seconds',
    help: 'How long the oldest due delivery has been waiting, 0 when none is due',
    read: async () => [{ value: Number((await backlog()).lag_s) }],
  });
}
