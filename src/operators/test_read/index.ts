/**
 * test_read (hidden, tests only): stands for an operator that reads its input rows only through
 * the task-scoped query (`readsInputsThroughQuery`), so its input edges may carry a `where` that
 * the Query Service applies. It does nothing when run; tests claim its tasks by hand and query
 * with the attempt's capability token, as such an operator would.
 */
import { z } from 'zod';
import { testOperatorInfo } from '../config.js';
import type { Operator } from '../types.js';

const configSchema = z.strictObject({});

export const testRead: Operator = {
  info: { ...testOperatorInfo('test_read', configSchema), readsInputsThroughQuery: true },
  async run() {
    return {};
  },
};
