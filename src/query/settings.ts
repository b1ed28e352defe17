/**
 * Query Service settings read from the environment (both `trace lite up` and
 * `trace query-service`): `TRACE_QUERY_EXECUTORS` (executor processes, the queries that run at
 * once; default 4) and `TRACE_QUERY_EXECUTOR_MEMORY_MB` (memory cap of one executor: its
 * data-segment limit and the resident size it is killed above; DuckDB's memory_limit is half of
 * it; default 2048) and `TRACE_QUERY_RESULT_RETENTION_SECONDS` (how long a batch query result is
 * kept before the sweep removes it; default 604800, 7 days, operations.md). A value that is not an integer in range is a startup error naming it.
 */
import type { QueryServiceConfig } from './service.js';

function intVar(env: NodeJS.ProcessEnv, name: string, min: number, max: number, problems: string[]): number | undefined {
  const raw = env[name];
  if (raw === undefined || raw.trim() === '') return undefined;
  const n = Number(raw.trim());
  if (!Number.isSafeInteger(n) || n < min || n > max) {
    problems.push(`${name} must be an integer from ${min} to ${max}`);
    return undefined;
  }
  return n;
}

/** Throws one error naming every invalid variable. */
export function queryConfigFromEnv(env: NodeJS.ProcessEnv): Partial<QueryServiceConfig> {
  const problems: string[] = [];
  const out: Partial<QueryServiceConfig> = {};
  const executors = intVar(env, 'TRACE_QUERY_EXECUTORS', 1, 64, problems);
  const memoryMb = intVar(env, 'TRACE_QUERY_EXECUTOR_MEMORY_MB', 128, 1024 * 1024, problems);
  const retention = intVar(env, 'TRACE_QUERY_RESULT_RETENTION_SECONDS', 60, 365 * 24 * 3600, problems);
  if (problems.length > 0) throw new Error(problems.join('; '));
  if (retention !== undefined) out.resultRetentionSeconds = retention;
  if (executors !== undefined) out.maxConcurrent = executors;
  if (memoryMb !== undefined) out.executorMemoryBytes = memoryMb * 1024 * 1024;
  return out;
}
