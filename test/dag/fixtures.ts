/** Shared fixtures for the DAG module tests: an operator catalog and example DAGs. */
import assert from 'node:assert/strict';
import { TraceError } from '../../src/core/errors.js';
import type { OperatorCatalog, OperatorInfo } from '../../src/dag/catalog-types.js';
import type { DagProblem } from '../../src/dag/problems.js';

const ops: OperatorInfo[] = [
  {
    name: 'block_follower',
    runtimes: ['ecs_platform', 'lambda'],
    udf: 'forbidden',
    activations: ['source'],
    executionStrategies: [],
    writes: { replace: true },
    validateConfig(config) {
      const out: Array<{ path: string; message: string }> = [];
      if (!Number.isInteger(config.chain_id)) out.push({ path: 'chain_id', message: 'must be an integer chain id' });
      return out;
    },
  },
  {
    name: 'range_aggregator',
    runtimes: ['ecs_platform'],
    udf: 'forbidden',
    activations: ['reactive'],
    executionStrategies: ['PerUpdate'],
    writes: { append: ['dedupe_key'] },
    validateConfig(config) {
      const n = config.range_size;
      return typeof n === 'number' && Number.isInteger(n) && n > 0 ? [] : [{ path: 'range_size', message: 'must be a positive integer' }];
    },
  },
  { name: 'parquet_compact', runtimes: ['ecs_platform'], udf: 'forbidden', activations: ['reactive'], executionStrategies: ['PerPartition'], writes: { replace: true } },
  { name: 'range_splitter', runtimes: ['ecs_platform'], udf: 'forbidden', activations: ['reactive'], executionStrategies: ['PerPartition'], writes: { append: ['partition_key'], replace: true } },
  { name: 'noop', runtimes: ['dispatcher', 'lambda', 'ecs_platform'], udf: 'forbidden', activations: ['source', 'reactive'], executionStrategies: ['PerUpdate', 'PerPartition'], writes: { replace: true }, filtersInputs: true },
  { name: 'udf', runtimes: ['lambda'], udf: 'required', activations: ['source', 'reactive'], executionStrategies: ['PerUpdate', 'PerPartition'], writes: { append: ['dedupe_key'], replace: true } },
  { name: 'alert_evaluate', runtimes: ['lambda'], udf: 'required', activations: ['reactive'], executionStrategies: ['PerUpdate'], writes: { append: ['dedupe_key'] }, filtersInputs: true },
  { name: 'validator_stats', runtimes: ['lambda'], udf: 'forbidden', activations: ['source'], executionStrategies: [], writes: { replace: true } },
  { name: 'enrich', runtimes: ['lambda', 'ecs_platform'], udf: 'optional', activations: ['reactive'], executionStrategies: ['PerUpdate', 'PerPartition'], writes: { append: ['dedupe_key'], replace: true } },
  { name: 'cryo_ingest', runtimes: ['ecs_platform'], udf: 'forbidden', activations: ['reactive'], executionStrategies: ['PerPartition'], writes: { replace: true }, hidden: true },
];

export const catalog: OperatorCatalog = new Map(ops.map((o) => [o.name, o]));

/** The example DAG of docs/specs/dag_configuration.md. */
export const SPEC_EXAMPLE = `name: monad_hot_to_parquet

defaults:
  heartbeat_timeout_seconds: 60
  max_attempts: 3

jobs:
  - name: block_follower
    activation: source
    runtime: ecs_platform
    operator: block_follower
    source:
      kind: always_on
    config:
      chain_id: 10143
      rpc_pool: monad
      start_block: 1000000
      emit_strategy: per_update
    outputs: 2
    update_strategy: replace

  - name: block_range_aggregate
    activation: reactive
    runtime: ecs_platform
    operator: range_aggregator
    execution_strategy: PerUpdate
    inputs:
      - from: { job: block_follower, output: 0 }
    outputs: 1
    config:
      cursor_column: block_number
      range_size: 10000
    update_strategy: append
    unique_key: [dedupe_key]
    timeout_seconds: 60

  - name: parquet_compact
    activation: reactive
    runtime: ecs_platform
    operator: parquet_compact
    execution_strategy: PerPartition
    inputs:
      - from: { job: block_range_aggregate, output: 0 }
    outputs: 1
    config:
      chain_id: 10143
      dataset: blocks
      finality_depth_blocks: 100
      chunk_size: 10000
      delete_after_compact: true
    update_strategy: replace
    timeout_seconds: 1800

publish:
  blocks_parquet:
    from: { job: parquet_compact, output: 0 }
`;

/** A broader DAG: splitter, cron source, UDF alerting, dataset inputs with filters. */
export const WIDE_EXAMPLE = `name: monad_alerts
defaults:
  timeout_seconds: 120
  scaling: { max_concurrency: 4 }
jobs:
  - name: block_follower
    activation: source
    runtime: ecs_platform
    operator: block_follower
    source: { kind: always_on }
    bootstrap: { reset_outputs: false }
    secrets: []
    config: { chain_id: 10143 }
    outputs: 2
  - name: block_range_aggregate
    activation: reactive
    runtime: ecs_platform
    operator: range_aggregator
    execution_strategy: PerUpdate
    inputs: [{ from: { job: block_follower, output: 0 } }]
    outputs: 1
    config: { cursor_column: block_number, range_size: 10000 }
    update_strategy: append
    unique_key: [dedupe_key]
  - name: block_range_split
    activation: reactive
    runtime: ecs_platform
    operator: range_splitter
    execution_strategy: PerPartition
    inputs: [{ from: { job: block_range_aggregate, output: 0 } }]
    outputs: 1
    config: { chunk_size: 1000 }
    update_strategy: replace
    scaling: { max_concurrency: 8 }
  - name: validator_stats
    activation: source
    runtime: lambda
    operator: validator_stats
    source: { kind: cron, schedule: "*/5 * * * *" }
    outputs: 1
  - name: alert_evaluate
    activation: reactive
    runtime: lambda
    operator: alert_evaluate
    execution_strategy: PerUpdate
    inputs:
      - from: { job: block_follower, output: 1 }
      - from: { dataset: address_labels }
        where: { chain_id: 1, label_type: cex }
    outputs: 1
    update_strategy: append
    unique_key: [dedupe_key]
    config: { max_lookback_seconds: 3600 }
    udf: { bundle_id: "b-123", entrypoint: "index.js" }
  - name: page_critical
    activation: reactive
    runtime: dispatcher
    operator: noop
    execution_strategy: PerUpdate
    inputs:
      - from: { dataset: alert_events }
        where:
          severity: [warning, critical]
          alert_definition_id: 0b6f2d1e-4a7c-4a55-9f3e-1c2d3e4f5a6b
    outputs: 1
    update_strategy: replace
    max_attempts: 5
  - name: hook
    activation: source
    runtime: lambda
    operator: noop
    source: { kind: webhook, webhook_path: hooks/feed }
    outputs: 1
  - name: kick
    activation: source
    runtime: dispatcher
    operator: noop
    source: { kind: manual }
    outputs: 1
publish:
  block_ranges:
    from: { job: block_range_split, output: 0 }
    read_roles: [analyst, on-call]
  alerts_seen:
    from: { job: alert_evaluate, output: 0 }
`;

/** Runs `fn`, expects a TraceError, returns it. */
export function traceErrorOf(fn: () => unknown): TraceError {
  try {
    fn();
  } catch (e) {
    assert.ok(e instanceof TraceError, `expected a TraceError, got ${String(e)}`);
    return e;
  }
  assert.fail('expected the call to throw');
}

/** Expects a 422 DAG_INVALID and returns its problems. */
export function problemsOf(fn: () => unknown): DagProblem[] {
  const e = traceErrorOf(fn);
  assert.equal(e.status, 422, `expected 422, got ${e.status} ${e.code}: ${e.message}`);
  assert.equal(e.code, 'DAG_INVALID');
  assert.ok(e.problems && e.problems.length > 0);
  return e.problems as DagProblem[];
}

/** Asserts that some problem has exactly `path` and a message matching `re`. */
export function assertProblem(problems: DagProblem[], path: string, re: RegExp): DagProblem {
  const hit = problems.find((p) => p.path === path && re.test(p.message));
  assert.ok(hit, `no problem at ${path} matching ${re}; got:\n${problems.map((p) => `  ${p.path}: ${p.message}`).join('\n')}`);
  return hit;
}

/** A deep, ordinary-object copy of a parsed document so tests can edit it. */
export function plain<T>(v: T): T {
  return JSON.parse(JSON.stringify(v)) as T;
}
