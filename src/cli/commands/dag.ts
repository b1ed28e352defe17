import { readFile } from 'node:fs/promises';
import type { Command } from '../args.js';
import { UsageError, intOption } from '../args.js';
import { api, resolveTarget } from '../client.js';
import { renderTable } from '../table.js';

function out(json: unknown, values: Record<string, unknown>, human: () => string): void {
  process.stdout.write(values.json ? `${JSON.stringify(json, null, 2)}\n` : `${human()}\n`);
}

export const dagDeploy: Command = {
  name: 'dag deploy',
  summary: 'Deploy a DAG YAML file as a new immutable version (idempotent: the same YAML is the same version).',
  usage: 'trace dag deploy FILE [--activate] [--json]',
  options: { activate: { type: 'boolean' }, json: { type: 'boolean' } },
  async run({ values, positionals }) {
    const file = positionals[0];
    if (!file || positionals.length > 1) throw new UsageError('expected exactly one FILE');
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
  summary: 'Manually trigger a job of the active DAG version (a manual source event).',
  usage: 'trace dag trigger NAME JOB [--cursor N | --range START-END] [--json]',
  options: { cursor: { type: 'string' }, range: { type: 'string' }, json: { type: 'boolean' } },
  async run({ values, positionals }) {
    const [name, job] = positionals;
    if (!name || !job) throw new UsageError('expected NAME and JOB');
    if (values.cursor !== undefined && values.range !== undefined) throw new UsageError('give --cursor or --range, not both');
    const body: Record<string, unknown> = {};
    if (values.cursor !== undefined) body.cursor = intOption(values.cursor, 'cursor');
    if (values.range !== undefined) {
      const m = /^(\d+)-(\d+)$/.exec(String(values.range));
      if (!m || Number(m[2]) <= Number(m[1])) throw new UsageError('--range must be START-END with END > START ([START, END) blocks)');
      body.start = Number(m[1]);
      body.end = Number(m[2]);
    }
    const r = await api<{ task_id: string }>(await resolveTarget(), 'POST', `/v1/dags/${encodeURIComponent(name)}/jobs/${encodeURIComponent(job)}/trigger`, body);
    out(r, values, () => `created task ${r.task_id}`);
  },
};
