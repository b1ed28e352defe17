/**
 * The Dispatcher's Prometheus signals (deploy/monitoring.md), each read from Postgres state at
 * scrape time with a bounded query (partial indexes, capped counts, SCRAPE_QUERY_TIMEOUT_MS):
 * the task backlog by status, lease age, the outbox lag, chain sync lag per stream, and the
 * wake-up queue's depth and dead letters. Claim latency is the request histogram of
 * `/internal/task-claim` (core/ops.ts).
 */
import type { Registry } from 'prom-client';
import { scrapeGauge } from '../core/ops.js';
import type { Queryable } from '../db/db.js';
import { queueGauges } from '../queue/metrics.js';
import { BUFFER_QUEUE, TASK_QUEUE, type Queue } from '../queue/queue.js';

/** Counts above this are reported as this (a scrape never walks a huge table). */
export const COUNT_CAP = 100_000;

/** Unfinished tasks by status; each branch uses a partial index (tasks_queued, tasks_lease_expiry, tasks_retry_due). */
export const TASK_BACKLOG_SQL = `
SELECT 'queued' AS status, count(*)::int AS n FROM (SELECT 1 FROM tasks WHERE status = 'Queued' LIMIT ${COUNT_CAP}) q
UNION ALL
SELECT 'running', count(*)::int FROM (SELECT 1 FROM tasks WHERE status = 'Running' LIMIT ${COUNT_CAP}) r
UNION ALL
SELECT 'retry_wait', count(*)::int FROM (SELECT 1 FROM tasks WHERE status = 'Failed' AND next_retry_at IS NOT NULL LIMIT ${COUNT_CAP}) f`;

/** Running tasks: the longest time since a lease was renewed, and leases expiring within a minute. */
export const LEASE_AGE_SQL = `
SELECT coalesce(max(extract(epoch FROM now() - coalesce(last_heartbeat, started_at))), 0)::float8 AS oldest_renewal_s,
       count(*) FILTER (WHERE lease_expires_at < now() + interval '60 seconds')::int AS expiring
FROM tasks WHERE status = 'Running'`;

/** Outbox: pending rows, the age of the oldest one due, and failed rows (capped). */
export const OUTBOX_LAG_SQL = `
SELECT (SELECT count(*)::int FROM (SELECT 1 FROM outbox WHERE status = 'Pending' LIMIT ${COUNT_CAP}) p) AS pending,
       (SELECT coalesce(extract(epoch FROM now() - min(available_at)), 0)::float8 FROM outbox WHERE status = 'Pending' AND available_at <= now()) AS lag_s,
       (SELECT count(*)::int FROM (SELECT 1 FROM outbox WHERE status = 'Failed' LIMIT ${COUNT_CAP}) f) AS failed`;

/**
 * Chain sync lag per active stream: the pool's last observed head minus the committed frontier
 * (the start of the oldest range still scheduled, else the planning cursor).
 */
export const CHAIN_SYNC_LAG_SQL = `
SELECT j.name AS sync, s.dataset_key AS stream,
       greatest(h.head_block - coalesce(
         (SELECT min(r.range_start) FROM chain_sync_scheduled_ranges r
           WHERE r.job_id = s.job_id AND r.dataset_key = s.dataset_key AND r.status = 'scheduled'),
         c.next_block, j.from_block), 0)::float8 AS lag
FROM chain_sync_streams s
JOIN chain_sync_jobs j ON j.job_id = s.job_id
LEFT JOIN chain_sync_cursor c ON c.job_id = s.job_id AND c.dataset_key = s.dataset_key
JOIN chain_head_observations h ON h.org_id = j.org_id AND h.chain_id = j.chain_id AND h.rpc_pool = s.rpc_pool
WHERE s.active AND h.head_block IS NOT NULL
ORDER BY j.name, s.dataset_key
LIMIT 1000`;

export function dispatcherGauges(registry: Registry, deps: { state: Queryable; queue: Queue }): void {
  const { state } = deps;
  scrapeGauge(registry, {
    name: 'trace_tasks',
    help: `Unfinished tasks by status: queued, running, retry_wait (failed with a retry due); counted up to ${COUNT_CAP}`,
    labelNames: ['status'],
    read: async () => (await state.query<{ status: string; n: number }>(TASK_BACKLOG_SQL)).rows.map((r) => ({ labels: { status: r.status }, value: Number(r.n) })),
  });
  const lease = async () => (await state.query<{ oldest_renewal_s: number; expiring: number }>(LEASE_AGE_SQL)).rows[0]!;
  scrapeGauge(registry, {
    name: 'trace_task_lease_age_seconds',
    help: 'Longest time since a running task\'s lease was renewed (a heartbeat), 0 when none runs',
    read: async () => [{ value: Number((await lease()).oldest_renewal_s) }],
  });
  scrapeGauge(registry, {
    name: 'trace_task_leases_expiring',
    help: 'Running tasks whose lease expires within 60 seconds',
    read: async () => [{ value: Number((await lease()).expiring) }],
  });
  const outbox = async () => (await state.query<{ pending: number; lag_s: number; failed: number }>(OUTBOX_LAG_SQL)).rows[0]!;
  scrapeGauge(registry, {
    name: 'trace_outbox_lag_seconds',
    help: 'Age of the oldest outbox row that is due and not yet delivered to the queue, 0 when none',
    read: async () => [{ value: Number((await outbox()).lag_s) }],
  });
  scrapeGauge(registry, {
    name: 'trace_outbox_rows',
    help: `Outbox rows by status: pending, failed (gave up); counted up to ${COUNT_CAP}`,
    labelNames: ['status'],
    read: async () => {
      const o = await outbox();
      return [{ labels: { status: 'pending' }, value: Number(o.pending) }, { labels: { status: 'failed' }, value: Number(o.failed) }];
    },
  });
  scrapeGauge(registry, {
    name: 'trace_chain_sync_lag_blocks',
    help: 'Blocks between the observed chain head and what a chain sync stream has committed',
    labelNames: ['sync', 'stream'],
    read: async () => (await state.query<{ sync: string; stream: string; lag: number }>(CHAIN_SYNC_LAG_SQL)).rows.map((r) => ({ labels: { sync: r.sync, stream: r.stream }, value: Number(r.lag) })),
  });
  queueGauges(registry, deps.queue, [TASK_QUEUE, BUFFER_QUEUE]);
}
