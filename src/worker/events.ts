/**
 * Maps operator events (which name an `output_index`) to wire events (which name the output's
 * `{dataset_uuid, dataset_version}` from the task payload), validating them on the way: an
 * operator bug must fail its task with a clear message, not reach the Dispatcher half-formed.
 */
import { TraceError } from '../core/errors.js';
import type { OperatorEvent } from '../operators/types.js';
import type { TaskEvent, TaskPayload } from './payload.js';

/** Most events sent in one request (`/v1/task/events` or `/v1/task/complete`). */
export const EVENTS_PER_REQUEST = 2_000;

const MAX_CURSOR_STRING = 256;

function bad(i: number, message: string): TraceError {
  return new TraceError(400, 'BAD_OPERATOR_EVENT', `events[${i}]: ${message}`);
}

export function toWireEvents(task: Pick<TaskPayload, 'outputs'>, events: readonly OperatorEvent[]): TaskEvent[] {
  const outputs = new Map(task.outputs.map((o) => [o.output_index, o]));
  return events.map((raw, i): TaskEvent => {
    if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw bad(i, 'an event must be an object');
    const e = raw as Record<string, unknown>;
    const index = e.output_index ?? 0;
    if (typeof index !== 'number' || !Number.isInteger(index)) throw bad(i, 'output_index must be an integer');
    const out = outputs.get(index);
    if (!out) throw bad(i, `output_index ${index} is not an output of this job (it has ${task.outputs.length})`);
    const base = { dataset_uuid: out.dataset_uuid, dataset_version: out.dataset_version };
    const hasCursor = e.cursor !== undefined;
    const hasRange = e.start !== undefined || e.end !== undefined;
    if (hasCursor === hasRange) throw bad(i, 'an event has either a cursor or a start/end range');
    if (hasCursor) {
      const c = e.cursor;
      if (typeof c === 'number' && Number.isFinite(c)) return { ...base, cursor: c };
      if (typeof c === 'string' && c !== '' && c.length <= MAX_CURSOR_STRING) return { ...base, cursor: c };
      throw bad(i, `cursor must be a finite number or a non-empty string of at most ${MAX_CURSOR_STRING} characters`);
    }
    const { start, end } = e;
    if (typeof start !== 'number' || typeof end !== 'number' || !Number.isSafeInteger(start) || !Number.isSafeInteger(end) || start < 0 || end <= start) {
      throw bad(i, 'a range needs integers start and end with 0 <= start < end ([start, end) is half-open)');
    }
    return { ...base, partition_key: `${start}-${end}`, start, end };
  });
}
