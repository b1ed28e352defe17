/** noop: a DAG sink for wiring and benchmarks. Completes immediately and emits nothing. */
import type { Operator } from '../types.js';

export const noop: Operator = {
  info: {
    name: 'noop',
    runtimes: ['ecs_platform', 'dispatcher', 'lambda'],
    udf: 'forbidden',
    activations: ['source', 'reactive'],
    validateConfig: () => [],
  },
  async run() {
    return {};
  },
};
