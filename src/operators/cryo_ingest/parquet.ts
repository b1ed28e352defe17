import { rmSync } from 'node:fs';
import { mkdtemp, rename, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DuckDBInstance, type DuckDBAppender, type DuckDBConnection } from '@duckdb/node-api';
import { TraceError } from '../../core/errors.js';
import { CRYO_COLUMNS, CRYO_SORT, DUCKDB_TYPE, type CellValue, type ColumnDef, type CryoDataset, type Row } from './schema.js';

/**
 * Parquet output in Cryo's layout. Rows are appended into typed DuckDB tables (one in-memory
 * database per ingest, spilling to a private temp directory), then each dataset is copied to
 * Parquet (zstd) sorted the way Cryo sorts.
 *
 * File names follow Cryo: `{network}__{dataset}__{first:08}_to_{last:08}.parquet`, where
 * `last = end - 1` (Cryo names the inclusive last block) and `network` is Cryo's name for the
 * chain id (`ethereum`, `base`, ... or `network_{chain_id}`). A file larger than
 * `maxBytesPerFile` is rewritten as two files split at the row median block, recursively, so
 * every file still names the contiguous block sub-range it holds.
 */

export interface ParquetCaps {
  maxFilesPerRange: number;
  maxBytesPerFile: number;
  maxTotalBytesPerRange: number;
}

/** Defaults of the Trace design (`MAX_PARQUET_*` env overrides). */
export const DEFAULT_CAPS: ParquetCaps = {
  maxFilesPerRange: 256,
  maxBytesPerFile: 512 * 1024 * 1024,
  maxTotalBytesPerRange: 2 * 1024 * 1024 * 1024,
};

export function capsFromEnv(env: NodeJS.ProcessEnv = process.env): ParquetCaps {
  const read = (name: string, dflt: number): number => {
    const raw = env[name]?.trim();
    if (!raw) return dflt;
    if (!/^\d+$/.test(raw) || Number(raw) < 1 || !Number.isSafeInteger(Number(raw))) {
      throw new TraceError(500, 'CRYO_CONFIG_INVALID', `${name} must be a positive integer`);
    }
    return Number(raw);
  };
  return {
    maxFilesPerRange: read('MAX_PARQUET_FILES_PER_RANGE', DEFAULT_CAPS.maxFilesPerRange),
    maxBytesPerFile: read('MAX_PARQUET_BYTES_PER_FILE', DEFAULT_CAPS.maxBytesPerFile),
    maxTotalBytesPerRange: read('MAX_TOTAL_PARQUET_BYTES_PER_RANGE', DEFAULT_CAPS.maxTotalBytesPerRange),
  };
}

export const capExceeded = (message: string): TraceError =>
  new TraceError(422, 'CRYO_ARTIFACT_CAP_EXCEEDED', message, { extra: { retryable: false } });

/** Cryo's network names (`cryo --network-name` default); other chains are `network_{id}`. */
const NETWORK_NAMES: Record<number, string> = {
  1: 'ethereum',
  5: 'goerli',
  10: 'optimism',
  56: 'bnb',
  69: 'optimism_kovan',
  100: 'gnosis',
  137: 'polygon',
  420: 'optimism_goerli',
  1101: 'polygon_zkevm',
  1442: 'polygon_zkevm_testnet',
  8453: 'base',
  10200: 'gnosis_chidao',
  17000: 'holesky',
  42161: 'arbitrum',
  42170: 'arbitrum_nova',
  43114: 'avalanche',
  80001: 'polygon_mumbai',
  84531: 'base_goerli',
  7777777: 'zora',
  11155111: 'sepolia',
};

export const cryoNetworkName = (chainId: number): string => NETWORK_NAMES[chainId] ?? `network_${chainId}`;

/** `[start, end)` -> Cryo file name with the inclusive last block, zero-padded to 8 digits. */
export function cryoFileName(chainId: number, dataset: string, start: number, end: number): string {
  const pad = (n: number) => String(n).padStart(8, '0');
  return `${cryoNetworkName(chainId)}__${dataset}__${pad(start)}_to_${pad(end - 1)}.parquet`;
}

/** Parses a Cryo-style name back into `{dataset, start, end}` (end exclusive). */
export function parseCryoFileName(name: string): { network: string; dataset: string; start: number; end: number } | undefined {
  const m = /^([a-z0-9_]+?)__([a-z0-9_]+?)__(?:.*__)?(\d+)_to_(\d+)\.parquet$/.exec(name);
  if (!m) return undefined;
  return { network: m[1]!, dataset: m[2]!, start: Number(m[3]), end: Number(m[4]) + 1 };
}

export interface WrittenFile {
  dataset: string;
  /** File name relative to the output directory. */
  name: string;
  range_start: number;
  range_end: number;
  rows: number;
  bytes: number;
}

const sqlString = (s: string): string => {
  if (s.includes('\u0000')) throw new TraceError(500, 'CRYO_PATH_INVALID', 'path contains a NUL byte');
  return `'${s.replace(/'/g, "''")}'`;
};

const int = (n: number): string => {
  if (!Number.isSafeInteger(n)) throw new TraceError(500, 'CRYO_RANGE_INVALID', 'range bounds must be integers');
  return String(n);
};

const badCell = (c: ColumnDef): TraceError => new TraceError(500, 'CRYO_ROW_INVALID', `column ${c.name} expects ${c.kind}`);

/** One cell (hot: no closure per call). */
function appendCell(app: DuckDBAppender, c: ColumnDef, v: CellValue | undefined): void {
  if (v === null || v === undefined) return app.appendNull();
  switch (c.kind) {
    case 'u32':
      if (typeof v !== 'number' || !Number.isInteger(v) || v < 0) throw badCell(c);
      return app.appendUInteger(v >>> 0); // Cryo stores `as u32`
    case 'u64': {
      const b = typeof v === 'bigint' ? v : typeof v === 'number' && Number.isInteger(v) ? BigInt(v) : undefined;
      if (b === undefined || b < 0n) throw badCell(c);
      return app.appendUBigInt(BigInt.asUintN(64, b)); // Cryo stores `as u64`
    }
    case 'blob':
      if (!(v instanceof Uint8Array)) throw badCell(c);
      return app.appendBlob(v);
    case 'varchar':
      if (typeof v !== 'string') throw badCell(c);
      return app.appendVarchar(v);
    case 'f64':
      if (typeof v !== 'number') throw badCell(c);
      return app.appendDouble(v);
    case 'bool':
      if (typeof v !== 'boolean') throw badCell(c);
      return app.appendBoolean(v);
  }
}

export interface ParquetStageOptions {
  /** DuckDB worker threads. Default 2 (the machines are shared). */
  threads?: number;
}

interface IdleDb {
  instance: DuckDBInstance;
  conn: DuckDBConnection;
  tempDir: string;
  threads: string;
}

/**
 * DuckDB instances of closed stages, tables dropped, kept for the next stage of this process:
 * creating and tearing down an instance (and its temp directory) per range costs more CPU
 * than the staging of a small range. At most `MAX_IDLE_DBS` wait; their temp directories are
 * removed at exit.
 */
const MAX_IDLE_DBS = 4;
const idleDbs: IdleDb[] = [];
let exitHook = false;

function keepIdle(db: IdleDb): boolean {
  if (idleDbs.length >= MAX_IDLE_DBS) return false;
  idleDbs.push(db);
  if (!exitHook) {
    exitHook = true;
    process.once('exit', () => {
      for (const d of idleDbs.splice(0)) rmSync(d.tempDir, { recursive: true, force: true });
    });
  }
  return true;
}

/** Typed staging tables for one ingest; close it when done. */
export class ParquetStage {
  readonly #instance: DuckDBInstance;
  readonly #conn: DuckDBConnection;
  readonly #tempDir: string;
  readonly #tables = new Set<CryoDataset>();
  readonly #appenders = new Map<CryoDataset, DuckDBAppender>();
  readonly #threads: string;
  #chain: Promise<unknown> = Promise.resolve();
  /** Some DuckDB work failed: the instance is not handed to another stage. */
  #broken = false;

  private constructor(instance: DuckDBInstance, conn: DuckDBConnection, tempDir: string, threads: string) {
    this.#instance = instance;
    this.#conn = conn;
    this.#tempDir = tempDir;
    this.#threads = threads;
  }

  static async open(opts: ParquetStageOptions = {}): Promise<ParquetStage> {
    const threads = String(opts.threads ?? 2);
    const i = idleDbs.findIndex((d) => d.threads === threads);
    if (i >= 0) {
      const d = idleDbs.splice(i, 1)[0]!;
      return new ParquetStage(d.instance, d.conn, d.tempDir, threads);
    }
    const tempDir = await mkdtemp(join(tmpdir(), 'trace-cryo-duckdb-'));
    const instance = await DuckDBInstance.create(':memory:', {
      threads,
      temp_directory: tempDir,
      preserve_insertion_order: 'true',
      autoinstall_known_extensions: 'false',
      autoload_known_extensions: 'false',
    });
    const conn = await instance.connect();
    return new ParquetStage(instance, conn, tempDir, threads);
  }

  /** Serialises DuckDB work (one connection, appenders are not re-entrant). */
  #serial<T>(fn: () => Promise<T>): Promise<T> {
    const next = this.#chain.then(fn, fn);
    this.#chain = next.catch(() => {
      this.#broken = true;
    });
    return next;
  }

  async ensureTable(dataset: CryoDataset): Promise<void> {
    if (this.#tables.has(dataset)) return;
    const cols = CRYO_COLUMNS[dataset].map((c) => `"${c.name}" ${DUCKDB_TYPE[c.kind]}`).join(', ');
    await this.#serial(() => this.#conn.run(`CREATE TABLE IF NOT EXISTS "${dataset}" (${cols})`));
    this.#tables.add(dataset);
  }

  /**
   * Appends rows through one appender per dataset, kept open for the whole stage: DuckDB
   * flushes it as its chunks fill, and the rest is flushed once before the table is read
   * (count, duplicate check, copy), instead of a flush per appended batch.
   */
  async append(dataset: CryoDataset, rows: readonly Row[]): Promise<void> {
    await this.ensureTable(dataset);
    if (rows.length === 0) return;
    const cols = CRYO_COLUMNS[dataset];
    await this.#serial(async () => {
      let app = this.#appenders.get(dataset);
      if (!app) {
        app = await this.#conn.createAppender(dataset);
        this.#appenders.set(dataset, app);
      }
      try {
        for (const r of rows) {
          for (const c of cols) appendCell(app, c, r[c.name]);
          app.endRow();
        }
      } catch (e) {
        // a half-appended row poisons the appender; drop it (the ingest fails anyway)
        this.#appenders.delete(dataset);
        try {
          app.closeSync();
        } catch {
          // already failed
        }
        throw e;
      }
    });
  }

  /** Makes appended rows visible to queries (call inside #serial). */
  #flush(dataset: CryoDataset): void {
    const app = this.#appenders.get(dataset);
    if (!app) return;
    this.#appenders.delete(dataset);
    app.flushSync();
    app.closeSync();
  }

  async count(dataset: CryoDataset, start: number, end: number): Promise<number> {
    await this.ensureTable(dataset);
    const r = await this.#serial(() => {
      this.#flush(dataset);
      return this.#conn.runAndReadAll(`SELECT count(*)::BIGINT AS n FROM "${dataset}" WHERE block_number >= ${int(start)} AND block_number < ${int(end)}`);
    });
    return Number(r.getRowObjectsJS()[0]!.n);
  }

  /** Rows whose key repeats (a fetch bug or a node that answered twice); must be 0. */
  async duplicateKeys(dataset: CryoDataset): Promise<number> {
    await this.ensureTable(dataset);
    const key = CRYO_SORT[dataset].map((k) => `"${k}"`).join(', ');
    const r = await this.#serial(() => {
      this.#flush(dataset);
      return this.#conn.runAndReadAll(`SELECT count(*)::BIGINT AS n FROM (SELECT ${key} FROM "${dataset}" GROUP BY ${key} HAVING count(*) > 1)`);
    });
    return Number(r.getRowObjectsJS()[0]!.n);
  }

  async #copy(dataset: CryoDataset, start: number, end: number, path: string): Promise<void> {
    const order = CRYO_SORT[dataset].map((k) => `"${k}"`).join(', ');
    const sql =
      `COPY (SELECT * FROM "${dataset}" WHERE block_number >= ${int(start)} AND block_number < ${int(end)} ORDER BY ${order}) ` +
      `TO ${sqlString(path)} (FORMAT parquet, COMPRESSION zstd)`;
    await this.#serial(() => {
      this.#flush(dataset);
      return this.#conn.run(sql);
    });
  }

  async #median(dataset: CryoDataset, start: number, end: number): Promise<number> {
    const r = await this.#serial(() => {
      this.#flush(dataset);
      return this.#conn.runAndReadAll(
        `SELECT quantile_disc(block_number, 0.5)::BIGINT AS m FROM "${dataset}" WHERE block_number >= ${int(start)} AND block_number < ${int(end)}`,
      );
    });
    const m = r.getRowObjectsJS()[0]?.m;
    const mid = m === null || m === undefined ? Math.floor((start + end) / 2) : Number(m);
    return Math.min(end - 1, Math.max(start + 1, mid));
  }

  /**
   * Writes `[start, end)` of a dataset as one or more Parquet files under `outDir`. Files are
   * written as hidden `.partial` files and renamed when complete.
   */
  async writeRange(dataset: CryoDataset, chainId: number, start: number, end: number, outDir: string, caps: ParquetCaps): Promise<WrittenFile[]> {
    await this.ensureTable(dataset);
    const out: WrittenFile[] = [];
    const write = async (s: number, e: number): Promise<void> => {
      const name = cryoFileName(chainId, dataset, s, e);
      const partial = join(outDir, `.${name}.partial`);
      await this.#copy(dataset, s, e, partial);
      const bytes = (await stat(partial)).size;
      if (bytes > caps.maxBytesPerFile) {
        await rm(partial, { force: true });
        if (e - s <= 1) {
          throw capExceeded(`block ${s} of ${dataset} alone exceeds MAX_PARQUET_BYTES_PER_FILE (${caps.maxBytesPerFile} bytes)`);
        }
        const mid = await this.#median(dataset, s, e);
        await write(s, mid);
        await write(mid, e);
        return;
      }
      if (out.length + 1 > caps.maxFilesPerRange) {
        await rm(partial, { force: true });
        throw capExceeded(`${dataset} needs more than MAX_PARQUET_FILES_PER_RANGE (${caps.maxFilesPerRange}) files`);
      }
      await rename(partial, join(outDir, name));
      out.push({ dataset, name, range_start: s, range_end: e, rows: await this.count(dataset, s, e), bytes });
    };
    await write(start, end);
    return out;
  }

  async close(): Promise<void> {
    await this.#chain.catch(() => undefined);
    for (const app of this.#appenders.values()) {
      try {
        app.closeSync();
      } catch {
        this.#broken = true; // the stage is being discarded
      }
    }
    this.#appenders.clear();
    if (!this.#broken && idleDbs.length < MAX_IDLE_DBS) {
      try {
        for (const t of this.#tables) await this.#conn.run(`DROP TABLE IF EXISTS "${t}"`);
        this.#tables.clear();
        if (keepIdle({ instance: this.#instance, conn: this.#conn, tempDir: this.#tempDir, threads: this.#threads })) return;
      } catch {
        // not reusable; close it below
      }
    }
    this.#conn.closeSync();
    this.#instance.closeSync();
    await rm(this.#tempDir, { recursive: true, force: true });
  }
}

/** Row count of each Parquet file (from the footer; reads no data pages). */
export async function parquetRowCounts(paths: readonly string[]): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  if (paths.length === 0) return out;
  const instance = await DuckDBInstance.create(':memory:', { threads: '1', autoinstall_known_extensions: 'false', autoload_known_extensions: 'false' });
  const conn = await instance.connect();
  try {
    const list = paths.map(sqlString).join(', ');
    const r = await conn.runAndReadAll(`SELECT file_name, num_rows::BIGINT AS n FROM parquet_file_metadata([${list}])`);
    for (const row of r.getRowObjectsJS()) out.set(String(row.file_name), Number(row.n));
  } catch {
    throw new TraceError(502, 'CRYO_OUTPUT_INVALID', 'a file written by cryo is not readable Parquet', { extra: { retryable: true } });
  } finally {
    conn.closeSync();
    instance.closeSync();
  }
  return out;
}
