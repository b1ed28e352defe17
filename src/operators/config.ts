/**
 * Helpers shared by operators: config validation with path-precise problems, durable-state
 * lookup, and strict parsing of cursors and ranges.
 */
import type { z } from 'zod';
import { formatPath, TraceError, type Problem } from '../core/errors.js';
import type { TaskPayload } from '../worker/payload.js';
import type { OperatorInfo } from '../dag/catalog-types.js';

/**
 * Problems in `config`, with paths relative to the config object (`range_size`, `events[0].cursor`,
 * `$` for the object itself). DAG validation prefixes them with the job's config path.
 */
export function configProblems(schema: z.ZodType, config: Record<string, unknown>): Problem[] {
  const r = schema.safeParse(config);
  if (r.success) return [];
  return r.error.issues.map((i) => ({ path: formatPath(i.path), message: i.message }));
}

/** Parses `config` or throws a 422 INVALID_CONFIG TraceError listing every problem. */
export function parseConfig<T>(operator: string, schema: z.ZodType<T>, config: Record<string, unknown>): T {
  const r = schema.safeParse(config);
  if (r.success) return r.data;
  const problems = r.error.issues.map((i) => ({ path: formatPath(i.path), message: i.message }));
  const first = problems[0]!;
  throw new TraceError(422, 'INVALID_CONFIG', `invalid ${operator} config: ${first.path}: ${first.message}`, { problems });
}

/** The durable state stored under `key` for this job, with its version, if any. */
export function readState(task: TaskPayload, key: string): { state: Record<string, unknown>; version: number } | undefined {
  const row = task.operator_state.find((s) => s.state_key === key);
  return row ? { state: row.state, version: row.version } : undefined;
}

/** A cursor as a non-negative safe integer (numbers or decimal strings), else undefined. */
export function integerCursor(cursor: number | string | undefined): number | undefined {
  if (typeof cursor === 'number') return Number.isSafeInteger(cursor) && cursor >= 0 ? cursor : undefined;
  if (typeof cursor === 'string' && /^\d{1,16}$/.test(cursor)) {
    const n = Number(cursor);
    return Number.isSafeInteger(n) ? n : undefined;
  }
  return undefined;
}

const RANGE_KEY_RE = /^(\d{1,16})-(\d{1,16})$/;

/**
 * A half-open range `[start, end)` from explicit fields (preferred) or a `"start-end"`
 * partition key. Undefined when neither is present; throws when present but malformed.
 */
export function rangeOf(src: { start?: number; end?: number; partition_key?: string }): { start: number; end: number } | undefined {
  let start: number | undefined;
  let end: number | undefined;
  if (src.start !== undefined || src.end !== undefined) {
    start = src.start;
    end = src.end;
  } else if (src.partition_key !== undefined) {
    const m = RANGE_KEY_RE.exec(src.partition_key);
    if (!m) throw new TraceError(400, 'BAD_RANGE', `partition_key "${src.partition_key.slice(0, 64)}" is not "start-end"`);
    start = Number(m[1]);
    end = Number(m[2]);
  } else {
    return undefined;
  }
  if (start === undefined || end === undefined) throw new TraceError(400, 'BAD_RANGE', 'a range needs both start and end');
  if (!Number.isSafeInteger(start) || !Number.isSafeInteger(end) || start < 0 || end <= start) {
    throw new TraceError(400, 'BAD_RANGE', `invalid range [${start}, ${end}): start and end must be integers with 0 <= start < end`);
  }
  return { start, end };
}

/**
 * Catalog entry of a hidden test operator: any runtime and activation, never a UDF, config
 * checked against `schema`. Only registered when test operators are asked for.
 */
export function testOperatorInfo(name: string, schema: z.ZodType): OperatorInfo {
  return {
    name,
    runtimes: ['ecs_platform', 'dispatcher', 'lambda'],
    udf: 'forbidden',
    activations: ['source', 'reactive'],
    executionStrategies: ['PerUpdate', 'PerPartition'],
    writes: { replace: true },
    hidden: true,
    validateConfig: (config) => configProblems(schema, config),
  };
}
