/**
 * Committing a range: the Dispatcher side of the replace commit protocol
 * (data_versioning.md) for chain_sync's `cryo_ingest` tasks.
 *
 * `verifyChainSyncCompletion` checks a Completed completion before anything is written:
 * exactly one publication (zero or several are refused), bound to the task's stream and range
 * (`dataset_uuid`, `range_start`, `range_end`, `config_hash`, the deterministic
 * `dataset_version`, the attempt-scoped storage prefix), and the prefix committed: `_SUCCESS`
 * present and matching `manifest.json`, every listed Parquet object present with its size.
 *
 * `commitRange` (inside a transaction that holds the stream row) registers the range once:
 * the range's immutable `dataset_versions` row (a conflicting existing row must match exactly),
 * one `partition_versions` row, the ledger row `scheduled -> completed` with its object list,
 * then `publishView`: a new immutable view manifest listing exactly the committed objects, its
 * `dataset_versions` row, and `datasets.current_version` moved to it. A query pins the current
 * version at start, so it sees every range committed by then and nothing in flight.
 */
import type { Db, Queryable } from '../../db/db.js';
import { TraceError } from '../../core/errors.js';
import { canonicalJson, sha256Hex } from '../../core/ids.js';
import type { Logger } from '../../core/log.js';
import { ingestManifestSchema, MANIFEST_FILE, SUCCESS_FILE, type IngestManifest, type ManifestChain } from '../../operators/cryo_ingest/manifest.js';
import { attemptPrefix, cryoIngestConfigSchema, datasetPrefix, rangeDatasetVersion, type CryoIngestConfig } from '../../operators/cryo_ingest/payload.js';
import { storageRefFor, type ObjectStore } from '../../operators/cryo_ingest/store.js';
import { CHAIN_SYNC_DAG_PREFIX, CRYO_INGEST_OPERATOR, viewVersion } from './ids.js';
import { PUBLISH_VERSION } from '../tasks/complete.js';
import { redriveRange } from './apply.js';
import { rangeOfTask } from './compaction.js';
import { checkRangeChain, haltJob, isChainCheckError, recordIdentity } from './identity.js';

/** The job fields this module reads (a JobRow satisfies it). */
export interface ChainSyncJobLike {
  id: string;
  operator: string;
  dag_name: string;
  config: Record<string, unknown>;
}

/** The task fields this module reads (a TaskRow satisfies it). */
export interface ChainSyncTaskLike {
  id: string;
  attempt: number;
}

export interface PublicationLike {
  dataset_uuid: string;
  dataset_version: string;
  storage_ref: Record<string, unknown>;
  config_hash?: string | undefined;
  range_start?: number | undefined;
  range_end?: number | undefined;
  row_count?: number | undefined;
  bytes?: number | undefined;
}

export interface VerifiedRange {
  /** A ledger range, or a compaction window (compaction.ts). */
  kind: 'range' | 'compaction';
  job_id: string;
  dataset_key: string;
  dataset_uuid: string;
  chain_id: number;
  config_hash: string;
  task_id: string;
  range_start: number;
  range_end: number;
  dataset_version: string;
  storage_ref: Record<string, unknown>;
  /** Parquet objects, keys relative to the dataset prefix (`{task_id}/{attempt}/{file}`). */
  files: string[];
  row_count: number;
  bytes: number;
  /** What the chain looked like to the worker (identity.ts checks it before the commit). */
  chain: ManifestChain | undefined;
}

export const isChainSyncJob = (job: Pick<ChainSyncJobLike, 'operator' | 'dag_name'>): boolean =>
  job.operator === CRYO_INGEST_OPERATOR && job.dag_name.startsWith(CHAIN_SYNC_DAG_PREFIX);

const refused = (code: string, message: string) => new TraceError(422, code, message);

function configOf(job: ChainSyncJobLike): CryoIngestConfig {
  const r = cryoIngestConfigSchema.safeParse(job.config);
  if (!r.success) throw new TraceError(500, 'CHAIN_SYNC_JOB_INVALID', 'the chain sync task job has an invalid config');
  return r.data;
}

/**
 * Reads a committed staging prefix through the store: `_SUCCESS` must exist and hold the
 * sha256 of `manifest.json`; every listed object must exist with its listed size.
 */
export async function readCommittedPrefix(store: ObjectStore, prefix: string): Promise<IngestManifest> {
  if (!(await store.exists(`${prefix}${SUCCESS_FILE}`))) {
    throw refused('OUTPUT_NOT_COMMITTED', 'the range output has no _SUCCESS marker; write Parquet and manifest.json, then _SUCCESS, before completing');
  }
  const marker = Buffer.from(await store.get(`${prefix}${SUCCESS_FILE}`)).toString('utf8').trim();
  let text: Uint8Array;
  try {
    text = await store.get(`${prefix}${MANIFEST_FILE}`);
  } catch {
    throw refused('OUTPUT_NOT_COMMITTED', 'the range output has _SUCCESS but no manifest.json');
  }
  if (sha256Hex(text) !== marker) throw refused('OUTPUT_NOT_COMMITTED', 'manifest.json does not match the _SUCCESS marker');
  let doc: unknown;
  try {
    doc = JSON.parse(Buffer.from(text).toString('utf8'));
  } catch {
    throw refused('OUTPUT_INVALID', 'manifest.json is not JSON');
  }
  const m = ingestManifestSchema.safeParse(doc);
  if (!m.success) throw refused('OUTPUT_INVALID', 'manifest.json does not follow the manifest schema');
  const sizes = new Map((await store.list(prefix)).map((o) => [o.key.slice(prefix.length), o.size]));
  for (const f of m.data.files) {
    if (f.path.includes('/') || f.path.startsWith('.') || !f.path.endsWith('.parquet')) throw refused('OUTPUT_INVALID', 'manifest.json lists an object outside the range prefix');
    if (sizes.get(f.path) !== f.bytes) throw refused('OUTPUT_NOT_COMMITTED', `object ${f.path} is missing or has the wrong size`);
  }
  return m.data;
}

/**
 * Checks a completion of a chain_sync range task before anything is written. Returns undefined
 * when the task is not a chain_sync task or the status is not Completed (nothing to check).
 * Throws 422 (`PUBLICATION_INVALID`, `PUBLICATION_MISMATCH`, `PUBLICATION_CONFLICT`,
 * `OUTPUT_NOT_COMMITTED`, `OUTPUT_INVALID`, `RANGE_NOT_SCHEDULED`) otherwise.
 */
export async function verifyChainSyncCompletion(
  q: Queryable,
  store: ObjectStore,
  task: ChainSyncTaskLike,
  job: ChainSyncJobLike,
  c: { status: string; datasets_published: readonly PublicationLike[] },
): Promise<VerifiedRange | undefined> {
  if (!isChainSyncJob(job) || c.status !== 'Completed') return undefined;
  const cfg = configOf(job);
  if (c.datasets_published.length !== 1) {
    throw refused('PUBLICATION_INVALID', `a chain sync range task publishes exactly one dataset on success (this completion has ${c.datasets_published.length})`);
  }
  const p = c.datasets_published[0]!;
  const range = await rangeOfTask(q, task.id);
  if (!range) throw refused('RANGE_NOT_SCHEDULED', 'this task does not own a scheduled chain sync range (it was re-planned on another task)');
  const start = Number(range.range_start);
  const end = Number(range.range_end);
  const mismatch = (field: string) => refused('PUBLICATION_MISMATCH', `datasets_published[0].${field} does not match the task (chain sync ${cfg.chain_sync}, stream ${cfg.dataset_key}, range [${start}, ${end}))`);
  if (p.dataset_uuid !== cfg.dataset_uuid) throw mismatch('dataset_uuid');
  if (p.range_start !== start) throw mismatch('range_start');
  if (p.range_end !== end) throw mismatch('range_end');
  if (p.config_hash !== cfg.config_hash) throw mismatch('config_hash');
  if (p.dataset_version !== rangeDatasetVersion(cfg.dataset_uuid, cfg.config_hash, start, end)) throw mismatch('dataset_version');
  const prefix = attemptPrefix(cfg.chain_id, cfg.dataset_uuid, task.id, task.attempt);
  const expectedRef = storageRefFor(store, prefix);
  if (canonicalJson(p.storage_ref) !== canonicalJson(expectedRef)) throw mismatch('storage_ref (it must be this attempt\'s staging prefix)');
  // A version registered before (another task of the same range) must match exactly.
  const prior = (await q.query<{ storage_ref: unknown }>(`SELECT storage_ref FROM dataset_versions WHERE id = $1`, [p.dataset_version])).rows[0];
  if (prior && canonicalJson(prior.storage_ref) !== canonicalJson(expectedRef)) {
    throw refused('PUBLICATION_CONFLICT', `dataset version ${p.dataset_version} is already registered with other storage; refusing to replace it`);
  }
  const m = await readCommittedPrefix(store, prefix);
  if (m.chain_id !== cfg.chain_id || m.range_start !== start || m.range_end !== end || m.datasets.length !== 1 || m.datasets[0] !== cfg.cryo_dataset_name) {
    throw refused('OUTPUT_INVALID', 'manifest.json describes another chain, range or dataset');
  }
  const rows = m.row_counts[cfg.cryo_dataset_name] ?? 0;
  if (p.row_count !== undefined && p.row_count !== rows) throw mismatch('row_count');
  if (p.bytes !== undefined && p.bytes !== m.bytes) throw mismatch('bytes');
  const rel = `${task.id}/${task.attempt}/`;
  return {
    kind: range.kind, job_id: range.job_id, dataset_key: range.dataset_key, dataset_uuid: cfg.dataset_uuid, chain_id: cfg.chain_id, config_hash: cfg.config_hash,
    task_id: task.id, range_start: start, range_end: end, dataset_version: p.dataset_version, storage_ref: expectedRef,
    files: m.files.map((f) => `${rel}${f.path}`), row_count: rows, bytes: m.bytes, chain: m.chain,
  };
}

const RECORD_PARTITION = `
INSERT INTO partition_versions (dataset_uuid, dataset_version, partition_key, config_hash, location, row_count, bytes)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (dataset_uuid, dataset_version, partition_key) DO NOTHING`;

const COMPLETE_RANGE = `
UPDATE chain_sync_scheduled_ranges SET status = 'completed', dataset_version = $5, files = $6::jsonb, row_count = $7, bytes = $8,
  first_parent_hash = $9, last_block_hash = $10, completed_at = now(), updated_at = now()
WHERE job_id = $1 AND dataset_key = $2 AND range_start = $3 AND task_id = $4 AND status = 'scheduled'`;

const COMPLETE_COMPACTION = `
UPDATE chain_sync_compactions SET status = 'completed', dataset_version = $5, files = $6::jsonb, row_count = $7, bytes = $8,
  first_parent_hash = $9, last_block_hash = $10, completed_at = now(), updated_at = now()
WHERE job_id = $1 AND dataset_key = $2 AND range_start = $3 AND task_id = $4 AND status = 'scheduled'`;

/** Locks the stream row: commits, views and planning of one stream take turns. */
export async function lockStream(q: Queryable, jobId: string, datasetKey: string): Promise<void> {
  await q.query(`SELECT 1 FROM chain_sync_streams WHERE job_id = $1 AND dataset_key = $2 FOR UPDATE`, [jobId, datasetKey]);
}

/**
 * Registers one verified range (the caller holds the stream lock and ran `checkRangeChain`). Idempotent: a range already
 * completed is left alone and returns false. A dataset version that exists with another
 * storage, hash or range is a conflict (409), never silently replaced.
 */
export async function commitRange(q: Queryable, v: VerifiedRange): Promise<boolean> {
  const location = typeof v.storage_ref.prefix === 'string' ? v.storage_ref.prefix : null;
  await q.query(PUBLISH_VERSION, [v.dataset_version, v.dataset_uuid, location, JSON.stringify(v.storage_ref), v.config_hash, v.range_start, v.range_end]);
  const have = (await q.query<{ storage_ref: Record<string, unknown> | null; config_hash: string | null; range_start: number | null; range_end: number | null; dataset_uuid: string }>(
    `SELECT dataset_uuid, storage_ref, config_hash, range_start, range_end FROM dataset_versions WHERE id = $1`, [v.dataset_version])).rows[0];
  if (!have || have.dataset_uuid !== v.dataset_uuid || have.config_hash !== v.config_hash || Number(have.range_start) !== v.range_start
    || Number(have.range_end) !== v.range_end || canonicalJson(have.storage_ref) !== canonicalJson(v.storage_ref)) {
    throw new TraceError(409, 'PUBLICATION_CONFLICT', `dataset version ${v.dataset_version} is already registered with other storage; refusing to replace it`);
  }
  const done = await q.query(v.kind === 'compaction' ? COMPLETE_COMPACTION : COMPLETE_RANGE,
    [v.job_id, v.dataset_key, v.range_start, v.task_id, v.dataset_version, JSON.stringify(v.files), v.row_count, v.bytes,
      v.chain?.first_parent_hash ?? null, v.chain?.last_block_hash ?? null]);
  if (done.rowCount === 0) return false;
  if (v.chain) await recordIdentity(q, v.job_id, v.chain_id, v.chain);
  await q.query(RECORD_PARTITION, [v.dataset_uuid, v.dataset_version, `${v.range_start}-${v.range_end}`, v.config_hash, location, v.row_count, v.bytes]);
  return true;
}

// What a stream's view lists: committed compaction windows, and the committed ledger ranges no
// committed compaction covers. Compaction windows never overlap (they are examined in order from
// compacted_through), so the only one that can cover a range is the nearest one starting at or
// below it: one index probe per range, not a scan of every window.
const VIEW_RANGES = `
SELECT range_start, range_end, files FROM chain_sync_compactions
WHERE job_id = $1 AND dataset_key = $2 AND status = 'completed'
UNION ALL
SELECT r.range_start, r.range_end, r.files FROM chain_sync_scheduled_ranges r
LEFT JOIN LATERAL (
  SELECT c.range_end FROM chain_sync_compactions c
  WHERE c.job_id = r.job_id AND c.dataset_key = r.dataset_key AND c.status = 'completed' AND c.range_start <= r.range_start
  ORDER BY c.range_start DESC LIMIT 1
) c ON true
WHERE r.job_id = $1 AND r.dataset_key = $2 AND r.status = 'completed' AND (c.range_end IS NULL OR r.range_end > c.range_end)
ORDER BY range_start`;

/** Files of a view above this many are refused by the Query Service (storage.ts maxFiles). */
export const MAX_VIEW_OBJECTS = 10_000;

/**
 * Writes the view of a stream's committed ranges and makes it current (the caller holds the
 * stream lock). The manifest object is immutable and named by its content; writing it before
 * the transaction commits is harmless (an orphan if the transaction rolls back).
 */
export async function publishView(q: Queryable, store: ObjectStore, jobId: string, datasetKey: string): Promise<string | undefined> {
  const s = (await q.query<{ dataset_uuid: string; chain_id: number }>(
    `SELECT s.dataset_uuid, j.chain_id FROM chain_sync_streams s JOIN chain_sync_jobs j ON j.job_id = s.job_id WHERE s.job_id = $1 AND s.dataset_key = $2`,
    [jobId, datasetKey])).rows[0];
  if (!s) return undefined;
  const rows = (await q.query<{ range_start: number; range_end: number; files: string[] }>(VIEW_RANGES, [jobId, datasetKey])).rows;
  if (rows.length === 0) return undefined;
  const objects = rows.flatMap((r) => r.files);
  if (objects.length > MAX_VIEW_OBJECTS) {
    throw new TraceError(422, 'VIEW_TOO_LARGE', `the dataset would list ${objects.length} objects, above ${MAX_VIEW_OBJECTS}; use a larger chunk_size`);
  }
  const digest = sha256Hex(canonicalJson(objects));
  const version = viewVersion(s.dataset_uuid, digest);
  const base = datasetPrefix(Number(s.chain_id), s.dataset_uuid);
  const manifestRel = `_views/${version}.json`;
  const doc = {
    manifest_version: 1,
    producer: 'trace.chain_sync',
    dataset_uuid: s.dataset_uuid,
    dataset_key: datasetKey,
    chain_id: Number(s.chain_id),
    ranges: rows.map((r) => [Number(r.range_start), Number(r.range_end)]),
    parquet_objects: objects,
  };
  await store.put(`${base}${manifestRel}`, `${JSON.stringify(doc)}\n`);
  const ref = { ...storageRefFor(store, base), manifest: manifestRel };
  const first = Number(rows[0]!.range_start);
  const last = Math.max(...rows.map((r) => Number(r.range_end)));
  await q.query(PUBLISH_VERSION, [version, s.dataset_uuid, typeof ref.prefix === 'string' ? ref.prefix : null, JSON.stringify(ref), `view:${digest}`, first, last]);
  await q.query(`UPDATE datasets SET current_version = $2, updated_at = now() WHERE id = $1 AND current_version IS DISTINCT FROM $2`, [s.dataset_uuid, version]);
  return version;
}

/**
 * The completion hook for `completeTask` (see README.md): inside the completion transaction,
 * verify and commit a chain_sync range. Returns true when it handled the publications (the
 * generic `datasets_published` loop must then be skipped), false for any other task.
 */
export function chainSyncCompletionHook(store: ObjectStore) {
  return async (q: Queryable, task: ChainSyncTaskLike, job: ChainSyncJobLike, c: { status: string; datasets_published: readonly PublicationLike[] }): Promise<boolean> => {
    const v = await verifyChainSyncCompletion(q, store, task, job, c);
    if (!v) return false;
    await lockStream(q, v.job_id, v.dataset_key);
    await checkRangeChain(q, v);
    if (await commitRange(q, v)) await publishView(q, store, v.job_id, v.dataset_key);
    return true;
  };
}

// Completed range tasks whose ledger row is still scheduled: committed here when the
// completion transition itself did not (no hook installed, or a crash between the two).
const PENDING = `
SELECT r.job_id, r.dataset_key, r.task_id, t.attempt, t.job_id AS task_job_id, r.range_start
FROM (SELECT job_id, dataset_key, task_id, range_start, status FROM chain_sync_scheduled_ranges
      UNION ALL SELECT job_id, dataset_key, task_id, range_start, status FROM chain_sync_compactions) r
JOIN tasks t ON t.id = r.task_id
WHERE r.status = 'scheduled' AND t.status = 'Completed' AND ($1::uuid IS NULL OR (r.job_id = $1 AND r.dataset_key = $2))
ORDER BY r.job_id, r.dataset_key, r.range_start
LIMIT $3`;

/**
 * Commits ranges whose task is Completed but whose ledger row is still scheduled: the
 * publication the generic completion registered is re-verified against the store, then
 * committed and the stream's view published once per batch. Returns ranges committed.
 */
export async function commitCompletedRanges(
  db: Db,
  store: ObjectStore,
  jobs: (id: string) => Promise<ChainSyncJobLike | undefined>,
  opts: { stream?: { job_id: string; dataset_key: string }; limit?: number; log?: Logger } = {},
): Promise<number> {
  const pending = (await db.query<{ job_id: string; dataset_key: string; task_id: string; attempt: number; task_job_id: string }>(
    PENDING, [opts.stream?.job_id ?? null, opts.stream?.dataset_key ?? null, opts.limit ?? 200])).rows;
  const byStream = new Map<string, { job_id: string; dataset_key: string; ranges: VerifiedRange[] }>();
  for (const p of pending) {
    const job = await jobs(p.task_job_id);
    if (!job || !isChainSyncJob(job)) continue;
    const cfg = configOf(job);
    const k = `${p.job_id}\u0000${p.dataset_key}`;
    const entry = byStream.get(k) ?? { job_id: p.job_id, dataset_key: p.dataset_key, ranges: [] };
    byStream.set(k, entry);
    try {
      const range = (await rangeOfTask(db, p.task_id))!;
      const version = rangeDatasetVersion(cfg.dataset_uuid, cfg.config_hash, Number(range.range_start), Number(range.range_end));
      const pub = (await db.query<PublicationLike>(
        `SELECT dataset_uuid, id AS dataset_version, storage_ref, config_hash, range_start::int8 AS range_start, range_end::int8 AS range_end FROM dataset_versions WHERE id = $1`, [version])).rows[0];
      const v = await verifyChainSyncCompletion(db, store, { id: p.task_id, attempt: p.attempt }, job, {
        status: 'Completed',
        datasets_published: pub ? [{ ...pub, range_start: Number(pub.range_start), range_end: Number(pub.range_end), storage_ref: pub.storage_ref }] : [],
      });
      if (v) entry.ranges.push(v);
    } catch (e) {
      // A Completed task whose publication cannot be verified never will be: record why and
      // re-plan the range on a new task.
      const msg = e instanceof Error ? e.message : String(e);
      const final = e instanceof TraceError && e.status === 422;
      opts.log?.error({ chain_sync_job_id: p.job_id, dataset_key: p.dataset_key, task_id: p.task_id, err: msg, redrive: final }, 'a completed chain sync range cannot be committed');
      if (!final) continue;
      await db.tx(async (q) => {
        await lockStream(q, p.job_id, p.dataset_key);
        await q.query(`UPDATE chain_sync_streams SET last_error = $3, last_error_at = now() WHERE job_id = $1 AND dataset_key = $2`,
          [p.job_id, p.dataset_key, `commit of task ${p.task_id}: ${msg}`.slice(0, 1000)]);
        const r = await rangeOfTask(q, p.task_id);
        if (r?.kind === 'range') await redriveRange(q, p.job_id, p.dataset_key, r.range_start, p.task_id);
        // a compaction that cannot be committed is given up: the small ranges keep serving
        if (r?.kind === 'compaction') {
          await q.query(`UPDATE chain_sync_compactions SET status = 'abandoned', updated_at = now() WHERE task_id = $1 AND status = 'scheduled'`, [p.task_id]);
        }
      });
    }
  }
  let committed = 0;
  for (const s of byStream.values()) {
    if (s.ranges.length === 0) continue;
    try {
      committed += await db.tx(async (q) => {
        await lockStream(q, s.job_id, s.dataset_key);
        let n = 0;
        for (const v of s.ranges) {
          await checkRangeChain(q, v);
          if (await commitRange(q, v)) n++;
        }
        if (n > 0) await publishView(q, store, s.job_id, s.dataset_key);
        return n;
      });
    } catch (e) {
      // Another chain (or a halted job): nothing of this stream is committed; the job halts.
      if (isChainCheckError(e)) {
        await haltJob(db, s.job_id, e.code, e.message);
        opts.log?.error({ chain_sync_job_id: s.job_id, dataset_key: s.dataset_key, code: e.code, err: e.message }, 'chain sync halted: a completed range belongs to another chain');
      } else if (!(e instanceof TraceError && e.code === 'CHAIN_SYNC_HALTED')) {
        throw e;
      }
    }
  }
  return committed;
}
