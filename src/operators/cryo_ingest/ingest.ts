import { chmod, mkdir, readdir, rm, stat } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { z } from 'zod';
import { TraceError, formatPath } from '../../core/errors.js';
import { silentLogger, type Logger } from '../../core/log.js';
import { hexToBigInt, hexToNumber } from '../../chain/hex.js';
import type { RpcBlockWithTxs } from '../../chain/types.js';
import { runCryo } from './cryo_cli.js';
import { fakeChainView, fakeRows } from './fake.js';
import { chainError, fetchChunk } from './fetch.js';
import { MANIFEST_FILE, SUCCESS_FILE, commitManifest, readCommittedManifest, sha256File, type IngestManifest, type ManifestChain, type ManifestFile } from './manifest.js';
import { ParquetStage, capExceeded, capsFromEnv, parquetRowCounts, parseCryoFileName, type ParquetCaps, type WrittenFile } from './parquet.js';
import { blockRow, logRow, transactionRow } from './rows.js';
import type { RpcClient } from './rpc.js';
import { CRYO_DATASETS, isCryoDataset, type CryoDataset, type Row } from './schema.js';

/**
 * `ingestRange`: one block range `[start, end)` of one chain into Cryo-compatible Parquet in a
 * local staging directory (the attempt-scoped staging prefix), committed with `manifest.json`
 * and then `_SUCCESS`. No Dispatcher, queue or database code lives here: the platform operator
 * wraps this function, uploads the directory and publishes the dataset version.
 *
 * Modes:
 * - `native`: JSON-RPC through the RPC egress gateway (`rpc`), written with DuckDB.
 * - `cryo`: the real Cryo binary, pointed at the gateway pool URL of `rpc`.
 * - `fake`: deterministic rows from the block number, no network (tests, demos).
 *
 * Re-running into a directory that already holds a matching committed output returns that
 * output unchanged; leftovers of a crashed run (no `_SUCCESS`) are removed first.
 */

export type IngestMode = 'native' | 'cryo' | 'fake';
/** Cryo dataset names; native and fake modes support `blocks`, `transactions` and `logs`. */
export type CryoDatasetName = CryoDataset | (string & {});

export interface IngestProgress {
  blocks_done: number;
  blocks_total: number;
}

export interface IngestRangeOptions {
  /** Required for `native` and `cryo`; ignored by `fake`. */
  rpc?: RpcClient;
  chainId: number;
  datasets: readonly CryoDatasetName[];
  start: number;
  /** End exclusive. */
  end: number;
  outDir: string;
  mode: IngestMode;
  /** Defaults to the `MAX_PARQUET_*` environment (capsFromEnv). */
  caps?: Partial<ParquetCaps>;
  /** Blocks fetched and appended per step (native/fake). Default 100. */
  chunkBlocks?: number;
  /** Chunks fetched at once (native). Default 4. */
  parallelChunks?: number;
  /** Cryo binary for `mode: 'cryo'`. Default `TRACE_CRYO_BIN` or `cryo` on PATH. */
  cryoBin?: string;
  cryoTimeoutMs?: number;
  log?: Logger;
  signal?: AbortSignal;
  /** Called after every chunk (a hook for task heartbeats). */
  onProgress?: (p: IngestProgress) => void;
}

export interface IngestResult {
  outDir: string;
  files: ManifestFile[];
  row_counts: Record<string, number>;
  bytes: number;
  manifest: IngestManifest;
}

const DATASET_RE = /^[a-z0-9_]{1,64}$/;

const optionsSchema = z
  .object({
    chainId: z.number().int().positive().max(Number.MAX_SAFE_INTEGER),
    datasets: z.array(z.string().regex(DATASET_RE, 'dataset names match ^[a-z0-9_]{1,64}$')).min(1),
    start: z.number().int().min(0),
    end: z.number().int().min(1).max(2 ** 32, 'Cryo stores block numbers as u32'),
    outDir: z.string().min(1),
    mode: z.enum(['native', 'cryo', 'fake']),
    chunkBlocks: z.number().int().min(1).max(100_000).optional(),
    parallelChunks: z.number().int().min(1).max(64).optional(),
  })
  .refine((o) => o.start < o.end, { message: 'start must be below end (ranges are [start, end))', path: ['end'] })
  .refine((o) => new Set(o.datasets).size === o.datasets.length, { message: 'datasets must not repeat', path: ['datasets'] })
  .refine((o) => o.mode === 'cryo' || o.datasets.every(isCryoDataset), {
    message: `native and fake modes support ${CRYO_DATASETS.join(', ')}`,
    path: ['datasets'],
  });

/** `TRACE_CRYO_MODE`: `real`/`cryo` -> cryo, `native`, `fake`; unset -> `fallback`. */
export function ingestModeFromEnv(env: NodeJS.ProcessEnv = process.env, fallback: IngestMode = 'native'): IngestMode {
  const v = env.TRACE_CRYO_MODE?.trim().toLowerCase();
  if (!v) return fallback;
  if (v === 'real' || v === 'cryo') return 'cryo';
  if (v === 'native' || v === 'fake') return v;
  throw new TraceError(500, 'CRYO_CONFIG_INVALID', 'TRACE_CRYO_MODE must be native, real (cryo) or fake');
}

export async function ingestRange(opts: IngestRangeOptions): Promise<IngestResult> {
  const parsed = optionsSchema.safeParse(opts);
  if (!parsed.success) {
    throw new TraceError(400, 'CRYO_INGEST_INVALID', 'invalid ingest request', {
      problems: parsed.error.issues.map((i) => ({ path: formatPath(i.path), message: i.message })),
      extra: { retryable: false },
    });
  }
  if (opts.mode !== 'fake' && !opts.rpc) {
    throw new TraceError(400, 'CRYO_INGEST_INVALID', `mode ${opts.mode} needs an RPC client`, { extra: { retryable: false } });
  }
  const caps: ParquetCaps = { ...capsFromEnv(), ...opts.caps };
  const outDir = resolve(opts.outDir);
  const log = (opts.log ?? silentLogger).child({ chain_id: opts.chainId, range_start: opts.start, range_end: opts.end, mode: opts.mode });
  const datasets = [...opts.datasets];

  const existing = await prepareOutDir(outDir);
  if (existing) {
    const same =
      existing.mode === opts.mode &&
      existing.chain_id === opts.chainId &&
      existing.range_start === opts.start &&
      existing.range_end === opts.end &&
      [...existing.datasets].sort().join(',') === [...datasets].sort().join(',');
    if (!same) {
      throw new TraceError(409, 'CRYO_STAGING_CONFLICT', 'the output directory already holds a different committed range', { extra: { retryable: false } });
    }
    log.info('range already committed in this directory; reusing it');
    return result(outDir, existing);
  }

  if (opts.mode !== 'fake') await checkChainId(opts.rpc!, opts.chainId);
  const started = Date.now();
  const written =
    opts.mode === 'cryo'
      ? await viaCryo(opts, outDir, caps)
      : await viaStage(opts, datasets as CryoDataset[], outDir, caps);

  const total = written.reduce((a, f) => a + f.bytes, 0);
  if (written.length > caps.maxFilesPerRange) throw capExceeded(`the range produced ${written.length} files, above MAX_PARQUET_FILES_PER_RANGE (${caps.maxFilesPerRange})`);
  if (total > caps.maxTotalBytesPerRange) throw capExceeded(`the range produced ${total} bytes, above MAX_TOTAL_PARQUET_BYTES_PER_RANGE (${caps.maxTotalBytesPerRange})`);

  const files: ManifestFile[] = [];
  for (const f of [...written].sort((a, b) => a.name.localeCompare(b.name))) {
    files.push({ path: f.name, dataset: f.dataset, range_start: f.range_start, range_end: f.range_end, rows: f.rows, bytes: f.bytes, sha256: await sha256File(join(outDir, f.name)) });
  }
  const row_counts: Record<string, number> = {};
  for (const d of datasets) row_counts[d] = 0;
  for (const f of files) row_counts[f.dataset] = (row_counts[f.dataset] ?? 0) + f.rows;
  // Read after the data: the boundaries of what was written, as this node sees the chain now.
  const chain = opts.mode === 'fake' ? fakeChainView(opts.chainId, opts.start, opts.end) : await chainView(opts.rpc!, opts.start, opts.end);
  const manifest: IngestManifest = {
    manifest_version: 1,
    producer: 'trace.cryo_ingest',
    mode: opts.mode,
    chain_id: opts.chainId,
    datasets,
    range_start: opts.start,
    range_end: opts.end,
    files,
    row_counts,
    bytes: total,
    chain,
  };
  await commitManifest(outDir, manifest);
  log.info({ files: files.length, row_counts, bytes: total, ms: Date.now() - started }, 'cryo_ingest range committed');
  return result(outDir, manifest);
}

function result(outDir: string, m: IngestManifest): IngestResult {
  return { outDir, files: m.files, row_counts: m.row_counts, bytes: m.bytes, manifest: m };
}

const OWNED_RE = /(\.parquet|\.parquet\.partial|^manifest\.json(\.tmp)?|^_SUCCESS(\.tmp)?)$/;

/** Creates the private staging directory; returns the committed manifest if there is one. */
async function prepareOutDir(outDir: string): Promise<IngestManifest | undefined> {
  await mkdir(outDir, { recursive: true, mode: 0o700 });
  await chmod(outDir, 0o700);
  const entries = await readdir(outDir);
  if (entries.includes(SUCCESS_FILE)) return readCommittedManifest(outDir, { checkHashes: true });
  for (const name of entries) {
    if (OWNED_RE.test(name) || name === '.cryo') await rm(join(outDir, name), { recursive: true, force: true });
  }
  return undefined;
}

/** A pool pointing at the wrong chain must not write data under this chain's id. */
async function checkChainId(rpc: RpcClient, chainId: number): Promise<void> {
  const raw = await rpc.call<unknown>('eth_chainId');
  let got: number | undefined;
  try {
    got = typeof raw === 'string' ? hexToNumber(raw) : undefined;
  } catch {
    got = undefined;
  }
  if (got === undefined) throw new TraceError(502, 'CHAIN_BAD_RESPONSE', 'eth_chainId returned no chain id', { extra: { retryable: true } });
  if (got !== chainId) {
    throw new TraceError(422, 'CHAIN_ID_MISMATCH', `the RPC pool serves chain ${got}, not chain ${chainId}`, { extra: { retryable: false } });
  }
}

/**
 * The chain identity a range manifest records: the genesis hash, the node's head, the parent
 * hash of the range's first block and the hash of its last block (chain_sync compares them with
 * what it committed before, see src/dispatcher/chain-sync/identity.ts).
 */
async function chainView(rpc: RpcClient, start: number, end: number): Promise<ManifestChain> {
  const [genesis, first, last, head] = await rpc.callMany<unknown>([
    { method: 'eth_getBlockByNumber', params: ['0x0', false] },
    { method: 'eth_getBlockByNumber', params: [`0x${start.toString(16)}`, false] },
    { method: 'eth_getBlockByNumber', params: [`0x${(end - 1).toString(16)}`, false] },
    // the head as a block (not eth_blockNumber): the same kind of call as the data's
    { method: 'eth_getBlockByNumber', params: ['latest', false] },
  ]);
  const field = (b: unknown, n: number, f: 'hash' | 'parentHash'): string => {
    const v = b && typeof b === 'object' ? (b as Record<string, unknown>)[f] : undefined;
    if (b === null || b === undefined) throw chainError('CHAIN_BLOCK_MISSING', `the node has no block ${n} (is the range past the head?)`);
    if (typeof v !== 'string' || !/^0x[0-9a-fA-F]{64}$/.test(v)) throw chainError('CHAIN_BAD_RESPONSE', `the node returned block ${n} without a ${f}`);
    return v.toLowerCase();
  };
  let headBlock: number;
  try {
    headBlock = hexToNumber(String((head as { number?: unknown } | null)?.number));
  } catch {
    throw chainError('CHAIN_BAD_RESPONSE', 'the node returned its latest block without a number');
  }
  return { genesis_hash: field(genesis, 0, 'hash'), head_block: headBlock, first_parent_hash: field(first, start, 'parentHash'), last_block_hash: field(last, end - 1, 'hash') };
}

function checkAbort(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw new TraceError(499, 'CRYO_ABORTED', 'the ingest was aborted', { extra: { retryable: true } });
}

async function viaStage(opts: IngestRangeOptions, datasets: CryoDataset[], outDir: string, caps: ParquetCaps): Promise<WrittenFile[]> {
  const stage = await ParquetStage.open();
  try {
    for (const d of datasets) await stage.ensureTable(d);
    const step = opts.chunkBlocks ?? 100;
    const chunks: Array<[number, number]> = [];
    for (let s = opts.start; s < opts.end; s += step) chunks.push([s, Math.min(opts.end, s + step)]);
    const total = opts.end - opts.start;
    let done = 0;
    const progress = (n: number) => {
      done += n;
      opts.onProgress?.({ blocks_done: done, blocks_total: total });
    };

    if (opts.mode === 'fake') {
      for (const [s, e] of chunks) {
        checkAbort(opts.signal);
        for (const d of datasets) {
          const rows: Row[] = [];
          for (let b = s; b < e; b++) rows.push(...fakeRows(d, opts.chainId, b));
          await stage.append(d, rows);
        }
        progress(e - s);
      }
    } else {
      const rpc = opts.rpc!;
      const need = { blocks: datasets.includes('blocks'), transactions: datasets.includes('transactions'), logs: datasets.includes('logs') };
      let next = 0;
      let failure: { error: unknown } | undefined;
      const worker = async () => {
        while (!failure && next < chunks.length) {
          checkAbort(opts.signal);
          const [s, e] = chunks[next++]!;
          const data = await fetchChunk(rpc, s, e, need);
          if (need.blocks) await stage.append('blocks', data.blocks.map((b) => blockRow(b, opts.chainId)));
          if (need.transactions) {
            const rows: Row[] = [];
            for (const b of data.blocks as RpcBlockWithTxs[]) {
              const baseFee = b.baseFeePerGas ? hexToBigInt(b.baseFeePerGas) : null;
              for (const tx of b.transactions) rows.push(transactionRow(tx, data.receipts.get(tx.hash.toLowerCase()), baseFee, opts.chainId));
            }
            await stage.append('transactions', rows);
          }
          if (need.logs) await stage.append('logs', data.logs.map((l) => logRow(l, opts.chainId)));
          progress(e - s);
        }
      };
      // wait for every worker (they stop at the first failure) before the stage is closed
      await Promise.all(
        Array.from({ length: Math.min(opts.parallelChunks ?? 4, chunks.length) }, () =>
          worker().catch((error: unknown) => {
            failure ??= { error };
          }),
        ),
      );
      if (failure) throw failure.error;
    }

    for (const d of datasets) {
      if ((await stage.duplicateKeys(d)) > 0) {
        throw new TraceError(502, 'CRYO_DUPLICATE_ROWS', `${d} rows repeat a key; refusing to write the range`, { extra: { retryable: true } });
      }
    }
    if (datasets.includes('blocks')) {
      const n = await stage.count('blocks', opts.start, opts.end);
      if (n !== total) throw new TraceError(502, 'CHAIN_BLOCK_MISSING', `expected ${total} blocks, fetched ${n}`, { extra: { retryable: true } });
    }
    const out: WrittenFile[] = [];
    for (const d of datasets) out.push(...(await stage.writeRange(d, opts.chainId, opts.start, opts.end, outDir, caps)));
    return out;
  } finally {
    await stage.close();
  }
}

async function viaCryo(opts: IngestRangeOptions, outDir: string, caps: ParquetCaps): Promise<WrittenFile[]> {
  const bin = opts.cryoBin ?? process.env.TRACE_CRYO_BIN?.trim() ?? 'cryo';
  checkAbort(opts.signal);
  await runCryo({
    bin: bin || 'cryo',
    datasets: opts.datasets,
    rpcUrl: opts.rpc!.url,
    start: opts.start,
    end: opts.end,
    outDir,
    ...(opts.cryoTimeoutMs !== undefined ? { timeoutMs: opts.cryoTimeoutMs } : {}),
    ...(opts.signal ? { signal: opts.signal } : {}),
  });
  // Trace never depends on Cryo's own reports
  await rm(join(outDir, '.cryo'), { recursive: true, force: true });
  const names = (await readdir(outDir)).filter((n) => n.endsWith('.parquet')).sort();
  if (names.length === 0) throw new TraceError(502, 'CRYO_NO_OUTPUT', 'cryo produced no Parquet files', { extra: { retryable: false } });
  if (names.length > caps.maxFilesPerRange) {
    throw capExceeded(`cryo produced ${names.length} files, above MAX_PARQUET_FILES_PER_RANGE (${caps.maxFilesPerRange})`);
  }
  const paths = names.map((n) => join(outDir, n));
  const rows = await parquetRowCounts(paths);
  const out: WrittenFile[] = [];
  for (const [i, name] of names.entries()) {
    const bytes = (await stat(paths[i]!)).size;
    if (bytes > caps.maxBytesPerFile) throw capExceeded(`cryo wrote ${name} with ${bytes} bytes, above MAX_PARQUET_BYTES_PER_FILE (${caps.maxBytesPerFile})`);
    const meta = parseCryoFileName(name);
    const dataset = meta && opts.datasets.includes(meta.dataset) ? meta.dataset : opts.datasets.find((d) => name.includes(`__${d}__`));
    if (!dataset) throw new TraceError(502, 'CRYO_OUTPUT_INVALID', `cannot tell which dataset ${name} holds`, { extra: { retryable: false } });
    out.push({
      dataset,
      name,
      range_start: meta?.start ?? opts.start,
      range_end: meta?.end ?? opts.end,
      rows: rows.get(paths[i]!) ?? 0,
      bytes,
    });
  }
  return out;
}

/** Re-exported so callers verify a prefix with the same rules the writer used. */
export { readCommittedManifest, MANIFEST_FILE, SUCCESS_FILE };
