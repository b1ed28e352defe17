/** noop: a DAG sink for wiring and benchmarks. Completes immediately and emits nothing. */
import type { Operator } from '../types.js';

export const noop: Operator = {
  info: {
    name: 'noop',
    runtimes: ['ecs_platform', 'dispatcher', 'lambda'],
    udf: 'forbidden',
    activations: ['source', 'reactive'],
    executionStrategies: ['PerUpdate', 'PerPartition'],
    // writes nothing, so a re-run leaves the same (empty) output
    writes: { replace: true },
    validateConfig: () => [],
  },
  async run() {
    return {};
  },
};
