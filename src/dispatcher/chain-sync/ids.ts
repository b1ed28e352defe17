/** Deterministic identities and constants of chain_sync (one owner: this file). */
import { canonicalJson, sha256Hex, uuidV5 } from '../../core/ids.js';
import { CHAIN_SYNC_DAG_PREFIX, CRYO_INGEST_OPERATOR, datasetPrefix, type CryoIngestConfig } from '../../operators/cryo_ingest/payload.js';

export { CHAIN_SYNC_DAG_PREFIX, CRYO_INGEST_OPERATOR };

/** Stable id of a chain sync job: the same `(org, name)` is the same job forever. */
export const chainSyncJobId = (orgId: string, name: string): string => uuidV5('chain_sync_job', orgId, name);

/** The published dataset of a stream: deterministic from `(org_id, chain_id, dataset_key)` (spec). */
export const chainSyncDatasetUuid = (orgId: string, chainId: number, datasetKey: string): string =>
  uuidV5('chain_sync_dataset', orgId, chainId, datasetKey);

/** Hidden DAG name of a chain sync job's task rows. Not a valid DAG name, so no user route can touch it. */
export const chainSyncDagName = (name: string): string => `${CHAIN_SYNC_DAG_PREFIX}${name}`;

/** What the output data depends on: changing any of it would mix two datasets under one uuid. */
export const streamConfigHash = (chainId: number, datasetKey: string, cryoDatasetName: string): string =>
  sha256Hex(canonicalJson({ chain_id: chainId, dataset_key: datasetKey, cryo_dataset_name: cryoDatasetName }));

/** The stream's generation (jobs.outputs[0].dataset_version; informational). */
export const streamGeneration = (datasetUuid: string, configHash: string): string => uuidV5('chain_sync_generation', datasetUuid, configHash);

/** The view version listing exactly a set of committed objects. */
export const viewVersion = (datasetUuid: string, digest: string): string => uuidV5('chain_sync_view', datasetUuid, digest);

/** Task rows of chain sync: hidden job settings (a range is retried up to max_attempts, then waits for resume). */
export const CHAIN_SYNC_TASK_SETTINGS = { timeout_seconds: 3600, heartbeat_timeout_seconds: 120, max_attempts: 5 } as const;

export function taskConfig(a: { jobId: string; name: string; chainId: number; datasetKey: string; datasetUuid: string; cryoDatasetName: string; rpcPool: string }): CryoIngestConfig {
  return {
    chain_sync: a.name,
    chain_sync_job_id: a.jobId,
    chain_id: a.chainId,
    dataset_key: a.datasetKey,
    dataset_uuid: a.datasetUuid,
    cryo_dataset_name: a.cryoDatasetName,
    rpc_pool: a.rpcPool,
    config_hash: streamConfigHash(a.chainId, a.datasetKey, a.cryoDatasetName),
    output_prefix: datasetPrefix(a.chainId, a.datasetUuid),
  };
}

export const taskConfigHash = (cfg: CryoIngestConfig): string => sha256Hex(canonicalJson(cfg));

/** Dedupe key of a range's task on its hidden job (a re-drive appends `#r{n}`). */
export const rangeDedupeKey = (datasetKey: string, start: number, end: number, redrive = 0): string =>
  `chain_sync:${datasetKey}:${start}-${end}${redrive > 0 ? `#r${redrive}` : ''}`;
