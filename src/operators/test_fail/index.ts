/** test_fail (hidden, tests only): always throws `config.message`. */
import { z } from 'zod';
import { configProblems, parseConfig } from '../config.js';
import type { Operator } from '../types.js';

const configSchema = z.strictObject({ message: z.string().optional() });

export const testFail: Operator = {
  info: {
    name: 'test_fail',
    runtimes: ['ecs_platform', 'dispatcher', 'lambda'],
    udf: 'forbidden',
    activations: ['source', 'reactive'],
    hidden: true,
    validateConfig: (config) => configProblems(configSchema, config),
  },
  async run(ctx) {
    const cfg = parseConfig('test_fail', configSchema, ctx.task.config);
    throw new Error(cfg.message ?? 'test_fail failed as configured');
  },
};
