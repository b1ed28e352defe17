/**
 * alert_evaluate (specs/operators/alert_evaluate.md): user-supplied evaluation logic in a UDF
 * bundle, on `runtime: lambda` only. This entry is the catalog metadata the DAG validator needs;
 * the code that runs is the job's bundle, executed by the Dispatcher's UDF executor, which adds
 * the configured alert definitions (`alert_definitions: [{id, name, condition}]`) to the
 * invocation. The bundle reads through `/v1/task/query` and publishes alert events as a JSONL
 * batch through `/v1/task/buffer-publish` with `dedupe_scope: alert_events`.
 *
 * Config: `alert_definition_id` or `alert_definition_ids` (which definitions to evaluate; all of
 * the org's when omitted), `max_lookback_seconds`, and `params` (free-form, for the bundle).
 */
import { z } from 'zod';
import { UUID_RE } from '../../core/ids.js';
import { configProblems } from '../config.js';
import type { Operator } from '../types.js';

const uuid = z.string().regex(UUID_RE, 'must be a UUID');

const configSchema = z.strictObject({
  alert_definition_id: uuid.optional(),
  alert_definition_ids: z.array(uuid).min(1).max(100).optional(),
  max_lookback_seconds: z.number().int().positive().max(365 * 86_400).optional(),
  params: z.record(z.string(), z.unknown()).optional(),
});

export const alertEvaluate: Operator = {
  info: {
    name: 'alert_evaluate',
    runtimes: ['lambda'],
    udf: 'required',
    activations: ['reactive'],
    executionStrategies: ['PerUpdate'],
    // alert events are upserted by the sink on (org, dedupe_key)
    writes: { append: ['dedupe_key'] },
    validateConfig: (config) => configProblems(configSchema, config),
  },
  async run() {
    throw new Error('alert_evaluate runs a user bundle; it is executed by the UDF executor, never as in-process operator code');
  },
};
