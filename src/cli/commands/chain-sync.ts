import { readFile } from 'node:fs/promises';
import type { Command } from '../args.js';
import { UsageError, positionalOr } from '../args.js';
import { api, resolveTarget, type ApiTarget } from '../client.js';
import { renderTable } from '../table.js';

/** `trace chain-sync apply|status|pause|resume`: admin commands over the Dispatcher's /v1/chain-sync routes. */

interface StreamView {
  dataset_key: string; cryo_dataset_name: string; rpc_pool: string; dataset_name: string; dataset_uuid: string; active: boolean;
  state: string; next_block: number; target: number | null; committed_through: number; committed_blocks: number; committed_ranges: number;
  rows: number; bytes: number; inflight: { total: number; queued: number; running: number; retrying: number; gave_up: number };
  rate_blocks_per_second: number; blocked_reason: string | null; last_error: { message: string; at: string | null } | null; max_inflight: number;
  compaction?: { windows: number; in_flight: number; abandoned: number };
}

interface JobView {
  job_id: string; name: string; chain_id: number; mode: { kind: string; from_block: number; to_block?: number; tail_lag?: number };
  state: string; reason: string | null; paused: boolean; completed_at: string | null;
  head: Array<{ rpc_pool: string; head_block: number | null; age_seconds: number | null; last_error: string | null }> | null;
  identity?: { chain_id: number; genesis_hash: string; recorded_at: string } | null;
  halt?: { code: string; reason: string; at: string } | null;
  streams: StreamView[];
}

const BAR = 24;

function bar(fraction: number): string {
  const f = Math.max(0, Math.min(1, Number.isFinite(fraction) ? fraction : 0));
  const full = Math.round(f * BAR);
  return `[${'#'.repeat(full)}${'.'.repeat(BAR - full)}] ${(f * 100).toFixed(1).padStart(5)}%`;
}

const num = (n: number) => n.toLocaleString('en-US');

/** The human rendering of status: one block per job, one progress line per stream. */
export function renderStatus(jobs: JobView[]): string {
  if (jobs.length === 0) return 'no chain sync jobs (apply one with: trace chain-sync apply --file FILE)';
  const out: string[] = [];
  for (const j of jobs) {
    const span = j.mode.kind === 'fixed_target' ? `fixed_target [${num(j.mode.from_block)}, ${num(j.mode.to_block ?? 0)})` : `follow_head from ${num(j.mode.from_block)}, tail_lag ${j.mode.tail_lag ?? 0}`;
    out.push(`${j.name}  chain ${j.chain_id}  ${span}  state: ${j.state}${j.reason ? ` (${j.reason})` : ''}`);
    out.push(`  job ${j.job_id}`);
    if (j.identity) out.push(`  chain identity: chain ${j.identity.chain_id}, genesis ${j.identity.genesis_hash} (recorded ${j.identity.recorded_at})`);
    if (j.halt) out.push(`  HALTED ${j.halt.code} since ${j.halt.at}: ${j.halt.reason}; after fixing the RPC pool: trace chain-sync resume --name ${j.name}`);
    for (const h of j.head ?? []) {
      out.push(`  head via ${h.rpc_pool}: ${h.head_block === null ? 'none yet' : num(h.head_block)}${h.age_seconds === null ? '' : ` (${h.age_seconds}s ago)`}${h.last_error ? `  last error: ${h.last_error}` : ''}`);
    }
    const w = Math.max(...j.streams.map((s) => s.dataset_key.length), 6);
    for (const s of j.streams) {
      const from = j.mode.from_block;
      const goal = s.target ?? s.next_block;
      const frac = goal > from ? s.committed_blocks / (goal - from) : s.state === 'done' ? 1 : 0;
      const target = s.target === null ? 'target ?' : `${num(s.committed_blocks + from)}/${num(s.target)}`;
      const fl = s.inflight;
      const flight = `in flight ${fl.total}/${s.max_inflight}${fl.running ? ` (${fl.running} running)` : ''}${fl.retrying ? ` ${fl.retrying} retrying` : ''}${fl.gave_up ? ` ${fl.gave_up} gave up` : ''}`;
      out.push(`  ${s.dataset_key.padEnd(w)}  ${bar(frac)}  ${target}  next ${num(s.next_block)}  ${flight}  ${s.rate_blocks_per_second} blk/s  ${s.state}`);
      const k = s.compaction;
      if (k && (k.windows || k.in_flight || k.abandoned)) {
        out.push(`  ${' '.repeat(w)}  compacted windows ${k.windows}${k.in_flight ? `, ${k.in_flight} compacting` : ''}${k.abandoned ? `, ${k.abandoned} abandoned` : ''}`);
      }
      if (s.blocked_reason) out.push(`  ${' '.repeat(w)}  blocked: ${s.blocked_reason}`);
      if (s.last_error) out.push(`  ${' '.repeat(w)}  last error${s.last_error.at ? ` (${s.last_error.at})` : ''}: ${s.last_error.message.replace(/\s+/g, ' ').slice(0, 200)}`);
    }
  }
  return out.join('\n');
}

async function fetchStatus(t: ApiTarget, job: string | undefined): Promise<JobView[]> {
  const q = job ? `?job=${encodeURIComponent(job)}` : '';
  return (await api<{ jobs: JobView[] }>(t, 'GET', `/v1/chain-sync${q}`)).jobs;
}

export const chainSyncApply: Command = {
  name: 'chain-sync apply',
  summary: 'Apply a chain_sync YAML (idempotent by name: the same YAML changes nothing; a changed one updates the job).',
  usage: 'trace chain-sync apply FILE [--json]   (or --file FILE)',
  options: { file: { type: 'string', short: 'f' }, json: { type: 'boolean' } },
  async run({ values, positionals }) {
    const file = positionalOr(values, positionals, 'file', 'FILE');
    if (!file) throw new UsageError('expected a chain_sync YAML FILE');
    const yaml = await readFile(file, 'utf8').catch(() => { throw new UsageError(`cannot read ${file}`); });
    const r = await api<{ job_id: string; name: string; created: boolean; changed: boolean; streams: Array<{ dataset_key: string; dataset_name: string; dataset_uuid: string; active: boolean }> }>(
      await resolveTarget(), 'POST', '/v1/chain-sync', yaml, 'application/yaml');
    if (values.json) { process.stdout.write(`${JSON.stringify(r, null, 2)}\n`); return; }
    const what = r.created ? 'created' : r.changed ? 'updated' : 'unchanged';
    process.stdout.write(`${what} chain sync ${r.name} (job ${r.job_id})\n${renderTable(['stream', 'dataset', 'dataset_uuid', 'active'],
      r.streams.map((s) => [s.dataset_key, s.dataset_name, s.dataset_uuid, s.active ? 'yes' : 'no']))}\n`);
  },
};

/** Resolves on SIGINT/SIGTERM (or the given signal). */
function untilStopped(signal?: AbortSignal): { promise: Promise<void>; stopped: () => boolean } {
  let done = false;
  const promise = new Promise<void>((resolve) => {
    const stop = () => {
      done = true;
      process.off('SIGINT', stop);
      process.off('SIGTERM', stop);
      resolve();
    };
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
    signal?.addEventListener('abort', stop, { once: true });
  });
  return { promise, stopped: () => done };
}

/** Runs status once, or every second with `watch` until Ctrl-C (or `signal`). Exported for tests. */
export async function runStatus(values: Record<string, unknown>, opts: { signal?: AbortSignal; intervalMs?: number; write?: (s: string) => void } = {}): Promise<void> {
  const write = opts.write ?? ((s: string) => { process.stdout.write(s); });
  const job = (values.name ?? values.job) as string | undefined;
  const t = await resolveTarget();
  if (!values.watch) {
    const jobs = await fetchStatus(t, job);
    if (job && jobs.length === 0) throw new UsageError(`no chain sync named ${job}`);
    write(values.json ? `${JSON.stringify({ jobs }, null, 2)}\n` : `${renderStatus(jobs)}\n`);
    return;
  }
  const tty = process.stdout.isTTY === true && !opts.write;
  const stop = untilStopped(opts.signal);
  while (!stop.stopped()) {
    let text: string;
    try {
      const jobs = await fetchStatus(t, job);
      text = values.json ? `${JSON.stringify({ at: new Date().toISOString(), jobs })}\n` : `${renderStatus(jobs)}\n`;
    } catch (e) {
      text = `status unavailable: ${e instanceof Error ? e.message : String(e)}\n`;
    }
    if (tty && !values.json) write(`\x1b[H\x1b[2J${new Date().toISOString()}  (Ctrl-C to stop)\n${text}`);
    else write(values.json ? text : `${text}\n`);
    await Promise.race([stop.promise, new Promise((r) => setTimeout(r, opts.intervalMs ?? 1000))]);
  }
}

export const chainSyncStatus: Command = {
  name: 'chain-sync status',
  summary: 'Show chain sync progress per stream: cursor, target or head, ranges in flight, rate, last error. --watch redraws every second until Ctrl-C.',
  usage: 'trace chain-sync status [NAME|ID] [--watch] [--json]   (or --name NAME|ID)',
  options: { name: { type: 'string' }, watch: { type: 'boolean', short: 'w' }, json: { type: 'boolean' } },
  aliases: { job: 'name' },
  async run({ values, positionals }) {
    const name = positionalOr(values, positionals, 'name', 'chain sync NAME');
    await runStatus({ ...values, ...(name !== undefined ? { name } : {}) });
  },
};

function pauseResume(verb: 'pause' | 'resume'): Command {
  return {
    name: `chain-sync ${verb}`,
    summary: verb === 'pause'
      ? 'Pause a chain sync: no new ranges are planned (ranges in flight still finish and commit).'
      : 'Resume a paused chain sync; ranges whose task gave up are planned again.',
    usage: `trace chain-sync ${verb} NAME [--json]   (or --name NAME)`,
    options: { name: { type: 'string' }, json: { type: 'boolean' } },
    aliases: { job: 'name' },
    async run({ values, positionals }) {
      const name = positionalOr(values, positionals, 'name', 'chain sync NAME');
      if (!name) throw new UsageError('expected a chain sync NAME');
      const r = await api<{ job_id: string; name: string; redriven?: number }>(await resolveTarget(), 'POST', `/v1/chain-sync/${encodeURIComponent(name)}/${verb}`);
      if (values.json) { process.stdout.write(`${JSON.stringify(r, null, 2)}\n`); return; }
      process.stdout.write(`${verb === 'pause' ? 'paused' : 'resumed'} chain sync ${r.name}${r.redriven ? ` (${r.redriven} range(s) re-planned)` : ''}\n`);
    },
  };
}

export const chainSyncPause = pauseResume('pause');
export const chainSyncResume = pauseResume('resume');

/** Every chain-sync command, for the COMMANDS list of src/cli/main.ts. */
export const chainSyncCommands: Command[] = [chainSyncApply, chainSyncStatus, chainSyncPause, chainSyncResume];
