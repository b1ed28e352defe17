/**
 * The chain_sync planner: per stream, top up in-flight ranges to `max_inflight`. Each new
 * range is, in ONE transaction that holds the stream and cursor rows: a task row on the
 * stream's hidden job (createTasks, which also writes the outbox wake-up), a ledger row
 * `(job_id, dataset_key, range_start)` (unique), and the cursor advanced to the range end.
 * A restart or a second Dispatcher resumes from the cursor; the row locks make concurrent
 * planners take turns; the ledger's primary key refuses a range planned twice.
 *
 * Targets (end exclusive): `fixed_target` plans up to `to_block`; `follow_head` up to
 * `max(from_block, observed_head + 1 - tail_lag)` and plans nothing (with a reason in
 * `blocked_reason`) while the observation of `(org, chain, rpc_pool)` is missing or older than
 * `max_head_age_seconds`. Paused, halted (identity.ts) and completed jobs and removed streams
 * plan nothing.
 *
 * Ranges never cross the chunk grid (`from_block + k * chunk_size`), so a follow_head window of
 * small ranges can later be compacted whole (compaction.ts, in the same transaction).
 */
import type { Db, Queryable } from '../../db/db.js';
import { createTasks } from '../tasks/create.js';
import { rangeDedupeKey } from './ids.js';
import { rangeTrigger } from './apply.js';
import { planCompaction } from './compaction.js';

interface StreamPlanRow {
  job_id: string;
  dataset_key: string;
  task_job_id: string;
  chunk_size: number;
  max_inflight: number;
  rpc_pool: string;
  active: boolean;
  blocked_reason: string | null;
  next_block: number;
  org_id: string;
  name: string;
  chain_id: number;
  enabled: boolean;
  mode: 'fixed_target' | 'follow_head';
  from_block: number;
  to_block: number | null;
  tail_lag: number | null;
  max_head_age_seconds: number | null;
  completed_at: Date | null;
  compacted_through: number | null;
  halt_code: string | null;
}

const LOCK_STREAM = `
SELECT s.job_id, s.dataset_key, s.task_job_id, s.chunk_size, s.max_inflight, s.rpc_pool, s.active, s.blocked_reason,
       c.next_block, j.org_id, j.name, j.chain_id, j.enabled, j.mode, j.from_block, j.to_block, j.tail_lag,
       j.max_head_age_seconds, j.completed_at, c.compacted_through, j.halt_code
FROM chain_sync_streams s
JOIN chain_sync_cursor c ON c.job_id = s.job_id AND c.dataset_key = s.dataset_key
JOIN chain_sync_jobs j ON j.job_id = s.job_id
WHERE s.job_id = $1 AND s.dataset_key = $2
FOR UPDATE OF s, c`;

const HEAD = `
SELECT head_block, extract(epoch FROM (now() - observed_at))::float8 AS age_seconds
FROM chain_head_observations WHERE org_id = $1 AND chain_id = $2 AND rpc_pool = $3`;

const INSERT_RANGES = `
INSERT INTO chain_sync_scheduled_ranges (job_id, dataset_key, range_start, range_end, task_id)
SELECT $1, $2, x.s, x.e, t.id
FROM unnest($3::bigint[], $4::bigint[], $5::text[]) AS x(s, e, k)
JOIN tasks t ON t.job_id = $6 AND t.dedupe_key = x.k
ON CONFLICT DO NOTHING
RETURNING range_start`;

export interface PlanResult {
  planned: number;
  blocked: string | null;
  /** Compactions planned (follow_head; see compaction.ts). */
  compactions: number;
}

export interface PlanOptions {
  /** At most this many new ranges. Default: up to max_inflight. */
  limit?: number;
  /** Also look for a follow_head window to compact. Default true. */
  compact?: boolean;
}

/**
 * The end of the range starting at `cursor`: one chunk, cut at the next grid boundary
 * (`from_block + k * chunk_size`) and at the target. Ranges never straddle the grid, so a
 * follow_head window of small ranges can be compacted whole.
 */
export function rangeEnd(cursor: number, fromBlock: number, chunk: number, target: number): number {
  const next = cursor >= fromBlock ? cursor + chunk - ((cursor - fromBlock) % chunk) : cursor + chunk;
  return Math.min(next, target);
}

/** The planning target of a stream, or a reason why there is none right now. */
export async function planningTarget(q: Queryable, s: Pick<StreamPlanRow, 'mode' | 'to_block' | 'from_block' | 'tail_lag' | 'max_head_age_seconds' | 'org_id' | 'chain_id' | 'rpc_pool'>): Promise<{ target: number | null; reason: string | null; head: number | null; age: number | null }> {
  if (s.mode === 'fixed_target') return { target: Number(s.to_block), reason: null, head: null, age: null };
  const h = (await q.query<{ head_block: number | null; age_seconds: number | null }>(HEAD, [s.org_id, s.chain_id, s.rpc_pool])).rows[0];
  if (!h || h.head_block === null || h.age_seconds === null) {
    return { target: null, reason: `waiting for a head observation of chain ${s.chain_id} through rpc_pool ${s.rpc_pool}`, head: null, age: null };
  }
  const head = Number(h.head_block);
  const age = Math.max(0, h.age_seconds);
  if (age > Number(s.max_head_age_seconds)) {
    return { target: null, reason: `head observation of rpc_pool ${s.rpc_pool} is ${Math.round(age)} s old (max_head_age_seconds ${s.max_head_age_seconds}); planning paused until a fresh one`, head, age };
  }
  return { target: Math.max(Number(s.from_block), head + 1 - Number(s.tail_lag)), reason: null, head, age };
}

/** Plans one stream in one transaction; returns how many ranges (and compactions) it planned. */
export async function planStream(db: Db, jobId: string, datasetKey: string, opts: PlanOptions = {}): Promise<PlanResult> {
  return db.tx(async (q) => {
    const s = (await q.query<StreamPlanRow>(LOCK_STREAM, [jobId, datasetKey])).rows[0];
    if (!s || !s.enabled || !s.active || s.completed_at !== null || s.halt_code !== null) return { planned: 0, blocked: null, compactions: 0 };
    const r = await planRanges(q, s, opts.limit ?? Infinity);
    const compactions = s.mode === 'follow_head' && opts.compact !== false
      ? await planCompaction(q, { ...s, next_block: r.cursor })
      : 0;
    return { planned: r.planned, blocked: r.blocked, compactions };
  });
}

/** Tops up the stream's ranges (the caller holds the stream and cursor rows). */
async function planRanges(q: Queryable, s: StreamPlanRow, limit: number): Promise<{ planned: number; blocked: string | null; cursor: number }> {
  const { job_id: jobId, dataset_key: datasetKey } = s;
  let cursor = Number(s.next_block);
  const { target, reason } = await planningTarget(q, s);
  if (reason !== s.blocked_reason) {
    await q.query(`UPDATE chain_sync_streams SET blocked_reason = $3, updated_at = now() WHERE job_id = $1 AND dataset_key = $2`, [jobId, datasetKey, reason]);
  }
  if (target === null) return { planned: 0, blocked: reason, cursor };
  if (cursor >= target) return { planned: 0, blocked: null, cursor };
  const inflight = Number((await q.query<{ n: number }>(
    `SELECT count(*)::int AS n FROM chain_sync_scheduled_ranges WHERE job_id = $1 AND dataset_key = $2 AND status = 'scheduled'`, [jobId, datasetKey])).rows[0]!.n);
  const free = Math.min(limit, s.max_inflight - inflight);
  if (free <= 0) return { planned: 0, blocked: null, cursor };
  const starts: number[] = [];
  const ends: number[] = [];
  const keys: string[] = [];
  while (starts.length < free && cursor < target) {
    const end = rangeEnd(cursor, Number(s.from_block), s.chunk_size, target);
    starts.push(cursor);
    ends.push(end);
    keys.push(rangeDedupeKey(datasetKey, cursor, end));
    cursor = end;
  }
  await createTasks(q, starts.map((st, i) => ({ job_id: s.task_job_id, dedupe_key: keys[i]!, inputs: [], trigger: rangeTrigger(s.name, st, ends[i]!) })));
  const inserted = await q.query<{ range_start: number }>(INSERT_RANGES, [jobId, datasetKey, starts, ends, keys, s.task_job_id]);
  if (inserted.rows.length !== starts.length) {
    // A range at or past the cursor already exists: the state is not what this planner
    // believes. Roll back rather than schedule around it.
    throw new Error(`chain sync ${s.name}/${datasetKey}: ${starts.length - inserted.rows.length} range(s) were already scheduled beyond the cursor`);
  }
  await q.query(`UPDATE chain_sync_cursor SET next_block = $3, updated_at = now() WHERE job_id = $1 AND dataset_key = $2`, [jobId, datasetKey, cursor]);
  return { planned: starts.length, blocked: null, cursor };
}

// fixed_target: complete iff every active stream's cursor reached to_block and none of its ranges is in flight.
const MARK_COMPLETED = `
UPDATE chain_sync_jobs j SET completed_at = now(), updated_at = now()
WHERE j.mode = 'fixed_target' AND j.completed_at IS NULL AND ($1::uuid IS NULL OR j.job_id = $1)
  AND EXISTS (SELECT 1 FROM chain_sync_streams s WHERE s.job_id = j.job_id AND s.active)
  AND NOT EXISTS (
    SELECT 1 FROM chain_sync_streams s JOIN chain_sync_cursor c ON c.job_id = s.job_id AND c.dataset_key = s.dataset_key
    WHERE s.job_id = j.job_id AND s.active AND c.next_block < j.to_block)
  AND NOT EXISTS (
    SELECT 1 FROM chain_sync_scheduled_ranges r JOIN chain_sync_streams s ON s.job_id = r.job_id AND s.dataset_key = r.dataset_key
    WHERE r.job_id = j.job_id AND s.active AND r.status = 'scheduled')
RETURNING j.job_id, j.name`;

export async function markCompleted(q: Queryable, jobId: string | null = null): Promise<Array<{ job_id: string; name: string }>> {
  return (await q.query<{ job_id: string; name: string }>(MARK_COMPLETED, [jobId])).rows;
}

const PLANNABLE = `
SELECT s.job_id, s.dataset_key FROM chain_sync_streams s JOIN chain_sync_jobs j ON j.job_id = s.job_id
JOIN chain_sync_cursor c ON c.job_id = s.job_id AND c.dataset_key = s.dataset_key
WHERE j.enabled AND j.completed_at IS NULL AND j.halt_code IS NULL AND s.active
ORDER BY c.next_block, j.name, s.dataset_key`;

/**
 * One planner pass over every plannable stream; returns ranges planned. Streams are topped up
 * in rounds of one range each, the stream furthest behind first, so the queue (served in
 * order) interleaves the streams of a job instead of holding every range of the first stream
 * before any of the next: streams progress together and a sync does not end with one slow
 * stream running alone.
 */
export async function planAll(db: Db, onError?: (jobId: string, datasetKey: string, e: unknown) => Promise<void> | void): Promise<number> {
  let streams = (await db.query<{ job_id: string; dataset_key: string }>(PLANNABLE)).rows;
  let planned = 0;
  let round = 0;
  while (streams.length > 0) {
    const more: typeof streams = [];
    for (const s of streams) {
      try {
        const r = await planStream(db, s.job_id, s.dataset_key, { limit: 1, compact: round === 0 });
        planned += r.planned + r.compactions;
        if (r.planned > 0) more.push(s);
      } catch (e) {
        await onError?.(s.job_id, s.dataset_key, e);
      }
    }
    streams = more;
    round++;
  }
  await markCompleted(db);
  return planned;
}
