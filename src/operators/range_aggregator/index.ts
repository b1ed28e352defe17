/**
 * range_aggregator: turns an ordered stream of cursor events into deterministic range
 * manifests (partition events `[start, end)`, `partition_key = "start-end"`) of `range_size`.
 *
 * State: one operator-state row per input stream, key `cursor:<input dataset_uuid>`, holding
 * `{last_emitted_end}` (the end of the last range emitted; `config.start`, default 0, before
 * the first). Ranges are `[last_emitted_end, last_emitted_end + range_size)` stepping upward,
 * so with a fixed config they are `[start + k*size, start + (k+1)*size)`.
 *
 * On a cursor event `c` (block `c` observed, so `[.., c + 1)` is covered) every full range with
 * `end <= c + 1` not yet emitted is emitted, lowest first. A range event input counts as cursor
 * `end - 1`. A cursor at or below what was already covered (duplicate, out of order) emits
 * nothing and writes no state.
 *
 * At most MAX_RANGES_PER_TASK ranges are emitted per task; `last_emitted_end` then stops at the
 * last range emitted and the remainder is emitted by the next task (the next cursor event of
 * that stream catches up, again up to the cap).
 *
 * The new state goes back as `operator_state` with `expected_version` = the version read (null
 * if none); the Dispatcher commits it compare-and-set, atomically with the completion and its
 * events. A conflict (another task advanced the stream first) makes the wrapper re-fetch the
 * state and run this operator again, so a range is never emitted twice by committed tasks.
 */
import { z } from 'zod';
import { TraceError } from '../../core/errors.js';
import { configProblems, integerCursor, parseConfig, rangeOf, readState } from '../config.js';
import type { Operator, OperatorContext, OperatorEvent, OperatorResult } from '../types.js';

/**
 * Ranges emitted per task at most. All of a task's ranges ride on its one completion request
 * (atomic with the state write), and the Dispatcher caps request bodies at 1 MiB
 * (DEFAULTS.maxBodyBytes): 4,000 ranges with 16-digit bounds serialize to about 850 KB.
 */
export const MAX_RANGES_PER_TASK = 4_000;

export const stateKeyFor = (datasetUuid: string) => `cursor:${datasetUuid}`;

const configSchema = z.strictObject({
  cursor_column: z.string().min(1).optional(),
  range_size: z.number().int().min(1),
  start: z.number().int().min(0).optional(),
});

interface StreamState {
  expectedVersion: number | null;
  lastEnd: number;
  changed: boolean;
}

async function run(ctx: OperatorContext): Promise<OperatorResult> {
  const cfg = parseConfig('range_aggregator', configSchema, ctx.task.config);
  const size = cfg.range_size;
  const streams = new Map<string, StreamState>();
  const events: OperatorEvent[] = [];
  let capped = false;

  for (const [i, input] of ctx.task.inputs.entries()) {
    let cursor = integerCursor(input.cursor);
    if (input.cursor !== undefined && cursor === undefined) {
      throw new TraceError(400, 'BAD_CURSOR', `inputs[${i}].cursor is not a non-negative integer; range_aggregator needs integer cursors`);
    }
    if (cursor === undefined) {
      const range = rangeOf(input);
      if (!range) continue;
      cursor = range.end - 1;
    }

    const key = stateKeyFor(input.dataset_uuid);
    let stream = streams.get(key);
    if (!stream) {
      const prev = readState(ctx.task, key);
      let lastEnd = cfg.start ?? 0;
      if (prev) {
        const v = prev.state.last_emitted_end;
        if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) {
          throw new TraceError(500, 'BAD_OPERATOR_STATE', `operator state ${key} has no valid last_emitted_end`);
        }
        lastEnd = v;
      }
      stream = { expectedVersion: prev ? prev.version : null, lastEnd, changed: false };
      streams.set(key, stream);
    }

    const covered = cursor + 1;
    while (stream.lastEnd + size <= covered) {
      if (events.length >= MAX_RANGES_PER_TASK) {
        capped = true;
        break;
      }
      events.push({ output_index: 0, start: stream.lastEnd, end: stream.lastEnd + size });
      stream.lastEnd += size;
      stream.changed = true;
    }
  }

  if (capped) ctx.log.info({ emitted: events.length }, 'range_aggregator reached its per-task cap; the next cursor event emits the rest');

  const operator_state = [...streams.entries()]
    .filter(([, s]) => s.changed)
    .map(([state_key, s]) => ({ state_key, expected_version: s.expectedVersion, state: { last_emitted_end: s.lastEnd } }));
  return operator_state.length > 0 ? { events, operator_state } : { events };
}

export const rangeAggregator: Operator = {
  info: {
    name: 'range_aggregator',
    runtimes: ['ecs_platform', 'dispatcher'],
    udf: 'forbidden',
    activations: ['reactive'],
    // cursor events in; full ranges out, deduplicated on partition_key, accumulated in state
    executionStrategies: ['PerUpdate'],
    writes: { append: ['partition_key'] },
    validateConfig: (config) => configProblems(configSchema, config),
    fanOut: (config, input, states) => {
      const size = typeof config.range_size === 'number' && config.range_size > 0 ? config.range_size : 1;
      const start = typeof config.start === 'number' ? config.start : 0;
      // Ranges already emitted (any input stream; the furthest one is the conservative choice
      // only when there is one stream, which is the common case).
      const ends = states.filter((s) => s.state_key.startsWith('cursor:')).map((s) => s.state.last_emitted_end).filter((v): v is number => typeof v === 'number');
      const from = ends.length > 0 ? Math.min(...ends) : start;
      let ranges: number;
      if (input.cursor !== undefined) ranges = Math.max(0, Math.floor((input.cursor + 1 - from) / size));
      else if (input.span !== undefined) ranges = Math.floor((input.events * input.span) / size);
      else ranges = 0;
      return { events: Math.min(ranges, input.events * MAX_RANGES_PER_TASK), span: size };
    },
  },
  run,
};
