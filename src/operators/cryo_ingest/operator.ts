/**
 * `cryo_ingest`: the platform operator chain_sync plans one task per block range on.
 *
 * One attempt writes `[range_start, range_end)` of one Cryo dataset into its attempt-scoped
 * staging prefix `cryo/{chain_id}/{dataset_uuid}/{task_id}/{attempt}/` of the object store
 * (Parquet, then `manifest.json`, then `_SUCCESS`, see manifest.ts) and returns exactly one
 * dataset publication. It never registers anything itself: the Dispatcher verifies the marker
 * and commits the publication on the fenced completion (data_versioning.md, commit protocol).
 *
 * Chain data comes only through the RPC egress gateway (`{gateway}/rpc/{rpc_pool}`): the
 * gateway URL is `TRACE_RPC_GATEWAY_URL` (default http://127.0.0.1:8083) or the `rpcGatewayUrl`
 * option; provider URLs never reach a worker. Mode: `TRACE_CRYO_MODE` (native | real | fake,
 * default native) or the `mode` option. Object store: the `objectStore` option, else
 * `TRACE_OBJECT_STORE_URL`, else `$TRACE_HOME/objects`.
 */
import { createReadStream } from 'node:fs';
import { readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { TraceError } from '../../core/errors.js';
import { DEFAULT_PORTS } from '../../core/config.js';
import type { Operator, OperatorContext, OperatorResult } from '../types.js';
import type { IngestMode, IngestResult } from './ingest.js';
import { MANIFEST_FILE, SUCCESS_FILE } from './manifest.js';
import { rpcClientForPool, type RpcClientOptions } from './rpc.js';
import { CRYO_INGEST_OPERATOR, attemptPrefix, cryoIngestPayload, rangeDatasetVersion, type CryoIngestPayload } from './payload.js';
import { localDir, openDefaultObjectStore, storageRefFor, type ObjectStore } from './store.js';

export interface CryoIngestOperatorOptions {
  /** Default: TRACE_OBJECT_STORE_URL, else $TRACE_HOME/objects (openObjectStore). */
  objectStore?: ObjectStore;
  /** Base URL of the RPC egress gateway (never a provider URL), or a getter read at run time. */
  rpcGatewayUrl?: string | (() => string | undefined);
  mode?: IngestMode;
  /** Where env defaults are read from at run time (default process.env). */
  env?: NodeJS.ProcessEnv;
  /**
   * Blocks per fetch-and-append step (default 250: each step is one DuckDB append, whose fixed
   * cost dominates at 100) and steps in flight (default 4).
   */
  chunkBlocks?: number;
  parallelChunks?: number;
  rpc?: Omit<RpcClientOptions, 'url' | 'log'>;
  /** Local staging root for stores that are not a local folder (default $TMPDIR/trace/cryo). */
  stagingRoot?: string;
}

/** The one publication a successful attempt returns (the wire shape of `datasets_published[0]`). */
export interface CryoPublication {
  dataset_uuid: string;
  dataset_version: string;
  storage_ref: Record<string, unknown>;
  config_hash: string;
  range_start: number;
  range_end: number;
  row_count: number;
  bytes: number;
}

export function gatewayUrlFrom(opts: CryoIngestOperatorOptions, env: NodeJS.ProcessEnv): string {
  const given = typeof opts.rpcGatewayUrl === 'function' ? opts.rpcGatewayUrl() : opts.rpcGatewayUrl;
  const url = given ?? env.TRACE_RPC_GATEWAY_URL?.trim() ?? '';
  return (url || `http://127.0.0.1:${DEFAULT_PORTS.rpcGateway}`).replace(/\/+$/, '');
}

/** Copies a committed local staging directory to the store: data first, `_SUCCESS` last. */
async function upload(store: ObjectStore, dir: string, prefix: string, res: IngestResult): Promise<void> {
  for (const f of res.files) await store.putStream(`${prefix}${f.path}`, createReadStream(join(dir, f.path)));
  await store.put(`${prefix}${MANIFEST_FILE}`, await readFile(join(dir, MANIFEST_FILE)));
  await store.put(`${prefix}${SUCCESS_FILE}`, await readFile(join(dir, SUCCESS_FILE)));
}

export function createCryoIngestOperator(opts: CryoIngestOperatorOptions = {}): Operator {
  let store: ObjectStore | undefined = opts.objectStore;

  async function run(ctx: OperatorContext): Promise<OperatorResult> {
    const env = opts.env ?? process.env;
    const p: CryoIngestPayload = cryoIngestPayload(ctx.task);
    // Loaded on first use: DuckDB is a native module the registry's importers need not pay for.
    const { ingestModeFromEnv, ingestRange } = await import('./ingest.js');
    store ??= await openDefaultObjectStore(env);
    const mode = opts.mode ?? ingestModeFromEnv(env, 'native');
    const prefix = attemptPrefix(p.chain_id, p.dataset_uuid, ctx.task.task_id, ctx.task.attempt);
    const log = ctx.log.child({ chain_id: p.chain_id, dataset_key: p.dataset_key, range_start: p.range_start, range_end: p.range_end });
    const rpc = mode === 'fake' ? undefined : rpcClientForPool(gatewayUrlFrom(opts, env), p.rpc_pool, { ...opts.rpc, log });
    const direct = localDir(store, prefix);
    const outDir = direct ?? join(opts.stagingRoot ?? join(tmpdir(), 'trace', 'cryo'), ctx.task.task_id, String(ctx.task.attempt));
    let res: IngestResult;
    try {
      res = await ingestRange({
        ...(rpc ? { rpc } : {}),
        chainId: p.chain_id,
        datasets: [p.cryo_dataset_name],
        start: p.range_start,
        end: p.range_end,
        outDir,
        mode,
        log,
        signal: ctx.signal,
        chunkBlocks: opts.chunkBlocks ?? 250,
        ...(opts.parallelChunks !== undefined ? { parallelChunks: opts.parallelChunks } : {}),
      });
      if (!direct) {
        await upload(store, outDir, prefix, res);
        await rm(outDir, { recursive: true, force: true });
      }
    } finally {
      rpc?.close();
    }
    if (res.manifest.range_start !== p.range_start || res.manifest.range_end !== p.range_end) {
      throw new TraceError(500, 'CRYO_OUTPUT_INVALID', 'the committed output covers another range', { extra: { retryable: false } });
    }
    const rows = res.row_counts[p.cryo_dataset_name] ?? 0;
    const publication: CryoPublication = {
      dataset_uuid: p.dataset_uuid,
      dataset_version: rangeDatasetVersion(p.dataset_uuid, p.config_hash, p.range_start, p.range_end),
      storage_ref: storageRefFor(store, prefix),
      config_hash: p.config_hash,
      range_start: p.range_start,
      range_end: p.range_end,
      row_count: rows,
      bytes: res.bytes,
    };
    log.info({ rows, bytes: res.bytes, files: res.files.length, mode }, 'cryo_ingest range written');
    return {
      datasets_published: [publication],
      outputs: [{ mode, files: res.files.length, rows, bytes: res.bytes }],
    };
  }

  return {
    info: {
      name: CRYO_INGEST_OPERATOR,
      runtimes: ['ecs_platform'],
      udf: 'forbidden',
      activations: ['source', 'reactive'],
      executionStrategies: ['PerPartition'],
      // each task writes one block range's files; a re-run replaces them
      writes: { replace: true },
      // planned by chain_sync only; never named by a user DAG
      hidden: true,
      validateConfig: () => [],
    },
    run,
  };
}

/** The operator as the registry lists it: every setting read from the environment at run time. */
export const cryoIngest: Operator = createCryoIngestOperator();
