/**
 * DAG YAML v1 validation. Walks the whole document and reports every problem it finds in one
 * 422 `DAG_INVALID` (paths like `jobs[2].inputs[0].from`), then returns the defaults-applied
 * DagSpec. The document may come from parseYamlSafely or from JSON; it is treated as untrusted
 * either way (prototype keys, non-data values and runaway nesting are refused here as well).
 *
 * Leaf values are checked with the zod schemas in schema.ts; a hand-written walk is used around
 * them because the rules that matter most (unknown and reserved fields at every level, rules that
 * depend on activation, references between jobs, cycles, the operator catalog) must all be
 * reported together with exact paths.
 */
import { z } from 'zod';
import type { OperatorCatalog, OperatorInfo } from './catalog-types.js';
import type { DagSpec, InputEdge, JobSpec, PublishSpec, Scalar, SourceSpec } from './types.js';
import { ProblemList, dagInvalid, joinPath, type DagProblem, type Path, type PathSeg } from './problems.js';
import { FORBIDDEN_KEYS } from './safe-yaml.js';
import { findCycles, type GraphNode } from './graph.js';
import { formatPath } from '../core/errors.js';
import { didYouMean } from '../core/suggest.js';
import * as S from './schema.js';

export interface ValidateOptions {
  /** Let DAGs use operators the catalog marks hidden (platform-internal DAGs only). */
  allowHidden?: boolean;
}

type Rec = Record<string, unknown>;

const isRec = (v: unknown): v is Rec => typeof v === 'object' && v !== null && !Array.isArray(v);
const has = (o: Rec, k: string): boolean => Object.hasOwn(o, k);
const own = (o: Rec, k: string): unknown => (Object.hasOwn(o, k) ? o[k] : undefined);
const list = (values: readonly string[]) => values.map((v) => `'${v}'`).join(', ');

/** How deep a document handed to validateDag may nest before we stop walking it. */
const MAX_WALK_DEPTH = 64;

/** Who applies an input's `where` (see Validator.filterMode). */
type FilterMode = 'operator' | 'query' | 'unknown' | { refuse: string };

interface InputDraft {
  path: Path;
  hasWhere?: boolean;
  job?: string;
  output?: number;
  dataset?: string;
  where?: Record<string, Scalar | Scalar[]>;
}

/** A job being validated: the JobSpec fields, with the required ones still possibly missing. */
type JobDraft = Omit<JobSpec, 'name' | 'activation' | 'runtime' | 'operator' | 'outputs' | 'inputs'>
  & Partial<Pick<JobSpec, 'name' | 'activation' | 'runtime' | 'operator' | 'outputs'>>
  & { index: number; path: Path; op?: OperatorInfo; inputs: InputDraft[] };

interface PublishDraft {
  path: Path;
  name?: string;
  job?: string;
  output?: number;
  read_roles: string[];
}

interface JobDefaults {
  timeout_seconds: number;
  heartbeat_timeout_seconds: number;
  max_attempts: number;
  scaling?: { max_concurrency?: number };
}

const operatorNameSchema = z
  .string({ error: 'must be a string (an operator name)' })
  .min(1, { error: 'must not be empty' })
  .max(128, { error: 'must be at most 128 characters' });

class Validator {
  readonly problems = new ProblemList();

  constructor(
    private readonly catalog: OperatorCatalog,
    private readonly opts: ValidateOptions,
  ) {}

  private add(path: Path, message: string): void {
    this.problems.add(path, message);
  }

  // ---- leaf helpers ---------------------------------------------------------------------------

  private leaf<T>(schema: z.ZodType<T>, value: unknown, path: Path): T | undefined {
    const r = schema.safeParse(value);
    if (r.success) return r.data;
    const issue = r.error.issues[0];
    if (issue) this.add([...path, ...(issue.path as PathSeg[])], issue.message);
    return undefined;
  }

  private required<T>(obj: Rec, key: string, path: Path, schema: z.ZodType<T>, why = ''): T | undefined {
    const v = own(obj, key);
    if (v === undefined || v === null) {
      this.add([...path, key], v === null ? `must not be empty${why}` : `is required${why}`);
      return undefined;
    }
    return this.leaf(schema, v, [...path, key]);
  }

  private optional<T>(obj: Rec, key: string, path: Path, schema: z.ZodType<T>): T | undefined {
    if (!has(obj, key)) return undefined;
    return this.leaf(schema, obj[key], [...path, key]);
  }

  /** Reports keys outside `allowed` (reserved and prototype keys are reported by scan()). */
  private fields(obj: Rec, allowed: readonly string[], path: Path, hint?: string): void {
    for (const k of Object.keys(obj)) {
      if (allowed.includes(k) || S.RESERVED_BACKPRESSURE_FIELDS.has(k) || FORBIDDEN_KEYS.has(k)) continue;
      this.add([...path, k], `unknown field '${k}'${didYouMean(k, allowed)}${hint ? `; ${hint}` : ''}`);
    }
  }

  private stringList(value: unknown, path: Path, item: z.ZodType<string>, what: string, nonEmpty: boolean): string[] | undefined {
    if (!Array.isArray(value)) {
      this.add(path, `must be a list of ${what}`);
      return undefined;
    }
    if (nonEmpty && value.length === 0) {
      this.add(path, `must be a non-empty list of ${what}`);
      return undefined;
    }
    if (value.length > S.LIMITS.listMax) {
      this.add(path, `must have at most ${S.LIMITS.listMax} entries`);
      return undefined;
    }
    const out: string[] = [];
    let ok = true;
    value.forEach((v, i) => {
      const s = this.leaf(item, v, [...path, i]);
      if (s === undefined) ok = false;
      else if (out.includes(s)) {
        this.add([...path, i], `duplicate entry '${s}'`);
        ok = false;
      } else out.push(s);
    });
    return ok ? out : undefined;
  }

  // ---- whole-document scan --------------------------------------------------------------------

  /** Prototype keys, reserved backpressure keys, non-data values and runaway nesting, anywhere. */
  private scan(value: unknown, path: Path, depth: number): void {
    if (value === null || typeof value === 'string' || typeof value === 'boolean') return;
    if (typeof value === 'number') {
      if (!Number.isFinite(value)) this.add(path, 'numbers must be finite');
      return;
    }
    if (typeof value !== 'object') {
      this.add(path, `unsupported value of type ${typeof value}`);
      return;
    }
    if (depth >= MAX_WALK_DEPTH) {
      this.add(path, `nested more than ${MAX_WALK_DEPTH} levels deep`);
      return;
    }
    if (Array.isArray(value)) {
      value.forEach((v, i) => this.scan(v, [...path, i], depth + 1));
      return;
    }
    const proto = Object.getPrototypeOf(value) as unknown;
    if (proto !== null && proto !== Object.prototype) {
      this.add(path, 'unsupported value (only mappings, lists and scalars)');
      return;
    }
    const rec = value as Rec;
    for (const k of Object.keys(rec)) {
      if (FORBIDDEN_KEYS.has(k)) {
        this.add([...path, k], `key '${k}' is not allowed`);
        continue;
      }
      if (S.RESERVED_BACKPRESSURE_FIELDS.has(k)) {
        this.add([...path, k], `'${k}' is reserved for Dispatcher-owned backpressure and is not supported in v1`);
      }
      this.scan(rec[k], [...path, k], depth + 1);
    }
  }

  // ---- top level ------------------------------------------------------------------------------

  run(doc: unknown): DagSpec | undefined {
    this.scan(doc, [], 0);
    if (!isRec(doc)) {
      this.add([], doc === null || doc === undefined ? 'the DAG document is empty' : 'the DAG document must be a mapping');
      return undefined;
    }
    this.fields(doc, S.TOP_FIELDS, []);
    const name = this.required(doc, 'name', [], S.dagNameSchema);
    const defaults = this.defaults(doc);

    const jobs: JobDraft[] = [];
    const rawJobs = own(doc, 'jobs');
    if (rawJobs === undefined || rawJobs === null) this.add(['jobs'], 'is required');
    else if (!Array.isArray(rawJobs)) this.add(['jobs'], 'must be a list of jobs');
    else if (rawJobs.length === 0) this.add(['jobs'], 'must contain at least one job');
    else rawJobs.forEach((raw, i) => jobs.push(this.job(raw, i, defaults)));

    const publish = this.publish(doc);
    const byName = this.jobNames(jobs);
    this.references(jobs, byName, publish);
    this.cycles(byName);
    this.publishReferences(publish, byName);

    if (this.problems.size > 0 || name === undefined) return undefined;
    return {
      name,
      jobs: jobs.map((d) => this.toJobSpec(d)),
      publish: publish.map((p): PublishSpec => ({ name: p.name!, from: { job: p.job!, output: p.output! }, read_roles: p.read_roles })),
    };
  }

  private defaults(doc: Rec): JobDefaults {
    const out: JobDefaults = { ...S.BUILTIN_JOB_DEFAULTS };
    const raw = own(doc, 'defaults');
    if (raw === undefined || raw === null) return out;
    const path: Path = ['defaults'];
    if (!isRec(raw)) {
      this.add(path, 'must be a mapping');
      return out;
    }
    this.fields(raw, S.DEFAULTS_FIELDS, path, `defaults may set only ${list(S.DEFAULTS_FIELDS)}`);
    const t = this.optional(raw, 'timeout_seconds', path, S.intIn(S.LIMITS.timeout_seconds.min, S.LIMITS.timeout_seconds.max));
    const h = this.optional(raw, 'heartbeat_timeout_seconds', path, S.intIn(S.LIMITS.heartbeat_timeout_seconds.min, S.LIMITS.heartbeat_timeout_seconds.max));
    const m = this.optional(raw, 'max_attempts', path, S.intIn(S.LIMITS.max_attempts.min, S.LIMITS.max_attempts.max));
    if (t !== undefined) out.timeout_seconds = t;
    if (h !== undefined) out.heartbeat_timeout_seconds = h;
    if (m !== undefined) out.max_attempts = m;
    if (has(raw, 'scaling')) {
      const s = this.scaling(raw.scaling, [...path, 'scaling']);
      if (s) out.scaling = s;
    }
    return out;
  }

  // ---- jobs -----------------------------------------------------------------------------------

  private job(raw: unknown, index: number, defaults: JobDefaults): JobDraft {
    const path: Path = ['jobs', index];
    const d: JobDraft = {
      index,
      path,
      inputs: [],
      timeout_seconds: defaults.timeout_seconds,
      heartbeat_timeout_seconds: defaults.heartbeat_timeout_seconds,
      max_attempts: defaults.max_attempts,
      config: {},
    };
    if (!isRec(raw)) {
      this.add(path, 'each job must be a mapping');
      return d;
    }
    this.fields(raw, S.JOB_FIELDS, path);
    d.name = this.required(raw, 'name', path, S.jobNameSchema);
    d.activation = this.reservedEnum(raw, 'activation', path, S.ACTIVATIONS, S.RESERVED_ACTIVATIONS);
    d.runtime = this.reservedEnum(raw, 'runtime', path, S.RUNTIMES, S.RESERVED_RUNTIMES);
    d.operator = this.required(raw, 'operator', path, operatorNameSchema);
    d.outputs = this.required(raw, 'outputs', path, S.intIn(S.LIMITS.outputs.min, S.LIMITS.outputs.max));
    this.operator(d);

    const isSource = d.activation === 'source';
    const isReactive = d.activation === 'reactive';
    const filters = this.filterMode(raw, d);

    // inputs
    if (has(raw, 'inputs')) {
      const v = raw.inputs;
      if (isSource) {
        if (!(Array.isArray(v) && v.length === 0) && v !== null) this.add([...path, 'inputs'], 'source jobs take no inputs');
      } else if (!Array.isArray(v) || v.length === 0) {
        this.add([...path, 'inputs'], 'must be a non-empty list of inputs like {from: {job, output}} or {from: {dataset}}');
      } else if (v.length > S.LIMITS.listMax) {
        this.add([...path, 'inputs'], `must have at most ${S.LIMITS.listMax} inputs`);
      } else {
        d.inputs = v.map((item, i) => this.input(item, [...path, 'inputs', i], filters));
        this.sameUpstream(d.inputs);
      }
    } else if (isReactive) {
      this.add([...path, 'inputs'], 'is required for reactive jobs');
    }

    // reactive-only fields
    d.execution_strategy = this.reactiveField(raw, 'execution_strategy', d, S.enumSchema(S.EXECUTION_STRATEGIES), true);
    if (d.execution_strategy !== undefined && d.op && !d.op.executionStrategies.includes(d.execution_strategy)) {
      const runs = d.op.executionStrategies;
      this.add([...path, 'execution_strategy'],
        `operator '${d.op.name}' does not run as '${d.execution_strategy}'${runs.length > 0 ? ` (it runs as ${list(runs)})` : ''}`);
    }
    d.idle_timeout = this.reactiveField(raw, 'idle_timeout', d, S.idleTimeoutSchema, false);
    if (d.idle_timeout !== undefined) {
      this.add([...path, 'idle_timeout'], S.UNSUPPORTED.idle_timeout);
      d.idle_timeout = undefined;
    }

    // update strategy and idempotency key
    if (isReactive) d.update_strategy = this.required(raw, 'update_strategy', path, S.enumSchema(S.UPDATE_STRATEGIES), ' for reactive jobs');
    else d.update_strategy = this.optional(raw, 'update_strategy', path, S.enumSchema(S.UPDATE_STRATEGIES));
    const ukPath: Path = [...path, 'unique_key'];
    if (has(raw, 'unique_key')) {
      const uk = this.stringList(raw.unique_key, ukPath, S.patterned(S.COLUMN_RE, 'a column name'), 'column names', true);
      if (d.update_strategy === 'append') d.unique_key = uk;
      else if (d.update_strategy === 'replace' || (!has(raw, 'update_strategy') && d.activation !== undefined)) {
        this.add(ukPath, "is only valid with update_strategy 'append'");
      }
    } else if (d.update_strategy === 'append') {
      this.add(ukPath, "is required when update_strategy is 'append' (the columns the sink upserts on)");
    }
    this.writes(d);

    // source-only fields
    if (has(raw, 'source')) {
      if (isReactive) this.add([...path, 'source'], 'is only valid on source jobs');
      else {
        const s = this.source(raw.source, [...path, 'source']);
        if (s) d.source = s;
      }
    } else if (isSource) {
      this.add([...path, 'source'], "is required for source jobs (kind: cron, always_on, webhook or manual)");
    }
    if (has(raw, 'bootstrap')) {
      if (isReactive) this.add([...path, 'bootstrap'], 'is only valid on source jobs');
      else {
        const b = this.bootstrap(raw.bootstrap, [...path, 'bootstrap']);
        if (b) d.bootstrap = b;
      }
    }

    // knobs
    if (has(raw, 'secrets')) {
      d.secrets = this.stringList(raw.secrets, [...path, 'secrets'], S.patterned(S.SECRET_NAME_RE, 'a logical secret name'), 'secret names', false);
      const isUdfJob = has(raw, 'udf') || d.op?.udf === 'required';
      // UDF jobs get their own refusal in udf(); everyone else learns nothing would be injected.
      if (d.secrets !== undefined && d.secrets.length > 0 && !isUdfJob) this.add([...path, 'secrets'], S.UNSUPPORTED.secrets);
    }
    const jobScaling = has(raw, 'scaling') ? this.scaling(raw.scaling, [...path, 'scaling']) : undefined;
    const scaling = { ...(defaults.scaling ?? {}), ...(jobScaling ?? {}) };
    if (Object.keys(scaling).length > 0) d.scaling = scaling;
    const t = this.optional(raw, 'timeout_seconds', path, S.intIn(S.LIMITS.timeout_seconds.min, S.LIMITS.timeout_seconds.max));
    const h = this.optional(raw, 'heartbeat_timeout_seconds', path, S.intIn(S.LIMITS.heartbeat_timeout_seconds.min, S.LIMITS.heartbeat_timeout_seconds.max));
    const m = this.optional(raw, 'max_attempts', path, S.intIn(S.LIMITS.max_attempts.min, S.LIMITS.max_attempts.max));
    if (t !== undefined) d.timeout_seconds = t;
    if (h !== undefined) d.heartbeat_timeout_seconds = h;
    if (m !== undefined) d.max_attempts = m;

    // config, then the operator's own checks
    const rawConfig = own(raw, 'config');
    const cPath: Path = [...path, 'config'];
    if (rawConfig !== undefined && rawConfig !== null) {
      if (!isRec(rawConfig)) this.add(cPath, 'must be a mapping');
      else {
        d.config = cloneData(rawConfig) as Rec;
        this.operatorConfig(d, cPath);
      }
    } else this.operatorConfig(d, cPath);

    // user code
    this.udf(raw, d);
    return d;
  }

  /** A required enum field whose reserved values get their own message. */
  private reservedEnum<T extends readonly [string, ...string[]]>(
    raw: Rec,
    key: string,
    path: Path,
    values: T,
    reserved: Readonly<Record<string, string>>,
  ): T[number] | undefined {
    const v = own(raw, key);
    if (typeof v === 'string' && Object.hasOwn(reserved, v)) {
      this.add([...path, key], reserved[v]!);
      return undefined;
    }
    return this.required(raw, key, path, S.enumSchema(values)) as T[number] | undefined;
  }

  private reactiveField<T>(raw: Rec, key: string, d: JobDraft, schema: z.ZodType<T>, requiredForReactive: boolean): T | undefined {
    if (d.activation === 'source') {
      if (has(raw, key)) this.add([...d.path, key], 'is only valid on reactive jobs');
      return undefined;
    }
    if (d.activation === 'reactive' && requiredForReactive) return this.required(raw, key, d.path, schema, ' for reactive jobs');
    return this.optional(raw, key, d.path, schema);
  }

  /** update_strategy and unique_key must be what the operator's writes actually do. */
  private writes(d: JobDraft): void {
    const op = d.op;
    if (!op || d.update_strategy === undefined) return;
    const w = op.writes;
    const honoured = [...(w.append ? ['append'] : []), ...(w.replace === true ? ['replace'] : [])];
    if (!honoured.includes(d.update_strategy)) {
      this.add([...d.path, 'update_strategy'],
        `operator '${op.name}' does not write with update_strategy '${d.update_strategy}'${honoured.length > 0 ? ` (it honours ${list(honoured)})` : ''}`);
      return;
    }
    if (d.update_strategy === 'append' && d.unique_key !== undefined && w.append) {
      const want = [...w.append].sort();
      const got = [...d.unique_key].sort();
      if (want.length !== got.length || want.some((c, i) => c !== got[i])) {
        this.add([...d.path, 'unique_key'],
          `operator '${op.name}' upserts its output on [${w.append.join(', ')}]; unique_key must name exactly those columns`);
      }
    }
  }

  private operator(d: JobDraft): void {
    if (d.operator === undefined) return;
    const op = this.catalog.get(d.operator);
    if (!op || (op.hidden === true && this.opts.allowHidden !== true)) {
      const visible = [...this.catalog.values()].filter((o) => o.hidden !== true || this.opts.allowHidden === true).map((o) => o.name);
      this.add([...d.path, 'operator'], `unknown operator '${d.operator}'${didYouMean(d.operator, visible)}`);
      return;
    }
    d.op = op;
    if (d.runtime !== undefined && !op.runtimes.includes(d.runtime)) {
      this.add([...d.path, 'runtime'], `operator '${op.name}' does not run on runtime '${d.runtime}' (supported: ${list(op.runtimes)})`);
    }
    if (d.activation !== undefined && !op.activations.includes(d.activation)) {
      this.add([...d.path, 'activation'], `operator '${op.name}' does not support activation '${d.activation}' (supported: ${list(op.activations)})`);
    }
  }

  private operatorConfig(d: JobDraft, cPath: Path): void {
    const validate = d.op?.validateConfig;
    if (!validate) return;
    let found: unknown;
    try {
      found = validate.call(d.op, cloneData(d.config) as Rec);
    } catch {
      this.add(cPath, `operator '${d.op!.name}' could not validate this config`);
      return;
    }
    if (!Array.isArray(found)) return;
    const prefix = formatPath(cPath);
    for (const p of found as unknown[]) {
      if (!isRec(p) || typeof p.message !== 'string') continue;
      this.problems.add(joinPath(prefix, typeof p.path === 'string' ? p.path : ''), p.message);
    }
  }

  private udf(raw: Rec, d: JobDraft): void {
    const path: Path = [...d.path, 'udf'];
    const present = has(raw, 'udf');
    if (present) {
      const u = raw.udf;
      if (!isRec(u)) this.add(path, 'must be a mapping {bundle_id, entrypoint}');
      else {
        this.fields(u, S.UDF_FIELDS, path);
        const bundle_id = this.required(u, 'bundle_id', path, S.bundleIdSchema);
        const entrypoint = this.required(u, 'entrypoint', path, S.entrypointSchema);
        if (bundle_id !== undefined && entrypoint !== undefined) d.udf = { bundle_id, entrypoint };
      }
    }
    const op = d.op;
    if (op?.udf === 'required' && !present) {
      this.add(path, `is required by operator '${op.name}' (a bundle reference {bundle_id, entrypoint})`);
    }
    if (op?.udf === 'forbidden' && present) {
      this.add(path, `operator '${op.name}' does not run user bundles; remove the udf block`);
    }
    const runtimeAlreadyRefused = op !== undefined && d.runtime !== undefined && !op.runtimes.includes(d.runtime);
    if (present && d.runtime !== undefined && d.runtime !== 'lambda' && !runtimeAlreadyRefused) {
      this.add(path, "jobs with a udf block run only on runtime 'lambda' in v1");
    }
    const isUdfJob = present || op?.udf === 'required';
    if (isUdfJob && Array.isArray(raw.secrets) && raw.secrets.length > 0) {
      this.add([...d.path, 'secrets'], 'UDF jobs must not request secrets; user code never receives secrets');
    }
  }

  /**
   * Who applies a `where` on this job's inputs: the operator itself on its allowlisted fields
   * (`filtersInputs`), the task-scoped query on the upstream's columns (`readsInputsThroughQuery`,
   * or any job running user code, which reads only through it), or nobody (refused).
   */
  private filterMode(raw: Rec, d: JobDraft): FilterMode {
    const op = d.op;
    if (!op) return 'unknown';
    if (op.filtersInputs === true) return 'operator';
    if (op.readsInputsThroughQuery === true || has(raw, 'udf') || op.udf === 'required') return 'query';
    return { refuse: op.name };
  }

  /**
   * Events are routed to a job by upstream dataset, so two edges from one upstream are one edge
   * to the router: with a filter on either, the second edge's filter would never apply.
   */
  private sameUpstream(inputs: InputDraft[]): void {
    const seen = new Map<string, InputDraft>();
    for (const input of inputs) {
      const key = input.dataset !== undefined ? `d:${input.dataset}` : input.job !== undefined && input.output !== undefined ? `j:${input.job}#${input.output}` : undefined;
      if (key === undefined) continue;
      const first = seen.get(key);
      if (!first) {
        seen.set(key, input);
        continue;
      }
      if (first.hasWhere === true || input.hasWhere === true) {
        this.add([...input.path, 'from'], `reads the same upstream as inputs[${inputs.indexOf(first)}]; with a where filter on either, one edge per upstream (list several values in one where, a list is IN)`);
      }
    }
  }

  private input(raw: unknown, path: Path, filters: FilterMode = 'unknown'): InputDraft {
    const d: InputDraft = { path };
    if (!isRec(raw)) {
      this.add(path, 'each input must be a mapping like {from: {job, output}} or {from: {dataset}}');
      return d;
    }
    this.fields(raw, S.INPUT_FIELDS, path);
    const from = own(raw, 'from');
    const fPath: Path = [...path, 'from'];
    if (from === undefined || from === null) this.add(fPath, 'is required');
    else if (!isRec(from)) this.add(fPath, 'must be {job, output} or {dataset}');
    else {
      const hasJob = has(from, 'job');
      const hasDataset = has(from, 'dataset');
      if (hasJob && hasDataset) {
        this.add(fPath, 'must name either a job output {job, output} or a dataset {dataset}, not both');
      } else if (hasDataset) {
        this.fields(from, ['dataset'], fPath);
        d.dataset = this.required(from, 'dataset', fPath, S.datasetNameSchema);
      } else if (hasJob) {
        this.fields(from, ['job', 'output'], fPath);
        d.job = this.required(from, 'job', fPath, S.jobNameSchema);
        d.output = this.required(from, 'output', fPath, S.outputIndexSchema);
      } else {
        this.fields(from, S.INPUT_FROM_FIELDS, fPath);
        this.add(fPath, 'must name a job output {job, output} or a dataset {dataset}');
      }
    }
    if (has(raw, 'where')) {
      d.hasWhere = true;
      if (typeof filters === 'object') {
        this.add([...path, 'where'], `operator '${filters.refuse}' does not apply input filters and does not read its inputs through the task-scoped query; remove where, or filter in a job that reads its rows (a UDF job, alert_route)`);
      } else {
        const w = this.where(raw.where, [...path, 'where'], filters);
        if (w) d.where = w;
      }
    }
    return d;
  }

  private where(raw: unknown, path: Path, mode: 'operator' | 'query' | 'unknown'): Record<string, Scalar | Scalar[]> | undefined {
    if (typeof raw === 'string') {
      this.add(path, 'must be a map of field: value; SQL predicates are not supported');
      return undefined;
    }
    if (!isRec(raw)) {
      this.add(path, 'must be a map of field: value (or field: [values])');
      return undefined;
    }
    const keys = Object.keys(raw);
    if (keys.length === 0) {
      this.add(path, 'must name at least one field; omit where for no filter');
      return undefined;
    }
    const out: Record<string, Scalar | Scalar[]> = {};
    let ok = true;
    for (const k of keys) {
      if (FORBIDDEN_KEYS.has(k) || S.RESERVED_BACKPRESSURE_FIELDS.has(k)) {
        ok = false;
        continue;
      }
      const here: Path = [...path, k];
      // The operator's own allowlist, or any column of the upstream (checked against its schema
      // at deploy when the registry knows it, and against the files at every read).
      const field = mode === 'operator'
        ? (Object.hasOwn(S.WHERE_FIELDS, k) ? S.WHERE_FIELDS[k] : undefined)
        : (S.COLUMN_RE.test(k) ? S.WHERE_ANY_COLUMN : undefined);
      if (!field) {
        this.add(here, mode === 'operator'
          ? `'${k}' is not a filterable field (allowed: ${list(Object.keys(S.WHERE_FIELDS))})`
          : `'${k}' is not a column name (letters, digits and _, not starting with a digit, at most 63)`);
        ok = false;
        continue;
      }
      const v = raw[k];
      if (Array.isArray(v)) {
        if (v.length === 0) {
          this.add(here, 'must be a value or a non-empty list of values');
          ok = false;
          continue;
        }
        if (v.length > S.LIMITS.whereListMax) {
          this.add(here, `must list at most ${S.LIMITS.whereListMax} values`);
          ok = false;
          continue;
        }
        const items: Scalar[] = [];
        v.forEach((item, i) => {
          if (item === null || typeof item === 'object') {
            this.add([...here, i], 'list items must be single values (no nested lists or maps)');
            ok = false;
            return;
          }
          const checked = this.leaf(field.schema, item, [...here, i]);
          if (checked === undefined) ok = false;
          else items.push(checked as Scalar);
        });
        out[k] = items;
      } else if (v === null || typeof v === 'object') {
        this.add(here, `must be ${field.describe} or a list of them; nested maps and null are not supported`);
        ok = false;
      } else {
        const checked = this.leaf(field.schema, v, here);
        if (checked === undefined) ok = false;
        else out[k] = checked as Scalar;
      }
    }
    return ok ? out : undefined;
  }

  private source(raw: unknown, path: Path): SourceSpec | undefined {
    if (!isRec(raw)) {
      this.add(path, 'must be a mapping with a kind (cron, always_on, webhook or manual)');
      return undefined;
    }
    const kind = this.required(raw, 'kind', path, S.enumSchema(S.SOURCE_KINDS));
    if (kind === undefined) {
      this.fields(raw, [...new Set(Object.values(S.SOURCE_FIELDS_BY_KIND).flat())], path);
      return undefined;
    }
    const allowed = S.SOURCE_FIELDS_BY_KIND[kind];
    this.fields(raw, allowed, path, `source kind '${kind}' takes ${list(allowed)}`);
    switch (kind) {
      case 'cron': {
        const schedule = this.required(raw, 'schedule', path, z.string({ error: 'must be a string' }), " for source kind 'cron'");
        if (schedule === undefined) return undefined;
        const err = S.checkSchedule(schedule);
        if (err) {
          this.add([...path, 'schedule'], err);
          return undefined;
        }
        return { kind, schedule };
      }
      case 'webhook': {
        const webhook_path = this.required(raw, 'webhook_path', path, S.webhookPathSchema, " for source kind 'webhook'");
        return webhook_path === undefined ? undefined : { kind, webhook_path };
      }
      case 'always_on':
        return { kind };
      case 'manual':
        return { kind };
    }
  }

  private bootstrap(raw: unknown, path: Path): { reset_outputs: boolean } | undefined {
    if (!isRec(raw)) {
      this.add(path, 'must be a mapping {reset_outputs: true|false}');
      return undefined;
    }
    this.fields(raw, S.BOOTSTRAP_FIELDS, path);
    const reset_outputs = this.required(raw, 'reset_outputs', path, S.booleanSchema);
    if (reset_outputs === true) this.add([...path, 'reset_outputs'], S.UNSUPPORTED.reset_outputs);
    return reset_outputs === undefined ? undefined : { reset_outputs };
  }

  private scaling(raw: unknown, path: Path): { max_concurrency?: number } | undefined {
    if (!isRec(raw)) {
      this.add(path, 'must be a mapping {max_concurrency}');
      return undefined;
    }
    this.fields(raw, S.SCALING_FIELDS, path);
    const mc = this.optional(raw, 'max_concurrency', path, S.intIn(S.LIMITS.max_concurrency.min, S.LIMITS.max_concurrency.max));
    return mc === undefined ? {} : { max_concurrency: mc };
  }

  // ---- publish --------------------------------------------------------------------------------

  private publish(doc: Rec): PublishDraft[] {
    const raw = own(doc, 'publish');
    if (raw === undefined || raw === null) return [];
    if (!isRec(raw)) {
      this.add(['publish'], 'must be a mapping of dataset name to {from: {job, output}}');
      return [];
    }
    const out: PublishDraft[] = [];
    for (const name of Object.keys(raw)) {
      if (FORBIDDEN_KEYS.has(name) || S.RESERVED_BACKPRESSURE_FIELDS.has(name)) continue;
      const path: Path = ['publish', name];
      const d: PublishDraft = { path, read_roles: [] };
      out.push(d);
      d.name = this.leaf(S.datasetNameSchema, name, path);
      const entry = raw[name];
      if (!isRec(entry)) {
        this.add(path, 'must be a mapping {from: {job, output}, read_roles?}');
        continue;
      }
      for (const k of Object.keys(entry)) {
        if (S.RESERVED_PUBLISH_FIELDS.has(k)) this.add([...path, k], `'publish.*.${k}' is reserved and not supported in v1`);
      }
      this.fields(entry, [...S.PUBLISH_ENTRY_FIELDS, ...S.RESERVED_PUBLISH_FIELDS], path);
      const from = own(entry, 'from');
      const fPath: Path = [...path, 'from'];
      if (from === undefined || from === null) this.add(fPath, 'is required');
      else if (!isRec(from)) this.add(fPath, 'must be a job output {job, output}');
      else if (has(from, 'dataset')) this.add(fPath, 'must be a job output {job, output}; only job outputs can be published');
      else {
        this.fields(from, S.PUBLISH_FROM_FIELDS, fPath);
        d.job = this.required(from, 'job', fPath, S.jobNameSchema);
        d.output = this.required(from, 'output', fPath, S.outputIndexSchema);
      }
      if (has(entry, 'read_roles')) {
        const roles = this.stringList(entry.read_roles, [...path, 'read_roles'], S.patterned(S.ROLE_SLUG_RE, 'a role slug (lowercase letters, digits, _ and -)'), 'role slugs', false);
        if (roles) d.read_roles = roles;
      }
    }
    return out;
  }

  // ---- cross-job rules ------------------------------------------------------------------------

  private jobNames(jobs: JobDraft[]): Map<string, JobDraft> {
    const byName = new Map<string, JobDraft>();
    for (const j of jobs) {
      if (j.name === undefined) continue;
      const first = byName.get(j.name);
      if (first) this.add([...j.path, 'name'], `duplicate job name '${j.name}' (already used by jobs[${first.index}])`);
      else byName.set(j.name, j);
    }
    return byName;
  }

  private outputInRange(target: JobDraft, output: number | undefined, at: Path): void {
    if (output === undefined || target.outputs === undefined) return;
    if (output >= target.outputs) {
      const range = target.outputs === 1 ? 'the only valid output is 0' : `valid outputs are 0..${target.outputs - 1}`;
      this.add(at, `job '${target.name}' has ${target.outputs} output${target.outputs === 1 ? '' : 's'}; ${range}`);
    }
  }

  private references(jobs: JobDraft[], byName: Map<string, JobDraft>, publish: PublishDraft[]): void {
    const published = new Map<string, PublishDraft>();
    for (const p of publish) if (p.name !== undefined) published.set(p.name, p);
    for (const j of jobs) {
      for (const input of j.inputs) {
        if (input.job !== undefined) {
          const target = byName.get(input.job);
          if (!target) this.add([...input.path, 'from', 'job'], `unknown job '${input.job}'`);
          else this.outputInRange(target, input.output, [...input.path, 'from', 'output']);
        }
        if (input.dataset !== undefined) {
          const p = published.get(input.dataset);
          if (p && p.job !== undefined && p.output !== undefined) {
            this.add(
              [...input.path, 'from', 'dataset'],
              `dataset '${input.dataset}' is published by this DAG; wire it as from: {job: ${p.job}, output: ${p.output}}`,
            );
          }
        }
      }
    }
  }

  private cycles(byName: Map<string, JobDraft>): void {
    const nodes: GraphNode[] = [];
    for (const j of byName.values()) {
      nodes.push({
        name: j.name!,
        upstream: j.inputs.filter((i) => i.job !== undefined).map((i) => ({ job: i.job!, at: [...i.path, 'from', 'job'] })),
      });
    }
    for (const c of findCycles(nodes)) {
      this.add(c.at, `job inputs form a cycle: ${c.jobs.join(' -> ')} (each job reads from the next)`);
    }
  }

  private publishReferences(publish: PublishDraft[], byName: Map<string, JobDraft>): void {
    const seen = new Map<string, string>();
    for (const p of publish) {
      if (p.job === undefined) continue;
      const fPath: Path = [...p.path, 'from'];
      const target = byName.get(p.job);
      if (!target) {
        this.add([...fPath, 'job'], `unknown job '${p.job}'`);
        continue;
      }
      this.outputInRange(target, p.output, [...fPath, 'output']);
      if (p.output === undefined || p.name === undefined) continue;
      const key = `${p.job}\u0000${p.output}`;
      const other = seen.get(key);
      if (other !== undefined) {
        this.add(fPath, `output ${p.output} of job '${p.job}' is already published as '${other}'; publish each output under one name`);
      } else seen.set(key, p.name);
    }
  }

  // ---- output ---------------------------------------------------------------------------------

  private toJobSpec(d: JobDraft): JobSpec {
    const spec: JobSpec = {
      name: d.name!,
      activation: d.activation!,
      runtime: d.runtime!,
      operator: d.operator!,
      outputs: d.outputs!,
      inputs: d.inputs.map((i): InputEdge => {
        const edge: InputEdge = { from: i.dataset !== undefined ? { dataset: i.dataset } : { job: i.job!, output: i.output! } };
        if (i.where) edge.where = i.where;
        return edge;
      }),
      timeout_seconds: d.timeout_seconds,
      heartbeat_timeout_seconds: d.heartbeat_timeout_seconds,
      max_attempts: d.max_attempts,
      config: d.config,
    };
    if (d.execution_strategy !== undefined) spec.execution_strategy = d.execution_strategy;
    if (d.idle_timeout !== undefined) spec.idle_timeout = d.idle_timeout;
    if (d.update_strategy !== undefined) spec.update_strategy = d.update_strategy;
    if (d.unique_key !== undefined) spec.unique_key = d.unique_key;
    if (d.source !== undefined) spec.source = d.source;
    if (d.bootstrap !== undefined) spec.bootstrap = d.bootstrap;
    if (d.secrets !== undefined) spec.secrets = d.secrets;
    if (d.scaling !== undefined) spec.scaling = d.scaling;
    if (d.udf !== undefined) spec.udf = d.udf;
    return spec;
  }
}

/**
 * Deep copy of scanned data into ordinary objects and arrays. Prototype keys were already
 * reported by scan(); they are skipped here so they can never reach an object.
 */
function cloneData(value: unknown, depth = 0): unknown {
  if (depth > MAX_WALK_DEPTH) return null; // scan() has already reported the nesting
  if (Array.isArray(value)) return value.map((v) => cloneData(v, depth + 1));
  if (isRec(value)) {
    const out: Rec = {};
    for (const k of Object.keys(value)) {
      if (FORBIDDEN_KEYS.has(k)) continue;
      out[k] = cloneData(value[k], depth + 1);
    }
    return out;
  }
  return value;
}

/**
 * Validates a parsed DAG document against the v1 schema and the operator catalog, applies
 * defaults, and returns the DagSpec. Throws 422 `DAG_INVALID` listing every problem found.
 */
export function validateDag(doc: unknown, catalog: OperatorCatalog, opts: ValidateOptions = {}): DagSpec {
  const v = new Validator(catalog, opts);
  const spec = v.run(doc);
  if (!spec || v.problems.size > 0) {
    const problems: DagProblem[] = v.problems.list();
    if (problems.length === 0) problems.push({ path: '$', message: 'the DAG document is invalid' });
    throw dagInvalid(problems);
  }
  return spec;
}
