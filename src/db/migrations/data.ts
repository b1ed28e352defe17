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
  {
    version: 3,
    name: 'alerting: alert_definitions, alert_events, alert_deliveries, delivery attempts; buffer sink ledger',
    // Owned by src/alerting/, src/sink/ and src/delivery/service/. org_id, user_id, job and task
    // ids are soft references to Postgres state (no cross-database foreign keys).
    sql: `
CREATE TABLE alert_definitions (
  id uuid PRIMARY KEY,
  org_id uuid NOT NULL,
  user_id uuid,
  name text NOT NULL,
  condition jsonb NOT NULL DEFAULT '{}',
  -- [{name, type: 'webhook', url, headers}]: destinations (PII) live only here
  channels jsonb NOT NULL DEFAULT '[]',
  visibility text NOT NULL DEFAULT 'org',
  enabled boolean NOT NULL DEFAULT true,
  deleted_at timestamptz,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX alert_definitions_org ON alert_definitions (org_id, created_at) WHERE deleted_at IS NULL;

-- Buffered, multi-writer: rows arrive only through the sink. seq orders commits per org (the
-- sink serializes writers per org and dataset), and dataset events carry seq ranges.
CREATE TABLE alert_events (
  id uuid PRIMARY KEY,
  seq bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
  org_id uuid NOT NULL,
  alert_definition_id uuid NOT NULL,
  producer_job_id uuid,
  producer_task_id uuid,
  producer_attempt int,
  publish_id uuid,
  severity text NOT NULL CHECK (severity IN ('info', 'warning', 'critical')),
  chain_id bigint,
  block_hash text,
  tx_hash text,
  block_number bigint,
  source_dataset_uuid uuid,
  partition_key text,
  cursor_value text,
  payload jsonb NOT NULL,
  dedupe_key text NOT NULL,
  event_time timestamptz NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  UNIQUE (org_id, dedupe_key)
);
CREATE INDEX alert_events_org_seq ON alert_events (org_id, seq);
CREATE INDEX alert_events_definition ON alert_events (org_id, alert_definition_id, event_time);

CREATE TABLE alert_deliveries (
  id uuid PRIMARY KEY,
  org_id uuid NOT NULL,
  alert_event_id uuid NOT NULL REFERENCES alert_events(id),
  alert_definition_id uuid NOT NULL,
  channel text NOT NULL,
  status text NOT NULL DEFAULT 'Pending' CHECK (status IN ('Pending', 'Delivered', 'Failed', 'Canceled')),
  attempt int NOT NULL DEFAULT 0,
  max_attempts int NOT NULL DEFAULT 12,
  next_attempt_at timestamptz NOT NULL DEFAULT now(),
  leased_until timestamptz,
  lease_owner text,
  last_attempt_at timestamptz,
  last_status_code int,
  provider_message_id text,
  error_message text,
  delivered_at timestamptz,
  created_by_task_id uuid,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(),
  UNIQUE (org_id, alert_event_id, channel)
);
CREATE INDEX alert_deliveries_due ON alert_deliveries (next_attempt_at, id) WHERE status = 'Pending';
CREATE INDEX alert_deliveries_definition ON alert_deliveries (org_id, alert_definition_id, created_at);

-- One row per outbound request: the delivery audit, attributable to (org_id, delivery_id).
CREATE TABLE alert_delivery_attempts (
  delivery_id uuid NOT NULL REFERENCES alert_deliveries(id),
  attempt int NOT NULL,
  org_id uuid NOT NULL,
  lease_owner text,
  started_at timestamptz NOT NULL,
  finished_at timestamptz NOT NULL DEFAULT now(),
  outcome text NOT NULL CHECK (outcome IN ('delivered', 'retryable', 'terminal', 'canceled')),
  status_code int,
  error text,
  address text,
  duration_ms int,
  PRIMARY KEY (delivery_id, attempt)
);

-- The sink's ledger: one row per committed buffer publish, written in the same transaction as
-- the rows, so a redelivered message is recognized and only its dataset event is re-reported.
CREATE TABLE buffer_batches (
  publish_id uuid PRIMARY KEY,
  org_id uuid NOT NULL,
  dataset text NOT NULL,
  task_id uuid NOT NULL,
  attempt int NOT NULL,
  job_id uuid,
  batch_uri text NOT NULL,
  rows_total int NOT NULL,
  rows_inserted int NOT NULL,
  seq_start bigint,
  seq_end bigint,
  committed_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX buffer_batches_task ON buffer_batches (task_id, attempt);

-- Refused batches (every receive that failed validation), for operators; never row contents.
CREATE TABLE buffer_rejections (
  id bigserial PRIMARY KEY,
  publish_id uuid,
  org_id uuid,
  dataset text,
  task_id uuid,
  receive_count int NOT NULL,
  code text NOT NULL,
  reason text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX buffer_rejections_publish ON buffer_rejections (publish_id);
`,
  },
  {
    version: 4,
    name: 'query results (ADR 0005): batch query executions and where their results live',
    sql: `
-- One row per persisted query execution (batch mode). No SQL text: sql_hash only. The result
-- object lives under the results prefix; the row stays after expiry as the record of the run.
CREATE TABLE query_results (
  id uuid PRIMARY KEY,
  org_id uuid NOT NULL,
  user_id uuid NOT NULL,
  saved_query_id uuid,
  task_id uuid,
  mode text NOT NULL CHECK (mode IN ('interactive', 'batch')),
  status text NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'expired')),
  sql_hash text NOT NULL,
  output_format text NOT NULL DEFAULT 'parquet',
  output_location text,
  columns jsonb,
  row_count bigint,
  bytes bigint,
  duration_ms int,
  error_code text,
  error_message text,
  expires_at timestamptz NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX query_results_org_created ON query_results (org_id, created_at DESC);
CREATE INDEX query_results_expiry ON query_results (expires_at) WHERE status <> 'expired';
`,
  },
];
