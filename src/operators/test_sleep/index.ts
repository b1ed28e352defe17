/**
 * test_sleep (hidden, tests only): sleeps `config.ms` milliseconds, rejecting as soon as the
 * abort signal fires. `config.ignore_abort: true` keeps sleeping regardless (a misbehaving
 * operator, to test that the wrapper does not wait for it). `config.emit_cursor: true` then emits
 * the trigger's cursor on output 0, so each triggered work item has one downstream output.
 */
import { z } from 'zod';
import { parseConfig, testOperatorInfo } from '../config.js';
import type { Operator } from '../types.js';

const configSchema = z.strictObject({
  ms: z.number().int().min(0),
  ignore_abort: z.boolean().optional(),
  emit_cursor: z.boolean().optional(),
});

export const testSleep: Operator = {
  info: testOperatorInfo('test_sleep', configSchema),
  async run(ctx) {
    const cfg = parseConfig('test_sleep', configSchema, ctx.task.config);
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(done, cfg.ms);
      function done() {
        ctx.signal.removeEventListener('abort', onAbort);
        resolve();
      }
      function onAbort() {
        clearTimeout(timer);
        reject(ctx.signal.reason instanceof Error ? ctx.signal.reason : new Error('aborted'));
      }
      if (!cfg.ignore_abort) {
        if (ctx.signal.aborted) onAbort();
        else ctx.signal.addEventListener('abort', onAbort, { once: true });
      }
    });
    const cursor = ctx.task.trigger.cursor;
    return cfg.emit_cursor && cursor !== undefined ? { events: [{ output_index: 0, cursor }] } : {};
  },
};
