import type { Command } from '../args.js';
import { UsageError, intOption } from '../args.js';
import { api, resolveTarget } from '../client.js';
import { renderTable } from '../table.js';

interface TaskView {
  task_id: string; dag_name: string; job_name: string; status: string; attempt: number; max_attempts: number;
  worker_id: string | null; lease_expires_at: string | null; next_retry_at: string | null; error_message: string | null;
  created_at: string; attempts: Array<{ attempt: number; status: string; worker_id: string | null; error_message: string | null }>;
}

const STATUSES = ['Queued', 'Running', 'Completed', 'Failed', 'Canceled'];

export const tasks: Command = {
  name: 'tasks',
  summary: 'List tasks with their attempts, leases and last errors (newest first).',
  usage: 'trace tasks [--dag NAME] [--job NAME] [--status Queued|Running|Completed|Failed|Canceled] [--limit N] [--json]',
  options: { dag: { type: 'string' }, job: { type: 'string' }, status: { type: 'string' }, limit: { type: 'string' }, json: { type: 'boolean' } },
  async run({ values }) {
    const q = new URLSearchParams();
    if (values.dag) q.set('dag', String(values.dag));
    if (values.job) q.set('job', String(values.job));
    if (values.status) {
      const s = STATUSES.find((x) => x.toLowerCase() === String(values.status).toLowerCase());
      if (!s) throw new UsageError(`--status must be one of ${STATUSES.join(', ')}`);
      q.set('status', s);
    }
    q.set('limit', String(intOption(values.limit, 'limit', 1) ?? 50));
    const r = await api<{ tasks: TaskView[] }>(await resolveTarget(), 'GET', `/v1/tasks?${q}`);
    if (values.json) { process.stdout.write(`${JSON.stringify(r, null, 2)}\n`); return; }
    process.stdout.write(`${renderTable(
      ['task_id', 'dag', 'job', 'status', 'attempt', 'history', 'lease / retry', 'last error'],
      r.tasks.map((t) => [
        t.task_id, t.dag_name, t.job_name, t.status, `${t.attempt}/${t.max_attempts}`,
        t.attempts.map((a) => `${a.attempt}:${a.status}`).join(' '),
        t.status === 'Running' ? `lease until ${t.lease_expires_at}` : t.next_retry_at ? `retry at ${t.next_retry_at}` : '',
        t.error_message ?? '',
      ]),
    )}\n`);
  },
};
