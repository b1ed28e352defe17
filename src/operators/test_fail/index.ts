/** test_fail (hidden, tests only): always throws `config.message`. */
import { z } from 'zod';
import { parseConfig, testOperatorInfo } from '../config.js';
import type { Operator } from '../types.js';

const configSchema = z.strictObject({ message: z.string().optional() });

export const testFail: Operator = {
  info: testOperatorInfo('test_fail', configSchema),
  async run(ctx) {
    const cfg = parseConfig('test_fail', configSchema, ctx.task.config);
    throw new Error(cfg.message ?? 'test_fail failed as configured');
  },
};
