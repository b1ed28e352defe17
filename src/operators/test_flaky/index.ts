/**
 * test_flaky (hidden, tests only): fails while the attempt number is <= `config.fail_attempts`,
 * then succeeds (emitting `config.events` verbatim, if given).
 */
import { z } from 'zod';
import { parseConfig, testOperatorInfo } from '../config.js';
import type { Operator, OperatorEvent } from '../types.js';

const configSchema = z.strictObject({
  fail_attempts: z.number().int().min(0),
  message: z.string().optional(),
  events: z.array(z.record(z.string(), z.unknown())).optional(),
});

export const testFlaky: Operator = {
  info: testOperatorInfo('test_flaky', configSchema),
  async run(ctx) {
    const cfg = parseConfig('test_flaky', configSchema, ctx.task.config);
    if (ctx.task.attempt <= cfg.fail_attempts) {
      throw new Error(cfg.message ?? `test_flaky fails attempt ${ctx.task.attempt} of the first ${cfg.fail_attempts}`);
    }
    return cfg.events ? { events: cfg.events as unknown as OperatorEvent[] } : {};
  },
};
