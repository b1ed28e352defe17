/**
 * Query Service audit rows in Postgres data (data_model/query_service.md, data_model/pii.md).
 * Dataset-level only: ids, version, counts, result column names, timing. Never SQL text.
 * A query writes one audit row per dataset it read (a join of two datasets writes two rows with
 * the same counts; they share `query_time`, the transaction's timestamp). Every dataset with PII
 * columns adds one `pii_access_log` row (action `query`, `column_name` NULL because arbitrary SQL
 * cannot be attributed to columns). All rows of one query are written in one transaction.
 */
import type { Db, Queryable } from '../db/db.js';
import { newId } from '../core/ids.js';

/** One dataset a query read. */
export interface AuditedDataset {
  dataset_uuid: string;
  dataset_version: string | null;
  /** Set when the dataset has PII columns: the `dataset` value of the pii_access_log row. */
  pii_dataset?: string;
}

export interface TaskQueryAuditRecord {
  org_id: string;
  task_id: string;
  attempt: number;
  datasets: AuditedDataset[];
  duration_ms: number;
  row_count: number;
  columns: string[];
  truncated: boolean;
}

export interface UserQueryAuditRecord {
  org_id: string;
  /** Users.id (UUID); also the pii_access_log principal. */
  user_id: string;
  /** Stable subject stored in `user_sub`; defaults to user_id. */
  user_sub?: string;
  datasets: Array<AuditedDataset & { dataset_name: string }>;
  duration_ms: number;
  row_count: number;
  columns: string[];
  truncated: boolean;
}

async function insertPiiAccess(q: Queryable, p: { org_id: string; user_id: string | null; task_id: string | null; dataset: string }): Promise<void> {
  await q.query(
    `INSERT INTO pii_access_log (id, org_id, user_id, task_id, dataset, column_name, record_id, action)
     VALUES ($1, $2, $3, $4, $5, NULL, NULL, 'query')`,
    [newId(), p.org_id, p.user_id, p.task_id, p.dataset],
  );
}

export async function recordTaskQuery(db: Db, r: TaskQueryAuditRecord): Promise<void> {
  await db.tx(async (q) => {
    for (const d of r.datasets) {
      await q.query(
        `INSERT INTO query_audit
           (org_id, task_id, attempt, dataset_id, dataset_version, duration_ms, result_columns, result_row_count, truncated)
         VALUES ($1, $2, $3, $4, $5, $6, $7::text[], $8, $9)`,
        [r.org_id, r.task_id, r.attempt, d.dataset_uuid, d.dataset_version, Math.round(r.duration_ms), r.columns, r.row_count, r.truncated],
      );
      if (d.pii_dataset !== undefined) {
        await insertPiiAccess(q, { org_id: r.org_id, user_id: null, task_id: r.task_id, dataset: d.pii_dataset });
      }
    }
  });
}

export async function recordUserQuery(db: Db, r: UserQueryAuditRecord): Promise<void> {
  await db.tx(async (q) => {
    for (const d of r.datasets) {
      await q.query(
        `INSERT INTO user_query_audit
           (org_id, user_sub, dataset_id, dataset_name, dataset_version, duration_ms, result_columns, result_row_count, truncated)
         VALUES ($1, $2, $3, $4, $5, $6, $7::text[], $8, $9)`,
        [r.org_id, r.user_sub ?? r.user_id, d.dataset_uuid, d.dataset_name, d.dataset_version, Math.round(r.duration_ms), r.columns, r.row_count, r.truncated],
      );
      if (d.pii_dataset !== undefined) {
        await insertPiiAccess(q, { org_id: r.org_id, user_id: r.user_id, task_id: null, dataset: d.pii_dataset });
      }
    }
  });
}
