import type { Command } from '../args.js';
import { UsageError, intOption, positionalOr } from '../args.js';
import { api, resolveTarget } from '../client.js';
import { renderTable } from '../table.js';

interface AttemptView { attempt: number; status: string; worker_id: string | null; started_at: string; finished_at: string | null; error_message: string | null }

interface TaskView {
  task_id: string; dag_name: string; job_name: string; dag_version_id: string; status: string; attempt: number; max_attempts: number;
  worker_id: string | null; lease_expires_at: string | null; next_retry_at: string | null; error_message: string | null;
  trigger: Record<string, unknown>; inputs: unknown[];
  created_at: string; started_at: string | null; completed_at: string | null; attempts: AttemptView[];
}

const STATUSES = ['Queued', 'Running', 'Completed', 'Failed', 'Canceled'];
const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

function taskId(values: Record<string, unknown>, positionals: string[]): string {
  const id = positionalOr(values, positionals, 'id', 'task ID');
  if (!id) throw new UsageError('expected a task ID (see trace tasks)');
  if (!UUID_RE.test(id)) throw new UsageError(`"${id.slice(0, 40)}" is not a task ID (a UUID from trace tasks)`);
  return id;
}

export const tasks: Command = {
  name: 'tasks',
  summary: 'List tasks with their attempts, leases and last errors (newest first). See also: trace tasks show ID, trace tasks cancel ID.',
  usage: 'trace tasks [--dag NAME] [--job NAME] [--status Queued|Running|Completed|Failed|Canceled] [--limit N] [--json]',
  options: { dag: { type: 'string' }, job: { type: 'string' }, status: { type: 'string' }, limit: { type: 'string' }, json: { type: 'boolean' } },
  async run({ values, positionals }) {
    if (positionals.length > 0) throw new UsageError(`unexpected "${positionals[0]!.slice(0, 40)}" (to see one task: trace tasks show ID)`);
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

/** The human rendering of one task: what it is, its lease or retry, every attempt and its error. */
export function renderTask(t: TaskView): string {
  const lines = [
    `task ${t.task_id}`,
    `  job        ${t.dag_name}.${t.job_name} (version ${t.dag_version_id})`,
    `  status     ${t.status}, attempt ${t.attempt} of ${t.max_attempts}`,
    `  created    ${t.created_at}${t.started_at ? `, started ${t.started_at}` : ''}${t.completed_at ? `, finished ${t.completed_at}` : ''}`,
  ];
  if (t.status === 'Running') lines.push(`  lease      held by ${t.worker_id ?? '?'} until ${t.lease_expires_at ?? '?'}`);
  if (t.next_retry_at) lines.push(`  retry at   ${t.next_retry_at}`);
  lines.push(`  trigger    ${JSON.stringify(t.trigger)}`);
  if (t.inputs.length > 0) lines.push(`  inputs     ${t.inputs.length} event(s): ${JSON.stringify(t.inputs).slice(0, 300)}`);
  if (t.error_message) lines.push(`  last error ${t.error_message}`);
  lines.push('', t.attempts.length === 0 ? 'no attempts yet' : renderTable(
    ['attempt', 'status', 'worker', 'started_at', 'finished_at', 'error'],
    t.attempts.map((a) => [a.attempt, a.status, a.worker_id ?? '', a.started_at, a.finished_at ?? '', a.error_message ?? '']),
  ));
  return lines.join('\n');
}

export const tasksShow: Command = {
  name: 'tasks show',
  summary: 'Show one task: its job, status, lease or next retry, trigger, inputs, and every attempt with its worker and error.',
  usage: 'trace tasks show ID [--json]',
  options: { id: { type: 'string' }, json: { type: 'boolean' } },
  async run({ values, positionals }) {
    const id = taskId(values, positionals);
    const t = await api<TaskView>(await resolveTarget(), 'GET', `/v1/tasks/${id}`);
    process.stdout.write(values.json ? `${JSON.stringify(t, null, 2)}\n` : `${renderTask(t)}\n`);
  },
};

export const tasksCancel: Command = {
  name: 'tasks cancel',
  summary: 'Cancel a task that has not finished (admin): it is not retried; a worker running it is told at its next heartbeat and stops.',
  usage: 'trace tasks cancel ID [--json]',
  options: { id: { type: 'string' }, json: { type: 'boolean' } },
  async run({ values, positionals }) {
    const id = taskId(values, positionals);
    const r = await api<{ task_id: string; canceled: boolean }>(await resolveTarget(), 'POST', `/v1/tasks/${id}/cancel`);
    if (values.json) { process.stdout.write(`${JSON.stringify(r, null, 2)}\n`); return; }
    process.stdout.write(r.canceled ? `canceled task ${id}\n` : `task ${id} had already finished; nothing to cancel\n`);
  },
};

export const taskCommands: Command[] = [tasks, tasksShow, tasksCancel];
