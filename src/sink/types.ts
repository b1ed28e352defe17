import type { Queryable } from '../db/db.js';
import type { Problem } from '../core/errors.js';

/**
 * Attribution of a batch, taken only from the trusted buffer-queue message (written by the
 * Dispatcher's outbox from the fenced publish record), never from the rows.
 */
export interface BatchAttribution {
  org_id: string;
  publish_id: string;
  task_id: string;
  attempt: number;
  job_id: string | null;
}

export type RowCheck<Row> = { ok: true; row: Row } | { ok: false; problems: Problem[] };

/** One buffered dataset the sink can write: its row schema and its idempotent upsert. */
export interface BufferedDatasetSpec<Row = unknown> {
  /** The registry name and `dedupe_scope` (for example `alert_events`). */
  name: string;
  /** Validates one parsed JSONL value. Paths in problems are relative to the row. */
  checkRow(value: unknown): RowCheck<Row>;
  /**
   * Upserts the validated rows inside the caller's transaction (`ON CONFLICT` on the dataset's
   * dedupe key, nothing updated for existing keys) and returns how many rows were new and the
   * commit range `[seqStart, seqEnd)` of the new rows (null when none were new).
   */
  write(q: Queryable, rows: Row[], a: BatchAttribution): Promise<{ inserted: number; seqStart: number | null; seqEnd: number | null }>;
  /**
   * The queryable copy of committed rows (written as Parquet into the object store after each
   * commit): `select` reads one commit's rows from Postgres data (`$1` org_id, `$2`/`$3` the
   * `[seqStart, seqEnd)` range), `columns` are their DuckDB types in column order.
   */
  snapshot?: { select: string; columns: ReadonlyArray<readonly [name: string, duckdbType: string]> };
}
