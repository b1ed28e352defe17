/**
 * Messages between the Query Service and one executor process, over the child's IPC channel
 * (structured-clone serialization). Everything that crosses the boundary is here; nothing else
 * does (the executor's environment is scrubbed and its argv carries only the module path).
 *
 * Service -> executor:
 * - `init`: limits and where to spill, once, first;
 * - `run`: one gated-or-not statement (the executor gates it itself), the exact relations and
 *   files it may read, the row and byte caps. One at a time: the service sends the next `run`
 *   only after the previous `done`.
 * Executor -> service:
 * - `ready`: after init, with the executor's own spill directory;
 * - `done`: the result (the response body, already JSON, and what the audit row needs) or a
 *   stable error `{status, code, message}` whose message is scrubbed of SQL, paths and URLs;
 * - `fatal`: init failed; the executor exits.
 */
import type { QueryColumn, RelationGrant, S3Settings } from './engine.js';

export interface ExecutorInit {
  t: 'init';
  /** The owned spill root (spill.ts); the executor creates its own directory in it. */
  spillRoot: string;
  /** DuckDB `memory_limit` of each instance, e.g. `1024MB`. */
  memoryLimit: string;
  threads: number;
  maxTempDirectorySize: string;
  /** Locked instances kept for reuse per grant (0: a fresh instance per query) and their idle time. */
  maxInstances: number;
  idleMs: number;
  /** Object-store read settings for s3:// grants (httpfs), when the deployment has them. */
  s3?: S3Settings;
}

export interface ExecutorRun {
  t: 'run';
  id: number;
  /** The statement as the caller sent it; the executor runs the full SQL gate on it. */
  sql: string;
  relations: RelationGrant[];
  limit: number;
  maxBytes: number;
  /**
   * The service kills the executor at this deadline; the executor interrupts the statement a
   * little later on its own, in case it is still alive then.
   */
  timeoutMs: number;
  /**
   * What to do with the statement: `rows` (default) answers the capped rows as JSON; `check`
   * only runs the SQL gate; `export` writes the whole result, uncapped, as one file
   * `<executor dir>/<name>` in `format` (the service names the file and reads it).
   */
  action?: 'rows' | 'check' | 'export';
  export?: ExportSpec;
}

export interface ExportSpec {
  format: 'parquet' | 'csv';
  /** A plain file name (letters, digits, `-`, `_`, `.`), no directory. */
  name: string;
}

export type ToExecutor = ExecutorInit | ExecutorRun;

export interface ExecutorError {
  status: number;
  code: string;
  message: string;
  /** The gate rule, for SQL_REJECTED. */
  rule?: string;
}

export type FromExecutor =
  | { t: 'ready'; dir: string }
  | { t: 'done'; id: number; ok: true; columns: QueryColumn[]; rowCount: number; truncated: boolean; body: string }
  | { t: 'done'; id: number; ok: false; error: ExecutorError }
  | { t: 'fatal'; message: string };
