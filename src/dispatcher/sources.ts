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
