/** `trace datasets export` (a dataset version as a plain Cryo folder) and `trace gc` (one garbage collection pass). */
import { createWriteStream } from 'node:fs';
import { mkdir, readdir, rename, rm, stat } from 'node:fs/promises';
import http from 'node:http';
import https from 'node:https';
import { join, resolve } from 'node:path';
import type { Command } from '../args.js';
import { CliError, UsageError } from '../args.js';
import { ApiError, api, resolveTarget, type ApiTarget } from '../client.js';

interface ExportPlan {
  dataset: string;
  dataset_uuid: string;
  version: string;
  files: Array<{ name: string; bytes: number; range_start: number | null; range_end: number | null }>;
  file_count: number;
  total_bytes: number;
}

interface GcReport {
  dry_run: boolean;
  rows: {
    outbox: number; task_attempts: number; task_events: number;
    chain_sync_ranges?: number; chain_sync_compactions?: number; partition_versions?: number; dataset_versions?: number;
  };
  objects: { superseded: number; staging: number; consumed?: number; bytes: number };
  object_keys: Array<{ key: string; bytes: number; reason: string }>;
  truncated: boolean;
}

const json = (v: unknown) => process.stdout.write(`${JSON.stringify(v, null, 2)}\n`);
const plural = (n: number, word: string) => `${n} ${word}${n === 1 ? '' : 's'}`;

/** Streams one GET into `dest`; resolves with the bytes written. A non-2xx answer is an ApiError with the server's code. */
export function download(target: ApiTarget, path: string, dest: string, onBytes: (n: number) => void): Promise<number> {
  const url = new URL(`${target.baseUrl}${path}`);
  const mod = url.protocol === 'https:' ? https : http;
  return new Promise((done, fail) => {
    const req = mod.get(url, { headers: target.token ? { authorization: `Bearer ${target.token}` } : {} }, (res) => {
      const status = res.statusCode ?? 0;
      if (status < 200 || status >= 300) {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          let b: { error?: string; code?: string } = {};
          try { b = JSON.parse(Buffer.concat(chunks).toString('utf8')) as typeof b; } catch { /* not JSON */ }
          const err = new ApiError(status, b.code ?? `HTTP_${status}`, b.error ?? `HTTP ${status}`, b);
          const wait = Number(res.headers['retry-after']);
          fail(status === 429 ? Object.assign(err, { retryAfterSeconds: Number.isFinite(wait) && wait > 0 ? wait : 1 }) : err);
        });
        res.on('error', fail);
        return;
      }
      const out = createWriteStream(dest, { mode: 0o644 });
      let n = 0;
      res.on('data', (c: Buffer) => { n += c.length; onBytes(c.length); });
      res.on('error', (e) => { out.destroy(); fail(e); });
      out.on('error', fail);
      out.on('finish', () => done(n));
      res.pipe(out);
    });
    req.setTimeout(120_000, () => req.destroy(new Error('no data within 120 s')));
    req.on('error', (e: NodeJS.ErrnoException) => fail(new CliError('UNREACHABLE', `cannot reach ${target.baseUrl}: ${e.code ?? e.message}`)));
  });
}

/** A Gateway rate-limits per user: a 429 waits its Retry-After (at most 60 s) and tries again, up to 20 times. */
async function downloadRateLimited(once: () => Promise<number>): Promise<number> {
  for (let i = 0; ; i++) {
    try {
      return await once();
    } catch (e) {
      const wait = (e as { retryAfterSeconds?: number }).retryAfterSeconds;
      if (wait === undefined || i >= 20) throw e;
      await new Promise((r) => setTimeout(r, Math.min(wait, 60) * 1000));
    }
  }
}

/** Files and folders in `dir` (none when it does not exist). */
async function entries(dir: string): Promise<string[]> {
  try {
    return await readdir(dir);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw e;
  }
}

const mib = (n: number) => `${(n / 1_048_576).toFixed(1)} MiB`;

export const datasetsExport: Command = {
  name: 'datasets export',
  summary: 'Download the current version of a dataset as a plain folder of Cryo-named Parquet files (one file set per block range, nothing superseded), checking every size.',
  usage: 'trace datasets export NAME --to DIR [--force] [--json]',
  options: { to: { type: 'string' }, force: { type: 'boolean' }, json: { type: 'boolean' } },
  async run({ values, positionals }) {
    const name = positionals[0];
    if (!name || positionals.length > 1) throw new UsageError('expected exactly one dataset NAME');
    if (!values.to) throw new UsageError('--to DIR is required');
    // A URL would otherwise become a relative folder named after it (./s3:/bucket/...).
    const scheme = /^([A-Za-z][A-Za-z0-9+.-]*):\/\//.exec(String(values.to));
    if (scheme) {
      throw new CliError('EXPORT_DESTINATION_UNSUPPORTED',
        `--to must be a local folder; ${scheme[1]!.toLowerCase()}:// destinations are not supported (export to a folder, then copy it, e.g. with aws s3 sync)`);
    }
    const dir = resolve(String(values.to));
    const force = values.force === true;
    const present = await entries(dir);
    if (present.length > 0 && !force) {
      throw new CliError('DIR_NOT_EMPTY', `${dir} is not empty (${plural(present.length, 'entry')}); choose an empty folder or add --force to write into it`);
    }
    const target = await resolveTarget();
    const base = `/v1/datasets/${encodeURIComponent(name)}/export`;
    const plan = await api<ExportPlan>(target, 'GET', base);
    await mkdir(dir, { recursive: true });
    const quiet = values.json === true || !process.stderr.isTTY;
    let got = 0;
    const progress = (i: number) => {
      if (!quiet) process.stderr.write(`\r${i}/${plan.file_count} files, ${mib(got)} of ${mib(plan.total_bytes)}`);
    };
    for (const [i, f] of plan.files.entries()) {
      const dest = join(dir, f.name);
      const partial = `${dest}.partial`;
      try {
        const path = `${base}/files/${encodeURIComponent(f.name)}?version=${plan.version}`;
        const n = await downloadRateLimited(() => download(target, path, partial, (k) => { got += k; progress(i); }));
        const size = (await stat(partial)).size;
        if (n !== f.bytes || size !== f.bytes) {
          throw new CliError('EXPORT_SIZE_MISMATCH', `${f.name}: received ${size} bytes, the plan says ${f.bytes}`);
        }
        await rename(partial, dest);
      } catch (e) {
        await rm(partial, { force: true });
        throw e;
      }
      progress(i + 1);
    }
    if (!quiet) process.stderr.write('\n');
    const result = { dataset: plan.dataset, version: plan.version, dir, files: plan.file_count, bytes: plan.total_bytes };
    if (values.json) return void json({ ...result, file_names: plan.files.map((f) => f.name) });
    process.stdout.write(`exported ${plan.dataset} version ${plan.version}: ${plural(plan.file_count, 'file')}, ${plan.total_bytes} bytes into ${dir}\n`);
  },
};

export const gcCmd: Command = {
  name: 'gc',
  summary: 'Run one garbage collection pass now (admin): superseded chain sync files, orphaned staging, consumed buffer batches, delivered outbox rows, finished task history, replaced chain sync ledger rows and old dataset versions past their retention. --dry-run lists what would go and changes nothing.',
  usage: 'trace gc [--dry-run] [--json]',
  options: { 'dry-run': { type: 'boolean' }, json: { type: 'boolean' } },
  async run({ values, positionals }) {
    if (positionals.length > 0) throw new UsageError(`unexpected argument "${positionals[0]}"`);
    const dryRun = values['dry-run'] === true;
    const r = await api<GcReport>(await resolveTarget(), 'POST', '/v1/gc', { dry_run: dryRun });
    if (values.json) return void json(r);
    const verb = dryRun ? 'would remove' : 'removed';
    let text = `${verb} ${plural(r.objects.superseded, 'superseded object')}, ${plural(r.objects.staging, 'staging object')}, ` +
      `${plural(r.objects.consumed ?? 0, 'consumed buffer batch object')} (${r.objects.bytes} bytes), ` +
      `${plural(r.rows.outbox, 'outbox row')}, ${plural(r.rows.task_attempts, 'task attempt')}, ${plural(r.rows.task_events, 'task event')}, ` +
      `${plural(r.rows.chain_sync_ranges ?? 0, 'replaced chain sync range')}, ${plural(r.rows.chain_sync_compactions ?? 0, 'abandoned compaction')}, ` +
      `${plural(r.rows.dataset_versions ?? 0, 'dataset version')} with ${plural(r.rows.partition_versions ?? 0, 'partition row')}\n`;
    if (dryRun) for (const o of r.object_keys) text += `  ${o.reason.padEnd(10)}  ${o.key}  ${o.bytes}\n`;
    if (r.truncated) text += 'the batch limit was reached; run it again for the rest\n';
    process.stdout.write(text);
  },
};
