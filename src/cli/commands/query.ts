import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import type { Command } from '../args.js';
import { UsageError, intOption, listenOption } from '../args.js';
import { DEFAULT_PORTS } from '../../core/config.js';
import { api, resolveTarget } from '../client.js';
import { renderTable } from '../table.js';
import { serveUntilSignal } from '../serve.js';

interface QueryResponse {
  columns: Array<{ name: string; type: string }>;
  rows: unknown[][];
  truncated: boolean;
}

interface DatasetView {
  name: string;
  dataset_uuid: string;
  kind: string;
  producer: { dag_name: string; job_name: string; output_index: number } | null;
  read_roles: string[];
  current_version: string | null;
  storage_ref: Record<string, unknown> | null;
  updated_at: string;
}

interface Registration {
  name: string;
  dataset_uuid: string;
  dataset_version: string;
  created: boolean;
  changed: boolean;
  storage_ref: Record<string, unknown>;
  files: number | null;
  bytes: number | null;
}

const json = (v: unknown) => process.stdout.write(`${JSON.stringify(v, null, 2)}\n`);
const plural = (n: number, word: string) => `${n} ${word}${n === 1 ? '' : 's'}`;

async function readStdin(): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const c of process.stdin) chunks.push(c as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

/**
 * `--dataset NAME` (the relation `dataset`) or one or more `--dataset ALIAS=NAME` (each dataset
 * under its own relation name) to the request's `dataset` or `datasets` field.
 */
export function datasetsFromOptions(raw: unknown): { dataset: string } | { datasets: Record<string, string> } {
  const given = (Array.isArray(raw) ? raw : raw === undefined ? [] : [raw]).map(String);
  if (given.length === 0) throw new UsageError('--dataset NAME (or --dataset ALIAS=NAME, repeatable) is required');
  const named = given.filter((g) => g.includes('='));
  if (named.length === 0) {
    if (given.length > 1) throw new UsageError('several datasets need a relation name each: --dataset ALIAS=NAME');
    return { dataset: given[0]! };
  }
  if (named.length !== given.length) throw new UsageError('either one --dataset NAME or --dataset ALIAS=NAME for every dataset, not both');
  const datasets: Record<string, string> = {};
  for (const g of named) {
    const at = g.indexOf('=');
    const alias = g.slice(0, at);
    const name = g.slice(at + 1);
    if (!alias || !name) throw new UsageError(`--dataset ${g}: expected ALIAS=NAME`);
    if (Object.keys(datasets).some((a) => a.toLowerCase() === alias.toLowerCase())) throw new UsageError(`--dataset ${g}: the relation name ${alias} is given twice`);
    datasets[alias] = name;
  }
  return { datasets };
}

/** `--version V` (pins `dataset`) or `--version ALIAS=V`, repeatable (pins relations of `datasets`). */
export function versionsFromOptions(raw: unknown): { version?: string; versions?: Record<string, string> } {
  const given = (Array.isArray(raw) ? raw : raw === undefined ? [] : [raw]).map(String);
  if (given.length === 0) return {};
  const named = given.filter((g) => g.includes('='));
  if (named.length === 0) {
    if (given.length > 1) throw new UsageError('several versions need a relation name each: --version ALIAS=VERSION');
    return { version: given[0]! };
  }
  if (named.length !== given.length) throw new UsageError('either one --version VERSION or --version ALIAS=VERSION for each pinned relation, not both');
  const versions: Record<string, string> = {};
  for (const g of named) {
    const at = g.indexOf('=');
    if (at === 0 || at === g.length - 1) throw new UsageError(`--version ${g}: expected ALIAS=VERSION`);
    versions[g.slice(0, at)] = g.slice(at + 1);
  }
  return { versions };
}

export const queryCmd: Command = {
  name: 'query',
  summary: 'Run read-only SQL through the Query Service: --dataset NAME queries the relation `dataset`; --dataset ALIAS=NAME, repeated, binds each dataset to its own relation name, for joins (SQL "-" reads stdin).',
  usage: 'trace query --dataset NAME "SQL" | trace query --dataset ALIAS=NAME [--dataset ALIAS=NAME ...] "SQL"   [--version VERSION | --version ALIAS=VERSION ...] [--limit N] [--batch] [--json]   (--version reads that dataset version instead of the current one; --batch: run as a batch query, print its id; see trace query-results)',
  options: { dataset: { type: 'string', short: 'd', multiple: true }, version: { type: 'string', multiple: true }, limit: { type: 'string' }, batch: { type: 'boolean' }, json: { type: 'boolean' } },
  async run({ values, positionals }) {
    const target = { ...datasetsFromOptions(values.dataset), ...versionsFromOptions(values.version) };
    if (positionals.length !== 1) throw new UsageError('expected exactly one SQL argument (quote it)');
    const sql = positionals[0] === '-' ? await readStdin() : positionals[0]!;
    if (sql.trim() === '') throw new UsageError('the SQL is empty');
    const limit = intOption(values.limit, 'limit', 1);
    const body: Record<string, unknown> = { ...target, sql };
    if (limit !== undefined) body.limit = limit;
    if (values.batch) {
      if (limit !== undefined) throw new UsageError('--limit applies to interactive queries; a batch query keeps its whole result (page it with trace query-results show)');
      const b = await api<{ query_id: string; status: string; output_location: string }>(await resolveTarget('query'), 'POST', '/v1/query', { ...body, mode: 'batch' });
      if (values.json) return void json(b);
      process.stdout.write(`${b.query_id}
`);
      process.stderr.write(`batch query ${b.status}; follow it with: trace query-results show ${b.query_id}
`);
      return;
    }
    const r = await api<QueryResponse>(await resolveTarget('query'), 'POST', '/v1/query', body);
    if (values.json) return void json(r);
    const table = renderTable(r.columns.map((c) => c.name), r.rows);
    process.stdout.write(`${table}\n${plural(r.rows.length, 'row')}${r.truncated ? ' (truncated)' : ''}\n`);
  },
};

function storageText(ref: Record<string, unknown> | null): string {
  if (!ref) return '';
  const glob = typeof ref.glob === 'string' ? ref.glob : '';
  if (ref.scheme === 'file') return `file://${String(ref.prefix)}${glob}`;
  if (ref.scheme === 's3') return `s3://${String(ref.bucket)}/${String(ref.prefix)}${glob}`;
  return JSON.stringify(ref);
}

export const datasetsList: Command = {
  name: 'datasets',
  summary: 'List the datasets you may read (published job outputs and registered external Parquet). See also: trace datasets register, trace datasets export, trace datasets show.',
  usage: 'trace datasets [--json]   |   trace datasets register NAME --from URL [--glob G] [--json]   |   trace datasets export NAME --to DIR [--force] [--json]',
  options: { json: { type: 'boolean' } },
  async run({ values, positionals }) {
    if (positionals.length > 0) throw new UsageError(`unknown subcommand "${positionals[0]}" (expected: register, export or show)`);
    const r = await api<{ datasets: DatasetView[] }>(await resolveTarget(), 'GET', '/v1/datasets');
    if (values.json) return void json(r);
    process.stdout.write(`${renderTable(
      ['name', 'kind', 'producer', 'read_roles', 'current_version', 'storage'],
      r.datasets.map((d) => [
        d.name,
        d.kind,
        d.producer ? `${d.producer.dag_name}.${d.producer.job_name}[${d.producer.output_index}]` : '',
        d.read_roles.join(',') || '(all members)',
        d.current_version ?? '',
        storageText(d.storage_ref),
      ]),
    )}\n`);
  },
};

/** `file:///…/`, `s3://…` as given; a local path (absolute or relative to the cwd) becomes a file URL. */
export function sourceUrl(from: string): string {
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(from)) return from;
  const href = pathToFileURL(resolve(from)).href;
  return href.endsWith('/') ? href : `${href}/`;
}

export const datasetsRegister: Command = {
  name: 'datasets register',
  summary: 'Register existing Parquet (a local folder or an S3 prefix) as an external dataset, or record a new version of it (admin). Re-running with unchanged files is a no-op.',
  usage: 'trace datasets register NAME --from file:///abs/dir/|s3://bucket/prefix/|PATH [--glob "*.parquet"] [--json]',
  options: { from: { type: 'string' }, glob: { type: 'string' }, json: { type: 'boolean' } },
  async run({ values, positionals }) {
    const name = positionals[0];
    if (!name || positionals.length > 1) throw new UsageError('expected exactly one dataset NAME');
    if (!values.from) throw new UsageError('--from URL is required');
    const body: Record<string, unknown> = { from: sourceUrl(String(values.from)) };
    if (values.glob !== undefined) body.glob = String(values.glob);
    const r = await api<Registration>(await resolveTarget(), 'POST', `/v1/datasets/${encodeURIComponent(name)}/register`, body);
    if (values.json) return void json(r);
    const what = r.files === null ? storageText(r.storage_ref) : `${plural(r.files, 'file')}, ${r.bytes} bytes`;
    const verb = r.created ? 'registered' : r.changed ? 'new version of' : 'unchanged:';
    process.stdout.write(`${verb} ${r.name} version ${r.dataset_version} (${what})\n`);
  },
};

export const queryServiceCmd: Command = {
  name: 'query-service',
  summary: 'Run the Query Service (needs TRACE_STATE_DATABASE_URL, TRACE_DATA_DATABASE_URL, TRACE_DISPATCHER_URL, TRACE_TASK_CAPABILITY_SECRET or TRACE_WORKER_TOKEN for the task JWKS, and a user-token setting; TRACE_QUERY_EXECUTORS and TRACE_QUERY_EXECUTOR_MEMORY_MB size its executor processes).',
  usage: 'trace query-service [--listen HOST:PORT | --host H --port P]   (default TRACE_QUERY_LISTEN, else 127.0.0.1:8082; port 0 = a free port)',
  options: { listen: { type: 'string' }, host: { type: 'string' }, port: { type: 'string' } },
  async run({ values }) {
    const at = (await listenOption('query', values, { host: '127.0.0.1', port: DEFAULT_PORTS.query }))!;
    const { runQueryServiceProcess } = await import('../../query/main.js');
    const handle = await runQueryServiceProcess(process.env, at);
    process.stderr.write(`query service listening on ${handle.url}\n`);
    return serveUntilSignal('query-service', () => handle.stop());
  },
};

