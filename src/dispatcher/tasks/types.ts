/** Row shapes of the task tables as the transitions read them. */
export type TaskStatus = 'Queued' | 'Running' | 'Completed' | 'Failed' | 'Canceled';

export interface TaskRow {
  id: string;
  org_id: string;
  job_id: string;
  dedupe_key: string | null;
  status: TaskStatus;
  attempt: number;
  max_attempts: number;
  /** Attempts that did not count toward max_attempts (released, infrastructure failures). */
  uncounted_attempts: number;
  /** The dependency a task failed by an infrastructure failure waits for, until it is queued again. */
  waiting_on: string | null;
  timeout_seconds: number;
  inputs: unknown[];
  trigger: Record<string, unknown>;
  worker_id: string | null;
  lease_token: string | null;
  lease_expires_at: Date | null;
  started_at: Date | null;
  completed_at: Date | null;
  next_retry_at: Date | null;
  timed_out_at: Date | null;
  error_message: string | null;
  created_at: Date;
}

/** The attempt number that counts toward max_attempts (released and infrastructure attempts do not). */
export const countedAttempt = (t: Pick<TaskRow, 'attempt' | 'uncounted_attempts'>): number => t.attempt - t.uncounted_attempts;

export interface TaskRef {
  task_id: string;
  attempt: number;
  lease_token: string;
}

/** An event as it travels on the wire: a cursor event or a `[start, end)` partition event. */
export interface DatasetEvent {
  dataset_uuid: string;
  dataset_version: string;
  cursor?: number | string;
  partition_key?: string;
  start?: number;
  end?: number;
}

export function eventScope(e: DatasetEvent): string {
  return e.partition_key !== undefined ? `p:${e.partition_key}` : `c:${String(e.cursor)}`;
}

export function eventKey(e: DatasetEvent): string {
  return `${e.dataset_uuid}:${e.dataset_version}:${eventScope(e)}`;
}
