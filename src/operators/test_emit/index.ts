/**
 * test_emit (hidden, tests only): emits `config.events` verbatim (operator events, with
 * optional `output_index`): on completion by default, or mid-task through `/v1/task/events`
 * when `config.mid_task` is true.
 */
import { z } from 'zod';
import { parseConfig, testOperatorInfo } from '../config.js';
import type { Operator, OperatorEvent } from '../types.js';

const configSchema = z.strictObject({
  events: z.array(z.record(z.string(), z.unknown())),
  mid_task: z.boolean().optional(),
});

export const testEmit: Operator = {
  info: testOperatorInfo('test_emit', configSchema),
  async run(ctx) {
    const cfg = parseConfig('test_emit', configSchema, ctx.task.config);
    const events = cfg.events as unknown as OperatorEvent[];
    if (cfg.mid_task) {
      await ctx.emit(events);
      return {};
    }
    return { events };
  },
};
