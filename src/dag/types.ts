/** The validated, defaults-applied form of a DAG YAML document. */
import type { OperatorActivation, OperatorRuntime } from './catalog-types.js';

export type Scalar = string | number | boolean;

export type JobOutputRef = { job: string; output: number };
export type DatasetRef = { dataset: string };

export interface InputEdge {
  from: JobOutputRef | DatasetRef;
  /** Structured read-time filter (ADR 0007): AND across keys, list = membership. */
  where?: Record<string, Scalar | Scalar[]>;
}

export type SourceSpec =
  | { kind: 'cron'; schedule: string }
  | { kind: 'always_on' }
  | { kind: 'webhook'; webhook_path: string }
  | { kind: 'manual' };

export interface JobSpec {
  name: string;
  activation: OperatorActivation;
  runtime: OperatorRuntime;
  operator: string;
  outputs: number;
  /** Always present; empty for source jobs. */
  inputs: InputEdge[];
  execution_strategy?: 'PerUpdate' | 'PerPartition';
  idle_timeout?: string;
  update_strategy?: 'append' | 'replace';
  unique_key?: string[];
  source?: SourceSpec;
  bootstrap?: { reset_outputs: boolean };
  secrets?: string[];
  scaling?: { max_concurrency?: number };
  timeout_seconds: number;
  heartbeat_timeout_seconds: number;
  max_attempts: number;
  /** Operator config; `{}` when omitted. */
  config: Record<string, unknown>;
  udf?: { bundle_id: string; entrypoint: string };
}

export interface PublishSpec {
  name: string;
  from: JobOutputRef;
  read_roles: string[];
}

export interface DagSpec {
  name: string;
  jobs: JobSpec[];
  publish: PublishSpec[];
}

export function isDatasetRef(from: InputEdge['from']): from is DatasetRef {
  return Object.hasOwn(from, 'dataset');
}
