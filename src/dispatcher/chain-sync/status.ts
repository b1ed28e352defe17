/**
 * Status of chain sync jobs as admins see it (`GET /v1/chain-sync[/{name}]`, `trace chain-sync
 * status`): per stream the cursor, the target (to_block or the head-derived bound), in-flight
 * ranges by task state, committed blocks, the contiguous committed watermark, the commit rate
 * over the last minute, why planning is blocked and the last error (never secrets).
 */
import type { Queryable } from '../../db/db.js';
import { planningTarget } from './planner.js';

export type JobState = 'running' | 'paused' | 'completed' | 'blocked' | 'idle' | 'halted';

export interface StreamStatus {
  dataset_key: string;
  cryo_dataset_name: string;
  rpc_pool: string;
  dataset_uuid: string;
  dataset_name: string;
  current_version: string | null;
  chunk_size: number;
  max_inflight: number;
  active: boolean;
  state: 'planning' | 'caught_up' | 'blocked' | 'paused' | 'done' | 'removed' | 'halted';
  /** The planning cursor (next_block, exclusive high-water mark). */
  next_block: number;
  /** End-exclusive bound planning aims at right now (null while blocked). */
  target: number | null;
  /** Every block below this is committed (the lowest in-flight range start, else the cursor). */
  committed_through: number;
  committed_blocks: number;
  committed_ranges: number;
  rows: number;
  bytes: number;
  inflight: { total: number; queued: number; running: number; retrying: number; gave_up: number };
  /** Committed blocks per second over the last minute. */
  /** follow_head windows re-ingested whole (compaction.ts): committed, in flight, given up. */
  compaction: { windows: number; in_flight: number; abandoned: number };
  rate_blocks_per_second: number;
  blocked_reason: string | null;
  last_error: { message: string; at: string | null } | null;
}

export interface JobStatus {
  job_id: string;
  name: string;
  chain_id: number;
  mode: Record<string, unknown>;
  enabled: boolean;
  paused: boolean;
  state: JobState;
  reason: string | null;
  yaml_hash: string;
  created_at: string;
  updated_at: string;
  completed_at: string | null;
  head: { rpc_pool: string; head_block: number | null; observed_at: string | null; age_seconds: number | null; last_error: string | null }[] | null;
  /** The chain this sync commits (recorded by its first commit; null before it). */
  identity: { chain_id: number; genesis_hash: string; recorded_at: string } | null;
  /** Set while a chain check (identity.ts) stopped the sync; resume re-checks and clears it. */
  halt: { code: string; reason: string; at: string } | null;
  streams: StreamStatus[];
}

interface JobRow {
  job_id: string; org_id: string; name: string; chain_id: number; enabled: boolean; mode: 'fixed_target' | 'follow_head';
  from_block: number; to_block: number | null; tail_lag: number | null; head_poll_interval_seconds: number | null;
  max_head_age_seconds: number | null; yaml_hash: string; created_at: Date; updated_at: Date; completed_at: Date | null;
  last_error: string | null; last_error_at: Date | null;
  identity_chain_id: number | null; genesis_hash: string | null; identity_recorded_at: Date | null;
  halt_code: string | null; halt_reason: string | null; halted_at: Date | null;
}

const JOBS = `
SELECT job_id, org_id, name, chain_id, enabled, mode, from_block, to_block, tail_lag, head_poll_interval_seconds,
       max_head_age_seconds, yaml_hash, created_at, updated_at, completed_at, last_error, last_error_at,
       identity_chain_id, genesis_hash, identity_recorded_at, halt_code, halt_reason, halted_at
FROM chain_sync_jobs WHERE org_id = $1 AND ($2::text IS NULL OR name = $2 OR job_id::text = $2) ORDER BY name`;

const STREAMS = `
SELECT s.job_id, s.dataset_key, s.cryo_dataset_name, s.rpc_pool, s.dataset_uuid, s.dataset_name, s.chunk_size, s.max_inflight,
       s.active, s.blocked_reason, s.last_error, s.last_error_at, c.next_block, d.current_version,
       coalesce(a.committed_ranges, 0) AS committed_ranges, coalesce(a.committed_blocks, 0) AS committed_blocks,
       coalesce(a.rows, 0) AS rows, coalesce(a.bytes, 0) AS bytes,
       coalesce(w.blocks, 0) AS window_blocks, w.first_at AS window_first_at,
       coalesce(f.total, 0) AS inflight, coalesce(f.queued, 0) AS queued, coalesce(f.running, 0) AS running,
       coalesce(f.retrying, 0) AS retrying, coalesce(f.gave_up, 0) AS gave_up, f.lowest AS lowest_inflight,
       coalesce(k.done, 0) AS compacted_windows, coalesce(k.scheduled, 0) AS compacting, coalesce(k.abandoned, 0) AS compactions_abandoned,
       extract(epoch FROM now())::float8 AS now_epoch
FROM chain_sync_streams s
JOIN chain_sync_cursor c ON c.job_id = s.job_id AND c.dataset_key = s.dataset_key
LEFT JOIN datasets d ON d.id = s.dataset_uuid
LEFT JOIN LATERAL (
  -- What the view lists: committed ranges no completed compaction covers, and the compactions
  -- (counted as the ranges they replaced), so the totals stay when gc removes replaced ledger rows.
  SELECT sum(u.n)::int AS committed_ranges, sum(u.blocks)::int8 AS committed_blocks, sum(u.rows)::int8 AS rows, sum(u.bytes)::int8 AS bytes
  FROM (
    SELECT count(*) AS n, sum(r.range_end - r.range_start) AS blocks, sum(r.row_count) AS rows, sum(r.bytes) AS bytes
    FROM chain_sync_scheduled_ranges r
    LEFT JOIN LATERAL (
      SELECT c.range_end FROM chain_sync_compactions c
      WHERE c.job_id = r.job_id AND c.dataset_key = r.dataset_key AND c.status = 'completed' AND c.range_start <= r.range_start
      ORDER BY c.range_start DESC LIMIT 1
    ) c ON true
    WHERE r.job_id = s.job_id AND r.dataset_key = s.dataset_key AND r.status = 'completed' AND (c.range_end IS NULL OR r.range_end > c.range_end)
    UNION ALL
    SELECT sum(k.replaces), sum(k.range_end - k.range_start), sum(k.row_count), sum(k.bytes)
    FROM chain_sync_compactions k WHERE k.job_id = s.job_id AND k.dataset_key = s.dataset_key AND k.status = 'completed'
  ) u
) a ON true
LEFT JOIN LATERAL (
  SELECT sum(r.range_end - r.range_start)::int8 AS blocks, extract(epoch FROM min(r.created_at))::float8 AS first_at
  FROM chain_sync_scheduled_ranges r
  WHERE r.job_id = s.job_id AND r.dataset_key = s.dataset_key AND r.status = 'completed' AND r.completed_at > now() - interval '60 seconds'
) w ON true
LEFT JOIN LATERAL (
  SELECT count(*)::int AS total,
         count(*) FILTER (WHERE t.status = 'Queued')::int AS queued,
         count(*) FILTER (WHERE t.status = 'Running')::int AS running,
         count(*) FILTER (WHERE t.status = 'Failed' AND t.next_retry_at IS NOT NULL)::int AS retrying,
         count(*) FILTER (WHERE t.status = 'Canceled' OR (t.status = 'Failed' AND t.next_retry_at IS NULL))::int AS gave_up,
         min(r.range_start)::int8 AS lowest
  FROM chain_sync_scheduled_ranges r JOIN tasks t ON t.id = r.task_id
  WHERE r.job_id = s.job_id AND r.dataset_key = s.dataset_key AND r.status = 'scheduled'
) f ON true
LEFT JOIN LATERAL (
  SELECT count(*) FILTER (WHERE k.status = 'completed')::int AS done, count(*) FILTER (WHERE k.status = 'scheduled')::int AS scheduled,
         count(*) FILTER (WHERE k.status = 'abandoned')::int AS abandoned
  FROM chain_sync_compactions k WHERE k.job_id = s.job_id AND k.dataset_key = s.dataset_key
) k ON true
WHERE s.job_id = ANY ($1::uuid[])
ORDER BY s.job_id, s.dataset_key`;

// The most recent error of an attempt of a range still in flight (redacted at the source: task
// errors never carry provider URLs or tokens).
const ATTEMPT_ERRORS = `
SELECT DISTINCT ON (r.job_id, r.dataset_key) r.job_id, r.dataset_key, a.error_message, a.finished_at
FROM chain_sync_scheduled_ranges r JOIN task_attempts a ON a.task_id = r.task_id
WHERE r.job_id = ANY ($1::uuid[]) AND r.status = 'scheduled' AND a.error_message IS NOT NULL
ORDER BY r.job_id, r.dataset_key, a.finished_at DESC NULLS LAST`;

const HEADS = `
SELECT rpc_pool, head_block, observed_at, extract(epoch FROM (now() - observed_at))::float8 AS age_seconds, last_error
FROM chain_head_observations WHERE org_id = $1 AND chain_id = $2 AND rpc_pool = ANY ($3::text[]) ORDER BY rpc_pool`;

interface StreamRow {
  job_id: string; dataset_key: string; cryo_dataset_name: string; rpc_pool: string; dataset_uuid: string; dataset_name: string;
  chunk_size: number; max_inflight: number; active: boolean; blocked_reason: string | null; last_error: string | null;
  last_error_at: Date | null; next_block: number; current_version: string | null; committed_ranges: number; committed_blocks: number;
  rows: number; bytes: number; window_blocks: number; window_first_at: number | null; inflight: number; queued: number; running: number;
  retrying: number; gave_up: number; lowest_inflight: number | null; now_epoch: number;
  compacted_windows: number; compacting: number; compactions_abandoned: number;
}

const iso = (d: Date | null | undefined): string | null => (d ? new Date(d).toISOString() : null);

/** Status of the org's chain sync jobs (all, or the one named by name or job_id). */
export async function chainSyncStatus(q: Queryable, orgId: string, nameOrId?: string): Promise<JobStatus[]> {
  const jobs = (await q.query<JobRow>(JOBS, [orgId, nameOrId ?? null])).rows;
  if (jobs.length === 0) return [];
  const ids = jobs.map((j) => j.job_id);
  const streams = (await q.query<StreamRow>(STREAMS, [ids])).rows;
  const errors = new Map((await q.query<{ job_id: string; dataset_key: string; error_message: string; finished_at: Date | null }>(ATTEMPT_ERRORS, [ids])).rows
    .map((r) => [`${r.job_id}/${r.dataset_key}`, r]));
  const out: JobStatus[] = [];
  for (const j of jobs) {
    const mine = streams.filter((s) => s.job_id === j.job_id);
    let head: JobStatus['head'] = null;
    if (j.mode === 'follow_head') {
      const pools = [...new Set(mine.filter((s) => s.active).map((s) => s.rpc_pool))];
      const r = (await q.query<{ rpc_pool: string; head_block: number | null; observed_at: Date | null; age_seconds: number | null; last_error: string | null }>(HEADS, [j.org_id, j.chain_id, pools])).rows;
      const byPool = new Map(r.map((x) => [x.rpc_pool, x]));
      head = pools.map((p) => {
        const h = byPool.get(p);
        return {
          rpc_pool: p,
          head_block: h?.head_block === null || h?.head_block === undefined ? null : Number(h.head_block),
          observed_at: iso(h?.observed_at),
          age_seconds: h?.age_seconds === null || h?.age_seconds === undefined ? null : Math.round(h.age_seconds * 10) / 10,
          last_error: h?.last_error ?? null,
        };
      });
    }
    const ss: StreamStatus[] = [];
    // One planning target per pool for the whole answer: streams on the same pool must not
    // disagree because the head observation turned stale between two of their lookups.
    const targets = new Map<string, ReturnType<typeof planningTarget>>();
    for (const s of mine) {
      let target = targets.get(s.rpc_pool);
      if (!target) {
        target = planningTarget(q, { ...j, rpc_pool: s.rpc_pool });
        targets.set(s.rpc_pool, target);
      }
      const t = await target;
      const next = Number(s.next_block);
      const windowSeconds = s.window_first_at === null ? 0 : Math.min(60, Math.max(1, s.now_epoch - s.window_first_at));
      const attemptErr = errors.get(`${j.job_id}/${s.dataset_key}`);
      const streamErrAt = s.last_error_at ? new Date(s.last_error_at).getTime() : -1;
      const attemptErrAt = attemptErr?.finished_at ? new Date(attemptErr.finished_at).getTime() : attemptErr ? 0 : -1;
      const last_error = attemptErrAt > streamErrAt && attemptErr
        ? { message: attemptErr.error_message, at: iso(attemptErr.finished_at) }
        : s.last_error ? { message: s.last_error, at: iso(s.last_error_at) } : null;
      const inflight = Number(s.inflight);
      const done = j.mode === 'fixed_target' && next >= Number(j.to_block) && inflight === 0;
      const halted = j.halt_code !== null;
      const blocked = s.active && j.enabled && !done && !halted ? (t.reason ?? null) : null;
      const state: StreamStatus['state'] = !s.active ? 'removed' : done ? 'done' : halted ? 'halted' : !j.enabled ? 'paused' : blocked ? 'blocked'
        : t.target !== null && next >= t.target ? 'caught_up' : 'planning';
      ss.push({
        dataset_key: s.dataset_key,
        cryo_dataset_name: s.cryo_dataset_name,
        rpc_pool: s.rpc_pool,
        dataset_uuid: s.dataset_uuid,
        dataset_name: s.dataset_name,
        current_version: s.current_version,
        chunk_size: s.chunk_size,
        max_inflight: s.max_inflight,
        active: s.active,
        state,
        next_block: next,
        target: t.target,
        committed_through: s.lowest_inflight === null ? next : Number(s.lowest_inflight),
        committed_blocks: Number(s.committed_blocks),
        committed_ranges: Number(s.committed_ranges),
        rows: Number(s.rows),
        bytes: Number(s.bytes),
        inflight: { total: inflight, queued: Number(s.queued), running: Number(s.running), retrying: Number(s.retrying), gave_up: Number(s.gave_up) },
        compaction: { windows: Number(s.compacted_windows), in_flight: Number(s.compacting), abandoned: Number(s.compactions_abandoned) },
        rate_blocks_per_second: windowSeconds > 0 ? Math.round((Number(s.window_blocks) / windowSeconds) * 10) / 10 : 0,
        blocked_reason: blocked,
        last_error,
      });
    }
    const active = ss.filter((s) => s.active);
    const completed = j.completed_at !== null;
    const blockedReasons = [...new Set(active.map((s) => s.blocked_reason).filter((r): r is string => r !== null))];
    const gaveUp = active.reduce((n, s) => n + s.inflight.gave_up, 0);
    const halted = j.halt_code !== null;
    const state: JobState = completed ? 'completed' : halted ? 'halted' : !j.enabled ? 'paused' : blockedReasons.length > 0 ? 'blocked'
      : active.every((s) => s.state === 'caught_up' || s.state === 'done') && active.every((s) => s.inflight.total === 0) ? 'idle' : 'running';
    const reason = halted && !completed ? `halted: ${j.halt_code}: ${j.halt_reason}; nothing is planned or committed until a resume whose chain check passes`
      : !j.enabled && !completed ? 'paused by an admin; resume to continue planning'
      : blockedReasons.length > 0 ? blockedReasons.join('; ')
        : gaveUp > 0 ? `${gaveUp} range(s) gave up after their last attempt; fix the cause and resume to re-plan them` : null;
    const mode: Record<string, unknown> = { kind: j.mode, from_block: Number(j.from_block) };
    if (j.mode === 'fixed_target') mode.to_block = Number(j.to_block);
    else Object.assign(mode, { tail_lag: j.tail_lag, head_poll_interval_seconds: j.head_poll_interval_seconds, max_head_age_seconds: j.max_head_age_seconds });
    out.push({
      job_id: j.job_id, name: j.name, chain_id: Number(j.chain_id), mode, enabled: j.enabled, paused: !j.enabled, state, reason,
      yaml_hash: j.yaml_hash, created_at: iso(j.created_at)!, updated_at: iso(j.updated_at)!, completed_at: iso(j.completed_at), head,
      identity: j.genesis_hash !== null && j.identity_chain_id !== null ? { chain_id: Number(j.identity_chain_id), genesis_hash: j.genesis_hash, recorded_at: iso(j.identity_recorded_at)! } : null,
      halt: j.halt_code !== null ? { code: j.halt_code, reason: j.halt_reason ?? '', at: iso(j.halted_at)! } : null,
      streams: ss,
    });
  }
  return out;
}
