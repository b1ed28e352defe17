/**
 * test_incremental (hidden, tests only): an incremental reader. For each input it reports, in
 * the completion's `outputs`, the window it would read: rows of `cursor_column` after
 * `last_cursor` (the job's committed cursor; null = from the start) through the input's
 * `cursor`. The Dispatcher advances the committed cursor when it accepts the completion, so the
 * next task's window starts where this one ended.
 */
import { z } from 'zod';
import { parseConfig, testOperatorInfo } from '../config.js';
import type { Operator } from '../types.js';

const configSchema = z.strictObject({
  cursor_column: z.string().min(1).optional(),
});

export interface IncrementalRead {
  dataset_uuid: string;
  dataset_version: string;
  cursor_column: string | null;
  after: string | null;
  through: string | null;
}

export const testIncremental: Operator = {
  info: testOperatorInfo('test_incremental', configSchema),
  async run(ctx) {
    parseConfig('test_incremental', configSchema, ctx.task.config);
    const reads: IncrementalRead[] = ctx.task.inputs.map((i) => ({
      dataset_uuid: i.dataset_uuid,
      dataset_version: i.dataset_version,
      cursor_column: i.cursor_column ?? null,
      after: i.last_cursor ?? null,
      through: i.cursor === undefined ? null : String(i.cursor),
    }));
    return { outputs: reads };
  },
};
