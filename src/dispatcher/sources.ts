import type { Db } from '../db/db.js';
import { createTasks } from './tasks/create.js';
import { nextTick } from './schedule.js';

const DUE = `
SELECT job_id, schedule, next_fire_at FROM source_schedules
WHERE enabled AND next_fire_at <= now()
ORDER BY next_fire_at LIMIT $1
FOR UPDATE SKIP LOCKED`;

const ADVANCE = `UPDATE source_schedules SET next_fire_at = $2, last_fired_at = $3 WHERE job_id = $1`;

/**
 * Fires due cron sources: one task per due schedule, keyed by the tick it represents. Ticks
 * missed during downtime fire once (the next tick is computed from now, not from the old tick).
 */
export async function fireDueSchedules(db: Db, batch: number): Promise<number> {
  return db.tx(async (q) => {
    const due = await q.query<{ job_id: string; schedule: string; next_fire_at: Date }>(DUE, [batch]);
    if (due.rows.length === 0) return 0;
    const now = new Date();
    await createTasks(q, due.rows.map((s) => ({
      job_id: s.job_id,
      dedupe_key: `cron:${new Date(s.next_fire_at).toISOString()}`,
      inputs: [],
      trigger: { kind: 'cron', fired_at: new Date(s.next_fire_at).toISOString() },
    })));
    for (const s of due.rows) await q.query(ADVANCE, [s.job_id, nextTick(s.schedule, now), s.next_fire_at]);
    return due.rows.length;
  });
}

// Always-on sources of active DAG versions that have no live task (queued, running or waiting
// for a retry) get a new one; a source that just ended waits `restartSeconds` before restarting,
// so a source that keeps failing terminally does not spin.
const ALWAYS_ON_MISSING = `
SELECT j.id FROM jobs j JOIN dag_current_versions d ON d.dag_version_id = j.dag_version_id
WHERE j.activation = 'source' AND j.source->>'kind' = 'always_on'
  AND NOT EXISTS (
    SELECT 1 FROM tasks t WHERE t.job_id = j.id
      AND (t.status IN ('Queued', 'Running') OR (t.status = 'Failed' AND t.next_retry_at IS NOT NULL)
           OR coalesce(t.completed_at, t.updated_at) > now() - make_interval(secs => $1)))`;

/** Keeps one live task per always-on source (the source monitor). Returns tasks created. */
export async function ensureAlwaysOnSources(db: Db, restartSeconds: number): Promise<number> {
  return db.tx(async (q) => {
    const r = await q.query<{ id: string }>(ALWAYS_ON_MISSING, [restartSeconds]);
    if (r.rows.length === 0) return 0;
    const bucket = Math.floor(Date.now() / 1000 / Math.max(1, restartSeconds));
    const created = await createTasks(q, r.rows.map((j) => ({
      job_id: j.id,
      dedupe_key: `always_on:${bucket}`,
      inputs: [],
      trigger: { kind: 'manual', source: 'always_on' },
    })));
    return created.length;
  });
}
