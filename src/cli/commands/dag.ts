import { readFile } from 'node:fs/promises';
import type { Command } from '../args.js';
import { CliError, UsageError, intOption, positionalOr } from '../args.js';
import { ApiError, api, resolveTarget } from '../client.js';
import { renderTable } from '../table.js';

function out(json: unknown, values: Record<string, unknown>, human: () => string): void {
  process.stdout.write(values.json ? `${JSON.stringify(json, null, 2)}\n` : `${human()}\n`);
}

export const dagDeploy: Command = {
  name: 'dag deploy',
  summary: 'Deploy a DAG YAML file as a new immutable version (idempotent: the same YAML is the same version).',
  usage: 'trace dag deploy FILE [--activate] [--json]',
  options: { file: { type: 'string', short: 'f' }, activate: { type: 'boolean' }, json: { type: 'boolean' } },
  async run({ values, positionals }) {
    const file = positionalOr(values, positionals, 'file', 'FILE');
    if (!file) throw new UsageError('expected a DAG YAML FILE');
    const yaml = await readFile(file, 'utf8').catch(() => { throw new UsageError(`cannot read ${file}`); });
    const name = /^name:\s*["']?([a-z][a-z0-9_]*)["']?\s*$/m.exec(yaml)?.[1];
    if (!name) throw new UsageError(`${file} has no top-level "name:" with a valid DAG name`);
    const t = await resolveTarget();
    const r = await api<{ dag_version_id: string; created: boolean; active: boolean; datasets: Array<{ name: string | null; job: string; output: number; dataset_uuid: string }> }>(
      t, 'POST', `/v1/dags/${name}/versions${values.activate ? '?activate=true' : ''}`, yaml, 'application/yaml');
    out(r, values, () => `${r.created ? 'deployed' : 'already deployed'} ${name} version ${r.dag_version_id}${r.active ? ' (active)' : ''}\n` +
      renderTable(['job', 'output', 'dataset', 'dataset_uuid'], r.datasets.map((d) => [d.job, d.output, d.name ?? '', d.dataset_uuid])));
  },
};

export const dagVersions: Command = {
  name: 'dag versions',
  summary: 'List the deployed versions of a DAG.',
  usage: 'trace dag versions NAME [--json]',
  options: { json: { type: 'boolean' } },
  async run({ values, positionals }) {
    const name = positionals[0];
    if (!name) throw new UsageError('expected a DAG NAME');
    const r = await api<{ versions: Array<{ dag_version_id: string; yaml_hash: string; created_at: string; active: boolean; jobs: number }> }>(await resolveTarget(), 'GET', `/v1/dags/${encodeURIComponent(name)}/versions`);
    out(r, values, () => renderTable(['version', 'active', 'jobs', 'created_at', 'yaml_hash'], r.versions.map((v) => [v.dag_version_id, v.active ? 'yes' : '', v.jobs, v.created_at, v.yaml_hash.slice(0, 12)])));
  },
};

export const dagActivate: Command = {
  name: 'dag activate',
  summary: 'Make a deployed version the active one (atomic cutover of the DAG and its datasets).',
  usage: 'trace dag activate NAME VERSION_ID [--json]',
  options: { json: { type: 'boolean' } },
  async run({ values, positionals }) {
    const [name, version] = positionals;
    if (!name || !version) throw new UsageError('expected NAME and VERSION_ID');
    const r = await api(await resolveTarget(), 'PUT', `/v1/dags/${encodeURIComponent(name)}/active`, { dag_version_id: version });
    out(r, values, () => `activated ${name} version ${version}`);
  },
};

export const dagTrigger: Command = {
  name: 'dag trigger',
  summary: 'Manually trigger a job of the active DAG version (a manual source event). A trigger whose tasks would exceed the Dispatcher\'s limit (1,000 by default) asks for --yes.',
  usage: 'trace dag trigger NAME JOB [--cursor N | --range START-END] [--yes] [--json]',
  options: { cursor: { type: 'string' }, range: { type: 'string' }, yes: { type: 'boolean', short: 'y' }, json: { type: 'boolean' } },
  async run({ values, positionals }) {
    const [name, job] = positionals;
    if (!name || !job || positionals.length > 2) throw new UsageError('expected NAME and JOB');
    if (values.cursor !== undefined && values.range !== undefined) throw new UsageError('give --cursor or --range, not both');
    const body: Record<string, unknown> = {};
    if (values.cursor !== undefined) body.cursor = intOption(values.cursor, 'cursor');
    if (values.range !== undefined) {
      const m = /^(\d+)-(\d+)$/.exec(String(values.range));
      if (!m || Number(m[2]) <= Number(m[1])) throw new UsageError('--range must be START-END with END > START ([START, END) blocks)');
      body.start = Number(m[1]);
      body.end = Number(m[2]);
    }
    if (values.yes) body.confirm = true;
    let r: { task_id: string; created: boolean; estimated_tasks?: number };
    try {
      r = await api(await resolveTarget(), 'POST', `/v1/dags/${encodeURIComponent(name)}/jobs/${encodeURIComponent(job)}/trigger`, body);
    } catch (e) {
      if (e instanceof ApiError && e.code === 'TRIGGER_NEEDS_CONFIRMATION' && !values.json) {
        const b = e.body as { estimated_tasks?: number; limit?: number };
        throw new CliError(e.code, `this trigger would create about ${b.estimated_tasks?.toLocaleString('en-US') ?? 'many'} tasks, more than the limit of ${b.limit?.toLocaleString('en-US') ?? '?'}; check the cursor or range, and add --yes to go ahead`);
      }
      throw e;
    }
    out(r, values, () => `${r.created ? 'created' : 'already triggered:'} task ${r.task_id}${r.estimated_tasks !== undefined ? ` (about ${r.estimated_tasks.toLocaleString('en-US')} tasks in all)` : ''}`);
  },
};

export const dagWebhooks: Command = {
  name: 'dag webhooks',
  summary: 'Show the webhook sources of the active DAG version: path, URL (relative to the Gateway) and signing secret (admin). --rotate JOB replaces that source\'s secret; the old one stops working at once.',
  usage: 'trace dag webhooks NAME [--rotate JOB] [--json]',
  options: { rotate: { type: 'string' }, json: { type: 'boolean' } },
  async run({ values, positionals }) {
    const [name] = positionals;
    if (!name || positionals.length > 1) throw new UsageError('expected a DAG NAME');
    type Source = { job: string; webhook_path: string; url: string; secret: string; created_at: string; rotated_at: string | null };
    const t = await resolveTarget();
    const table = (rows: Source[]) => renderTable(['job', 'path', 'url', 'secret', 'rotated_at'], rows.map((w) => [w.job, w.webhook_path, w.url, w.secret, w.rotated_at ?? '']));
    if (values.rotate !== undefined) {
      const job = String(values.rotate);
      const r = await api<Source & { dag_name: string }>(t, 'POST', `/v1/dags/${encodeURIComponent(name)}/webhooks/${encodeURIComponent(job)}/rotate`);
      out(r, values, () => `rotated the secret of ${name}.${job}\n${table([r])}`);
      return;
    }
    const r = await api<{ dag_name: string; webhooks: Source[] }>(t, 'GET', `/v1/dags/${encodeURIComponent(name)}/webhooks`);
    out(r, values, () => (r.webhooks.length === 0 ? `${name} has no webhook sources` : table(r.webhooks)));
  },
};
