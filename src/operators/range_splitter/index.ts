/**
 * range_splitter: splits each input range manifest `[start, end)` into subranges of
 * `chunk_size` (the inverse of range_aggregator). Uses the event's `start`/`end` when present,
 * else parses its `partition_key` ("start-end"). Subranges start at the range's start and step
 * by `chunk_size`; the last one is cut at `end`. Without `chunk_size` the range is re-emitted
 * whole. Deterministic, so a retried attempt emits exactly the same events.
 *
 * A manual trigger with a range (and no inputs) is split the same way. A task that would emit
 * more than MAX_SUBRANGES_PER_TASK events fails with a clear message (raise chunk_size).
 */
import { z } from 'zod';
import { TraceError } from '../../core/errors.js';
import { configProblems, parseConfig, rangeOf } from '../config.js';
import type { Operator, OperatorContext, OperatorEvent, OperatorResult } from '../types.js';

export const MAX_SUBRANGES_PER_TASK = 100_000;

const configSchema = z.strictObject({
  chunk_size: z.number().int().min(1).optional(),
});

/** The subranges of `[start, end)` in chunks of `chunk` (whole range when chunk is undefined). */
export function splitRange(start: number, end: number, chunk: number | undefined): Array<{ start: number; end: number }> {
  if (chunk === undefined) return [{ start, end }];
  const out: Array<{ start: number; end: number }> = [];
  for (let s = start; s < end; s += chunk) out.push({ start: s, end: Math.min(s + chunk, end) });
  return out;
}

async function run(ctx: OperatorContext): Promise<OperatorResult> {
  const cfg = parseConfig('range_splitter', configSchema, ctx.task.config);
  const sources = ctx.task.inputs.length > 0 ? ctx.task.inputs : [ctx.task.trigger];
  const ranges: Array<{ start: number; end: number }> = [];
  for (const src of sources) {
    const r = rangeOf(src);
    if (r) ranges.push(r);
  }
  if (ranges.length === 0) {
    throw new TraceError(400, 'NO_RANGE', 'range_splitter needs range events (start/end or partition_key "start-end")');
  }
  const total = ranges.reduce((n, r) => n + (cfg.chunk_size === undefined ? 1 : Math.ceil((r.end - r.start) / cfg.chunk_size)), 0);
  if (total > MAX_SUBRANGES_PER_TASK) {
    throw new TraceError(422, 'TOO_MANY_SUBRANGES', `splitting would emit ${total} events, more than ${MAX_SUBRANGES_PER_TASK} per task; raise chunk_size`);
  }
  const events: OperatorEvent[] = [];
  for (const r of ranges) {
    for (const sub of splitRange(r.start, r.end, cfg.chunk_size)) events.push({ output_index: 0, start: sub.start, end: sub.end });
  }
  return { events };
}

export const rangeSplitter: Operator = {
  info: {
    name: 'range_splitter',
    runtimes: ['ecs_platform', 'dispatcher'],
    udf: 'forbidden',
    activations: ['reactive'],
    // range events in, sub-ranges out: the same range always yields the same chunks
    executionStrategies: ['PerPartition'],
    writes: { append: ['partition_key'], replace: true },
    validateConfig: (config) => configProblems(configSchema, config),
    fanOut: (config, input) => {
      const chunk = typeof config.chunk_size === 'number' && config.chunk_size > 0 ? config.chunk_size : undefined;
      if (chunk === undefined || input.span === undefined) return { events: input.events, ...(input.span !== undefined ? { span: input.span } : {}) };
      return { events: input.events * Math.ceil(input.span / chunk), span: Math.min(chunk, input.span) };
    },
  },
  run,
};
