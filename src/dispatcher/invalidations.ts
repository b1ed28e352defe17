/**
 * Data invalidations (data_versioning.md): a request to recompute one scope of a dataset, a
 * partition or a row range, and its cascade through the DAG. One owner for the
 * `data_invalidations` table.
 *
 * Lifecycle:
 * 1. **Created** (`POST /v1/datasets/{name}/invalidations`, admin; `trace invalidate`): one row on
 *    the dataset's current version, `source_event.kind = 'manual'`, `processed_at` NULL.
 * 2. **Processed** by the Dispatcher's invalidation loop (`processInvalidations`): in one
 *    transaction per batch, each unprocessed row becomes re-runs and gets `processed_at` and
 *    `processed_by` (the jobs whose tasks re-run). A manual invalidation re-runs the producing
 *    job's tasks whose scope overlaps it; a `rewrite` invalidation (below), or a manual one on a
 *    dataset no task of an active DAG produced in that scope, re-runs the consumers: tasks that
 *    read the dataset in that scope (`task_inputs`).
 * 3. **Cascade**: when a re-run's completion is accepted (fenced, in the completion transaction:
 *    `invalidationCompletionHook`), one `rewrite` invalidation per output dataset of its job and
 *    rewritten scope is recorded; step 2 turns those into re-runs of the next jobs down, and so on
 *    through the DAG.
 *
 * Exactly once: a re-run is a new task of the same job, keyed `inv:{root}:{invalidation}` (the
 * root being the task first re-run, never a re-run), with the root's inputs and its trigger plus
 * `{kind: 'invalidation', reruns, invalidation_ids, scopes}`. Processing locks the root task
 * row; an invalidation that finds a re-run of the same root still queued and never claimed joins
 * it (its id and scope are added) instead of creating another, so duplicate or overlapping
 * invalidations that arrive before the re-run starts run it once. A crash mid-processing rolls
 * the batch back (nothing was created, `processed_at` is still NULL) and the next pass does it
 * again; `processed_at` set means done, and the dedupe key makes a repeat create nothing. A
 * repeated completion is a no-op, so the cascade is recorded once per accepted re-run.
 *
 * Scope matching: keys are partition keys as tasks recorded them (`task_inputs`, a task's
 * trigger, the events it emitted, `partition_versions`). A range key `START-END` ([start, end))
 * overlaps a row range or another range key; any other key matches only itself. An input
 * recorded without a key read the whole dataset and is always affected. `row_range` needs a
 * range-partitioned dataset (a `START-END` key is known on its current version) and is stored
 * as `row_filter: {block_number: {gte, lt}}`.
 */
import type { Db, Queryable } from '../db/db.js';
import { TraceError, notFound } from '../core/errors.js';
import type { JobRow } from './jobs.js';
import type { Principal } from './identity.js';
import { canRead } from './registry.js';
import { createTasks } from './tasks/create.js';
import type { Completion } from './tasks/complete.js';
import type { TaskRow } from './tasks/types.js';

export type InvalidationRequest =
  | { scope: 'partition'; partition_key: string; reason?: string | undefined }
  | { scope: 'row_range'; start: number; end: number; reason?: string | undefined };

/** One scope of a re-run, as the task's trigger carries it. */
export interface RerunScope {
  scope: 'partition' | 'row_range';
  partition_key?: string;
  row_filter?: { block_number: { gte: number; lt: number } };
}

interface InvalidationRow {
  id: string;
  dataset_uuid: string;
  dataset_version: string;
  scope: 'partition' | 'row_range';
  partition_key: string | null;
  row_filter: { block_number?: { gte?: number; lt?: number } } | null;
  reason: string;
  source_event: { kind?: string } | null;
}

const RANGE_KEY = /^([0-9]{1,18})-([0-9]{1,18})$/;

/** The scope as SQL parameters: an exact key to match, and a [lo, hi) span (null when not a range). */
function matchParams(s: { scope: string; partition_key?: string | null; row_filter?: InvalidationRow['row_filter'] }): [string | null, string | null, string | null] {
  if (s.scope === 'partition') {
    const m = RANGE_KEY.exec(s.partition_key ?? '');
    return [s.partition_key ?? null, m ? m[1]! : null, m ? m[2]! : null];
  }
  const f = s.row_filter?.block_number;
  return [null, f?.gte !== undefined ? String(f.gte) : null, f?.lt !== undefined ? String(f.lt) : null];
}

/** `k` matches the scope ($exact, $lo, $hi): the same key, or an overlapping `START-END` range. */
const matches = (k: string, exact: string, lo: string, hi: string) => `(${k} = ${exact} OR CASE WHEN ${k} ~ '^[0-9]{1,18}-[0-9]{1,18}$' AND ${lo}::numeric IS NOT NULL
  THEN split_part(${k}, '-', 1)::numeric < ${hi}::numeric AND ${lo}::numeric < split_part(${k}, '-', 2)::numeric ELSE false END)`;

// Every key known for the dataset's version: partitions, keys tasks read it by, keys of events emitted for it.
const KNOWN_KEYS = `
SELECT partition_key AS k FROM partition_versions WHERE dataset_uuid = $1 AND dataset_version = $2
UNION SELECT input_partition_key FROM task_inputs WHERE input_dataset_uuid = $1 AND input_dataset_version = $2 AND input_partition_key <> ''
UNION SELECT e.event->>'partition_key' FROM task_events e
  WHERE e.event->>'dataset_uuid' = $1::uuid::text AND e.event->>'dataset_version' = $2::uuid::text AND e.event ? 'partition_key'`;

const HAS_RANGE_KEY = `SELECT EXISTS (SELECT 1 FROM (${KNOWN_KEYS}) x WHERE x.k ~ '^[0-9]{1,18}-[0-9]{1,18}$') AS ranged`;
const HAS_KEY = `SELECT EXISTS (SELECT 1 FROM (${KNOWN_KEYS}) x WHERE x.k = $3) AS known`;

const DATASET = `SELECT id, read_roles, current_version FROM datasets WHERE org_id = $1 AND name = $2`;

const INSERT = `
INSERT INTO data_invalidations (dataset_uuid, dataset_version, scope, partition_key, row_filter, reason, source_event)
VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7::jsonb)
RETURNING id`;

/**
 * Records a manual invalidation on the dataset's current version (admin route). Refusals change
 * nothing: 404 DATASET_NOT_FOUND, 422 DATASET_HAS_NO_VERSION, DATASET_NOT_RANGE_PARTITIONED,
 * PARTITION_NOT_FOUND.
 */
export async function createInvalidation(q: Queryable, p: Principal, name: string, req: InvalidationRequest): Promise<InvalidationView> {
  const d = (await q.query<{ id: string; read_roles: string[]; current_version: string | null }>(DATASET, [p.org_id, name])).rows[0];
  if (!d || !canRead(p, d.read_roles)) throw notFound(`no dataset named ${name}`, 'DATASET_NOT_FOUND');
  if (!d.current_version) throw new TraceError(422, 'DATASET_HAS_NO_VERSION', `${name} has no current version to invalidate`);
  let rowFilter: RerunScope['row_filter'] | null = null;
  if (req.scope === 'row_range') {
    const r = await q.query<{ ranged: boolean }>(HAS_RANGE_KEY, [d.id, d.current_version]);
    if (!r.rows[0]?.ranged) {
      throw new TraceError(422, 'DATASET_NOT_RANGE_PARTITIONED', `${name} is not range-partitioned (no START-END partition is known on its current version); invalidate a partition instead`);
    }
    rowFilter = { block_number: { gte: req.start, lt: req.end } };
  } else {
    const r = await q.query<{ known: boolean }>(HAS_KEY, [d.id, d.current_version, req.partition_key]);
    if (!r.rows[0]?.known) throw new TraceError(422, 'PARTITION_NOT_FOUND', `${name} has no partition ${req.partition_key} on its current version`);
  }
  const id = (await q.query<{ id: string }>(INSERT, [
    d.id, d.current_version, req.scope, req.scope === 'partition' ? req.partition_key : null,
    rowFilter ? JSON.stringify(rowFilter) : null, req.reason ?? 'manual', JSON.stringify({ kind: 'manual', by: p.sub }),
  ])).rows[0]!.id;
  return (await invalidationHistory(q, p.org_id, d.id, 1, id))[0]!;
}

// ---- processing ----------------------------------------------------------------------------

const TAKE = `
SELECT id, dataset_uuid, dataset_version, scope, partition_key, row_filter, reason, source_event
FROM data_invalidations WHERE processed_at IS NULL
ORDER BY created_at, id LIMIT $1 FOR UPDATE SKIP LOCKED`;

const ORG_OF = `SELECT org_id FROM datasets WHERE id = $1`;

// Jobs of active DAG versions.
const ACTIVE_JOB = `SELECT 1 FROM dag_current_versions c WHERE c.dag_version_id = j.dag_version_id`;

// Tasks of the jobs producing the dataset whose scope matches: their trigger's partition, the
// events they emitted for the version, the partitions whose location is their write prefix.
const PRODUCER_ROOTS = `
WITH pj AS (
  SELECT j.id FROM jobs j
  WHERE j.org_id = $1 AND j.outputs @> jsonb_build_array(jsonb_build_object('dataset_uuid', $2::uuid::text)) AND EXISTS (${ACTIVE_JOB})
), scoped AS (
  SELECT t.id AS task_id, t.trigger->>'partition_key' AS k FROM tasks t
  WHERE t.job_id IN (SELECT id FROM pj) AND t.trigger ? 'partition_key'
  UNION
  SELECT e.task_id, e.event->>'partition_key' FROM task_events e JOIN tasks t ON t.id = e.task_id
  WHERE t.job_id IN (SELECT id FROM pj) AND e.event->>'dataset_uuid' = $2::uuid::text AND e.event->>'dataset_version' = $3::uuid::text AND e.event ? 'partition_key'
  UNION
  SELECT m[1]::uuid, p.partition_key
  FROM partition_versions p CROSS JOIN LATERAL regexp_match(coalesce(p.location, ''), 'scratch/([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})/') AS m
  WHERE p.dataset_uuid = $2 AND p.dataset_version = $3 AND m IS NOT NULL
)
SELECT coalesce((t.trigger->>'reruns')::uuid, t.id) AS root, t.job_id, array_agg(DISTINCT s.k) AS keys
FROM scoped s JOIN tasks t ON t.id = s.task_id AND t.job_id IN (SELECT id FROM pj)
WHERE ${matches('s.k', '$4::text', '$5', '$6')}
GROUP BY 1, 2 ORDER BY 1`;

// Tasks of active jobs that read the dataset's version in the scope (or read all of it).
const CONSUMER_ROOTS = `
SELECT coalesce((t.trigger->>'reruns')::uuid, t.id) AS root, t.job_id, array_agg(DISTINCT i.input_partition_key) AS keys
FROM task_inputs i JOIN tasks t ON t.id = i.task_id JOIN jobs j ON j.id = t.job_id
WHERE t.org_id = $1 AND i.input_dataset_uuid = $2 AND (i.input_dataset_version IS NULL OR i.input_dataset_version = $3)
  AND EXISTS (${ACTIVE_JOB})
  AND (i.input_partition_key = '' OR ${matches('i.input_partition_key', '$4::text', '$5', '$6')})
GROUP BY 1, 2 ORDER BY 1`;

// The root itself, locked: processors that reach the same root (overlapping invalidations, a
// diamond in the DAG) take turns. A root never started (queued, unclaimed) or canceled needs no re-run.
const LOCK_ROOT = `
SELECT id, job_id, inputs, trigger, (status = 'Canceled' OR (status = 'Queued' AND started_at IS NULL)) AS skip
FROM tasks WHERE id = $1 FOR UPDATE`;

const PENDING_RERUN = `
SELECT id, trigger FROM tasks
WHERE job_id = $1 AND trigger->>'kind' = 'invalidation' AND trigger->>'reruns' = $2::text
  AND status = 'Queued' AND started_at IS NULL
ORDER BY created_at LIMIT 1 FOR UPDATE`;

const JOIN_RERUN = `UPDATE tasks SET trigger = $2::jsonb, updated_at = now() WHERE id = $1`;

const MARK_PROCESSED = `UPDATE data_invalidations SET processed_at = now(), processed_by = $2::uuid[] WHERE id = $1`;

interface RootRow { root: string; job_id: string; keys: string[] }

/** The invalidation's own scope, as a re-run carries it. */
function ownScope(inv: InvalidationRow): RerunScope {
  if (inv.scope === 'partition') return { scope: 'partition', partition_key: inv.partition_key! };
  const f = inv.row_filter?.block_number ?? {};
  return { scope: 'row_range', row_filter: { block_number: { gte: Number(f.gte), lt: Number(f.lt) } } };
}

const scopeKey = (s: RerunScope) => JSON.stringify([s.scope, s.partition_key ?? null, s.row_filter?.block_number.gte ?? null, s.row_filter?.block_number.lt ?? null]);

function unionScopes(a: RerunScope[], b: RerunScope[]): RerunScope[] {
  const out = new Map<string, RerunScope>();
  for (const s of [...a, ...b]) out.set(scopeKey(s), s);
  return [...out.values()];
}

/** Re-runs (or joins the pending re-run of) each root once for this invalidation; returns the jobs. */
async function scheduleReruns(q: Queryable, inv: InvalidationRow, roots: RootRow[]): Promise<string[]> {
  const jobs = new Set<string>();
  for (const r of roots) {
    const root = (await q.query<{ id: string; job_id: string; inputs: unknown[]; trigger: Record<string, unknown>; skip: boolean }>(LOCK_ROOT, [r.root])).rows[0];
    if (!root || root.skip) continue;
    // The scopes the re-run rewrites: the matched partition keys, else the invalidation's own.
    const keyed = r.keys.filter((k) => k !== '').map((k): RerunScope => ({ scope: 'partition', partition_key: k }));
    const scopes = keyed.length > 0 ? keyed : [ownScope(inv)];
    jobs.add(r.job_id);
    const pending = (await q.query<{ id: string; trigger: Record<string, unknown> }>(PENDING_RERUN, [r.job_id, r.root])).rows[0];
    if (pending) {
      const ids = Array.isArray(pending.trigger.invalidation_ids) ? (pending.trigger.invalidation_ids as string[]) : [];
      if (ids.includes(inv.id)) continue;
      const trigger = { ...pending.trigger, invalidation_ids: [...ids, inv.id], scopes: unionScopes((pending.trigger.scopes as RerunScope[] | undefined) ?? [], scopes) };
      await q.query(JOIN_RERUN, [pending.id, JSON.stringify(trigger)]);
      continue;
    }
    const { kind, ...rootTrigger } = root.trigger;
    await createTasks(q, [{
      job_id: r.job_id,
      dedupe_key: `inv:${r.root}:${inv.id}`,
      inputs: root.inputs,
      trigger: { ...rootTrigger, ...(kind !== undefined ? { original_kind: kind } : {}), kind: 'invalidation', reruns: r.root, invalidation_ids: [inv.id], scopes },
    }]);
  }
  return [...jobs];
}

/** Processes one invalidation inside the caller's transaction; returns the jobs that re-run. */
async function processOne(q: Queryable, inv: InvalidationRow): Promise<string[]> {
  const org = (await q.query<{ org_id: string }>(ORG_OF, [inv.dataset_uuid])).rows[0]?.org_id;
  let jobs: string[] = [];
  if (org) {
    const params = [org, inv.dataset_uuid, inv.dataset_version, ...matchParams(inv)];
    let roots: RootRow[] = [];
    if (inv.source_event?.kind !== 'rewrite') roots = (await q.query<RootRow>(PRODUCER_ROOTS, params)).rows;
    // A rewrite, or nothing upstream to recompute: the readers of the scope re-run now.
    if (roots.length === 0) roots = (await q.query<RootRow>(CONSUMER_ROOTS, params)).rows;
    jobs = await scheduleReruns(q, inv, roots);
  }
  await q.query(MARK_PROCESSED, [inv.id, jobs]);
  return jobs;
}

/**
 * One pass of the invalidation loop: takes up to `batch` unprocessed invalidations (skipping
 * rows another Dispatcher holds) and processes them in one transaction. Returns how many.
 */
export async function processInvalidations(db: Db, batch: number): Promise<number> {
  return db.tx(async (q) => {
    const rows = (await q.query<InvalidationRow>(TAKE, [batch])).rows;
    for (const inv of rows) await processOne(q, inv);
    return rows.length;
  });
}

// ---- cascade -------------------------------------------------------------------------------

const INSERT_REWRITE = `
INSERT INTO data_invalidations (dataset_uuid, dataset_version, scope, partition_key, row_filter, reason, source_event)
SELECT x.dataset_uuid, x.dataset_version, x.scope, x.partition_key, x.row_filter::jsonb, 'rewrite', $1::jsonb
FROM unnest($2::uuid[], $3::uuid[], $4::text[], $5::text[], $6::text[]) AS x(dataset_uuid, dataset_version, scope, partition_key, row_filter)`;

/**
 * Completion hook: an accepted Completed re-run records one `rewrite` invalidation per output
 * dataset of its job and scope it rewrote, in the completion's own transaction (so exactly once
 * per accepted completion). Returns false: it registers no publications.
 */
export async function invalidationCompletionHook(q: Queryable, task: TaskRow, job: JobRow, c: Completion): Promise<boolean> {
  if (c.status !== 'Completed' || task.trigger.kind !== 'invalidation' || job.outputs.length === 0) return false;
  const scopes = (Array.isArray(task.trigger.scopes) ? task.trigger.scopes : []) as RerunScope[];
  if (scopes.length === 0) return false;
  const cols: [string[], string[], string[], Array<string | null>, Array<string | null>] = [[], [], [], [], []];
  for (const o of job.outputs) {
    for (const s of scopes) {
      cols[0].push(o.dataset_uuid);
      cols[1].push(o.dataset_version);
      cols[2].push(s.scope);
      cols[3].push(s.scope === 'partition' ? s.partition_key ?? null : null);
      cols[4].push(s.row_filter ? JSON.stringify(s.row_filter) : null);
    }
  }
  const source = { kind: 'rewrite', task_id: task.id, job_id: job.id, invalidation_ids: task.trigger.invalidation_ids ?? [] };
  await q.query(INSERT_REWRITE, [JSON.stringify(source), ...cols]);
  return false;
}

// ---- history -------------------------------------------------------------------------------

export interface RerunView { task_id: string; dag_name: string; job_name: string; status: string; attempt: number; completed_at: Date | null }
export interface InvalidationView {
  id: string;
  dataset_version: string;
  scope: 'partition' | 'row_range';
  partition_key: string | null;
  row_filter: unknown;
  reason: string;
  source: unknown;
  created_at: Date;
  processed_at: Date | null;
  /** `pending` (not processed yet), `rerunning`, `done` (every re-run completed), `failed` (a re-run failed for good or was canceled). */
  status: 'pending' | 'rerunning' | 'done' | 'failed';
  processed_by: Array<{ job_id: string; dag_name: string; job_name: string }>;
  reruns: RerunView[];
  /** Invalidations its re-runs recorded on the datasets they rewrote. */
  cascades: Array<{ id: string; dataset_name: string | null; scope: string; partition_key: string | null; processed_at: Date | null }>;
}

const HISTORY = `
SELECT i.id, i.dataset_version, i.scope, i.partition_key, i.row_filter, i.reason, i.source_event AS source, i.created_at, i.processed_at,
  coalesce((SELECT jsonb_agg(jsonb_build_object('job_id', j.id, 'dag_name', j.dag_name, 'job_name', j.name) ORDER BY j.dag_name, j.name)
            FROM jobs j WHERE j.id = ANY (i.processed_by) AND j.org_id = $1), '[]'::jsonb) AS processed_by
FROM data_invalidations i WHERE i.dataset_uuid = $2 AND ($4::uuid IS NULL OR i.id = $4)
ORDER BY i.created_at DESC, i.id LIMIT $3`;

const RERUNS = `
SELECT t.id AS task_id, j.dag_name, j.name AS job_name, t.status, t.attempt, t.completed_at, t.trigger->'invalidation_ids' AS ids,
       (t.status = 'Canceled' OR (t.status = 'Failed' AND t.next_retry_at IS NULL)) AS gave_up
FROM tasks t JOIN jobs j ON j.id = t.job_id
WHERE t.org_id = $1 AND t.trigger->>'kind' = 'invalidation' AND t.trigger->'invalidation_ids' ?| $2::text[]
ORDER BY t.created_at, t.id`;

const CASCADES = `
SELECT c.id, d.name AS dataset_name, c.scope, c.partition_key, c.processed_at, c.source_event->'invalidation_ids' AS ids
FROM data_invalidations c LEFT JOIN datasets d ON d.id = c.dataset_uuid AND d.org_id = $1
WHERE c.source_event->>'kind' = 'rewrite' AND c.source_event->'invalidation_ids' ?| $2::text[]
ORDER BY c.created_at, c.id`;

/** A dataset's invalidations, newest first, with their re-runs and cascades. */
export async function invalidationHistory(q: Queryable, orgId: string, datasetUuid: string, limit: number, onlyId: string | null = null): Promise<InvalidationView[]> {
  const rows = (await q.query<Omit<InvalidationView, 'status' | 'reruns' | 'cascades'>>(HISTORY, [orgId, datasetUuid, limit, onlyId])).rows;
  if (rows.length === 0) return [];
  const ids = rows.map((r) => r.id);
  const reruns = (await q.query<RerunView & { ids: string[]; gave_up: boolean }>(RERUNS, [orgId, ids])).rows;
  const cascades = (await q.query<InvalidationView['cascades'][number] & { ids: string[] }>(CASCADES, [orgId, ids])).rows;
  return rows.map((r) => {
    const own = reruns.filter((x) => x.ids.includes(r.id));
    const failed = own.some((x) => x.gave_up);
    const mine = own.map(({ ids: _ids, gave_up: _g, ...x }) => x);
    const status: InvalidationView['status'] = r.processed_at === null ? 'pending'
      : failed ? 'failed'
        : mine.every((x) => x.status === 'Completed') ? 'done' : 'rerunning';
    return {
      ...r,
      status,
      reruns: mine,
      cascades: cascades.filter((x) => x.ids.includes(r.id)).map(({ ids: _ids, ...x }) => x),
    };
  });
}

/** The history of a dataset the principal may read, or undefined (as GET /v1/datasets/{name}). */
export async function datasetInvalidations(q: Queryable, p: Principal, name: string, limit: number): Promise<{ dataset_uuid: string; invalidations: InvalidationView[] } | undefined> {
  const d = (await q.query<{ id: string; read_roles: string[] }>(DATASET, [p.org_id, name])).rows[0];
  if (!d || !canRead(p, d.read_roles)) return undefined;
  return { dataset_uuid: d.id, invalidations: await invalidationHistory(q, p.org_id, d.id, limit) };
}
