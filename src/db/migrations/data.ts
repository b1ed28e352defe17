import type { Migration } from './types.js';

/**
 * Postgres data: user-facing datasets and platform-owned query, alert and audit tables.
 * No foreign keys to Postgres state: org_id, user_id, task_id here are soft references.
 */
export const dataMigrations: Migration[] = [
  {
    version: 1,
    name: 'data database bootstrap',
    sql: `
CREATE TABLE data_info (
  key text PRIMARY KEY,
  value text NOT NULL
);
INSERT INTO data_info (key, value) VALUES ('role', 'trace-data');
`,
  },
  {
    version: 2,
    name: 'query service audit: query_audit, user_query_audit, pii_access_log',
    // Owned by src/query/audit.ts. Dataset-level audit rows only: never SQL text.
    // columns_accessed stays NULL while column-level attribution is not possible for arbitrary
    // SQL; result_columns holds the names of the columns the query returned.
    sql: `
CREATE TABLE query_audit (
  id bigserial PRIMARY KEY,
  org_id uuid NOT NULL,
  task_id uuid NOT NULL,
  attempt int NOT NULL,
  dataset_id uuid NOT NULL,
  dataset_version text,
  query_time timestamptz NOT NULL DEFAULT now(),
  duration_ms int NOT NULL,
  columns_accessed jsonb,
  result_columns text[] NOT NULL DEFAULT '{}',
  result_row_count bigint NOT NULL,
  truncated boolean NOT NULL DEFAULT false
);
CREATE INDEX query_audit_org_time_idx ON query_audit (org_id, query_time DESC);
CREATE INDEX query_audit_task_time_idx ON query_audit (task_id, query_time DESC);

CREATE TABLE user_query_audit (
  id bigserial PRIMARY KEY,
  org_id uuid NOT NULL,
  user_sub text NOT NULL,
  dataset_id uuid NOT NULL,
  dataset_name text NOT NULL,
  dataset_version text,
  query_time timestamptz NOT NULL DEFAULT now(),
  duration_ms int NOT NULL,
  columns_accessed jsonb,
  result_columns text[] NOT NULL DEFAULT '{}',
  result_row_count bigint NOT NULL,
  truncated boolean NOT NULL DEFAULT false
);
CREATE INDEX user_query_audit_org_time_idx ON user_query_audit (org_id, query_time DESC);
CREATE INDEX user_query_audit_user_time_idx ON user_query_audit (user_sub, query_time DESC);

CREATE TABLE pii_access_log (
  id uuid PRIMARY KEY,
  org_id uuid NOT NULL,
  user_id uuid,
  task_id uuid,
  dataset text NOT NULL,
  column_name text,
  record_id uuid,
  action text NOT NULL,
  accessed_at timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT pii_access_log_one_principal CHECK ((user_id IS NULL) <> (task_id IS NULL))
);
CREATE INDEX pii_access_log_org_idx ON pii_access_log (org_id);
CREATE INDEX pii_access_log_user_idx ON pii_access_log (user_id);
CREATE INDEX pii_access_log_task_idx ON pii_access_log (task_id);
CREATE INDEX pii_access_log_accessed_idx ON pii_access_log (accessed_at);
CREATE INDEX pii_access_log_dataset_idx ON pii_access_log (dataset);
`,
  },
];
