/**
 * Chain sync's part of garbage collection (../gc.ts). Per stream, the objects under the
 * dataset prefix `cryo/{chain_id}/{dataset_uuid}/` are grouped by attempt prefix
 * `{task_id}/{attempt}/`, plus the view manifests `_views/{version}.json`:
 *
 * - superseded: the attempt prefix of a committed ledger range that a committed compaction
 *   covers, once the compaction is older than `gcSupersededRetentionSeconds`; and a view manifest
 *   that is not the dataset's current one, older than that (by the object's time).
 * - staging: an attempt prefix no commit lists (a failed, released or abandoned attempt), whose
 *   newest object is older than `gcStagingRetentionSeconds`, and whose task will not run again
 *   nor still wait for its commit (a Completed task whose range is still `scheduled`).
 *
 * - superseded too: the attempt prefixes of a Completed task that owns no ledger range nor
 *   compaction any more: garbage collection removed its ledger row (a range a compaction
 *   replaced, past the retention) before its files went (a pinned input kept them).
 *
 * Committed prefixes that no compaction replaced are never candidates. Every candidate is
 * checked last against what current dataset versions and unfinished tasks reference
 * (`referencedObjects`), and a whole prefix of a task that may still run is never touched.
 */
import type { Queryable } from '../../db/db.js';
import type { ObjectStore } from '../../operators/cryo_ingest/store.js';
import { datasetPrefix } from '../../operators/cryo_ingest/payload.js';
import { FINISHED_TASK, referencedObjects, type GcCollector, type GcObject } from '../gc.js';

const STREAMS = `
SELECT s.job_id, s.dataset_key, s.dataset_uuid, j.chain_id FROM chain_sync_streams s JOIN chain_sync_jobs j ON j.job_id = s.job_id
ORDER BY s.job_id, s.dataset_key`;

// Committed file lists of a stream: ranges (with whether a compaction older than the retention
// covers them) and compactions (never superseded).
const COMMITTED = `
SELECT r.files, (c.completed_at IS NOT NULL) AS replaced, coalesce(c.completed_at < now() - make_interval(secs => $3), false) AS expired
FROM chain_sync_scheduled_ranges r
LEFT JOIN LATERAL (
  SELECT c.range_end, c.completed_at FROM chain_sync_compactions c
  WHERE c.job_id = r.job_id AND c.dataset_key = r.dataset_key AND c.status = 'completed' AND c.range_start <= r.range_start AND c.range_end >= r.range_end
  ORDER BY c.range_start DESC LIMIT 1
) c ON true
WHERE r.job_id = $1 AND r.dataset_key = $2 AND r.status = 'completed'
UNION ALL
SELECT files, false, false FROM chain_sync_compactions WHERE job_id = $1 AND dataset_key = $2 AND status = 'completed'`;

// Tasks whose attempt prefixes must stay although nothing committed them (yet): they may still
// run, or they completed and their commit is pending.
const LIVE_TASKS = `
SELECT t.id FROM tasks t
WHERE t.id = ANY($1::uuid[]) AND (NOT ${FINISHED_TASK}
  OR (t.status = 'Completed' AND (EXISTS (SELECT 1 FROM chain_sync_scheduled_ranges r WHERE r.task_id = t.id AND r.status = 'scheduled')
                                 OR EXISTS (SELECT 1 FROM chain_sync_compactions c WHERE c.task_id = t.id AND c.status = 'scheduled'))))`;

// Completed tasks whose ledger range garbage collection removed (it owned no compaction).
const RANGE_REMOVED = `
SELECT t.id FROM tasks t
WHERE t.id = ANY($1::uuid[]) AND t.status = 'Completed'
  AND NOT EXISTS (SELECT 1 FROM chain_sync_scheduled_ranges r WHERE r.task_id = t.id)
  AND NOT EXISTS (SELECT 1 FROM chain_sync_compactions c WHERE c.task_id = t.id)`;

const CURRENT_VIEW = `SELECT v.storage_ref ->> 'manifest' AS manifest FROM datasets d JOIN dataset_versions v ON v.id = d.current_version WHERE d.id = $1`;

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

interface Group {
  task: string;
  objects: Array<{ key: string; size: number; lastModified?: Date | undefined }>;
}

/** `{task_id}/{attempt}/` of a committed file key relative to the dataset prefix. */
const groupOf = (rel: string): string | undefined => {
  const m = /^([0-9a-f-]{36})\/(\d+)\//.exec(rel);
  return m && UUID.test(m[1]!) ? `${m[1]}/${m[2]}/` : undefined;
};

async function committedGroups(q: Queryable, jobId: string, datasetKey: string, retentionSeconds: number) {
  const keep = new Set<string>();
  const superseded = new Set<string>();
  const rows = (await q.query<{ files: string[]; replaced: boolean; expired: boolean }>(COMMITTED, [jobId, datasetKey, retentionSeconds])).rows;
  for (const r of rows) {
    for (const f of r.files ?? []) {
      const g = groupOf(f);
      if (!g) continue;
      if (r.replaced && r.expired) superseded.add(g);
      else keep.add(g);
    }
  }
  for (const g of keep) superseded.delete(g);
  return { keep, superseded };
}

export function chainSyncGcCollector(getStore: () => ObjectStore): GcCollector {
  return {
    name: 'chain_sync',
    async collect({ db, settings, dryRun, limit, log }) {
      const store = getStore();
      const referenced = await referencedObjects(db, store);
      const now = Date.now();
      const stagingBefore = now - settings.gcStagingRetentionSeconds * 1000;
      const viewsBefore = now - settings.gcSupersededRetentionSeconds * 1000;
      const out: GcObject[] = [];
      const take = async (o: { key: string; size: number }, reason: GcObject['reason']): Promise<boolean> => {
        if (out.length >= limit) return false;
        if (referenced.has(o.key)) return true;
        if (!dryRun) await store.delete(o.key);
        out.push({ key: o.key, bytes: o.size, reason });
        return true;
      };
      const streams = (await db.query<{ job_id: string; dataset_key: string; dataset_uuid: string; chain_id: number }>(STREAMS)).rows;
      for (const s of streams) {
        if (out.length >= limit) break;
        const base = datasetPrefix(Number(s.chain_id), s.dataset_uuid);
        const objects = await store.list(base);
        if (objects.length === 0) continue;
        const { keep, superseded } = await committedGroups(db, s.job_id, s.dataset_key, settings.gcSupersededRetentionSeconds);
        const current = (await db.query<{ manifest: string | null }>(CURRENT_VIEW, [s.dataset_uuid])).rows[0]?.manifest ?? null;
        const groups = new Map<string, Group>();
        const views: typeof objects = [];
        let currentObject: (typeof objects)[number] | undefined;
        for (const o of objects) {
          const rel = o.key.slice(base.length);
          if (rel.startsWith('_views/')) {
            if (rel !== current) views.push(o);
            else currentObject = o;
            continue;
          }
          const g = groupOf(rel);
          if (!g) continue;
          const entry = groups.get(g) ?? { task: g.slice(0, 36), objects: [] };
          entry.objects.push(o);
          groups.set(g, entry);
        }
        const uncommitted = [...groups.keys()].filter((g) => !keep.has(g) && !superseded.has(g));
        const uncommittedTasks = [...new Set(uncommitted.map((g) => groups.get(g)!.task))];
        const live = new Set((await db.query<{ id: string }>(LIVE_TASKS, [uncommittedTasks])).rows.map((r) => r.id));
        const removed = new Set((await db.query<{ id: string }>(RANGE_REMOVED, [uncommittedTasks])).rows.map((r) => r.id));
        for (const [g, entry] of groups) {
          let reason: GcObject['reason'];
          if (superseded.has(g) || (!keep.has(g) && removed.has(entry.task))) reason = 'superseded';
          else if (keep.has(g) || live.has(entry.task)) continue;
          else {
            const newest = Math.max(...entry.objects.map((o) => o.lastModified?.getTime() ?? now));
            if (newest > stagingBefore) continue;
            reason = 'staging';
          }
          for (const o of entry.objects) if (!(await take(o, reason))) break;
        }
        // A view is superseded when the next one was written: it goes once that is older than
        // the retention (a query pinned it at most then).
        const times = views.map((v) => v.lastModified?.getTime() ?? now);
        if (currentObject) times.push(currentObject.lastModified?.getTime() ?? now);
        times.sort((a, b) => a - b);
        for (const v of views) {
          const t = v.lastModified?.getTime() ?? now;
          const next = times.find((x) => x > t);
          if (next === undefined || next > viewsBefore) continue;
          if (!(await take(v, 'superseded'))) break;
        }
      }
      if (out.length > 0 && !dryRun) log.info({ objects: out.length }, 'gc removed chain sync objects');
      return out;
    },
  };
}
