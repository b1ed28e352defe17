/**
 * Wire shapes shared by the Dispatcher and the worker wrapper (the Dispatcher imports them from
 * here). They follow the Dispatcher <-> worker contract: `/internal/task-claim`,
 * `/internal/task-fetch` and the task-scoped `/v1/task/*` routes.
 */

/** The full description of one task attempt, as returned by claim and fetch. */
export interface TaskPayload {
  task_id: string;
  attempt: number;
  org_id: string;
  job: { id: string; dag_name: string; name: string };
  operator: string;
  runtime: 'ecs_platform' | 'lambda' | 'dispatcher';
  config: Record<string, unknown>;
  timeout_seconds: number;
  heartbeat_timeout_seconds: number;
  // What triggered the task: an upstream event, a manual trigger, or a cron tick.
  trigger: { kind: 'event' | 'manual' | 'cron' | 'webhook'; cursor?: number | string; start?: number; end?: number; partition_key?: string; fired_at?: string;
    // webhook: the delivery (event_id, timestamp, webhook_path) and its body, as text or base64.
    event_id?: string; timestamp?: number; webhook_path?: string; content_type?: string | null; body?: string; body_base64?: string };
  // The input events (event-triggered tasks), with the edge's where-filter. Each also carries the
  // job's last committed cursor on that dataset version (`last_cursor`, null before the first
  // completion; a Completed task advances it to the input's `cursor`) and the job's
  // `cursor_column` (null when its config names none): read only rows past `last_cursor`.
  inputs: Array<{
    dataset_uuid: string; dataset_version: string; cursor?: number | string; partition_key?: string; start?: number; end?: number; where?: Record<string, unknown>;
    last_cursor?: string | null; cursor_column?: string | null;
  }>;
  // Where this job's outputs go: emit events for output_index i on outputs[i].
  outputs: Array<{ output_index: number; dataset_uuid: string; dataset_version: string }>;
  // Durable operator state for this job (platform-managed), with versions for CAS.
  operator_state: Array<{ state_key: string; state: Record<string, unknown>; version: number }>;
  udf?: { bundle_id: string; entrypoint: string };
}

export type TaskInput = TaskPayload['inputs'][number];
export type TaskTrigger = TaskPayload['trigger'];

/** An upstream event as sent on the wire (`/v1/task/events`, `/v1/task/complete`). `[start, end)`. */
export type TaskEvent =
  | { dataset_uuid: string; dataset_version: string; cursor: number | string }
  | { dataset_uuid: string; dataset_version: string; partition_key: string; start: number; end: number };

/** One compare-and-set write of durable operator state, committed atomically with completion. */
export interface OperatorStateWrite {
  state_key: string;
  /** The version the operator read; null when the key did not exist. */
  expected_version: number | null;
  state: Record<string, unknown>;
}

/** The fencing triple plus the per-attempt capability token every task-scoped call carries. */
export interface TaskRef {
  task_id: string;
  attempt: number;
  lease_token: string;
  capability_token: string;
}

export type CompletionStatus = 'Completed' | 'Failed' | 'Canceled';

/** Body of `/v1/task/complete` beyond the fencing triple. */
export interface CompleteBody {
  status: CompletionStatus;
  events?: TaskEvent[];
  outputs?: unknown[];
  datasets_published?: unknown[];
  error_message?: string | null;
  operator_state?: OperatorStateWrite[];
}

/** Body of `/v1/task/buffer-publish` beyond the fencing triple. */
export interface BufferPublishBody {
  batch_uri: string;
  content_type: string;
  batch_size_bytes: number;
  dedupe_scope: string;
}

/**
 * Body of `/internal/task-release` beyond the fencing triple: give the lease back without
 * finishing (shutdown) or because a dependency was unreachable (infrastructure); either way the
 * attempt does not use up max_attempts.
 */
export interface ReleaseBody {
  reason: 'shutdown' | 'infrastructure';
  /** Required with reason infrastructure: state_database, data_database, queue, object_store, query_service, rpc_gateway. */
  dependency?: string;
  error_message?: string;
}

export type NotClaimedReason = 'AlreadyRunning' | 'Completed' | 'Canceled' | 'NotFound' | 'Throttled' | 'NotQueued';

/** A successful claim: the lease and everything needed to run the attempt. */
export interface ClaimedTask {
  attempt: number;
  lease_token: string;
  lease_expires_at: string;
  capability_token: string;
  task: TaskPayload;
}

export type ClaimResponse = ({ status: 'Claimed' } & ClaimedTask) | { status: 'NotClaimed'; reason: NotClaimedReason };

export interface FetchResponse {
  task_id: string;
  status: 'Queued' | 'Running' | 'Completed' | 'Failed' | 'Canceled';
  attempt: number;
  task: TaskPayload;
}

/** The wake-up message on the task queue: a pointer only. */
export interface TaskWakeUp {
  task_id: string;
}
