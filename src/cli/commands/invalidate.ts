/** `trace invalidate` (record a data invalidation, admin) and `trace datasets show` (one dataset and its invalidation history). */
import type { Command } from '../args.js';
import { UsageError } from '../args.js';
import { api, resolveTarget } from '../client.js';
import { renderTable } from '../table.js';

interface Rerun { task_id: string; dag_name: string; job_name: string; status: string; attempt: number; completed_at: string | null }
interface Invalidation {
  id: string; dataset_version: string; scope: 'partition' | 'row_range'; partition_key: string | null;
  row_filter: { block_number?: { gte: number; lt: number } } | null; reason: string; source: { kind?: string; by?: string; task_id?: string } | null;
  created_at: string; processed_at: string | null; status: string;
  processed_by: Array<{ dag_name: string; job_name: string }>; reruns: Rerun[];
  cascades: Array<{ id: string; dataset_name: string | null; processed_at: string | null }>;
}

const json = (v: unknown) => process.stdout.write(`${JSON.stringify(v, null, 2)}\n`);

/** `START:END` (block numbers, end exclusive) to `{start, end}`. */
export function parseRange(raw: string): { start: number; end: number } {
  const m = /^(\d{1,15}):(\d{1,15})$/.exec(raw);
  if (!m) throw new UsageError(`--range ${raw}: expected START:END (block numbers, END exclusive)`);
  const start = Number(m[1]);
  const end = Number(m[2]);
  if (end <= start) throw new UsageError(`--range ${raw}: END must be greater than START (the range is [START, END))`);
  return { start, end };
}

const scopeText = (i: Pick<Invalidation, 'scope' | 'partition_key' | 'row_filter'>) =>
  i.scope === 'partition' ? `partition ${i.partition_key}` : `rows [${i.row_filter?.block_number?.gte}, ${i.row_filter?.block_number?.lt})`;

export const invalidateCmd: Command = {
  name: 'invalidate',
  summary: 'Invalidate a partition or a block range of a dataset (admin): the task that produced it re-runs once, then every job downstream that read it. See the progress with trace datasets show NAME.',
  usage: 'trace invalidate DATASET --partition KEY | --range START:END [--reason TEXT] [--json]   (the range is [START, END); --range needs a range-partitioned dataset)',
  options: { partition: { type: 'string' }, range: { type: 'string' }, reason: { type: 'string' }, json: { type: 'boolean' } },
  async run({ values, positionals }) {
    const name = positionals[0];
    if (!name || positionals.length > 1) throw new UsageError('expected exactly one DATASET name');
    if ((values.partition === undefined) === (values.range === undefined)) throw new UsageError('give either --partition KEY or --range START:END');
    const body: Record<string, unknown> = values.partition !== undefined
      ? { scope: 'partition', partition_key: String(values.partition) }
      : { scope: 'row_range', ...parseRange(String(values.range)) };
    if (values.reason !== undefined) body.reason = String(values.reason);
    const r = await api<Invalidation & { name: string }>(await resolveTarget(), 'POST', `/v1/datasets/${encodeURIComponent(name)}/invalidations`, body);
    if (values.json) return void json(r);
    process.stdout.write(`invalidated ${scopeText(r)} of ${name} (version ${r.dataset_version}): invalidation ${r.id}, ${r.status}\n`);
  },
};

interface DatasetView { name: string; dataset_uuid: string; kind: string; producer: { dag_name: string; job_name: string; output_index: number } | null; current_version: string | null; updated_at: string }

export const datasetsShow: Command = {
  name: 'datasets show',
  summary: 'One dataset: what produces it, its current version, and its history of invalidations with the re-runs they set off.',
  usage: 'trace datasets show NAME [--limit N] [--json]',
  options: { limit: { type: 'string' }, json: { type: 'boolean' } },
  async run({ values, positionals }) {
    const name = positionals[0];
    if (!name || positionals.length > 1) throw new UsageError('expected exactly one dataset NAME');
    const limit = values.limit === undefined ? undefined : Number(values.limit);
    if (limit !== undefined && !(Number.isInteger(limit) && limit >= 1 && limit <= 1000)) throw new UsageError('--limit must be an integer from 1 to 1000');
    const target = await resolveTarget();
    const path = `/v1/datasets/${encodeURIComponent(name)}`;
    const [d, h] = await Promise.all([
      api<DatasetView>(target, 'GET', path),
      api<{ invalidations: Invalidation[] }>(target, 'GET', `${path}/invalidations${limit ? `?limit=${limit}` : ''}`),
    ]);
    if (values.json) return void json({ ...d, history: h.invalidations });
    const out = [
      `name             ${d.name}`,
      `dataset_uuid     ${d.dataset_uuid}`,
      `kind             ${d.kind}`,
      `producer         ${d.producer ? `${d.producer.dag_name}.${d.producer.job_name}[${d.producer.output_index}]` : ''}`,
      `current_version  ${d.current_version ?? ''}`,
      '',
    ];
    if (h.invalidations.length === 0) {
      out.push('history: no invalidations');
    } else {
      out.push('history (invalidations, newest first):');
      out.push(renderTable(
        ['created_at', 'invalidation', 'scope', 'reason', 'status', 'processed_at', 're-runs', 'cascades'],
        h.invalidations.map((i) => [
          i.created_at,
          i.id,
          scopeText(i),
          i.source?.kind === 'rewrite' ? `rewrite by task ${i.source.task_id}` : i.reason,
          i.status,
          i.processed_at ?? '',
          i.reruns.map((t) => `${t.dag_name}.${t.job_name} ${t.task_id} ${t.status}`).join('; '),
          i.cascades.map((c) => c.dataset_name ?? c.id).join(', '),
        ]),
      ));
    }
    process.stdout.write(`${out.join('\n')}\n`);
  },
};
