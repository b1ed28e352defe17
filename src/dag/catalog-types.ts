/**
 * The operator catalog as the DAG validator sees it. The operator registry (src/worker,
 * src/operators) implements this; the validator only reads it.
 */
export type OperatorRuntime = 'lambda' | 'ecs_platform' | 'dispatcher';
export type OperatorActivation = 'source' | 'reactive';

export interface OperatorInfo {
  name: string;
  /** Runtimes this operator may be deployed on. */
  runtimes: OperatorRuntime[];
  /** Whether a job using this operator must, may, or must not carry a `udf` block. */
  udf: 'required' | 'forbidden' | 'optional';
  /** Activations this operator supports. */
  activations: OperatorActivation[];
  /** Internal operators (for example chain_sync's cryo_ingest) are invisible to user DAGs. */
  hidden?: boolean;
  /**
   * Operator-specific checks of `config`. Paths are relative to the config object
   * (`range_size`, `validators[2]`, or `$`/empty for the object itself); the validator prefixes
   * them with `jobs[i].config`.
   */
  validateConfig?(config: Record<string, unknown>): Array<{ path: string; message: string }>;
}

export type OperatorCatalog = ReadonlyMap<string, OperatorInfo>;
