/**
 * cursor_emitter: a source operator that turns a trigger into one event on output 0.
 *
 * - manual trigger with a cursor (`trace dag trigger ... --cursor N`): emits that cursor;
 * - manual trigger with a range (`--range START-END`): emits the range as a partition event;
 * - cron tick (or a manual trigger with neither): emits a cursor that is
 *   - the tick's unix seconds (`cursor_from: tick`, the default; from the trigger's `fired_at`,
 *     so a retried attempt emits the same cursor), or
 *   - a durable counter (`cursor_from: counter`): `start` on the first tick, then `+ step`
 *     per tick, kept in operator state key `counter` and committed with the completion.
 */
import { z } from 'zod';
import { TraceError } from '../../core/errors.js';
import { configProblems, parseConfig, rangeOf, readState } from '../config.js';
import type { Operator, OperatorContext, OperatorResult } from '../types.js';

export const COUNTER_STATE_KEY = 'counter';

const configSchema = z
  .strictObject({
    cursor_from: z.enum(['tick', 'counter']).optional(),
    start: z.number().int().min(0).optional(),
    step: z.number().int().min(1).optional(),
  })
  .superRefine((c, ctx) => {
    if (c.cursor_from !== 'counter') {
      for (const k of ['start', 'step'] as const) {
        if (c[k] !== undefined) ctx.addIssue({ code: 'custom', path: [k], message: `${k} applies only when cursor_from is "counter"` });
      }
    }
  });

async function run(ctx: OperatorContext): Promise<OperatorResult> {
  const cfg = parseConfig('cursor_emitter', configSchema, ctx.task.config);
  const trigger = ctx.task.trigger;

  if (trigger.cursor !== undefined) return { events: [{ output_index: 0, cursor: trigger.cursor }] };
  const range = rangeOf(trigger);
  if (range) return { events: [{ output_index: 0, start: range.start, end: range.end }] };

  if (cfg.cursor_from === 'counter') {
    const start = cfg.start ?? 0;
    const step = cfg.step ?? 1;
    const prev = readState(ctx.task, COUNTER_STATE_KEY);
    let value = start;
    if (prev) {
      const last = prev.state.value;
      if (typeof last !== 'number' || !Number.isSafeInteger(last)) {
        throw new TraceError(500, 'BAD_OPERATOR_STATE', 'cursor_emitter counter state has no integer "value"');
      }
      value = last + step;
    }
    return {
      events: [{ output_index: 0, cursor: value }],
      operator_state: [{ state_key: COUNTER_STATE_KEY, expected_version: prev ? prev.version : null, state: { value } }],
    };
  }

  let firedMs = trigger.fired_at === undefined ? Number.NaN : Date.parse(trigger.fired_at);
  if (Number.isNaN(firedMs)) {
    ctx.log.warn({ trigger_kind: trigger.kind }, 'trigger has no valid fired_at; using the current time as the tick');
    firedMs = Date.now();
  }
  return { events: [{ output_index: 0, cursor: Math.floor(firedMs / 1000) }] };
}

export const cursorEmitter: Operator = {
  info: {
    name: 'cursor_emitter',
    runtimes: ['ecs_platform', 'dispatcher', 'lambda'],
    udf: 'forbidden',
    activations: ['source'],
    executionStrategies: [],
    // one cursor event per trigger, deduplicated on the cursor
    writes: { append: ['cursor'], replace: true },
    validateConfig: (config) => configProblems(configSchema, config),
    // Without a cursor a manual trigger would emit the current Unix time (tick mode).
    triggerNeedsCursor: (config) => config.cursor_from !== 'counter',
  },
  run,
};
