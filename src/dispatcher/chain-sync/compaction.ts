/**
 * Compaction of small follow_head ranges. Following the head plans one small range per head
 * move, so a stream that runs for days would list ever more tiny Parquet files (and hit the
 * view's object cap). The planner keeps follow_head ranges inside a chunk grid
 * (`from_block + k * chunk_size`), and once every range of a grid window is committed and the
 * window holds more than one of them, it plans ONE compaction: a `cryo_ingest` task for the
 * whole window on the stream's hidden job (the blocks are past `tail_lag` by then). When that
 * task's publication is committed, the stream's view lists the window's one file set instead of
 * the small ranges' files, in the same transaction: a query sees either, never both.
 *
 * Windows are examined in order from `chain_sync_cursor.compacted_through`, which only moves
 * past a window once it is compacted, planned for compaction, or needs none; at most one
 * compaction per stream is in flight. A compaction whose task gives up is `abandoned` and the
 * small ranges keep serving the window. The ledger (`chain_sync_scheduled_ranges`) is never
 * rewritten: it stays the record of what was planned and committed.
 */
import type { Queryable } from '../../db/db.js';
import { createTasks } from '../tasks/create.js';
import { rangeTrigger } from './apply.js';

/** Windows examined per stream and pass (bounds the work of one planner transaction). */
const MAX_WINDOWS_PER_PASS = 64;

export const compactionDedupeKey = (datasetKey: string, start: number, end: number): string => `chain_sync_compact:${datasetKey}:${start}-${end}`;

// Compactions whose task gave up: the small ranges keep serving their window.
const ABANDON_DEAD = `
UPDATE chain_sync_compactions c SET status = 'abandoned', updated_at = now()
FROM tasks t
WHERE t.id = c.task_id AND c.job_id = $1 AND c.dataset_key = $2 AND c.status = 'scheduled'
  AND (t.status = 'Canceled' OR (t.status = 'Failed' AND t.next_retry_at IS NULL))`;

// The ledger ranges starting inside one window: how many, how many committed, and their extent.
const WINDOW = `
SELECT count(*)::int AS n, count(*) FILTER (WHERE status = 'completed')::int AS done,
       min(range_start)::int8 AS lo, max(range_end)::int8 AS hi, sum(range_end - range_start)::int8 AS blocks
FROM chain_sync_scheduled_ranges
WHERE job_id = $1 AND dataset_key = $2 AND range_start >= $3 AND range_start < $4`;

const INSERT_COMPACTION = `
INSERT INTO chain_sync_compactions (job_id, dataset_key, range_start, range_end, task_id, replaces)
SELECT $1, $2, $3, $4, t.id, $7 FROM tasks t WHERE t.job_id = $5 AND t.dedupe_key = $6
ON CONFLICT DO NOTHING`;

export interface CompactionStream {
  job_id: string;
  dataset_key: string;
  task_job_id: string;
  name: string;
  from_block: number;
  chunk_size: number;
  next_block: number;
  compacted_through: number | null;
}

/**
 * Examines the windows of one follow_head stream and plans at most one compaction. The caller
 * holds the stream and cursor rows (planStream's transaction). Returns 1 when it planned one.
 */
export async function planCompaction(q: Queryable, s: CompactionStream): Promise<number> {
  await q.query(ABANDON_DEAD, [s.job_id, s.dataset_key]);
  const inflight = (await q.query<{ n: number }>(
    `SELECT count(*)::int AS n FROM chain_sync_compactions WHERE job_id = $1 AND dataset_key = $2 AND status = 'scheduled'`, [s.job_id, s.dataset_key])).rows[0]!.n;
  if (inflight > 0) return 0;
  const from = Number(s.from_block);
  const chunk = Number(s.chunk_size);
  const start = s.compacted_through === null ? from : Number(s.compacted_through);
  // Only whole grid windows; a cursor that is off the grid (chunk_size changed) skips ahead.
  let ws = start >= from && (start - from) % chunk === 0 ? start : from + Math.ceil((start - from) / chunk) * chunk;
  let planned = 0;
  for (let i = 0; i < MAX_WINDOWS_PER_PASS && planned === 0; i++) {
    const we = ws + chunk;
    if (we > Number(s.next_block)) break; // not fully planned yet
    const w = (await q.query<{ n: number; done: number; lo: number | null; hi: number | null; blocks: number | null }>(WINDOW, [s.job_id, s.dataset_key, ws, we])).rows[0]!;
    if (w.done < w.n) break; // a range of the window is still in flight: look again later
    const tiles = w.n > 0 && Number(w.lo) === ws && Number(w.hi) === we && Number(w.blocks) === chunk;
    if (tiles && w.n > 1) {
      const key = compactionDedupeKey(s.dataset_key, ws, we);
      await createTasks(q, [{ job_id: s.task_job_id, dedupe_key: key, inputs: [], trigger: { ...rangeTrigger(s.name, ws, we), compaction: true } }]);
      await q.query(INSERT_COMPACTION, [s.job_id, s.dataset_key, ws, we, s.task_job_id, key, w.n]);
      planned = 1;
    }
    // a window of one range needs nothing; one that does not tile the grid (ranges planned
    // under another chunk_size) is left as it is
    ws = we;
  }
  if (ws !== start) {
    await q.query(`UPDATE chain_sync_cursor SET compacted_through = $3 WHERE job_id = $1 AND dataset_key = $2 AND (compacted_through IS NULL OR compacted_through < $3)`,
      [s.job_id, s.dataset_key, ws]);
  }
  return planned;
}

/** The range a chain sync task owns: a ledger range or a compaction window. */
export interface OwnedRange {
  kind: 'range' | 'compaction';
  job_id: string;
  dataset_key: string;
  range_start: number;
  range_end: number;
}

export async function rangeOfTask(q: Queryable, taskId: string): Promise<OwnedRange | undefined> {
  const r = (await q.query<{ kind: 'range' | 'compaction'; job_id: string; dataset_key: string; range_start: number; range_end: number }>(
    `SELECT 'range' AS kind, job_id, dataset_key, range_start::int8 AS range_start, range_end::int8 AS range_end FROM chain_sync_scheduled_ranges WHERE task_id = $1
     UNION ALL
     SELECT 'compaction', job_id, dataset_key, range_start::int8, range_end::int8 FROM chain_sync_compactions WHERE task_id = $1`, [taskId])).rows[0];
  return r ? { ...r, range_start: Number(r.range_start), range_end: Number(r.range_end) } : undefined;
}
