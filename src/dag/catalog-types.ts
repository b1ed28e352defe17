/**
 * The operator catalog as the DAG validator sees it. The operator registry (src/worker,
 * src/operators) implements this; the validator only reads it.
 */
export type OperatorRuntime = 'lambda' | 'ecs_platform' | 'dispatcher';
export type OperatorActivation = 'source' | 'reactive';
export type ExecutionStrategy = 'PerUpdate' | 'PerPartition';

/**
 * How an operator's writes land, so a DAG's `update_strategy`/`unique_key` can be checked
 * against what actually happens (a strategy the operator does not honour is refused at deploy).
 */
export interface OperatorWrites {
  /**
   * Present when re-delivered output is upserted on a key: the columns of that key. A job with
   * `update_strategy: append` must name exactly these in `unique_key`. Platform events are
   * deduplicated on their identity (`partition_key` for ranges, `cursor` for cursors); rows a
   * sink writes, on the dataset's key (for example `dedupe_key`).
   */
  append?: readonly string[];
  /** True when re-running a task for the same input rewrites the same output (no accumulation). */
  replace?: boolean;
}

export interface OperatorInfo {
  name: string;
  /** Runtimes this operator may be deployed on. */
  runtimes: OperatorRuntime[];
  /** Whether a job using this operator must, may, or must not carry a `udf` block. */
  udf: 'required' | 'forbidden' | 'optional';
  /** Activations this operator supports. */
  activations: OperatorActivation[];
  /**
   * The incremental modes a reactive job of this operator may declare (`execution_strategy`):
   * `PerUpdate` consumes cursor or row-range events, `PerPartition` partition-keyed events.
   * Empty for source-only operators.
   */
  executionStrategies: ExecutionStrategy[];
  /** The `update_strategy` values (and `append` key) the operator's writes honour. */
  writes: OperatorWrites;
  /**
   * True when the operator applies the `where` filter of its input edges to what it reads itself
   * (reads that do not go through the task-scoped query), on the fields of `WHERE_FIELDS` in
   * src/dag/schema.ts. A `where` on an operator that neither applies it nor reads through the
   * task-scoped query (`readsInputsThroughQuery`) is refused: it would have no effect.
   */
  filtersInputs?: boolean;
  /**
   * True when the operator reads its input rows only through the task-scoped query
   * (`/v1/task/query`), which applies the edge's `where` for it (ADR 0007). Jobs that run user
   * code (a `udf` block) read that way by contract and need not declare it. A `where` is then
   * checked as column: value(s) of the upstream dataset, not against an operator allowlist.
   */
  readsInputsThroughQuery?: boolean;
  /** Internal operators (for example chain_sync's cryo_ingest) are invisible to user DAGs. */
  hidden?: boolean;
  /**
   * Operator-specific checks of `config`. Paths are relative to the config object
   * (`range_size`, `validators[2]`, or `$`/empty for the object itself); the validator prefixes
   * them with `jobs[i].config`.
   */
  validateConfig?(config: Record<string, unknown>): Array<{ path: string; message: string }>;
  /**
   * A source whose manual trigger must carry a cursor or range (for example one that would
   * otherwise invent a cursor from the clock). The trigger route refuses it without one.
   */
  triggerNeedsCursor?(config: Record<string, unknown>): boolean;
  /**
   * How many events a task of this operator emits for the events it is given, for the trigger
   * route's estimate of what a manual trigger sets off. Without it: one event per task, carrying
   * the input's cursor or range width. `states` are the job's operator-state rows.
   */
  fanOut?(config: Record<string, unknown>, input: EventFlow, states: ReadonlyArray<{ state_key: string; state: Record<string, unknown> }>): EventFlow;
}

/** A bundle of similar events flowing along a DAG edge (an estimate, not the events). */
export interface EventFlow {
  /** How many events. */
  events: number;
  /** The highest cursor among them, when they carry cursors. */
  cursor?: number;
  /** The width `end - start` of each, when they are ranges. */
  span?: number;
}

export type OperatorCatalog = ReadonlyMap<string, OperatorInfo>;
