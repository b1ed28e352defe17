/**
 * How many tasks a manual trigger sets off: the triggered task plus, along the active DAG
 * versions' edges, one task per event each downstream job receives (PerUpdate and PerPartition
 * both run one task per event), with each operator's `fanOut` saying how many events its tasks
 * emit (range_aggregator: the full ranges up to the cursor beyond what it already emitted;
 * range_splitter: chunks per range; others: one per task). Input `where` filters are ignored,
 * so the figure is an upper bound along filtered edges.
 *
 * The walk stops once the count passes `stopAbove` (the answer is then "more than that"), and
 * visits each job at most `maxDepth` edges deep, so a cycle through datasets cannot loop.
 */
import type { Queryable } from '../db/db.js';
import type { EventFlow, OperatorCatalog } from '../dag/catalog-types.js';
import { dependentJobs, type JobRow } from './jobs.js';

const MAX_DEPTH = 20;

async function statesOf(q: Queryable, job: JobRow): Promise<Array<{ state_key: string; state: Record<string, unknown> }>> {
  const r = await q.query<{ state_key: string; state: Record<string, unknown> }>(
    `SELECT state_key, state FROM operator_state WHERE org_id = $1 AND job_id = $2`, [job.org_id, job.id]);
  return r.rows;
}

async function outputOf(q: Queryable, catalog: OperatorCatalog, job: JobRow, input: EventFlow): Promise<EventFlow> {
  const info = catalog.get(job.operator);
  if (info?.fanOut) return info.fanOut(job.config ?? {}, input, await statesOf(q, job));
  return { events: input.events, ...(input.cursor !== undefined ? { cursor: input.cursor } : {}), ...(input.span !== undefined ? { span: input.span } : {}) };
}

export async function estimateTriggerTasks(q: Queryable, catalog: OperatorCatalog, job: JobRow, trigger: EventFlow, stopAbove: number): Promise<number> {
  let total = 1;
  let frontier: Array<{ job: JobRow; out: EventFlow }> = [{ job, out: await outputOf(q, catalog, job, trigger) }];
  for (let depth = 0; depth < MAX_DEPTH && frontier.length > 0 && total <= stopAbove; depth++) {
    const next: Array<{ job: JobRow; out: EventFlow }> = [];
    for (const { job: j, out } of frontier) {
      if (out.events <= 0) continue;
      for (const o of j.outputs) {
        for (const d of await dependentJobs(q, j.org_id, o.dataset_uuid)) {
          total += out.events;
          if (total > stopAbove) return total;
          next.push({ job: d, out: await outputOf(q, catalog, d, out) });
        }
      }
    }
    frontier = next;
  }
  return total;
}
