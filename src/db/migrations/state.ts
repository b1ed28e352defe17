import type { Migration } from './types.js';

/**
 * Postgres state: the source of truth for orchestration. Column names and uniqueness rules
 * follow the data model documents (state_schema.md, orchestration.md, data_versioning.md).
 */
export const stateMigrations: Migration[] = [
  {
    version: 1,
    name: 'identity, dags, jobs, registry, tasks, outbox, queue',
    sql: `
CREATE TABLE orgs (
  id uuid PRIMARY KEY,
  name text NOT NULL,
  slug text NOT NULL UNIQUE,
  settings jsonb NOT NULL DEFAULT '{}',
  created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE users (
  id uuid PRIMARY KEY,
  org_id uuid NOT NULL REFERENCES orgs(id),
  external_id text NOT NULL UNIQUE,
  email text,
  role text NOT NULL DEFAULT 'member',
  created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE org_roles (
  id uuid PRIMARY KEY,
  org_id uuid NOT NULL REFERENCES orgs(id),
  slug text NOT NULL,
  name text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  UNIQUE (org_id, slug)
);

CREATE TABLE org_role_memberships (
  role_id uuid NOT NULL REFERENCES org_roles(id),
  user_id uuid NOT NULL REFERENCES users(id),
  created_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (role_id, user_id)
);
CREATE INDEX org_role_memberships_user ON org_role_memberships (user_id);

CREATE TABLE dag_versions (
  id uuid PRIMARY KEY,
  org_id uuid NOT NULL REFERENCES orgs(id),
  dag_name text NOT NULL,
  yaml_hash text NOT NULL,
  yaml text NOT NULL,
  spec jsonb NOT NULL,
  created_by uuid,
  created_at timestamptz NOT NULL DEFAULT now(),
  UNIQUE (org_id, dag_name, yaml_hash)
);

CREATE TABLE dag_current_versions (
  org_id uuid NOT NULL REFERENCES orgs(id),
  dag_name text NOT NULL,
  dag_version_id uuid NOT NULL REFERENCES dag_versions(id),
  updated_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (org_id, dag_name)
);

CREATE TABLE jobs (
  id uuid PRIMARY KEY,
  org_id uuid NOT NULL REFERENCES orgs(id),
  name text NOT NULL,
  dag_name text NOT NULL,
  dag_version_id uuid NOT NULL REFERENCES dag_versions(id),
  activation text NOT NULL CHECK (activation IN ('source', 'reactive')),
  runtime text NOT NULL,
  operator text NOT NULL,
  source jsonb,
  bootstrap jsonb,
  execution_strategy text,
  idle_timeout text,
  config jsonb NOT NULL DEFAULT '{}',
  config_hash text NOT NULL,
  lineage_hash text NOT NULL,
  inputs jsonb NOT NULL DEFAULT '[]',
  input_datasets text[] NOT NULL DEFAULT '{}',
  output_datasets text[] NOT NULL DEFAULT '{}',
  -- [{output_index, dataset_uuid, dataset_version}] resolved at deploy time
  outputs jsonb NOT NULL DEFAULT '[]',
  update_strategy text,
  unique_key text[],
  scaling jsonb,
  udf jsonb,
  secrets text[],
  timeout_seconds int NOT NULL,
  heartbeat_timeout_seconds int NOT NULL,
  max_attempts int NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(),
  UNIQUE (dag_version_id, name)
);
CREATE INDEX jobs_input_datasets ON jobs USING gin (input_datasets);

CREATE TABLE datasets (
  id uuid PRIMARY KEY,
  org_id uuid NOT NULL REFERENCES orgs(id),
  name text,
  kind text NOT NULL DEFAULT 'job_output' CHECK (kind IN ('job_output', 'buffered', 'external')),
  producer_dag_name text,
  producer_job_name text,
  producer_output_index int,
  storage jsonb NOT NULL DEFAULT '{}',
  read_roles text[] NOT NULL DEFAULT '{}',
  current_version uuid,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(),
  UNIQUE (org_id, name),
  UNIQUE (org_id, producer_dag_name, producer_job_name, producer_output_index)
);

CREATE TABLE dataset_versions (
  id uuid PRIMARY KEY,
  dataset_uuid uuid NOT NULL REFERENCES datasets(id),
  created_at timestamptz NOT NULL DEFAULT now(),
  storage_location text,
  storage_ref jsonb,
  config_hash text,
  schema_hash text,
  range_start bigint,
  range_end bigint,
  UNIQUE NULLS NOT DISTINCT (dataset_uuid, config_hash, range_start, range_end)
);

CREATE TABLE dag_version_datasets (
  dag_version_id uuid NOT NULL REFERENCES dag_versions(id),
  dataset_uuid uuid NOT NULL REFERENCES datasets(id),
  dataset_version uuid NOT NULL REFERENCES dataset_versions(id),
  PRIMARY KEY (dag_version_id, dataset_uuid)
);

CREATE TABLE tasks (
  id uuid PRIMARY KEY,
  org_id uuid NOT NULL REFERENCES orgs(id),
  job_id uuid NOT NULL REFERENCES jobs(id),
  dedupe_key text,
  status text NOT NULL CHECK (status IN ('Queued', 'Running', 'Completed', 'Failed', 'Canceled')),
  attempt int NOT NULL DEFAULT 1,
  max_attempts int NOT NULL,
  timeout_seconds int NOT NULL,
  partitions text[],
  input_versions jsonb,
  inputs jsonb NOT NULL DEFAULT '[]',
  -- what created the task: {kind: event|manual|cron, ...}
  trigger jsonb NOT NULL DEFAULT '{}',
  worker_id text,
  lease_token uuid,
  lease_expires_at timestamptz,
  last_heartbeat timestamptz,
  started_at timestamptz,
  completed_at timestamptz,
  next_retry_at timestamptz,
  -- set when the reaper failed the attempt for an expired lease or timeout; a late reply of
  -- that same attempt is still accepted while no newer attempt has started
  timed_out_at timestamptz,
  error_message text,
  outputs jsonb,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(),
  UNIQUE (job_id, dedupe_key)
);
CREATE INDEX tasks_job_status ON tasks (job_id, status);
CREATE INDEX tasks_retry_due ON tasks (next_retry_at) WHERE status = 'Failed' AND next_retry_at IS NOT NULL;
CREATE INDEX tasks_lease_expiry ON tasks (lease_expires_at) WHERE status = 'Running';
CREATE INDEX tasks_queued ON tasks (job_id, created_at) WHERE status = 'Queued';

-- One row per attempt: the history behind trace tasks.
CREATE TABLE task_attempts (
  task_id uuid NOT NULL REFERENCES tasks(id),
  attempt int NOT NULL,
  worker_id text,
  lease_token uuid,
  status text NOT NULL,
  started_at timestamptz NOT NULL DEFAULT now(),
  finished_at timestamptz,
  error_message text,
  PRIMARY KEY (task_id, attempt)
);

CREATE TABLE task_inputs (
  task_id uuid NOT NULL REFERENCES tasks(id),
  input_dataset_uuid uuid NOT NULL,
  input_partition_key text NOT NULL DEFAULT '',
  input_version timestamptz NOT NULL DEFAULT now(),
  input_dataset_version uuid,
  PRIMARY KEY (task_id, input_dataset_uuid, input_partition_key)
);

-- Every event accepted from a task, deduplicated per producing task: the routing audit trail.
CREATE TABLE task_events (
  id bigserial PRIMARY KEY,
  task_id uuid NOT NULL REFERENCES tasks(id),
  attempt int NOT NULL,
  event_key text NOT NULL,
  event jsonb NOT NULL,
  routed boolean NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  UNIQUE (task_id, event_key)
);

CREATE TABLE buffer_publishes (
  id uuid PRIMARY KEY,
  org_id uuid NOT NULL,
  task_id uuid NOT NULL REFERENCES tasks(id),
  attempt int NOT NULL,
  job_id uuid NOT NULL,
  batch_uri text NOT NULL,
  content_type text NOT NULL,
  batch_size_bytes bigint NOT NULL,
  dedupe_scope text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  UNIQUE (task_id, attempt, batch_uri)
);

CREATE TABLE outbox (
  id bigserial PRIMARY KEY,
  kind text NOT NULL,
  payload jsonb NOT NULL,
  status text NOT NULL DEFAULT 'Pending' CHECK (status IN ('Pending', 'Done', 'Failed')),
  available_at timestamptz NOT NULL DEFAULT now(),
  attempts int NOT NULL DEFAULT 0,
  last_error text,
  created_at timestamptz NOT NULL DEFAULT now(),
  processed_at timestamptz
);
CREATE INDEX outbox_pending ON outbox (available_at, id) WHERE status = 'Pending';

CREATE TABLE operator_state (
  org_id uuid NOT NULL,
  job_id uuid NOT NULL REFERENCES jobs(id),
  state_key text NOT NULL,
  state jsonb NOT NULL,
  version bigint NOT NULL DEFAULT 1,
  updated_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (org_id, job_id, state_key)
);

CREATE TABLE partition_versions (
  dataset_uuid uuid NOT NULL,
  dataset_version uuid NOT NULL,
  partition_key text NOT NULL,
  materialized_at timestamptz NOT NULL DEFAULT now(),
  config_hash text,
  schema_hash text,
  location text,
  row_count bigint,
  bytes bigint,
  PRIMARY KEY (dataset_uuid, dataset_version, partition_key)
);

CREATE TABLE dataset_cursors (
  dataset_uuid uuid NOT NULL,
  dataset_version uuid NOT NULL,
  job_id uuid NOT NULL,
  cursor_column text,
  cursor_value text,
  updated_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (dataset_uuid, dataset_version, job_id)
);

CREATE TABLE data_invalidations (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  dataset_uuid uuid NOT NULL,
  dataset_version uuid NOT NULL,
  scope text NOT NULL CHECK (scope IN ('partition', 'row_range')),
  partition_key text,
  row_filter jsonb,
  reason text NOT NULL,
  source_event jsonb,
  created_at timestamptz NOT NULL DEFAULT now(),
  processed_by uuid[] NOT NULL DEFAULT '{}',
  processed_at timestamptz
);
CREATE INDEX data_invalidations_open ON data_invalidations (dataset_uuid, dataset_version) WHERE processed_at IS NULL;

CREATE TABLE column_lineage (
  output_dataset_uuid uuid NOT NULL,
  output_column text NOT NULL,
  input_dataset_uuid uuid NOT NULL,
  input_column text NOT NULL,
  job_id uuid,
  PRIMARY KEY (output_dataset_uuid, output_column, input_dataset_uuid, input_column)
);

-- Cron sources: one row per active cron job, the next tick to fire.
CREATE TABLE source_schedules (
  job_id uuid PRIMARY KEY REFERENCES jobs(id),
  org_id uuid NOT NULL,
  schedule text NOT NULL,
  next_fire_at timestamptz NOT NULL,
  last_fired_at timestamptz,
  enabled boolean NOT NULL DEFAULT true
);

-- pgqueue: the Postgres-backed wake-up queue (SQS semantics: visibility timeout, receive count, DLQ).
CREATE TABLE queue_messages (
  id bigserial PRIMARY KEY,
  queue text NOT NULL,
  body jsonb NOT NULL,
  visible_at timestamptz NOT NULL DEFAULT now(),
  receive_count int NOT NULL DEFAULT 0,
  receipt uuid,
  created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX queue_messages_ready ON queue_messages (queue, visible_at, id);

CREATE TABLE queue_dead_letters (
  id bigint PRIMARY KEY,
  queue text NOT NULL,
  body jsonb NOT NULL,
  receive_count int NOT NULL,
  created_at timestamptz NOT NULL,
  dead_at timestamptz NOT NULL DEFAULT now(),
  last_error text
);
CREATE INDEX queue_dead_letters_queue ON queue_dead_letters (queue, dead_at);
`,
  },
  {
    version: 2,
    name: 'chain_sync: jobs, streams, cursors, scheduled-range ledger, head observations',
    sql: `
-- One row per applied chain_sync YAML, idempotent by (org_id, name). enabled = false is "paused".
CREATE TABLE chain_sync_jobs (
  job_id uuid PRIMARY KEY,
  org_id uuid NOT NULL REFERENCES orgs(id),
  name text NOT NULL,
  chain_id bigint NOT NULL CHECK (chain_id > 0),
  enabled boolean NOT NULL DEFAULT true,
  mode text NOT NULL CHECK (mode IN ('fixed_target', 'follow_head')),
  from_block bigint NOT NULL CHECK (from_block >= 0),
  -- end exclusive; fixed_target only
  to_block bigint,
  tail_lag int,
  head_poll_interval_seconds int,
  max_head_age_seconds int,
  yaml text NOT NULL,
  yaml_hash text NOT NULL,
  spec jsonb NOT NULL,
  created_by uuid,
  -- fixed_target: set when every stream covers to_block and no range is in flight
  completed_at timestamptz,
  last_error text,
  last_error_at timestamptz,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(),
  UNIQUE (org_id, name),
  CHECK ((mode = 'fixed_target' AND to_block IS NOT NULL AND to_block > from_block)
      OR (mode = 'follow_head' AND tail_lag IS NOT NULL AND head_poll_interval_seconds IS NOT NULL AND max_head_age_seconds IS NOT NULL))
);

-- One row per (job, dataset_key). task_job_id is the hidden jobs row new ranges are planned on.
CREATE TABLE chain_sync_streams (
  job_id uuid NOT NULL REFERENCES chain_sync_jobs(job_id),
  dataset_key text NOT NULL,
  cryo_dataset_name text NOT NULL,
  rpc_pool text NOT NULL,
  dataset_uuid uuid NOT NULL UNIQUE REFERENCES datasets(id),
  dataset_name text NOT NULL,
  config_hash text NOT NULL,
  chunk_size int NOT NULL CHECK (chunk_size > 0),
  max_inflight int NOT NULL CHECK (max_inflight > 0),
  task_job_id uuid NOT NULL REFERENCES jobs(id),
  -- false once a re-applied YAML no longer names the stream
  active boolean NOT NULL DEFAULT true,
  -- why planning is skipped right now (stale head, ...), null when it is not
  blocked_reason text,
  last_error text,
  last_error_at timestamptz,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (job_id, dataset_key)
);

-- The planning high-water mark per stream (exclusive). It only ever moves forward.
CREATE TABLE chain_sync_cursor (
  job_id uuid NOT NULL,
  dataset_key text NOT NULL,
  next_block bigint NOT NULL CHECK (next_block >= 0),
  updated_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (job_id, dataset_key),
  FOREIGN KEY (job_id, dataset_key) REFERENCES chain_sync_streams(job_id, dataset_key)
);

CREATE FUNCTION chain_sync_cursor_forward() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.next_block < OLD.next_block THEN
    RAISE EXCEPTION 'chain_sync_cursor.next_block only moves forward' USING ERRCODE = 'check_violation';
  END IF;
  RETURN NEW;
END
$$;
CREATE TRIGGER chain_sync_cursor_forward BEFORE UPDATE ON chain_sync_cursor
  FOR EACH ROW EXECUTE FUNCTION chain_sync_cursor_forward();

-- The scheduled-range ledger: one row per planned [range_start, range_end) of a stream, mapped to
-- its task. scheduled -> completed once, when the range's publication is committed.
CREATE TABLE chain_sync_scheduled_ranges (
  job_id uuid NOT NULL,
  dataset_key text NOT NULL,
  range_start bigint NOT NULL,
  range_end bigint NOT NULL,
  task_id uuid NOT NULL REFERENCES tasks(id),
  status text NOT NULL DEFAULT 'scheduled' CHECK (status IN ('scheduled', 'completed')),
  dataset_version uuid,
  -- committed Parquet objects, keys relative to the dataset prefix
  files jsonb,
  row_count bigint,
  bytes bigint,
  -- times an admin resume re-planned the range on a new task after its task gave up
  redrives int NOT NULL DEFAULT 0,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(),
  completed_at timestamptz,
  PRIMARY KEY (job_id, dataset_key, range_start),
  UNIQUE (job_id, dataset_key, range_start, range_end),
  FOREIGN KEY (job_id, dataset_key) REFERENCES chain_sync_streams(job_id, dataset_key),
  CHECK (range_end > range_start),
  CHECK (status = 'scheduled' OR (dataset_version IS NOT NULL AND files IS NOT NULL AND completed_at IS NOT NULL))
);
CREATE UNIQUE INDEX chain_sync_ranges_task ON chain_sync_scheduled_ranges (task_id);
CREATE INDEX chain_sync_ranges_open ON chain_sync_scheduled_ranges (job_id, dataset_key) WHERE status = 'scheduled';
CREATE INDEX chain_sync_ranges_recent ON chain_sync_scheduled_ranges (job_id, dataset_key, completed_at) WHERE status = 'completed';

-- Latest head seen through an RPC pool (follow_head planning reads it; missing or stale = no planning).
CREATE TABLE chain_head_observations (
  org_id uuid NOT NULL,
  chain_id bigint NOT NULL,
  rpc_pool text NOT NULL,
  head_block bigint,
  observed_at timestamptz,
  source text,
  last_attempt_at timestamptz,
  last_error text,
  PRIMARY KEY (org_id, chain_id, rpc_pool)
);
`,
  },
  {
    version: 3,
    name: 'udf bundles; dataset events emitted by buffer sinks',
    // Owned by src/dispatcher/udf/. Bundles are immutable once Finalized: sha256, runtime and
    // entrypoint are recorded from the validated zip and never change afterwards.
    sql: `
CREATE TABLE udf_bundles (
  id uuid PRIMARY KEY,
  org_id uuid NOT NULL REFERENCES orgs(id),
  created_by uuid REFERENCES users(id),
  name text,
  status text NOT NULL CHECK (status IN ('Pending', 'Finalized', 'Rejected')),
  -- where the upload URL writes; the finalized copy lives at object_key
  upload_key text NOT NULL,
  object_key text,
  max_bytes bigint NOT NULL,
  upload_expires_at timestamptz NOT NULL,
  declared_runtime text,
  declared_entrypoint text,
  sha256 text,
  runtime text CHECK (runtime IS NULL OR runtime IN ('node', 'python')),
  entrypoint text,
  size_bytes bigint,
  file_count int,
  manifest jsonb,
  reject_reason text,
  created_at timestamptz NOT NULL DEFAULT now(),
  finalized_at timestamptz,
  CHECK (status <> 'Finalized' OR (sha256 IS NOT NULL AND runtime IS NOT NULL AND entrypoint IS NOT NULL AND object_key IS NOT NULL))
);
CREATE INDEX udf_bundles_org ON udf_bundles (org_id, created_at);

-- Dataset events reported by trusted sinks after they committed a buffered batch: the audit
-- trail and the dedupe point (a re-reported event is a no-op).
CREATE TABLE dataset_events (
  id bigserial PRIMARY KEY,
  org_id uuid NOT NULL REFERENCES orgs(id),
  dataset_uuid uuid NOT NULL REFERENCES datasets(id),
  event_key text NOT NULL,
  event jsonb NOT NULL,
  publish_id uuid,
  producer_task_id uuid,
  routed boolean NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  UNIQUE (dataset_uuid, event_key)
);
`,
  },
  {
    version: 4,
    name: 'chain_sync compactions of small follow_head ranges',
    // Owned by src/dispatcher/chain-sync/ (compaction.ts). A compaction re-ingests one whole
    // chunk-aligned window whose committed ledger ranges are several small ones (follow_head
    // plans a range per head move); once committed, the stream's view lists its files instead
    // of theirs. The ledger itself is never rewritten.
    sql: `
CREATE TABLE chain_sync_compactions (
  job_id uuid NOT NULL,
  dataset_key text NOT NULL,
  range_start bigint NOT NULL,
  range_end bigint NOT NULL,
  task_id uuid NOT NULL UNIQUE REFERENCES tasks(id),
  -- scheduled -> completed (view switched to its files) | abandoned (its task gave up; the
  -- small ranges keep serving the window)
  status text NOT NULL DEFAULT 'scheduled' CHECK (status IN ('scheduled', 'completed', 'abandoned')),
  -- ledger ranges the window held when it was planned
  replaces int NOT NULL CHECK (replaces > 1),
  dataset_version uuid,
  files jsonb,
  row_count bigint,
  bytes bigint,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(),
  completed_at timestamptz,
  PRIMARY KEY (job_id, dataset_key, range_start),
  FOREIGN KEY (job_id, dataset_key) REFERENCES chain_sync_streams(job_id, dataset_key),
  CHECK (range_end > range_start)
);

-- Windows below this block were examined for compaction (compacted, abandoned or not needing
-- it); NULL means from_block. Moves forward only, like next_block.
ALTER TABLE chain_sync_cursor ADD COLUMN compacted_through bigint;
`,
  },
  {
    version: 5,
    name: 'tasks: attempts that do not count (released, infrastructure failures) and the dependency a task waits on',
    // Owned by src/dispatcher/tasks/ (release.ts, retry.ts). An attempt given back by a worker
    // that shuts down, or failed because a database or the queue was unreachable, is recorded as
    // Released and does not use up max_attempts: the counted attempt is attempt - uncounted_attempts.
    sql: `
ALTER TABLE tasks ADD COLUMN uncounted_attempts int NOT NULL DEFAULT 0;
-- Set while a task waits for a retry after an infrastructure failure (state_database,
-- data_database, queue, object_store, query_service, rpc_gateway); cleared when it is queued.
ALTER TABLE tasks ADD COLUMN waiting_on text;
CREATE INDEX tasks_waiting_on ON tasks (waiting_on) WHERE status = 'Failed' AND waiting_on IS NOT NULL;
`,
  },
  {
    version: 6,
    name: 'chain_sync: the chain identity a sync commits against, range boundary hashes, halts',
    // Owned by src/dispatcher/chain-sync/ (identity.ts). The identity is recorded by the first
    // commit of a job; every committed range keeps the parent hash of its first block and the hash
    // of its last block. A mismatch (another chain id or genesis, a node behind the committed
    // blocks, a range that does not link to its neighbour) halts the job until a resume whose
    // re-check passes.
    sql: `
ALTER TABLE chain_sync_jobs ADD COLUMN identity_chain_id bigint;
ALTER TABLE chain_sync_jobs ADD COLUMN genesis_hash text;
ALTER TABLE chain_sync_jobs ADD COLUMN identity_recorded_at timestamptz;
ALTER TABLE chain_sync_jobs ADD COLUMN halt_code text;
ALTER TABLE chain_sync_jobs ADD COLUMN halt_reason text;
ALTER TABLE chain_sync_jobs ADD COLUMN halted_at timestamptz;
ALTER TABLE chain_sync_jobs ADD CONSTRAINT chain_sync_jobs_identity
  CHECK ((genesis_hash IS NULL) = (identity_chain_id IS NULL) AND (genesis_hash IS NULL) = (identity_recorded_at IS NULL));
ALTER TABLE chain_sync_jobs ADD CONSTRAINT chain_sync_jobs_halt
  CHECK ((halt_code IS NULL) = (halt_reason IS NULL) AND (halt_code IS NULL) = (halted_at IS NULL));

-- Boundary hashes of a committed range (null for ranges committed before this migration).
ALTER TABLE chain_sync_scheduled_ranges ADD COLUMN first_parent_hash text;
ALTER TABLE chain_sync_scheduled_ranges ADD COLUMN last_block_hash text;
ALTER TABLE chain_sync_compactions ADD COLUMN first_parent_hash text;
ALTER TABLE chain_sync_compactions ADD COLUMN last_block_hash text;
`,
  },
  {
    version: 7,
    name: 'events: when each recorded event was routed, for the reconcile loop',
    // Owned by src/dispatcher/ (routing.ts, reconcile.ts). An event row with routed = true is
    // meant to be routed; routed_at is set when routing ran for it (the outbox's route_event or
    // the reconcile loop). Rows still NULL past a grace period lost their route_event (a crash,
    // a deleted outbox row) and are routed by the reconcile loop; routing is idempotent.
    sql: `
ALTER TABLE task_events ADD COLUMN routed_at timestamptz;
ALTER TABLE dataset_events ADD COLUMN routed_at timestamptz;
-- Events recorded before this migration were handed to the outbox, which still routes any
-- that are pending; they are not reconciled.
UPDATE task_events SET routed_at = created_at WHERE routed;
UPDATE dataset_events SET routed_at = created_at WHERE routed;
CREATE INDEX task_events_unrouted ON task_events (id) WHERE routed AND routed_at IS NULL;
CREATE INDEX dataset_events_unrouted ON dataset_events (id) WHERE routed AND routed_at IS NULL;
`,
  },
  {
    version: 8,
    name: 'webhook sources: per-source signing secrets and the event ids each source has accepted',
    // Owned by src/dispatcher/webhooks.ts. One secret per (org, DAG, job) webhook source, generated
    // by the platform at deploy and kept across versions (rotation replaces it). A delivery row is
    // the replay protection: it is inserted in the same transaction as the task it creates, and
    // a second request with the same event id for the same source conflicts with it.
    sql: `
CREATE TABLE webhook_secrets (
  org_id uuid NOT NULL,
  dag_name text NOT NULL,
  job_name text NOT NULL,
  secret text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  rotated_at timestamptz,
  PRIMARY KEY (org_id, dag_name, job_name)
);
CREATE TABLE webhook_deliveries (
  org_id uuid NOT NULL,
  dag_name text NOT NULL,
  job_name text NOT NULL,
  event_id text NOT NULL,
  task_id uuid NOT NULL,
  received_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (org_id, dag_name, job_name, event_id)
);
CREATE INDEX webhook_deliveries_received ON webhook_deliveries (received_at);
CREATE INDEX jobs_webhook_path ON jobs (org_id, (ltrim(source->>'webhook_path', '/'))) WHERE source->>'kind' = 'webhook';
`,
  },
];
