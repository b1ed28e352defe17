/**
 * The DuckDB execution sandbox (defense in depth behind the SQL gate). It runs inside a query
 * executor process (README.md in this folder), never in the Query Service itself.
 *
 * A query runs on a locked in-memory DuckDB instance of its own grant: a fresh one
 * (`QuerySandbox`), or one reused for that exact grant by `SandboxPool` (instances.ts) with a
 * fresh connection per query. A grant is one or more relations, each a name and an exact file
 * list; trusted code attaches each as a temporary view of the connection under its name
 * (`read_parquet` over the exact file list, scanned in place; a single-dataset query's relation
 * is `dataset`), and the instance is locked down before any untrusted SQL runs:
 *   allowed_paths = exactly the granted files of all relations; enable_external_access = false; extension
 *   autoinstall/autoload off; a private 0700 temp directory with a size cap; memory and thread
 *   caps; lock_configuration = true; every setting read back and checked.
 * Any failed step fails the query (500 QUERY_SANDBOX_FAILED). The untrusted statement must
 * prepare as exactly one SELECT (checked on the wrapped statement, and on the statement alone
 * when that fails, for a precise error), runs wrapped in an outer LIMIT (limit + 1, to compute
 * `truncated`), streams, stops at the row or byte cap, and is interrupted at the timeout.
 * Error messages are scrubbed of SQL echoes and of file paths and URLs.
 *
 * S3: `s3://` files need DuckDB's `httpfs` extension, which is not built into
 * `@duckdb/node-api`. It must be installed in the deployment image ahead of time (for example
 * `INSTALL httpfs` run once at image build, into the image's DuckDB extension directory); the
 * sandbox only `LOAD`s it and never downloads. Without it, S3 grants fail closed with 501
 * S3_UNSUPPORTED. Egress must be restricted to the object store endpoint (ADR 0002). The S3
 * path is not exercised by this repository's tests.
 */
import { mkdtempSync, renameSync, rmSync } from 'node:fs';
import { randomUUID } from 'node:crypto';
import { join, isAbsolute } from 'node:path';
import { DuckDBInstance, StatementType, type DuckDBConnection, type DuckDBPreparedStatement } from '@duckdb/node-api';
import { TraceError } from '../../core/errors.js';
import { columnClass, filterValueProblem, inputFilterShapeProblem, type FilterValue, type InputFilter } from '../../core/input-filter.js';
import { isGatedSql, DATASET_RELATION, type GatedSql } from './gate.js';
import { MAX_RELATIONS, relationNameProblem } from './relations.js';
import { defaultTempRoot } from './spill.js';
import { toJsonValue, type JsonValue } from './values.js';

export const ENGINE_LIMITS = {
  /** `inline_row_limit` (operations.md): the clamp for `limit`. */
  maxRows: 10_000,
  /** `inline_byte_limit` (operations.md). */
  maxBytes: 10 * 1024 * 1024,
  /** `/v1/query` max runtime (operations.md); `/v1/task/query` passes 300 s. */
  timeoutMs: 60_000,
  memoryLimit: '1GB',
  threads: 2,
  maxTempDirectorySize: '4GB',
  /** Most files one query may attach. */
  maxFiles: 10_000,
} as const;

export interface QueryColumn {
  name: string;
  /** DuckDB type name, e.g. `BIGINT`, `DECIMAL(18,3)`, `STRUCT(a INTEGER)`. */
  type: string;
}

export interface QueryResultSet {
  columns: QueryColumn[];
  rows: JsonValue[][];
  truncated: boolean;
}

/** One granted dataset version under the relation name a query uses for it. */
export interface RelationGrant {
  /** A valid relation name (relations.ts), lower case. */
  name: string;
  /** Absolute local paths or `s3://bucket/key` URLs. */
  files: string[];
  /**
   * The input edge filter of a task's grant (ADR 0007): the relation shows only the rows whose
   * columns match (AND across columns, a list is IN). Built here by trusted code from typed
   * literals; a column the files do not have, or a value its type cannot hold, fails the query
   * (422 INPUT_FILTER_INVALID) rather than reading unfiltered rows.
   */
  where?: InputFilter;
}

/**
 * What one query may read: the files of one dataset version as the relation `dataset`, or
 * several named relations.
 */
export type EngineGrant = { files: string[] } | { relations: RelationGrant[] };

/** A grant with its relations sorted by name and the union of their files (sorted, distinct). */
export interface NormalizedGrant {
  relations: RelationGrant[];
  files: string[];
}

/**
 * Checks and normalizes a grant: relation names valid and distinct, at most MAX_RELATIONS, every
 * file an absolute path or s3:// URL, at most ENGINE_LIMITS.maxFiles files in all. Throws 500
 * QUERY_SANDBOX_FAILED for anything trusted code should never have produced.
 */
export function normalizeGrant(grant: EngineGrant): NormalizedGrant {
  const raw = 'relations' in grant ? grant.relations : [{ name: DATASET_RELATION, files: grant.files }];
  if (!Array.isArray(raw) || raw.length === 0 || raw.length > MAX_RELATIONS) sandboxFail('relations');
  const names = new Set<string>();
  const relations: RelationGrant[] = [];
  for (const r of raw) {
    if (typeof r.name !== 'string' || relationNameProblem(r.name) !== undefined || r.name !== r.name.toLowerCase() || names.has(r.name)) sandboxFail('relation name');
    names.add(r.name);
    checkFiles(r.files);
    if (r.where !== undefined && inputFilterShapeProblem(r.where) !== undefined) sandboxFail('input filter');
    relations.push({ name: r.name, files: [...r.files], ...(r.where !== undefined ? { where: r.where } : {}) });
  }
  relations.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  const files = [...new Set(relations.flatMap((r) => r.files))].sort();
  if (files.length > ENGINE_LIMITS.maxFiles) throw new TraceError(422, 'DATASET_TOO_LARGE', `the datasets have more than ${ENGINE_LIMITS.maxFiles} files`);
  return { relations, files };
}

export interface S3Settings {
  region?: string;
  endpoint?: string;
  accessKeyId?: string;
  secretAccessKey?: string;
  sessionToken?: string;
  urlStyle?: 'path' | 'vhost';
  useSsl?: boolean;
}

export interface SandboxOptions {
  memoryLimit?: string;
  threads?: number;
  maxTempDirectorySize?: string;
  /**
   * Parent of each instance's spill directory. An executor passes its own directory under the
   * owned spill root (spill.ts); direct callers default to /dev/shm when writable, else the OS
   * tmpdir.
   */
  tempRoot?: string;
  s3?: S3Settings;
}

export interface RunQueryInput {
  grant: EngineGrant;
  /** Output of the SQL gate; raw strings are refused. */
  sql: GatedSql;
  limit?: number;
  timeoutMs?: number;
  maxBytes?: number;
  sandbox?: SandboxOptions;
  /**
   * Where sandboxes come from: a pool reusing one locked instance per grant (see pool.ts), or,
   * when absent or when it declines a grant, a fresh instance for this query alone.
   */
  pool?: SandboxProvider;
}

/** A locked sandbox lent to one query. */
export interface SandboxLease {
  execute(sql: string, opts?: { limit?: number; maxBytes?: number }): Promise<QueryResultSet>;
  interrupt(): void;
  /** Gives the sandbox back; `discard` retires it instead of keeping it for reuse. */
  release(discard: boolean): void;
}

export interface SandboxProvider {
  /** A lease for `grant`, or null when this provider does not serve that grant. */
  lease(grant: EngineGrant): Promise<SandboxLease | null>;
}

/** Clamps a requested row limit to [1, maxRows]; absent or non-finite means maxRows. */
export function clampLimit(limit: number | undefined, maxRows: number = ENGINE_LIMITS.maxRows): number {
  if (limit === undefined || !Number.isFinite(limit)) return maxRows;
  return Math.min(maxRows, Math.max(1, Math.trunc(limit)));
}

// ---------------------------------------------------------------------------------------------
// Error scrubbing and classification
// ---------------------------------------------------------------------------------------------

const URL_RE = /\b(?:s3|s3a|gcs|gs|r2|az|abfss|https?|file):\/\/[^\s"'`)\],]*/gi;
const ABS_PATH_RE = /(^|[\s"'`([=,:])\/[^\s"'`)\],]*/g;

/** Removes SQL echoes (`LINE n: ...` context) and replaces file paths and URLs with `<dataset>`. */
export function scrubEngineMessage(message: string, files: readonly string[] = []): string {
  let m = message;
  const cut = m.search(/\n\s*LINE \d+:/);
  if (cut >= 0) m = m.slice(0, cut);
  for (const f of [...files].sort((a, b) => b.length - a.length)) if (f) m = m.split(f).join('<dataset>');
  m = m.replace(URL_RE, '<dataset>').replace(ABS_PATH_RE, (_all, lead: string) => `${lead}<dataset>`);
  m = m.replace(/\s+/g, ' ').trim();
  return m.length > 500 ? `${m.slice(0, 500)}...` : m;
}

function errorText(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

/** Maps a DuckDB error from the untrusted statement to a TraceError with a scrubbed message. */
function classifyQueryError(e: unknown, files: readonly string[]): TraceError {
  if (e instanceof TraceError) return e;
  const raw = errorText(e);
  const msg = scrubEngineMessage(raw, files);
  const kind = /^([A-Za-z ]+?) Error:/.exec(raw)?.[1]?.trim().toLowerCase() ?? '';
  if (kind === 'permission') return new TraceError(403, 'QUERY_SANDBOX_DENIED', `the query tried to reach something outside the dataset: ${msg}`);
  if (kind === 'out of memory') return new TraceError(422, 'QUERY_RESOURCE_LIMIT', `the query exceeded its memory or spill budget: ${msg}`);
  if (kind === 'io' || kind === 'http') return new TraceError(503, 'DATASET_UNAVAILABLE', `the dataset could not be read: ${msg}`);
  if (['binder', 'parser', 'catalog', 'conversion', 'invalid input', 'out of range', 'not implemented', 'type mismatch', 'constraint', 'syntax', 'invalid type'].includes(kind)) {
    return new TraceError(400, 'QUERY_INVALID', msg);
  }
  return new TraceError(500, 'QUERY_FAILED', `query failed: ${msg}`);
}

const timeoutError = (ms: number) =>
  new TraceError(504, 'QUERY_TIMEOUT', `the query did not finish within ${ms >= 1000 ? `${ms / 1000} s` : `${ms} ms`}; narrow it (filters, LIMIT) or split the work`);

// ---------------------------------------------------------------------------------------------
// The sandbox
// ---------------------------------------------------------------------------------------------

const sqlString = (s: string) => `'${s.replace(/'/g, "''")}'`;
const S3_URL_RE = /^s3:\/\/[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]\/[^\0\r\n]+$/;

export function checkFiles(files: readonly string[]): void {
  if (!Array.isArray(files) || files.length === 0) throw new TraceError(500, 'QUERY_SANDBOX_FAILED', 'no files to attach');
  if (files.length > ENGINE_LIMITS.maxFiles) throw new TraceError(422, 'DATASET_TOO_LARGE', `the dataset has more than ${ENGINE_LIMITS.maxFiles} files`);
  for (const f of files) {
    const ok = typeof f === 'string' && !/[\0\r\n]/.test(f) && (S3_URL_RE.test(f) || (isAbsolute(f) && f.startsWith('/') && !f.split('/').includes('..')));
    if (!ok) throw new TraceError(500, 'QUERY_SANDBOX_FAILED', 'a granted file is not an absolute path or s3:// URL');
  }
}

const sandboxFail = (what: string, e?: unknown): never => {
  throw new TraceError(500, 'QUERY_SANDBOX_FAILED', `query sandbox setup failed (${what})`, e === undefined ? {} : { cause: e });
};

/** A private spill directory for one instance (0700, under tempRoot or /dev/shm). */
export function makeSpillDir(opts: SandboxOptions): string {
  return mkdtempSync(join(opts.tempRoot ?? defaultTempRoot(), opts.tempRoot ? 'spill-' : 'trace-query-'));
}

/** A fresh in-memory instance with the sandbox's engine options and one connection. */
export async function createInstance(opts: SandboxOptions, tempDir: string): Promise<{ instance: DuckDBInstance; conn: DuckDBConnection }> {
  let instance: DuckDBInstance | undefined;
  try {
    instance = await DuckDBInstance.create(':memory:', {
      threads: String(opts.threads ?? ENGINE_LIMITS.threads),
      memory_limit: opts.memoryLimit ?? ENGINE_LIMITS.memoryLimit,
      temp_directory: tempDir,
      max_temp_directory_size: opts.maxTempDirectorySize ?? ENGINE_LIMITS.maxTempDirectorySize,
      autoinstall_known_extensions: 'false',
      autoload_known_extensions: 'false',
    });
    return { instance, conn: await instance.connect() };
  } catch (e) {
    try { instance?.closeSync(); } catch { /* ignore */ }
    return sandboxFail('open', e);
  }
}

/** Column name -> DuckDB type of what `scan` returns. */
async function describeColumns(c: DuckDBConnection, scan: string): Promise<Map<string, string>> {
  const r = await c.runAndReadAll(`DESCRIBE ${scan}`);
  const out = new Map<string, string>();
  for (const row of r.getRowObjects()) out.set(String(row.column_name), String(row.column_type));
  return out;
}

/** One typed SQL literal for a filter value already checked against the column's type. */
function filterLiteral(type: string, v: FilterValue): string {
  const cls = columnClass(type);
  if (cls === 'blob') return `from_hex(${sqlString((v as string).slice(2))})`;
  if (typeof v === 'boolean') return v ? 'TRUE' : 'FALSE';
  if (typeof v === 'number') return Number.isInteger(v) ? v.toFixed(0) : String(v);
  return sqlString(v);
}

/**
 * The WHERE clause of a filtered relation: `"col" = literal` or `"col" IN (...)`, ANDed. Columns
 * must be among `columns` (the files' own schema), values must suit each column's type
 * (src/core/input-filter.ts, the same rules deploy checks); otherwise 422 INPUT_FILTER_INVALID.
 */
export function filterPredicate(where: InputFilter, columns: ReadonlyMap<string, string>, which = ''): string {
  const parts: string[] = [];
  for (const [col, raw] of Object.entries(where)) {
    const type = columns.get(col);
    if (type === undefined) {
      throw new TraceError(422, 'INPUT_FILTER_INVALID', `the input filter names column ${col}, which the dataset${which} does not have`);
    }
    const values = Array.isArray(raw) ? raw : [raw];
    for (const v of values) {
      const problem = filterValueProblem(type, v);
      if (problem) throw new TraceError(422, 'INPUT_FILTER_INVALID', `the input filter on column ${col}${which}: ${problem}`);
    }
    const lits = values.map((v) => filterLiteral(type, v));
    const ident = `"${col.replace(/"/g, '""')}"`;
    parts.push(lits.length === 1 ? `${ident} = ${lits[0]}` : `${ident} IN (${lits.join(', ')})`);
  }
  return parts.map((p) => `(${p})`).join(' AND ');
}

/**
 * Trusted attach: each relation's files as a TEMP VIEW of the connection under the relation's
 * name (`read_parquet` over the exact list, scanned in place). A temp view shadows any
 * main-schema object of the same name. Names were checked by normalizeGrant (identifiers, not
 * keywords) and are quoted besides. 503 DATASET_UNAVAILABLE / 500 DATASET_ATTACH_FAILED when the
 * files cannot be read.
 */
export async function attachDataset(c: DuckDBConnection, relations: readonly RelationGrant[]): Promise<void> {
  for (const r of relations) {
    try {
      const scan = `SELECT * FROM read_parquet([${r.files.map(sqlString).join(', ')}])`;
      const filter = r.where ? filterPredicate(r.where, await describeColumns(c, scan), relations.length > 1 ? ` (relation ${r.name})` : '') : undefined;
      await c.run(`CREATE TEMP VIEW "${r.name}" AS ${scan}${filter ? ` WHERE ${filter}` : ''}`);
    } catch (e) {
      if (e instanceof TraceError) throw e;
      const msg = scrubEngineMessage(errorText(e), r.files);
      const which = relations.length > 1 ? ` (relation ${r.name})` : '';
      if (/^(IO|HTTP) Error/.test(errorText(e))) throw new TraceError(503, 'DATASET_UNAVAILABLE', `the dataset could not be read${which}: ${msg}`);
      if (r.where) throw new TraceError(422, 'INPUT_FILTER_INVALID', `the input filter cannot be applied to the dataset${which}: ${msg}`);
      throw new TraceError(500, 'DATASET_ATTACH_FAILED', `the dataset could not be attached${which}: ${msg}`);
    }
  }
}

export class QuerySandbox implements SandboxLease {
  private closed = false;

  private constructor(
    private readonly instance: DuckDBInstance,
    private readonly conn: DuckDBConnection,
    private readonly tempDir: string,
    readonly files: readonly string[],
    readonly relations: readonly string[],
  ) {}

  /**
   * Opens a fresh instance, attaches each relation as a view of its name and locks everything
   * down.
   * Throws 500 QUERY_SANDBOX_FAILED if any hardening step fails, 501 S3_UNSUPPORTED for S3 files
   * without httpfs, 503 DATASET_UNAVAILABLE / 500 DATASET_ATTACH_FAILED when the files cannot be
   * attached.
   */
  static async open(grant: EngineGrant, opts: SandboxOptions = {}): Promise<QuerySandbox> {
    const { relations, files } = normalizeGrant(grant);
    const tempDir = makeSpillDir(opts);
    let instance: DuckDBInstance | undefined;
    let conn: DuckDBConnection | undefined;
    try {
      ({ instance, conn } = await createInstance(opts, tempDir));
      const c = conn;
      if (files.some((f) => f.startsWith('s3://'))) await attachS3(c, opts.s3 ?? {});
      await attachDataset(c, relations);
      await lockDown(c, files, tempDir).catch((e: unknown) => sandboxFail('lockdown', e));
      return new QuerySandbox(instance, c, tempDir, files, relations.map((r) => r.name));
    } catch (e) {
      try { conn?.closeSync(); } catch { /* ignore */ }
      try { instance?.closeSync(); } catch { /* ignore */ }
      rmSync(tempDir, { recursive: true, force: true });
      throw e;
    }
  }

  /**
   * The locked connection, for trusted code and sandbox tests only. Untrusted SQL goes through
   * `execute` (or `runQuery`), never through this.
   */
  get connection(): DuckDBConnection {
    return this.conn;
  }

  /** Interrupts the running statement, if any. */
  interrupt(): void {
    if (!this.closed) this.conn.interrupt();
  }

  /**
   * Runs one statement on the locked instance. It must prepare as exactly one SELECT; it is
   * wrapped in `SELECT * FROM (...) LIMIT limit + 1` and streamed until the row or byte cap.
   * This does NOT run the SQL gate: callers pass gated SQL (runQuery enforces that).
   */
  async execute(sql: string, opts: { limit?: number; maxBytes?: number } = {}): Promise<QueryResultSet> {
    if (this.closed) throw new TraceError(500, 'QUERY_SANDBOX_FAILED', 'the sandbox is closed');
    return executeOn(this.conn, this.files, sql, opts);
  }

  /** The whole result as one file at `dest` (exportOn); gated SQL only, like `execute`. */
  async exportTo(sql: string, format: ExportFormat, dest: string): Promise<ExportResult> {
    if (this.closed) throw new TraceError(500, 'QUERY_SANDBOX_FAILED', 'the sandbox is closed');
    return exportOn(this.conn, this.files, sql, this.tempDir, format, dest);
  }

  /** A fresh sandbox is never reused: releasing it closes it. */
  release(): void {
    this.close();
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    try { this.conn.closeSync(); } catch { /* ignore */ }
    try { this.instance.closeSync(); } catch { /* ignore */ }
    rmSync(this.tempDir, { recursive: true, force: true });
  }
}

/**
 * Runs one statement on a locked connection that has the `dataset` view. It must prepare as
 * exactly one SELECT; it is wrapped in `SELECT * FROM (...) LIMIT limit + 1` and streamed until
 * the row or byte cap. This does NOT run the SQL gate: callers pass gated SQL.
 */
export async function executeOn(conn: DuckDBConnection, files: readonly string[], sql: string, opts: { limit?: number; maxBytes?: number } = {}): Promise<QueryResultSet> {
  const limit = clampLimit(opts.limit);
  const maxBytes = opts.maxBytes ?? ENGINE_LIMITS.maxBytes;
  try {
    const wrapped = `SELECT * FROM (\n${sql}\n) AS trace_result LIMIT ${limit + 1}`;
    const prepared = await prepareSelect(conn, wrapped, sql);
    const result = await prepared.stream();
    const columns: QueryColumn[] = [];
    for (let i = 0; i < result.columnCount; i++) columns.push({ name: result.columnName(i), type: result.columnType(i).toString() });
    const rows: JsonValue[][] = [];
    let bytes = 2 + Buffer.byteLength(JSON.stringify(columns));
    let truncated = false;
    outer: for (;;) {
      const chunk = await result.fetchChunk();
      if (!chunk || chunk.rowCount === 0) break;
      for (const raw of chunk.getRows()) {
        if (rows.length >= limit) { truncated = true; break outer; }
        const row = raw.map(toJsonValue);
        const size = Buffer.byteLength(JSON.stringify(row)) + 1;
        if (bytes + size > maxBytes) { truncated = true; break outer; }
        bytes += size;
        rows.push(row);
      }
    }
    prepared.destroySync();
    return { columns, rows, truncated };
  } catch (e) {
    throw classifyQueryError(e, files);
  }
}

/**
 * Prepares `wrapped` (the untrusted statement inside an outer SELECT), which must itself be
 * exactly one SELECT. Text that is several statements, or one that is not a SELECT, cannot parse
 * as one statement inside `FROM ( ... )` (a top-level `;` would split the wrapper). Fast path:
 * parse and bind once; on failure the statement alone says what is wrong with it.
 */
async function prepareSelect(conn: DuckDBConnection, wrapped: string, sql: string): Promise<DuckDBPreparedStatement> {
  const notSelect = () => new TraceError(400, 'SQL_REJECTED', 'SQL rejected (rule not_select): only SELECT statements run in the sandbox', { extra: { rule: 'not_select' } });
  let prepared: DuckDBPreparedStatement | undefined;
  let wrapError: unknown;
  try {
    prepared = await conn.prepare(wrapped);
  } catch (e) {
    wrapError = e;
  }
  if (prepared && prepared.statementType === StatementType.SELECT) return prepared;
  prepared?.destroySync();
  const own = await conn.extractStatements(sql);
  if (own.count !== 1) throw new TraceError(400, 'SQL_REJECTED', 'SQL rejected (rule statement_count): exactly one SELECT statement is required', { extra: { rule: 'statement_count' } });
  const ownPrepared = await own.prepare(0);
  const kind = ownPrepared.statementType;
  ownPrepared.destroySync();
  if (kind !== StatementType.SELECT || wrapError === undefined) throw notSelect();
  throw wrapError;
}

export type ExportFormat = 'parquet' | 'csv';

export interface ExportResult {
  columns: QueryColumn[];
  rowCount: number;
}

/**
 * Writes the whole result of one statement (gated SQL, exactly one SELECT, no row cap) as one
 * file: DuckDB's own COPY, run by trusted code around the wrapped statement, into the instance's
 * spill directory (the only directory the locked instance may write), then moved to `dest`.
 * `dest` must be on the same file system (the executor's own directory).
 */
export async function exportOn(conn: DuckDBConnection, files: readonly string[], sql: string, spillDir: string, format: ExportFormat, dest: string): Promise<ExportResult> {
  const tmp = join(spillDir, `trace-export-${randomUUID()}.${format}`);
  try {
    const wrapped = `SELECT * FROM (\n${sql}\n) AS trace_result`;
    const prepared = await prepareSelect(conn, wrapped, sql);
    const columns: QueryColumn[] = [];
    for (let i = 0; i < prepared.columnCount; i++) columns.push({ name: prepared.columnName(i), type: prepared.columnType(i).toString() });
    prepared.destroySync();
    const options = format === 'parquet' ? 'FORMAT parquet' : 'FORMAT csv, HEADER true';
    const r = await conn.runAndReadAll(`COPY (${wrapped}) TO ${sqlString(tmp)} (${options})`);
    const rowCount = Number(r.getRows()[0]?.[0] ?? 0);
    renameSync(tmp, dest);
    return { columns, rowCount };
  } catch (e) {
    rmSync(tmp, { force: true });
    throw classifyQueryError(e, files);
  }
}

async function attachS3(c: DuckDBConnection, s3: S3Settings): Promise<void> {
  try {
    await c.run('LOAD httpfs');
  } catch {
    throw new TraceError(
      501,
      'S3_UNSUPPORTED',
      'this Query Service cannot read s3:// datasets: the DuckDB httpfs extension is not installed in its image (install it at image build time; it is never downloaded at runtime)',
    );
  }
  const parts = ['TYPE s3'];
  if (s3.accessKeyId) parts.push(`KEY_ID ${sqlString(s3.accessKeyId)}`);
  if (s3.secretAccessKey) parts.push(`SECRET ${sqlString(s3.secretAccessKey)}`);
  if (s3.sessionToken) parts.push(`SESSION_TOKEN ${sqlString(s3.sessionToken)}`);
  if (s3.region) parts.push(`REGION ${sqlString(s3.region)}`);
  if (s3.endpoint) parts.push(`ENDPOINT ${sqlString(s3.endpoint.replace(/^https?:\/\//, ''))}`);
  if (s3.urlStyle) parts.push(`URL_STYLE ${sqlString(s3.urlStyle)}`);
  if (s3.useSsl !== undefined) parts.push(`USE_SSL ${s3.useSsl ? 'true' : 'false'}`);
  try {
    await c.run(`CREATE TEMP SECRET trace_s3 (${parts.join(', ')})`);
  } catch (e) {
    throw new TraceError(500, 'QUERY_SANDBOX_FAILED', 'query sandbox setup failed (s3 credentials)', { cause: e });
  }
}

/** The hardening sequence; then reads every setting back. Throws on any deviation. */
async function lockDown(c: DuckDBConnection, files: readonly string[], tempDir: string): Promise<void> {
  await applyLockdown(c, files);
  await verifyLockdown(c, files, tempDir);
}

/** Sets the instance-wide sandbox options and locks the configuration. */
export async function applyLockdown(c: DuckDBConnection, files: readonly string[]): Promise<void> {
  await c.run(`SET allowed_paths = [${files.map(sqlString).join(', ')}]`);
  await c.run('SET enable_external_access = false');
  await c.run('SET autoinstall_known_extensions = false');
  await c.run('SET autoload_known_extensions = false');
  await c.run('SET allow_community_extensions = false');
  await c.run('SET lock_configuration = true');
}

/**
 * Reads every sandbox setting back on `c` and proves the lock holds. Settings are global, so
 * running this on a connection opened after the lockdown shows new connections inherit them.
 */
export async function verifyLockdown(c: DuckDBConnection, files: readonly string[], tempDir: string): Promise<void> {
  const r = await c.runAndReadAll(`SELECT
    current_setting('enable_external_access')::VARCHAR,
    current_setting('autoinstall_known_extensions')::VARCHAR,
    current_setting('autoload_known_extensions')::VARCHAR,
    current_setting('lock_configuration')::VARCHAR,
    len(current_setting('allowed_paths'))::INTEGER,
    current_setting('allowed_directories')::VARCHAR[]`);
  const [ext, inst, load, lock, nPaths, dirs] = r.getRowsJson()[0] ?? [];
  const distinct = new Set(files).size;
  // DuckDB itself adds the spill directory to allowed_directories; nothing else may be there.
  const dirsOk = Array.isArray(dirs) && dirs.every((d) => d === tempDir || d === `${tempDir}/`);
  if (ext !== 'false' || inst !== 'false' || load !== 'false' || lock !== 'true' || nPaths !== distinct || !dirsOk) {
    throw new Error('sandbox settings did not take effect');
  }
  // The lock must hold: changing any option now has to fail.
  let changed = true;
  try {
    await c.run('SET enable_external_access = true');
  } catch {
    changed = false;
  }
  if (changed) throw new Error('configuration lock did not hold');
}

// ---------------------------------------------------------------------------------------------
// runQuery
// ---------------------------------------------------------------------------------------------

/**
 * Runs gated SQL against one grant in a fresh sandbox, with the row clamp, byte cap and timeout.
 * The timeout interrupts the running DuckDB statement (504 QUERY_TIMEOUT).
 */
export async function runQuery(input: RunQueryInput): Promise<QueryResultSet> {
  if (!isGatedSql(input.sql)) throw new TraceError(500, 'SQL_NOT_GATED', 'refusing to run SQL that did not pass the SQL gate');
  const names = normalizeGrant(input.grant).relations.map((r) => r.name);
  if (names.join(',') !== input.sql.relations.join(',')) {
    throw new TraceError(500, 'SQL_NOT_GATED', 'refusing to run SQL gated for other relations than the ones attached');
  }
  const timeoutMs = Math.max(1, input.timeoutMs ?? ENGINE_LIMITS.timeoutMs);
  let timedOut = false;
  let sandbox: SandboxLease | undefined;
  let rejectDeadline: (e: TraceError) => void = () => {};
  const deadline = new Promise<never>((_, rej) => { rejectDeadline = rej; });
  deadline.catch(() => {});
  const timer = setTimeout(() => {
    timedOut = true;
    sandbox?.interrupt();
    // If the engine does not yield to the interrupt promptly, answer anyway; cleanup follows.
    setTimeout(() => rejectDeadline(timeoutError(timeoutMs)), 2_000).unref();
  }, timeoutMs);
  const work = (async () => {
    let discard = false;
    try {
      sandbox = (await input.pool?.lease(input.grant)) ?? (await QuerySandbox.open(input.grant, input.sandbox));
      if (timedOut) throw timeoutError(timeoutMs);
      const opts: { limit?: number; maxBytes?: number } = {};
      if (input.limit !== undefined) opts.limit = input.limit;
      if (input.maxBytes !== undefined) opts.maxBytes = input.maxBytes;
      return await sandbox.execute(input.sql.sql, opts);
    } catch (e) {
      // A reused instance is retired after anything but a plain user error (an engine that ran
      // out of memory is retired too).
      discard = timedOut || !(e instanceof TraceError) || e.status >= 500 || e.code === 'QUERY_RESOURCE_LIMIT';
      if (timedOut) throw timeoutError(timeoutMs);
      throw e;
    } finally {
      sandbox?.release(discard);
    }
  })();
  try {
    return await Promise.race([work, deadline]);
  } finally {
    clearTimeout(timer);
    work.catch(() => {});
  }
}

/**
 * Runs gated SQL against one grant in a fresh sandbox (never a pooled one: its spill directory
 * is this export's alone) and writes its whole result to `dest` (exportOn), with the timeout.
 */
export async function runExport(input: { grant: EngineGrant; sql: GatedSql; format: ExportFormat; dest: string; timeoutMs?: number; sandbox?: SandboxOptions }): Promise<ExportResult> {
  if (!isGatedSql(input.sql)) throw new TraceError(500, 'SQL_NOT_GATED', 'refusing to run SQL that did not pass the SQL gate');
  const names = normalizeGrant(input.grant).relations.map((r) => r.name);
  if (names.join(',') !== input.sql.relations.join(',')) {
    throw new TraceError(500, 'SQL_NOT_GATED', 'refusing to run SQL gated for other relations than the ones attached');
  }
  const timeoutMs = Math.max(1, input.timeoutMs ?? ENGINE_LIMITS.timeoutMs);
  let sandbox: QuerySandbox | undefined;
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    sandbox?.interrupt();
  }, timeoutMs);
  try {
    sandbox = await QuerySandbox.open(input.grant, input.sandbox);
    if (timedOut) throw timeoutError(timeoutMs);
    return await sandbox.exportTo(input.sql.sql, input.format, input.dest);
  } catch (e) {
    if (timedOut) throw timeoutError(timeoutMs);
    throw e;
  } finally {
    clearTimeout(timer);
    sandbox?.close();
  }
}
