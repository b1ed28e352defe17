/**
 * Garbage collection: what the platform keeps only for a while.
 *
 * - Outbox rows that were delivered (`Done`) older than `gcOutboxRetentionSeconds` (by
 *   `processed_at`). `Failed` rows stay: they wait for an operator (docs/operations.md).
 * - The history of finished tasks (`task_attempts`, `task_events`) older than
 *   `gcTaskHistoryRetentionSeconds` (by `completed_at`, else `updated_at`). A task is finished
 *   when it is Completed, Canceled, or Failed with no retry planned. The task row itself stays
 *   (dedupe keys, ledgers and `trace tasks` still name it).
 * - Objects, through the collectors plugins register (chain sync: superseded range files, old
 *   views and orphaned staging; see chain-sync/gc.ts). A collector never removes an object the
 *   current version of any dataset, or a queued, running or retrying task, references.
 *
 * - Consumed buffer batches (`buffers/{task_id}/{attempt}/`) the sink committed, through the
 *   collector of buffer-gc.ts; a batch still pending stays.
 * - Superseded version and ledger rows, after the objects (whose collectors read them):
 *   dataset versions that are not among the newest `gcKeepVersions` of their dataset, were
 *   superseded (a newer version was created) longer than `gcSupersededRetentionSeconds` ago,
 *   are not current and that nothing names (a deploy's pointer set, a job's outputs, the inputs
 *   of any task, a chain sync ledger row, a cursor, an invalidation), with their
 *   `partition_versions` rows (those first; a version goes once it has none left); then chain
 *   sync ledger ranges a completed compaction replaced that long ago (never the last committed
 *   range of a stream nor one next to a range still in flight), and compactions abandoned that
 *   long ago. A version only a removed range named goes in the next pass.
 *
 * One pass removes at most `gcBatch` rows and objects in all (in the order above); what is left
 * goes in the next pass. A dry run counts and lists the same things and changes nothing (a dry
 * run counts each kind on its own, so when the batch stops a pass the counts can differ).
 */
import { isAbsolute, relative, sep } from 'node:path';
import type { Db } from '../db/db.js';
import { FileObjectStore } from '../objectstore/file.js';
import type { ObjectStore } from '../objectstore/objectstore.js';
import { STORAGE_LIMITS, filePrefixDir, parseStorageRef, storagePrefixUrl, type StorageRefInput } from '../query/storage.js';
import type { Logger } from '../core/log.js';
import type { DispatcherSettings } from './settings.js';

/** Statuses of a task that will not run again by itself. */
export const FINISHED_TASK = `(t.status IN ('Completed', 'Canceled') OR (t.status = 'Failed' AND t.next_retry_at IS NULL))`;

const OUTBOX_DUE = `
SELECT id FROM outbox
WHERE status = 'Done' AND processed_at < now() - make_interval(secs => $1)
ORDER BY id LIMIT $2`;
const DELETE_OUTBOX = `DELETE FROM outbox WHERE id IN (${OUTBOX_DUE})`;
const COUNT_OUTBOX = `SELECT count(*)::int AS n FROM (${OUTBOX_DUE}) x`;

const FINISHED_TASKS_DUE = `
SELECT t.id FROM tasks t
WHERE ${FINISHED_TASK} AND coalesce(t.completed_at, t.updated_at) < now() - make_interval(secs => $1)`;

const ATTEMPTS_DUE = `
SELECT a.task_id, a.attempt FROM task_attempts a
WHERE a.task_id IN (${FINISHED_TASKS_DUE})
ORDER BY a.task_id, a.attempt LIMIT $2`;
const DELETE_ATTEMPTS = `DELETE FROM task_attempts WHERE (task_id, attempt) IN (${ATTEMPTS_DUE})`;
const COUNT_ATTEMPTS = `SELECT count(*)::int AS n FROM (${ATTEMPTS_DUE}) x`;

const EVENTS_DUE = `
SELECT e.id FROM task_events e
WHERE e.task_id IN (${FINISHED_TASKS_DUE})
ORDER BY e.id LIMIT $2`;
const DELETE_EVENTS = `DELETE FROM task_events WHERE id IN (${EVENTS_DUE})`;
const COUNT_EVENTS = `SELECT count(*)::int AS n FROM (${EVENTS_DUE}) x`;

// Ledger ranges a completed compaction replaced (the view lists the compaction's files instead),
// kept while they are the last committed range of their stream (the committed top the identity
// checks compare with) or next to a range still in flight (its neighbour check reads them).
const RANGES_DUE = `
SELECT r.job_id, r.dataset_key, r.range_start FROM chain_sync_scheduled_ranges r
JOIN LATERAL (
  SELECT c.range_end, c.completed_at FROM chain_sync_compactions c
  WHERE c.job_id = r.job_id AND c.dataset_key = r.dataset_key AND c.status = 'completed' AND c.range_start <= r.range_start
  ORDER BY c.range_start DESC LIMIT 1
) c ON c.range_end >= r.range_end
WHERE r.status = 'completed' AND c.completed_at < now() - make_interval(secs => $1)
  AND r.range_end < (SELECT max(x.range_end) FROM chain_sync_scheduled_ranges x
                     WHERE x.job_id = r.job_id AND x.dataset_key = r.dataset_key AND x.status = 'completed')
  AND NOT EXISTS (SELECT 1 FROM chain_sync_scheduled_ranges x
                  WHERE x.job_id = r.job_id AND x.dataset_key = r.dataset_key AND x.status = 'scheduled'
                    AND (x.range_start = r.range_end OR x.range_end = r.range_start))
ORDER BY r.job_id, r.dataset_key, r.range_start LIMIT $2`;
const DELETE_RANGES = `DELETE FROM chain_sync_scheduled_ranges WHERE (job_id, dataset_key, range_start) IN (${RANGES_DUE})`;
const COUNT_RANGES = `SELECT count(*)::int AS n FROM (${RANGES_DUE}) x`;

// Compactions whose task gave up: the small ranges kept serving the window.
const COMPACTIONS_DUE = `
SELECT c.job_id, c.dataset_key, c.range_start FROM chain_sync_compactions c
WHERE c.status = 'abandoned' AND c.updated_at < now() - make_interval(secs => $1)
ORDER BY c.job_id, c.dataset_key, c.range_start LIMIT $2`;
const DELETE_COMPACTIONS = `DELETE FROM chain_sync_compactions WHERE (job_id, dataset_key, range_start) IN (${COMPACTIONS_DUE})`;
const COUNT_COMPACTIONS = `SELECT count(*)::int AS n FROM (${COMPACTIONS_DUE}) x`;

const UUID_TEXT = `'^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'`;
const jsonVersions = (table: string, column: string) => `
  SELECT (e->>'dataset_version')::uuid FROM ${table} x
  CROSS JOIN LATERAL jsonb_array_elements(CASE WHEN jsonb_typeof(x.${column}) = 'array' THEN x.${column} ELSE '[]'::jsonb END) e
  WHERE jsonb_typeof(e) = 'object' AND e->>'dataset_version' ~ ${UUID_TEXT}`;

// Versions something names: current pointers, deploys' pointer sets (rollback), jobs' outputs,
// tasks' inputs (open tasks read them; finished ones are lineage), chain sync ledger rows (and
// the publication of a range whose commit is pending), cursors and invalidations. $1 retention, $2 versions kept per dataset, $3 limit.
const VERSIONS_DUE = `
WITH named AS (
  SELECT current_version AS id FROM datasets WHERE current_version IS NOT NULL
  UNION SELECT dataset_version FROM dag_version_datasets
  UNION ${jsonVersions('jobs', 'outputs')}
  UNION ${jsonVersions('tasks', 'inputs')}
  UNION SELECT input_dataset_version FROM task_inputs WHERE input_dataset_version IS NOT NULL
  UNION SELECT dataset_version FROM chain_sync_scheduled_ranges WHERE dataset_version IS NOT NULL
  UNION SELECT dataset_version FROM chain_sync_compactions WHERE dataset_version IS NOT NULL
  -- the publication a completed range or compaction task registered, while its commit is pending
  UNION SELECT v.id FROM dataset_versions v JOIN chain_sync_streams s ON s.dataset_uuid = v.dataset_uuid
    JOIN (SELECT job_id, dataset_key, range_start, range_end FROM chain_sync_scheduled_ranges WHERE status = 'scheduled'
          UNION ALL SELECT job_id, dataset_key, range_start, range_end FROM chain_sync_compactions WHERE status = 'scheduled') r
      ON r.job_id = s.job_id AND r.dataset_key = s.dataset_key AND r.range_start = v.range_start AND r.range_end = v.range_end
  UNION SELECT dataset_version FROM dataset_cursors
  UNION SELECT dataset_version FROM data_invalidations
), ranked AS (
  SELECT v.id, v.dataset_uuid, v.created_at, row_number() OVER w AS rank, lag(v.created_at) OVER w AS superseded_at
  FROM dataset_versions v
  WINDOW w AS (PARTITION BY v.dataset_uuid ORDER BY v.created_at DESC, v.id DESC)
)
SELECT r.id, r.dataset_uuid, r.created_at FROM ranked r
WHERE r.rank > $2 AND r.superseded_at < now() - make_interval(secs => $1)
  AND NOT EXISTS (SELECT 1 FROM named n WHERE n.id = r.id)`;
const PARTITIONS_DUE = `
SELECT p.dataset_uuid, p.dataset_version, p.partition_key FROM partition_versions p
WHERE (p.dataset_uuid, p.dataset_version) IN (SELECT dataset_uuid, id FROM (${VERSIONS_DUE}) d)
ORDER BY p.dataset_version, p.partition_key LIMIT $3`;
const DELETE_PARTITIONS = `DELETE FROM partition_versions WHERE (dataset_uuid, dataset_version, partition_key) IN (${PARTITIONS_DUE})`;
const COUNT_PARTITIONS = `SELECT count(*)::int AS n FROM (${PARTITIONS_DUE}) x`;
const DELETE_VERSIONS = `
DELETE FROM dataset_versions WHERE id IN (
  SELECT d.id FROM (${VERSIONS_DUE}) d
  WHERE NOT EXISTS (SELECT 1 FROM partition_versions p WHERE p.dataset_uuid = d.dataset_uuid AND p.dataset_version = d.id)
  ORDER BY d.created_at, d.id LIMIT $3)`;
// A dry run removes no partition rows first: it counts the versions whose rows it would remove.
const COUNT_VERSIONS = `SELECT count(*)::int AS n FROM (SELECT d.id FROM (${VERSIONS_DUE}) d ORDER BY d.created_at, d.id LIMIT $3) x`;

/** One object a collector removes (or would remove). */
export interface GcObject {
  key: string;
  bytes: number;
  /**
   * `superseded` (replaced by a compaction, or a view no longer current), `staging` (never
   * committed) or `consumed` (a buffer batch the sink committed).
   */
  reason: 'superseded' | 'staging' | 'consumed';
}

export interface GcCollectorArgs {
  db: Db;
  settings: DispatcherSettings;
  dryRun: boolean;
  /** Objects this collector may still remove in this pass. */
  limit: number;
  log: Logger;
}

/** A plugin's part of a pass: returns the objects it removed (or, in a dry run, would remove). */
export interface GcCollector {
  name: string;
  collect(args: GcCollectorArgs): Promise<GcObject[]>;
}

export interface GcReport {
  dry_run: boolean;
  /** Rows removed (or that would be), per table. */
  rows: {
    outbox: number; task_attempts: number; task_events: number;
    chain_sync_ranges: number; chain_sync_compactions: number; partition_versions: number; dataset_versions: number;
  };
  /** Objects removed (or that would be), per reason. */
  objects: { superseded: number; staging: number; consumed: number; bytes: number };
  /** The objects themselves (store keys). */
  object_keys: GcObject[];
  /** True when the batch limit stopped the pass (run it again for the rest). */
  truncated: boolean;
  retention_seconds: { superseded: number; staging: number; outbox: number; task_history: number };
  batch: number;
  /** Dataset versions kept per dataset however old (besides the current one). */
  keep_versions: number;
}

async function rows(db: Db, dryRun: boolean, del: string, cnt: string, secs: number, limit: number, extra: unknown[] = []): Promise<number> {
  if (limit <= 0) return 0;
  const params = extra.length > 0 ? [secs, ...extra, limit] : [secs, limit];
  if (dryRun) return (await db.query<{ n: number }>(cnt, params)).rows[0]!.n;
  return (await db.query(del, params)).rowCount ?? 0;
}

/** Runs one pass (see the header). */
export async function runGc(db: Db, settings: DispatcherSettings, collectors: readonly GcCollector[], opts: { dryRun: boolean; log: Logger }): Promise<GcReport> {
  const { dryRun, log } = opts;
  const batch = settings.gcBatch;
  let left = batch;
  const outbox = await rows(db, dryRun, DELETE_OUTBOX, COUNT_OUTBOX, settings.gcOutboxRetentionSeconds, left);
  left -= outbox;
  const attempts = await rows(db, dryRun, DELETE_ATTEMPTS, COUNT_ATTEMPTS, settings.gcTaskHistoryRetentionSeconds, left);
  left -= attempts;
  const events = await rows(db, dryRun, DELETE_EVENTS, COUNT_EVENTS, settings.gcTaskHistoryRetentionSeconds, left);
  left -= events;
  const objects: GcObject[] = [];
  for (const c of collectors) {
    if (left <= 0) break;
    const got = await c.collect({ db, settings, dryRun, limit: left, log });
    objects.push(...got);
    left -= got.length;
  }
  // Versions before the ledger rows that name them: a version a range removed now names goes
  // in the next pass, so a dry run lists what the pass removes.
  const sup = settings.gcSupersededRetentionSeconds;
  const keep = [settings.gcKeepVersions];
  const partitions = await rows(db, dryRun, DELETE_PARTITIONS, COUNT_PARTITIONS, sup, left, keep);
  left -= partitions;
  const versions = await rows(db, dryRun, DELETE_VERSIONS, COUNT_VERSIONS, sup, left, keep);
  left -= versions;
  const ranges = await rows(db, dryRun, DELETE_RANGES, COUNT_RANGES, sup, left);
  left -= ranges;
  const compactions = await rows(db, dryRun, DELETE_COMPACTIONS, COUNT_COMPACTIONS, sup, left);
  left -= compactions;
  const report: GcReport = {
    dry_run: dryRun,
    rows: {
      outbox, task_attempts: attempts, task_events: events,
      chain_sync_ranges: ranges, chain_sync_compactions: compactions, partition_versions: partitions, dataset_versions: versions,
    },
    objects: {
      superseded: objects.filter((o) => o.reason === 'superseded').length,
      staging: objects.filter((o) => o.reason === 'staging').length,
      consumed: objects.filter((o) => o.reason === 'consumed').length,
      bytes: objects.reduce((a, o) => a + o.bytes, 0),
    },
    object_keys: objects,
    truncated: left <= 0,
    retention_seconds: {
      superseded: settings.gcSupersededRetentionSeconds,
      staging: settings.gcStagingRetentionSeconds,
      outbox: settings.gcOutboxRetentionSeconds,
      task_history: settings.gcTaskHistoryRetentionSeconds,
    },
    batch,
    keep_versions: settings.gcKeepVersions,
  };
  const removed = outbox + attempts + events + objects.length + ranges + compactions + partitions + versions;
  if (removed > 0) {
    log.info({ dry_run: dryRun, rows: report.rows, objects: report.objects, truncated: report.truncated }, dryRun ? 'gc dry run' : 'gc pass');
  }
  return report;
}

/** Objects that must stay: exact keys and whole prefixes (keys ending in `/`). */
export interface Referenced {
  keys: Set<string>;
  prefixes: string[];
  has(key: string): boolean;
}

// Versions something still reads: every dataset's current version, and the inputs pinned by
// tasks that may still run.
const REFERENCED_VERSIONS = `
SELECT v.id, v.storage_ref FROM dataset_versions v
WHERE v.id IN (SELECT current_version FROM datasets WHERE current_version IS NOT NULL)
   OR v.id IN (SELECT i.input_dataset_version FROM task_inputs i JOIN tasks t ON t.id = i.task_id
               WHERE i.input_dataset_version IS NOT NULL AND NOT ${FINISHED_TASK})`;

/**
 * The store key prefix (ending in `/`, or `''` for the root) a storage_ref points at, or
 * undefined when it lies outside this store.
 */
export function refKeyPrefix(store: ObjectStore, ref: StorageRefInput): string | undefined {
  let url: string;
  if (store instanceof FileObjectStore) {
    let dir: string;
    try {
      dir = ref.scheme === 'file' ? filePrefixDir(ref.prefix) : '';
    } catch {
      return undefined;
    }
    if (dir === '') return undefined;
    const rel = relative(store.rootDir, dir);
    if (rel === '') return '';
    if (rel.startsWith('..') || isAbsolute(rel)) return undefined;
    return `${rel.split(sep).join('/')}/`;
  }
  try {
    url = storagePrefixUrl(ref);
  } catch {
    return undefined;
  }
  const root = store.rootUrl.endsWith('/') ? store.rootUrl : `${store.rootUrl}/`;
  return url.startsWith(root) ? url.slice(root.length) : undefined;
}

/** The objects a manifest lists, as store keys (undefined when it cannot be read or names anything but relative keys). */
export async function manifestKeys(store: ObjectStore, keyPrefix: string, manifest: string): Promise<string[] | undefined> {
  let doc: unknown;
  try {
    doc = JSON.parse(Buffer.from(await store.get(`${keyPrefix}${manifest}`, { maxBytes: STORAGE_LIMITS.maxManifestBytes })).toString('utf8'));
  } catch {
    return undefined;
  }
  const o = doc as Record<string, unknown> | unknown[];
  const list = Array.isArray(o) ? o : (o?.parquet_objects ?? o?.objects ?? o?.files);
  if (!Array.isArray(list) || !list.every((x) => typeof x === 'string' && !x.includes(':') && !x.startsWith('/'))) return undefined;
  return (list as string[]).map((x) => `${keyPrefix}${x}`);
}

/**
 * What the current version of every dataset, and every input pinned by a task that may still
 * run, references in `store`: a manifest and the objects it lists, or the whole prefix of a ref
 * without a manifest (or whose manifest cannot be read: fail closed).
 */
export async function referencedObjects(db: Db, store: ObjectStore): Promise<Referenced> {
  const keys = new Set<string>();
  const prefixes: string[] = [];
  const refs = (await db.query<{ id: string; storage_ref: unknown }>(REFERENCED_VERSIONS)).rows;
  for (const r of refs) {
    let ref: StorageRefInput;
    try {
      ref = parseStorageRef(r.storage_ref);
    } catch {
      continue;
    }
    const kp = refKeyPrefix(store, ref);
    if (kp === undefined) continue;
    if (ref.manifest) {
      const listed = await manifestKeys(store, kp, ref.manifest);
      if (listed) {
        keys.add(`${kp}${ref.manifest}`);
        for (const k of listed) keys.add(k);
        continue;
      }
    }
    prefixes.push(kp);
  }
  return { keys, prefixes, has: (k) => keys.has(k) || prefixes.some((p) => k.startsWith(p)) };
}

const SCRATCH_GROUP = /^scratch\/([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\/(\d+)\//;
// Versions published from a task's scratch prefix: committed outputs, kept whether current or not.
const SCRATCH_VERSIONS = `SELECT storage_ref FROM dataset_versions WHERE storage_ref::text LIKE '%scratch/%'`;
const LIVE = `SELECT t.id FROM tasks t WHERE t.id = ANY($1::uuid[]) AND NOT ${FINISHED_TASK}`;

/**
 * Orphaned task scratch (`scratch/{task_id}/{attempt}/`, where a task's attempt writes the
 * outputs it publishes): an attempt prefix no dataset version points into, of a task that will
 * not run again, whose newest object is older than `gcStagingRetentionSeconds`. A prefix a
 * version was published from is a committed output and stays.
 */
export function scratchGcCollector(getStore: () => ObjectStore | undefined): GcCollector {
  return {
    name: 'scratch',
    async collect({ db, settings, dryRun, limit }) {
      const store = getStore();
      if (!store) return [];
      const objects = await store.list('scratch/');
      if (objects.length === 0) return [];
      const groups = new Map<string, { task: string; objects: typeof objects }>();
      for (const o of objects) {
        const m = SCRATCH_GROUP.exec(o.key);
        if (!m) continue;
        const g = m[0];
        const e = groups.get(g) ?? { task: m[1]!, objects: [] };
        e.objects.push(o);
        groups.set(g, e);
      }
      const committed = new Set<string>();
      for (const r of (await db.query<{ storage_ref: unknown }>(SCRATCH_VERSIONS)).rows) {
        try {
          const kp = refKeyPrefix(store, parseStorageRef(r.storage_ref));
          const m = kp === undefined ? null : SCRATCH_GROUP.exec(kp);
          if (m) committed.add(m[0]);
        } catch {
          // a ref that is not a usable storage_ref points at nothing here
        }
      }
      const live = new Set((await db.query<{ id: string }>(LIVE, [[...new Set([...groups.values()].map((g) => g.task))]])).rows.map((r) => r.id));
      const referenced = await referencedObjects(db, store);
      const before = Date.now() - settings.gcStagingRetentionSeconds * 1000;
      const out: GcObject[] = [];
      for (const [g, e] of groups) {
        if (out.length >= limit) break;
        if (committed.has(g) || live.has(e.task)) continue;
        if (Math.max(...e.objects.map((o) => o.lastModified?.getTime() ?? Date.now())) > before) continue;
        for (const o of e.objects) {
          if (out.length >= limit) break;
          if (referenced.has(o.key)) continue;
          if (!dryRun) await store.delete(o.key);
          out.push({ key: o.key, bytes: o.size, reason: 'staging' });
        }
      }
      return out;
    },
  };
}
