/**
 * The contract between the worker wrapper and a platform operator.
 *
 * An operator is plain code: it gets the task payload, an abort signal (timeout, cancel, lost
 * lease, shutdown) and a way to emit events mid-task, and returns its final events plus any
 * durable operator-state writes. It never sees the worker token or the lease token, and it
 * does not talk to the Dispatcher itself: the wrapper maps `output_index` to the output's
 * `{dataset_uuid, dataset_version}`, fences every call and commits state and events atomically
 * with the completion.
 */
import type { Logger } from '../core/log.js';
import type { TaskPayload } from '../worker/payload.js';
import type { OperatorInfo, OperatorCatalog } from '../dag/catalog-types.js';

export type { OperatorInfo, OperatorCatalog, TaskPayload };

/**
 * An event on one of the job's outputs (`output_index`, default 0): a cursor, or a half-open
 * range `[start, end)` (the wrapper adds `partition_key: "start-end"`).
 */
export type OperatorEvent =
  | { output_index?: number; cursor: number | string }
  | { output_index?: number; start: number; end: number };

export interface OperatorContext {
  task: TaskPayload;
  /** Aborted on timeout, cancellation, a lost lease or worker shutdown; stop promptly. */
  signal: AbortSignal;
  log: Logger;
  /** The per-attempt capability token, for task-scoped APIs (query, credentials, buffer publish). */
  capabilityToken: string;
  /** Sends events now (`/v1/task/events`), before completion. */
  emit(events: OperatorEvent[]): Promise<void>;
}

export interface OperatorResult {
  /** Final events, committed with the completion. */
  events?: OperatorEvent[];
  /** Compare-and-set writes of durable state (expected_version = the version read, null if none). */
  operator_state?: Array<{ state_key: string; expected_version: number | null; state: Record<string, unknown> }>;
  outputs?: unknown[];
  datasets_published?: unknown[];
}

export interface Operator {
  info: OperatorInfo;
  run(ctx: OperatorContext): Promise<OperatorResult>;
}
