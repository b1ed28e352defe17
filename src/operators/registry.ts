/**
 * The operators this build of Trace can run, and their catalog metadata for DAG validation.
 *
 * Hidden test operators (`test_*`) are registered only on request (tests, benchmarks); a DAG
 * naming them is rejected by production validation because they are not in its catalog.
 * `cryo_ingest` lives in its own module and is added here by whoever wires it in.
 */
import type { Operator, OperatorCatalog, OperatorInfo } from './types.js';
import { cursorEmitter } from './cursor_emitter/index.js';
import { rangeAggregator } from './range_aggregator/index.js';
import { rangeSplitter } from './range_splitter/index.js';
import { noop } from './noop/index.js';
import { testSleep } from './test_sleep/index.js';
import { testFail } from './test_fail/index.js';
import { testFlaky } from './test_flaky/index.js';
import { testEmit } from './test_emit/index.js';
import { testIncremental } from './test_incremental/index.js';
import { testRead } from './test_read/index.js';
import { alertEvaluate } from './alert_evaluate/index.js';
import { udfOperator } from './udf/index.js';
import { cryoIngest } from './cryo_ingest/operator.js';
import { alertRouteInfo, createAlertRoute, type AlertRouteStore } from './alert_route/index.js';

export interface RegistryOptions {
  includeTestOperators?: boolean;
  /** Where alert_route writes deliveries (Postgres data); without it the operator is not runnable here. */
  alertRouteStore?: AlertRouteStore;
}

const PUBLIC_OPERATORS: readonly Operator[] = [cursorEmitter, rangeAggregator, rangeSplitter, noop, alertEvaluate, udfOperator, cryoIngest];
const TEST_OPERATORS: readonly Operator[] = [testSleep, testFail, testFlaky, testEmit, testIncremental, testRead];

export function operatorRegistry(opts: RegistryOptions = {}): Map<string, Operator> {
  const ops = opts.includeTestOperators ? [...PUBLIC_OPERATORS, ...TEST_OPERATORS] : PUBLIC_OPERATORS;
  const map = new Map<string, Operator>();
  for (const op of ops) {
    if (map.has(op.info.name)) throw new Error(`operator ${op.info.name} registered twice`);
    map.set(op.info.name, op);
  }
  if (opts.alertRouteStore) map.set('alert_route', createAlertRoute(opts.alertRouteStore));
  return map;
}

/** The metadata only (no code), for DAG validation. */
export function operatorCatalog(opts: RegistryOptions = {}): OperatorCatalog {
  const map = new Map<string, OperatorInfo>();
  for (const [name, op] of operatorRegistry(opts)) map.set(name, op.info);
  map.set('alert_route', alertRouteInfo);
  return map;
}
