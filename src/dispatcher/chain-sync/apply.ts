/**
 * Apply, pause and resume of chain_sync jobs. Apply is idempotent by `(org_id, name)`: the same
 * spec (same normalized hash) writes nothing; a changed spec updates the job in one
 * transaction or, when a rule refuses the change, writes nothing and answers 422 with every
 * problem. Rules for a changed spec:
 * - `chain_id` never changes (the datasets and cursors belong to that chain);
 * - `mode.from_block` may change only before anything was planned;
 * - a stream's `cryo_dataset_name` never changes (its dataset would mix two datasets);
 * - `mode` kind, `to_block`, follow-head timings, `rpc_pool`, `chunk_size`, `max_inflight`
 *   and `publish_name` may change; they apply to ranges planned from then on;
 * - a stream missing from the new spec stops planning (`active = false`); its committed data
 *   stays published. A stream added later starts at `from_block`.
 */
import type { Db, Queryable } from '../../db/db.js';
import { notFound, TraceError } from '../../core/errors.js';
import type { ChainCheck } from './identity.js';
import { newId } from '../../core/ids.js';
import { chainSyncInvalid, parseChainSyncYaml, type ChainSyncSpec } from './spec.js';
import {
  CHAIN_SYNC_TASK_SETTINGS, CRYO_INGEST_OPERATOR, chainSyncDagName, chainSyncDatasetUuid, chainSyncJobId, rangeDedupeKey,
  streamGeneration, taskConfig, taskConfigHash,
} from './ids.js';
import { createTasks } from '../tasks/create.js';

export interface ApplyResult {
  job_id: string;
  name: string;
  created: boolean;
  changed: boolean;
  yaml_hash: string;
  streams: Array<{ dataset_key: string; dataset_uuid: string; dataset_name: string; active: boolean }>;
}

interface JobRowCs {
  job_id: string;
  chain_id: number;
  from_block: number;
  yaml_hash: string;
}

interface StreamRowCs {
  dataset_key: string;
  cryo_dataset_name: string;
  dataset_uuid: string;
  dataset_name: string;
  active: boolean;
}

const INSERT_VERSION = `
INSERT INTO dag_versions (id, org_id, dag_name, yaml_hash, yaml, spec, created_by) VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7)
ON CONFLICT (org_id, dag_name, yaml_hash) DO NOTHING`;

const INSERT_TASK_JOB = `
INSERT INTO jobs (id, org_id, name, dag_name, dag_version_id, activation, runtime, operator, source, execution_strategy,
  config, config_hash, lineage_hash, inputs, input_datasets, output_datasets, outputs, update_strategy,
  timeout_seconds, heartbeat_timeout_seconds, max_attempts)
VALUES ($1, $2, $3, $4, $5, 'source', 'ecs_platform', $6, '{"kind":"chain_sync"}'::jsonb, 'PerPartition',
  $7::jsonb, $8, $8, '[]'::jsonb, '{}', $9, $10::jsonb, 'replace', $11, $12, $13)
ON CONFLICT (dag_version_id, name) DO NOTHING`;

const UPSERT_DATASET = `
INSERT INTO datasets (id, org_id, name, kind, producer_dag_name, producer_job_name, producer_output_index, storage)
VALUES ($1, $2, $3, 'job_output', $4, $5, 0, $6::jsonb)
ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, storage = EXCLUDED.storage, updated_at = now()`;

const UPSERT_JOB = `
INSERT INTO chain_sync_jobs (job_id, org_id, name, chain_id, mode, from_block, to_block, tail_lag, head_poll_interval_seconds,
  max_head_age_seconds, yaml, yaml_hash, spec, created_by)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13::jsonb, $14)
ON CONFLICT (org_id, name) DO UPDATE SET mode = EXCLUDED.mode, from_block = EXCLUDED.from_block, to_block = EXCLUDED.to_block,
  tail_lag = EXCLUDED.tail_lag, head_poll_interval_seconds = EXCLUDED.head_poll_interval_seconds,
  max_head_age_seconds = EXCLUDED.max_head_age_seconds, yaml = EXCLUDED.yaml, yaml_hash = EXCLUDED.yaml_hash,
  spec = EXCLUDED.spec, completed_at = NULL, updated_at = now()`;

const UPSERT_STREAM = `
INSERT INTO chain_sync_streams (job_id, dataset_key, cryo_dataset_name, rpc_pool, dataset_uuid, dataset_name, config_hash,
  chunk_size, max_inflight, task_job_id)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
ON CONFLICT (job_id, dataset_key) DO UPDATE SET rpc_pool = EXCLUDED.rpc_pool, dataset_name = EXCLUDED.dataset_name,
  chunk_size = EXCLUDED.chunk_size, max_inflight = EXCLUDED.max_inflight, task_job_id = EXCLUDED.task_job_id,
  active = true, updated_at = now()`;

/** Creates or finds the hidden (dag_version, jobs row) a stream's tasks run on, for its exact task config. */
async function ensureTaskJob(q: Queryable, orgId: string, userId: string | null, spec: ChainSyncSpec, yaml: string, jobId: string,
  s: ChainSyncSpec['streams'][number], datasetUuid: string): Promise<string> {
  const cfg = taskConfig({ jobId, name: spec.name, chainId: spec.chain_id, datasetKey: s.dataset_key, datasetUuid, cryoDatasetName: s.cryo_dataset_name, rpcPool: s.rpc_pool });
  const hash = taskConfigHash(cfg);
  const dag = chainSyncDagName(spec.name);
  const versionHash = `${s.dataset_key}:${hash}`;
  await q.query(INSERT_VERSION, [newId(), orgId, dag, versionHash, yaml, JSON.stringify({ chain_sync: spec.name, dataset_key: s.dataset_key, config: cfg }), userId]);
  const v = (await q.query<{ id: string }>(`SELECT id FROM dag_versions WHERE org_id = $1 AND dag_name = $2 AND yaml_hash = $3`, [orgId, dag, versionHash])).rows[0]!;
  const outputs = [{ output_index: 0, dataset_uuid: datasetUuid, dataset_version: streamGeneration(datasetUuid, cfg.config_hash) }];
  await q.query(INSERT_TASK_JOB, [newId(), orgId, s.dataset_key, dag, v.id, CRYO_INGEST_OPERATOR, JSON.stringify(cfg), hash,
    [datasetUuid], JSON.stringify(outputs), CHAIN_SYNC_TASK_SETTINGS.timeout_seconds, CHAIN_SYNC_TASK_SETTINGS.heartbeat_timeout_seconds,
    CHAIN_SYNC_TASK_SETTINGS.max_attempts]);
  return (await q.query<{ id: string }>(`SELECT id FROM jobs WHERE dag_version_id = $1 AND name = $2`, [v.id, s.dataset_key])).rows[0]!.id;
}

async function streamsOf(q: Queryable, jobId: string): Promise<ApplyResult['streams']> {
  const r = await q.query<ApplyResult['streams'][number]>(
    `SELECT dataset_key, dataset_uuid, dataset_name, active FROM chain_sync_streams WHERE job_id = $1 ORDER BY dataset_key`, [jobId]);
  return r.rows;
}

/** Applies a chain_sync YAML for the org. Throws 400/422 (nothing stored) on refusal. */
export async function applyChainSync(db: Db, orgId: string, userId: string | null, yaml: string): Promise<ApplyResult> {
  const { spec, yamlHash } = parseChainSyncYaml(yaml);
  const jobId = chainSyncJobId(orgId, spec.name);
  const dag = chainSyncDagName(spec.name);
  return db.tx(async (q) => {
    await q.query('SELECT pg_advisory_xact_lock(hashtext($1))', [`chain_sync:${orgId}:${spec.name}`]);
    const existing = (await q.query<JobRowCs>(
      `SELECT job_id, chain_id, from_block, yaml_hash FROM chain_sync_jobs WHERE org_id = $1 AND name = $2 FOR UPDATE`, [orgId, spec.name])).rows[0];
    if (existing && existing.yaml_hash === yamlHash) {
      return { job_id: existing.job_id, name: spec.name, created: false, changed: false, yaml_hash: yamlHash, streams: await streamsOf(q, existing.job_id) };
    }
    const problems: Array<{ path: string; message: string }> = [];
    const prevStreams = new Map<string, StreamRowCs>();
    if (existing) {
      if (Number(existing.chain_id) !== spec.chain_id) {
        problems.push({ path: 'chain_id', message: `cannot change chain_id of an existing chain sync (it is ${existing.chain_id}); apply a new name` });
      }
      if (Number(existing.from_block) !== spec.mode.from_block) {
        const planned = await q.query(`SELECT 1 FROM chain_sync_scheduled_ranges WHERE job_id = $1 LIMIT 1`, [jobId]);
        if (planned.rows.length > 0) {
          problems.push({ path: 'mode.from_block', message: `cannot change once ranges were planned (it is ${existing.from_block}); apply a new name to sync another span` });
        }
      }
      const r = await q.query<StreamRowCs>(`SELECT dataset_key, cryo_dataset_name, dataset_uuid, dataset_name, active FROM chain_sync_streams WHERE job_id = $1`, [jobId]);
      for (const row of r.rows) prevStreams.set(row.dataset_key, row);
    }
    const uuids = spec.streams.map((s) => chainSyncDatasetUuid(orgId, spec.chain_id, s.dataset_key));
    const byId = new Map((await q.query<{ id: string; name: string | null; kind: string; producer_dag_name: string | null }>(
      `SELECT id, name, kind, producer_dag_name FROM datasets WHERE id = ANY ($1::uuid[])`, [uuids])).rows.map((r) => [r.id, r]));
    const byName = new Map((await q.query<{ id: string; name: string; kind: string; producer_dag_name: string | null; producer_job_name: string | null }>(
      `SELECT id, name, kind, producer_dag_name, producer_job_name FROM datasets WHERE org_id = $1 AND name = ANY ($2::text[])`,
      [orgId, spec.streams.map((s) => s.publish_name)])).rows.map((r) => [r.name, r]));
    const owner = (d: { kind: string; producer_dag_name: string | null }) =>
      d.producer_dag_name?.startsWith('chain_sync:') ? `chain sync ${d.producer_dag_name.slice('chain_sync:'.length)}` : d.kind === 'job_output' ? `DAG ${d.producer_dag_name}` : `a ${d.kind} dataset`;
    spec.streams.forEach((s, i) => {
      const path = `streams.${s.dataset_key}`;
      const prev = prevStreams.get(s.dataset_key);
      if (prev && prev.cryo_dataset_name !== s.cryo_dataset_name) {
        problems.push({ path: `${path}.cryo_dataset_name`, message: `cannot change from ${prev.cryo_dataset_name}: the published dataset would mix two datasets; use a new dataset_key` });
      }
      const mine = byId.get(uuids[i]!);
      if (mine && mine.producer_dag_name !== dag) {
        problems.push({ path, message: `the dataset of chain ${spec.chain_id} ${s.dataset_key} is already produced by ${owner(mine)}; a dataset has one producer` });
      }
      const named = byName.get(s.publish_name);
      // (the same stream of this job under another chain_id is reported once, at chain_id)
      if (named && named.id !== uuids[i] && !(named.producer_dag_name === dag && named.producer_job_name === s.dataset_key)) {
        problems.push({ path: `${path}.publish_name`, message: `dataset name ${s.publish_name} is already used by ${owner(named)}` });
      }
    });
    if (problems.length > 0) throw chainSyncInvalid(problems, `chain sync ${spec.name} cannot be applied: ${problems[0]!.path}: ${problems[0]!.message}${problems.length > 1 ? ` (and ${problems.length - 1} more)` : ''}`);

    const m = spec.mode;
    await q.query(UPSERT_JOB, [jobId, orgId, spec.name, spec.chain_id, m.kind, m.from_block,
      m.kind === 'fixed_target' ? m.to_block : null,
      m.kind === 'follow_head' ? m.tail_lag : null,
      m.kind === 'follow_head' ? m.head_poll_interval_seconds : null,
      m.kind === 'follow_head' ? m.max_head_age_seconds : null,
      yaml, yamlHash, JSON.stringify(spec), userId]);
    for (const [i, s] of spec.streams.entries()) {
      const datasetUuid = uuids[i]!;
      const taskJobId = await ensureTaskJob(q, orgId, userId, spec, yaml, jobId, s, datasetUuid);
      await q.query(UPSERT_DATASET, [datasetUuid, orgId, s.publish_name, dag, s.dataset_key,
        JSON.stringify({ kind: 'chain_sync', chain_id: spec.chain_id, dataset_key: s.dataset_key, cryo_dataset_name: s.cryo_dataset_name })]);
      const cfgHash = taskConfig({ jobId, name: spec.name, chainId: spec.chain_id, datasetKey: s.dataset_key, datasetUuid, cryoDatasetName: s.cryo_dataset_name, rpcPool: s.rpc_pool }).config_hash;
      await q.query(UPSERT_STREAM, [jobId, s.dataset_key, s.cryo_dataset_name, s.rpc_pool, datasetUuid, s.publish_name, cfgHash, s.chunk_size, s.max_inflight, taskJobId]);
      await q.query(`INSERT INTO chain_sync_cursor (job_id, dataset_key, next_block) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING`, [jobId, s.dataset_key, m.from_block]);
    }
    await q.query(`UPDATE chain_sync_streams SET active = false, updated_at = now() WHERE job_id = $1 AND active AND dataset_key <> ALL ($2::text[])`,
      [jobId, spec.streams.map((s) => s.dataset_key)]);
    return { job_id: jobId, name: spec.name, created: !existing, changed: true, yaml_hash: yamlHash, streams: await streamsOf(q, jobId) };
  });
}

/** Looks a job up by name or job_id within the org. */
export async function findJob(q: Queryable, orgId: string, nameOrId: string): Promise<{ job_id: string; name: string } | undefined> {
  const r = await q.query<{ job_id: string; name: string }>(
    `SELECT job_id, name FROM chain_sync_jobs WHERE org_id = $1 AND (name = $2 OR job_id::text = $2)`, [orgId, nameOrId]);
  return r.rows[0];
}

/** Pause: planning stops (in-flight ranges finish and commit). */
export async function pauseChainSync(db: Db, orgId: string, nameOrId: string): Promise<{ job_id: string; name: string; paused: boolean }> {
  const job = await findJob(db, orgId, nameOrId);
  if (!job) throw notFound(`no chain sync named ${nameOrId}`, 'CHAIN_SYNC_NOT_FOUND');
  await db.query(`UPDATE chain_sync_jobs SET enabled = false, updated_at = now() WHERE job_id = $1 AND enabled`, [job.job_id]);
  return { ...job, paused: true };
}

// Ranges whose task gave up (Failed with no retry left) or was canceled: re-planned on a new
// task of the stream's current hidden job; the ledger row keeps its range and gets the new task.
const DEAD_RANGES = `
SELECT r.dataset_key, r.range_start
FROM chain_sync_scheduled_ranges r
JOIN tasks t ON t.id = r.task_id
WHERE r.job_id = $1 AND r.status = 'scheduled'
  AND (t.status = 'Canceled' OR (t.status = 'Failed' AND t.next_retry_at IS NULL))
ORDER BY r.dataset_key, r.range_start`;

/** Re-plans one scheduled range on a new task (the caller holds the stream lock). */
export async function redriveRange(q: Queryable, jobId: string, datasetKey: string, rangeStart: number, expectTaskId?: string): Promise<boolean> {
  const d = (await q.query<{ range_start: number; range_end: number; redrives: number; task_id: string; task_job_id: string; job_name: string }>(
    `SELECT r.range_start, r.range_end, r.redrives, r.task_id, s.task_job_id, j.name AS job_name
     FROM chain_sync_scheduled_ranges r
     JOIN chain_sync_streams s ON s.job_id = r.job_id AND s.dataset_key = r.dataset_key
     JOIN chain_sync_jobs j ON j.job_id = r.job_id
     WHERE r.job_id = $1 AND r.dataset_key = $2 AND r.range_start = $3 AND r.status = 'scheduled'
     FOR UPDATE OF r`, [jobId, datasetKey, rangeStart])).rows[0];
  if (!d || (expectTaskId !== undefined && d.task_id !== expectTaskId)) return false;
  const n = d.redrives + 1;
  const start = Number(d.range_start);
  const end = Number(d.range_end);
  const key = rangeDedupeKey(datasetKey, start, end, n);
  await createTasks(q, [{ job_id: d.task_job_id, dedupe_key: key, inputs: [], trigger: rangeTrigger(d.job_name, start, end) }]);
  const t = (await q.query<{ id: string }>(`SELECT id FROM tasks WHERE job_id = $1 AND dedupe_key = $2`, [d.task_job_id, key])).rows[0]!;
  await q.query(`UPDATE chain_sync_scheduled_ranges SET task_id = $4, redrives = $5, updated_at = now() WHERE job_id = $1 AND dataset_key = $2 AND range_start = $3`,
    [jobId, datasetKey, start, t.id, n]);
  return true;
}

/** Re-plans ranges whose task gave up; returns how many. */
export async function redriveDeadRanges(q: Queryable, jobId: string): Promise<number> {
  const dead = (await q.query<{ dataset_key: string; range_start: number }>(DEAD_RANGES, [jobId])).rows;
  let n = 0;
  for (const d of dead) if (await redriveRange(q, jobId, d.dataset_key, Number(d.range_start))) n++;
  return n;
}

/**
 * Resume: planning continues; ranges whose task gave up are re-planned. A job halted by a chain
 * check (identity.ts) is checked again first: the halt is cleared only when the check passes;
 * otherwise the answer is 409 with the check's code (the halt reason is updated) or 503
 * `CHAIN_CHECK_UNAVAILABLE` when the node cannot be asked, and nothing else changes.
 */
export async function resumeChainSync(db: Db, orgId: string, nameOrId: string, opts: { checkChain?: (jobId: string) => Promise<ChainCheck> } = {}): Promise<{ job_id: string; name: string; paused: boolean; redriven: number; halt_cleared: boolean }> {
  const job = await findJob(db, orgId, nameOrId);
  if (!job) throw notFound(`no chain sync named ${nameOrId}`, 'CHAIN_SYNC_NOT_FOUND');
  const halted = (await db.query<{ halt_code: string | null }>(`SELECT halt_code FROM chain_sync_jobs WHERE job_id = $1`, [job.job_id])).rows[0]?.halt_code ?? null;
  if (halted !== null) {
    const check: ChainCheck = opts.checkChain ? await opts.checkChain(job.job_id) : { status: 'unavailable', message: 'no chain check is available in this process' };
    if (check.status === 'mismatch') {
      await db.query(`UPDATE chain_sync_jobs SET halt_code = $2, halt_reason = $3, halted_at = now(), updated_at = now() WHERE job_id = $1 AND halt_code IS NOT NULL`,
        [job.job_id, check.code, check.message.slice(0, 1000)]);
      throw new TraceError(409, check.code, `chain sync ${job.name} stays halted: ${check.message}`);
    }
    if (check.status === 'unavailable') {
      throw new TraceError(503, 'CHAIN_CHECK_UNAVAILABLE', `chain sync ${job.name} stays halted: its chain could not be checked (${check.message})`);
    }
  }
  const redriven = await db.tx(async (q) => {
    await q.query(`UPDATE chain_sync_jobs SET enabled = true, last_error = NULL, halt_code = NULL, halt_reason = NULL, halted_at = NULL, updated_at = now() WHERE job_id = $1`, [job.job_id]);
    await q.query(`SELECT 1 FROM chain_sync_streams WHERE job_id = $1 ORDER BY dataset_key FOR UPDATE`, [job.job_id]);
    return redriveDeadRanges(q, job.job_id);
  });
  return { ...job, paused: false, redriven, halt_cleared: halted !== null };
}

/** The task trigger of a planned range (the operator reads range_start/range_end). */
export function rangeTrigger(jobName: string, start: number, end: number): Record<string, unknown> {
  return { kind: 'manual', by: `chain_sync:${jobName}`, range_start: start, range_end: end, start, end, partition_key: `${start}-${end}` };
}
