/**
 * The DAG YAML v1 vocabulary: which fields exist where, which are reserved, value formats and
 * bounds. Leaf values are checked with zod schemas defined here; the walk that applies them and
 * the cross-field rules (references, cycles, catalog) live in validate.ts.
 * Authority: docs/specs/dag_configuration.md, ADR 0007 (where), ADR 0008 (publish).
 */
import { z } from 'zod';
import { CronExpressionParser } from 'cron-parser';
import { DEFAULTS } from '../core/config.js';
import { UUID_RE } from '../core/ids.js';

export const DAG_NAME_RE = /^[a-z][a-z0-9_]{0,63}$/;
export const JOB_NAME_RE = /^[a-z][a-z0-9_]{0,63}$/;
export const DATASET_NAME_RE = /^[a-z][a-z0-9_]{0,127}$/;
/** Role slugs in `publish.*.read_roles`. */
export const ROLE_SLUG_RE = /^[a-z][a-z0-9_-]{0,63}$/;
/** Column names in `unique_key`. */
export const COLUMN_RE = /^[A-Za-z_][A-Za-z0-9_]{0,62}$/;
/** Logical secret names (resolved by the platform, never values). */
export const SECRET_NAME_RE = /^[A-Za-z][A-Za-z0-9_./-]{0,127}$/;
export const BUNDLE_ID_RE = /^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$/;
/** `idle_timeout`: a positive whole number of seconds, minutes or hours, e.g. `5m`. */
export const IDLE_TIMEOUT_RE = /^[1-9][0-9]{0,5}[smh]$/;
/** `webhook_path`: lowercase path segments, optional leading slash, at most 128 characters. */
export const WEBHOOK_PATH_RE = /^\/?[a-z0-9][a-z0-9_-]*(\/[a-z0-9][a-z0-9_-]*)*$/;

export const RUNTIMES = ['lambda', 'ecs_platform', 'dispatcher'] as const;
export const ACTIVATIONS = ['source', 'reactive'] as const;
export const EXECUTION_STRATEGIES = ['PerUpdate', 'PerPartition'] as const;
export const UPDATE_STRATEGIES = ['append', 'replace'] as const;
export const SOURCE_KINDS = ['cron', 'always_on', 'webhook', 'manual'] as const;

/** Values that exist in the design but are refused in v1, with the reason given to the user. */
export const RESERVED_RUNTIMES: Readonly<Record<string, string>> = {
  ecs_udf: "runtime 'ecs_udf' is reserved for v2 and not supported in v1; user code runs on runtime 'lambda'",
};
export const RESERVED_ACTIVATIONS: Readonly<Record<string, string>> = {
  manual:
    "activation 'manual' is reserved and not supported in v1; use activation 'source' with source.kind 'manual' for a job started only by an admin trigger",
};

/**
 * Fields the v1 vocabulary accepts in form but whose effect the platform does not provide;
 * setting them is refused rather than silently ignored (the message is the user's answer).
 */
export const UNSUPPORTED = {
  idle_timeout: 'is not supported: reactive jobs have no idle timeout in this version; remove the field',
  reset_outputs: 'true is not supported: outputs are never reset at activation in this version; remove it or set false',
  secrets: 'is not supported: secrets are not injected into jobs in this version; list none',
} as const;

/** Backpressure knobs owned by the Dispatcher; refused anywhere on a job or in defaults. */
export const RESERVED_BACKPRESSURE_FIELDS: ReadonlySet<string> = new Set(['max_queue_depth', 'max_queue_age', 'backpressure_mode']);
/** Publish entry fields reserved for later versions. */
export const RESERVED_PUBLISH_FIELDS: ReadonlySet<string> = new Set(['storage', 'write_mode', 'schema']);

export const TOP_FIELDS = ['name', 'defaults', 'jobs', 'publish'] as const;
export const DEFAULTS_FIELDS = ['timeout_seconds', 'heartbeat_timeout_seconds', 'max_attempts', 'scaling'] as const;
export const JOB_FIELDS = [
  'name',
  'activation',
  'runtime',
  'operator',
  'outputs',
  'inputs',
  'execution_strategy',
  'idle_timeout',
  'update_strategy',
  'unique_key',
  'source',
  'bootstrap',
  'secrets',
  'scaling',
  'timeout_seconds',
  'heartbeat_timeout_seconds',
  'max_attempts',
  'config',
  'udf',
] as const;
export const INPUT_FIELDS = ['from', 'where'] as const;
/** `inputs[].from`: a job output `{job, output}` or a dataset `{dataset}`. */
export const INPUT_FROM_FIELDS = ['job', 'output', 'dataset'] as const;
/** `publish.*.from`: a job output. */
export const PUBLISH_FROM_FIELDS = ['job', 'output'] as const;
export const SCALING_FIELDS = ['max_concurrency'] as const;
export const BOOTSTRAP_FIELDS = ['reset_outputs'] as const;
export const UDF_FIELDS = ['bundle_id', 'entrypoint'] as const;
export const PUBLISH_ENTRY_FIELDS = ['from', 'read_roles'] as const;
export const SOURCE_FIELDS_BY_KIND: Readonly<Record<(typeof SOURCE_KINDS)[number], readonly string[]>> = {
  cron: ['kind', 'schedule'],
  always_on: ['kind'],
  webhook: ['kind', 'webhook_path'],
  manual: ['kind'],
};

export const LIMITS = {
  outputs: { min: 1, max: 16 },
  timeout_seconds: { min: 1, max: 86_400 },
  heartbeat_timeout_seconds: { min: 5, max: 3_600 },
  max_attempts: { min: 1, max: 100 },
  max_concurrency: { min: 1, max: 10_000 },
  /** Longest `@every` interval: 31 days. */
  everyMaxSeconds: 31 * 24 * 3600,
  listMax: 64,
  whereListMax: 100,
  stringMax: 256,
} as const;

/** Built-in job defaults (operations.md); `defaults:` in the YAML overrides them. */
export const BUILTIN_JOB_DEFAULTS = {
  timeout_seconds: DEFAULTS.timeoutSeconds,
  heartbeat_timeout_seconds: 60,
  max_attempts: DEFAULTS.maxAttempts,
} as const;

// ---------------------------------------------------------------------------------------------
// Leaf schemas (zod). Messages are written for users reading a deploy error.

export const intIn = (min: number, max: number) => {
  const msg = `must be an integer from ${min} to ${max}`;
  return z.int({ error: msg }).min(min, { error: msg }).max(max, { error: msg });
};

export const patterned = (re: RegExp, what: string) =>
  z.string({ error: `must be a string (${what})` }).regex(re, { error: `must be ${what}` });

export const nameSchema = (what: string, re: RegExp, max: number) =>
  patterned(re, `${what}: lowercase letters, digits and _, starting with a letter, at most ${max} characters`);

export const dagNameSchema = nameSchema('a DAG name', DAG_NAME_RE, 64);
export const jobNameSchema = nameSchema('a job name', JOB_NAME_RE, 64);
export const datasetNameSchema = nameSchema('a dataset name', DATASET_NAME_RE, 128);

export const enumSchema = <T extends readonly [string, ...string[]]>(values: T) =>
  z.enum(values, { error: `must be one of ${values.map((v) => `'${v}'`).join(', ')}` });

export const booleanSchema = z.boolean({ error: 'must be true or false' });

export const outputIndexSchema = z.int({ error: 'must be a non-negative integer output index' }).min(0, {
  error: 'must be a non-negative integer output index',
});

export const idleTimeoutSchema = patterned(IDLE_TIMEOUT_RE, "a duration like '30s', '5m' or '2h'");
export const bundleIdSchema = patterned(BUNDLE_ID_RE, 'a bundle id (letters, digits, _ . : -; at most 128 characters)');
export const webhookPathSchema = z
  .string({ error: 'must be a string (a webhook path)' })
  .max(128, { error: 'must be at most 128 characters' })
  .regex(WEBHOOK_PATH_RE, { error: "must be a path of lowercase segments like 'hooks/my_feed'" });

/** A relative file path inside a bundle: no absolute paths, no `..`, no backslashes. */
export const entrypointSchema = z
  .string({ error: 'must be a string (a file path inside the bundle)' })
  .min(1, { error: 'must not be empty' })
  .max(LIMITS.stringMax, { error: `must be at most ${LIMITS.stringMax} characters` })
  .refine(
    (p) => !p.startsWith('/') && !p.includes('\\') && p.split('/').every((seg) => seg !== '' && seg !== '.' && seg !== '..' && /^[A-Za-z0-9_.@+-]+$/.test(seg)),
    { error: "must be a relative path inside the bundle (no leading '/', no '..' segments)" },
  );

// ---------------------------------------------------------------------------------------------
// `where` filters (ADR 0007): allowlisted fields, typed values.

export const WHERE_FIELDS: Readonly<Record<string, { describe: string; schema: z.ZodType }>> = {
  severity: { describe: "one of 'info', 'warning', 'critical'", schema: enumSchema(['info', 'warning', 'critical'] as const) },
  chain_id: { describe: 'a non-negative integer', schema: z.int({ error: 'must be an integer chain id' }).min(0, { error: 'must be a non-negative integer chain id' }) },
  alert_definition_id: { describe: 'a UUID', schema: patterned(UUID_RE, 'a UUID') },
  label_type: { describe: 'a string', schema: z.string({ error: 'must be a string' }).min(1, { error: 'must not be empty' }).max(LIMITS.stringMax) },
  dataset_key: { describe: 'a string', schema: z.string({ error: 'must be a string' }).min(1, { error: 'must not be empty' }).max(LIMITS.stringMax) },
};

/**
 * A `where` value on an edge the task-scoped query filters: a string, a finite number or a
 * boolean. Whether it suits the column's type is checked against the upstream schema (deploy,
 * when known) and the files' own schema (every read).
 */
export const WHERE_ANY_COLUMN: { describe: string; schema: z.ZodType } = {
  describe: 'a string, number or boolean',
  schema: z.union([z.string().max(LIMITS.stringMax, { error: `must be at most ${LIMITS.stringMax} characters` }), z.number(), z.boolean()], { error: 'must be a string, number or boolean' }),
};

// ---------------------------------------------------------------------------------------------
// Cron schedules: standard five-field cron, or `@every <N>s|m|h`.

const EVERY_RE = /^@every\s+([1-9][0-9]{0,7})([smh])$/;
const CRON_FIELD_RE = /^[0-9A-Za-z*/,?#-]+$/;

/** Returns an error message, or undefined when `schedule` is acceptable. */
export function checkSchedule(schedule: string): string | undefined {
  const s = schedule.trim();
  if (s.length === 0) return 'must not be empty';
  if (s.length > 128) return 'must be at most 128 characters';
  if (s.startsWith('@')) {
    const m = EVERY_RE.exec(s);
    if (!m) return "must be a five-field cron expression or '@every <N>s|m|h' (other @ macros are not supported)";
    const seconds = Number(m[1]) * (m[2] === 'h' ? 3600 : m[2] === 'm' ? 60 : 1);
    if (seconds > LIMITS.everyMaxSeconds) return `@every interval must be at most ${LIMITS.everyMaxSeconds / 86_400} days`;
    return undefined;
  }
  const fields = s.split(/\s+/);
  if (fields.length !== 5) return `must be a five-field cron expression (minute hour day-of-month month day-of-week); got ${fields.length} fields`;
  for (const f of fields) {
    // `H` (hashed) fields would make schedules depend on the parser's randomness.
    if (!CRON_FIELD_RE.test(f) || /(^|[^A-Za-z])H([^A-Za-z]|$)/.test(f)) return `invalid cron field '${f}'`;
  }
  try {
    CronExpressionParser.parse(s);
  } catch (e) {
    return `invalid cron expression: ${e instanceof Error ? e.message : 'unparsable'}`;
  }
  return undefined;
}

/** Seconds in an `@every` schedule or `idle_timeout` duration, or undefined. */
export function durationSeconds(text: string): number | undefined {
  const m = /^(?:@every\s+)?([1-9][0-9]*)([smh])$/.exec(text.trim());
  if (!m) return undefined;
  return Number(m[1]) * (m[2] === 'h' ? 3600 : m[2] === 'm' ? 60 : 1);
}
