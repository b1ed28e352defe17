/**
 * The `cryo_ingest` task contract shared by the chain_sync planner (which writes it) and the
 * operator (which reads it): payload fields, the object-store layout of a range, and the
 * deterministic identities. No database code here: the worker side imports this file.
 *
 * Payload (chain_sync_entrypoint.md): the job config carries the stream (`chain_id`,
 * `dataset_key`, `dataset_uuid`, `cryo_dataset_name`, `rpc_pool`, `config_hash`,
 * `output_prefix`); the task trigger carries the range (`range_start`, `range_end`, end
 * exclusive; also as `start`/`end`/`partition_key` like any range trigger).
 */
import { z } from 'zod';
import { TraceError, formatPath } from '../../core/errors.js';
import { UUID_RE, uuidV5 } from '../../core/ids.js';
import type { TaskPayload } from '../../worker/payload.js';

export const CRYO_INGEST_OPERATOR = 'cryo_ingest';
/** `jobs.dag_name` of the hidden job rows chain_sync plans on: `chain_sync:{name}`. */
export const CHAIN_SYNC_DAG_PREFIX = 'chain_sync:';

export const SLUG_RE = /^[a-z0-9_]{1,64}$/;
/** Cryo stores block numbers as u32. */
export const MAX_BLOCK = 2 ** 32;

/** Object-store key prefix of a stream's dataset: `cryo/{chain_id}/{dataset_uuid}/`. */
export const datasetPrefix = (chainId: number, datasetUuid: string): string => `cryo/${chainId}/${datasetUuid}/`;

/** Attempt-scoped staging prefix of one range task: `cryo/{chain_id}/{dataset_uuid}/{task_id}/{attempt}/`. */
export const attemptPrefix = (chainId: number, datasetUuid: string, taskId: string, attempt: number): string =>
  `${datasetPrefix(chainId, datasetUuid)}${taskId}/${attempt}/`;

/** The dataset_version of one range: the same range of the same stream config is the same version. */
export const rangeDatasetVersion = (datasetUuid: string, configHash: string, start: number, end: number): string =>
  uuidV5('chain_sync_range', datasetUuid, configHash, start, end);

const uuid = z.string().regex(UUID_RE, 'must be a UUID');
const slug = z.string().regex(SLUG_RE, 'must match ^[a-z0-9_]{1,64}$');
const block = z.number().int().min(0).max(MAX_BLOCK);

/** The job-level part, written by the planner into `jobs.config`. */
export const cryoIngestConfigSchema = z.strictObject({
  chain_sync: z.string().min(1).max(64),
  chain_sync_job_id: uuid,
  chain_id: z.number().int().positive().max(Number.MAX_SAFE_INTEGER),
  dataset_key: slug,
  dataset_uuid: uuid,
  cryo_dataset_name: slug,
  rpc_pool: slug,
  config_hash: z.string().regex(/^[0-9a-f]{64}$/, 'must be a sha256 hex digest'),
  output_prefix: z.string().min(1).max(512),
});
export type CryoIngestConfig = z.infer<typeof cryoIngestConfigSchema>;

const triggerSchema = z.looseObject({ range_start: block, range_end: block });

/** Everything one range task needs, as the spec names it. */
export interface CryoIngestPayload extends CryoIngestConfig {
  range_start: number;
  range_end: number;
}

function invalid(problems: Array<{ path: string; message: string }>): TraceError {
  const first = problems[0]!;
  return new TraceError(422, 'CRYO_PAYLOAD_INVALID', `invalid cryo_ingest payload: ${first.path}: ${first.message}`, { problems, extra: { retryable: false } });
}

/** Reads and checks the payload of a claimed task (config + trigger). */
export function cryoIngestPayload(task: Pick<TaskPayload, 'config' | 'trigger'>): CryoIngestPayload {
  const problems: Array<{ path: string; message: string }> = [];
  const c = cryoIngestConfigSchema.safeParse(task.config);
  if (!c.success) for (const i of c.error.issues) problems.push({ path: formatPath(['config', ...i.path]), message: i.message });
  const t = triggerSchema.safeParse(task.trigger);
  if (!t.success) for (const i of t.error.issues) problems.push({ path: formatPath(['trigger', ...i.path]), message: i.message });
  if (problems.length > 0) throw invalid(problems);
  const cfg = c.data!;
  const { range_start, range_end } = t.data!;
  if (range_end <= range_start) throw invalid([{ path: 'trigger.range_end', message: 'must be greater than range_start ([start, end))' }]);
  if (cfg.output_prefix !== datasetPrefix(cfg.chain_id, cfg.dataset_uuid)) {
    throw invalid([{ path: 'config.output_prefix', message: 'does not match the dataset layout cryo/{chain_id}/{dataset_uuid}/' }]);
  }
  return { ...cfg, range_start, range_end };
}
