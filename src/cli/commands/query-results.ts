/**
 * `trace query-results show ID` (status, then pages of rows) and `trace query-results export ID`
 * (the whole result as CSV or Parquet) for batch queries (`trace query --batch`).
 */
import { existsSync } from 'node:fs';
import { rename, rm } from 'node:fs/promises';
import { resolve } from 'node:path';
import type { Command } from '../args.js';
import { CliError, UsageError, intOption } from '../args.js';
import { api, resolveTarget } from '../client.js';
import { renderTable } from '../table.js';
import { download } from './export.js';

interface ResultView {
  query_id: string;
  status: string;
  row_count: number | null;
  bytes: number | null;
  expires_at: string;
  error?: { code: string; message: string };
  columns?: Array<{ name: string; type: string }>;
  rows?: unknown[][];
  next_cursor?: string | null;
}

const json = (v: unknown) => process.stdout.write(`${JSON.stringify(v, null, 2)}\n`);
const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

function queryId(positionals: string[]): string {
  const id = positionals[0];
  if (!id || positionals.length > 1) throw new UsageError('expected exactly one query ID (as printed by trace query --batch)');
  if (!UUID_RE.test(id)) throw new UsageError(`${id} is not a query ID (a UUID)`);
  return id;
}

export const queryResultsShow: Command = {
  name: 'query-results show',
  summary: 'Show a batch query result: its status, and once it succeeded one page of rows (--limit, default 1000; --cursor from the previous page; --all for every page).',
  usage: 'trace query-results show ID [--limit N] [--cursor C | --all] [--json]',
  options: { limit: { type: 'string' }, cursor: { type: 'string' }, all: { type: 'boolean' }, json: { type: 'boolean' } },
  async run({ values, positionals }) {
    const id = queryId(positionals);
    const limit = intOption(values.limit, 'limit', 1);
    if (values.all && values.cursor !== undefined) throw new UsageError('--all and --cursor exclude each other');
    const target = await resolveTarget('query');
    let cursor = values.cursor === undefined ? undefined : String(values.cursor);
    let first: ResultView | undefined;
    const rows: unknown[][] = [];
    for (;;) {
      const qs = new URLSearchParams();
      if (limit !== undefined) qs.set('limit', String(limit));
      if (cursor !== undefined) qs.set('cursor', cursor);
      const q = qs.toString();
      const r = await api<ResultView>(target, 'GET', `/v1/query-results/${id}${q ? `?${q}` : ''}`);
      first ??= r;
      rows.push(...(r.rows ?? []));
      cursor = r.next_cursor ?? undefined;
      if (!values.all || !cursor) {
        first.next_cursor = r.next_cursor ?? null;
        break;
      }
    }
    if (values.json) return void json(values.all ? { ...first, rows, next_cursor: null } : first);
    const head = `query ${first.query_id}: ${first.status}${first.row_count !== null ? `, ${first.row_count} rows` : ''}, expires ${first.expires_at}`;
    process.stdout.write(`${head}\n`);
    if (first.error) process.stdout.write(`error ${first.error.code}: ${first.error.message}\n`);
    if (first.status !== 'succeeded' || !first.columns) return;
    process.stdout.write(`${renderTable(first.columns.map((c) => c.name), rows)}\n`);
    if (first.next_cursor) process.stdout.write(`more rows: trace query-results show ${id} --cursor ${first.next_cursor}${limit !== undefined ? ` --limit ${limit}` : ''}\n`);
  },
};

export const queryResultsExport: Command = {
  name: 'query-results export',
  summary: 'Download a whole batch query result as one CSV or Parquet file.',
  usage: 'trace query-results export ID --to FILE [--format csv|parquet] [--force] [--json]',
  options: { to: { type: 'string' }, format: { type: 'string' }, force: { type: 'boolean' }, json: { type: 'boolean' } },
  async run({ values, positionals }) {
    const id = queryId(positionals);
    const format = values.format === undefined ? 'parquet' : String(values.format);
    if (format !== 'csv' && format !== 'parquet') throw new UsageError('--format must be csv or parquet');
    if (values.to === undefined) throw new UsageError('--to FILE is required');
    const dest = resolve(String(values.to));
    if (existsSync(dest) && values.force !== true) throw new CliError('FILE_EXISTS', `${dest} exists; choose another file or add --force to replace it`);
    const part = `${dest}.part`;
    let bytes: number;
    try {
      bytes = await download(await resolveTarget('query'), `/v1/query-results/${id}/export?format=${format}`, part, () => {});
      await rename(part, dest);
    } catch (e) {
      await rm(part, { force: true });
      throw e;
    }
    if (values.json) return void json({ query_id: id, format, file: dest, bytes });
    process.stdout.write(`wrote ${dest} (${format}, ${bytes} bytes)\n`);
  },
};

export const queryResultsCommands: Command[] = [queryResultsShow, queryResultsExport];
