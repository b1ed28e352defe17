/**
 * udf (specs/operators/udf.md): the generic harness for untrusted user bundles on
 * `runtime: lambda`. Like alert_evaluate, only catalog metadata lives here; the Dispatcher's UDF
 * executor runs the job's bundle. Config is free-form (the bundle reads it).
 */
import type { Operator } from '../types.js';

export const udfOperator: Operator = {
  info: {
    name: 'udf',
    runtimes: ['lambda'],
    udf: 'required',
    activations: ['reactive'],
    executionStrategies: ['PerUpdate', 'PerPartition'],
    // rows reach buffered datasets through the sink, which upserts on dedupe_key
    writes: { append: ['dedupe_key'], replace: true },
    validateConfig: () => [],
  },
  async run() {
    throw new Error('udf runs a user bundle; it is executed by the UDF executor, never as in-process operator code');
  },
};
