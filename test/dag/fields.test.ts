/**
 * What a DAG says is what runs: every field the DAG vocabulary accepts either has an effect
 * (named below with the test that shows it) or is refused at deploy with 422 DAG_INVALID naming
 * its path (checked here). The table must list exactly the fields the schema walks, so a field
 * added to src/dag/schema.ts without an entry fails this test.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { parseDag } from '../../src/dag/index.js';
import * as S from '../../src/dag/schema.js';
import { operatorCatalog } from '../../src/operators/registry.js';
import { problemsOf as dagProblems } from './fixtures.js';
import { startPlatform } from '../support/platform.js';
import { BACKENDS } from '../support/db.js';

const ROOT = join(import.meta.dirname, '..', '..');
const catalog = operatorCatalog({ includeTestOperators: true });

/** A test, by file and (a verbatim part of) its title, that shows a field's effect or refusal. */
type Ref = readonly [file: string, title: string];

/** Sets a field on the base DAG; validation must then name `path`. */
interface Refusal {
  set(dag: Base): void;
  path: string;
  message: RegExp;
}

interface Entry {
  /** What the field does (or why its accepted values do what they say). */
  what: string;
  /** Tests that show the effect, or a refusal made outside validation (e.g. at deploy). */
  covered?: readonly Ref[];
  /** A value the platform does not honour, refused by validation. */
  refused?: Refusal;
}

type Job = Record<string, unknown>;
type Base = { name: string; jobs: Job[]; defaults?: Job; publish?: Record<string, unknown> };

/** A small valid DAG on real operators: a manual cursor source feeding range_aggregator. */
function base(): Base {
  return {
    name: 'fields',
    jobs: [
      { name: 'src', activation: 'source', runtime: 'ecs_platform', operator: 'cursor_emitter', source: { kind: 'manual' }, outputs: 1 },
      {
        name: 'agg', activation: 'reactive', runtime: 'ecs_platform', operator: 'range_aggregator', execution_strategy: 'PerUpdate',
        inputs: [{ from: { job: 'src', output: 0 } }], outputs: 1, config: { cursor_column: 'block_number', range_size: 10 },
        update_strategy: 'append', unique_key: ['partition_key'],
      },
    ],
  };
}

const E2E: Ref = ['test/dispatcher/e2e.test.ts', 'manual source -> range_aggregator -> range_splitter -> sink runs end to end'];
const DEFAULTS: Ref = ['test/dag/validate.test.ts', 'defaults apply to jobs that omit the knobs; built-ins apply without defaults'];
const LEASE: Ref = ['test/dispatcher/lease-timeout.test.ts', "the lease is the job's heartbeat timeout; a dead worker's task is re-leased after it"];
const CAP: Ref = ['test/dispatcher/failures.test.ts', 'duplicate wake-ups are harmless and max_concurrency is never exceeded'];
const ATTEMPTS: Ref = ['test/dispatcher/lifecycle.test.ts', 'retries stop at max_attempts'];
const TIMEOUT: Ref = ['test/worker/run-task.test.ts', 'timeout_seconds: an operator that ignores the abort is abandoned'];
const UDF_TIMEOUT: Ref = ['test/udf-platform/hostile.test.ts', 'a bundle that runs past its timeout is killed and fails'];
const BUNDLE: Ref = ['test/udf-platform/hostile.test.ts', 'a wrong entrypoint or unknown bundle fails too'];
const ALERTS: Ref = ['test/udf-platform/alerting-e2e.test.ts', 'evaluates, sinks, routes and delivers each alert exactly once'];
const ROUTE_WHERE: Ref = ['test/alerting/route.test.ts', 'routes the range, one delivery per channel, gated by where and age'];
const EDGE_READ: Ref = ['test/query/edge-filters.test.ts', 'the consumer with a where sees exactly the matching rows; its unfiltered sibling sees all'];
const WHERE_REFUSED: Ref = ['test/alerting/route.test.ts', 'refuses where fields alert_events does not have'];
const CRON: Ref = ['test/dispatcher/failures.test.ts', 'cron sources fire on schedule and missed ticks fire once'];
const ALWAYS_ON: Ref = ['test/dispatcher/sources.test.ts', 'an always-on source keeps exactly one live task and is restarted when it ends'];
const WEBHOOK: Ref = ['test/dispatcher/webhooks.test.ts', 'a signed delivery creates exactly one task whose trigger carries the body'];
const WEBHOOK_PATH: Ref = ['test/dispatcher/webhooks.test.ts', 'a webhook_path is unique in the org: another DAG using it is refused at deploy, naming the field'];
const OPERATORS: Ref = ['test/dag/validate.test.ts', 'operators must exist, allow the runtime and the activation; hidden ones need allowHidden'];
const CONFIG: Ref = ['test/worker/operators.test.ts', 'range_splitter: deterministic subranges, last one cut at end'];
const READ_ROLES: Ref = ['test/query/service.test.ts', 'enforces read_roles (empty = any member)'];
const HERE_PUBLISH: Ref = ['test/dag/fields.test.ts', 'publish registers the dataset with its read roles'];
const HERE_WRITES: Ref = ['test/dag/fields.test.ts', 'operators declare what they run and write; a DAG that says otherwise is refused'];

const COVERAGE: Record<string, Entry> = {
  name: { what: 'the DAG deployed, versioned and triggered by name', covered: [E2E] },
  defaults: { what: 'values applied to jobs that omit them', covered: [DEFAULTS] },
  'defaults.timeout_seconds': { what: 'default for jobs[].timeout_seconds', covered: [DEFAULTS, TIMEOUT] },
  'defaults.heartbeat_timeout_seconds': { what: 'default for jobs[].heartbeat_timeout_seconds', covered: [DEFAULTS, LEASE] },
  'defaults.max_attempts': { what: 'default for jobs[].max_attempts', covered: [DEFAULTS, ATTEMPTS] },
  'defaults.scaling': { what: 'merged under each job\'s scaling', covered: [DEFAULTS, CAP] },
  'defaults.scaling.max_concurrency': { what: 'default running-task cap', covered: [DEFAULTS, CAP] },
  jobs: { what: 'the jobs that run', covered: [E2E] },
  'jobs[].name': { what: 'trigger and wiring target', covered: [E2E] },
  'jobs[].activation': { what: 'source jobs are started by their source; reactive jobs by input events', covered: [E2E, OPERATORS] },
  'jobs[].runtime': { what: 'where the task runs: worker queue, Dispatcher in process, or the UDF runner', covered: [E2E, ALERTS, OPERATORS] },
  'jobs[].operator': { what: 'the code that runs', covered: [E2E, OPERATORS] },
  'jobs[].outputs': { what: 'one dataset per output, wired by index', covered: [E2E] },
  'jobs[].inputs': { what: 'events of these datasets create this job\'s tasks', covered: [E2E, ALERTS] },
  'jobs[].inputs[].from': { what: 'the upstream output or dataset', covered: [E2E, ALERTS] },
  'jobs[].inputs[].from.job': { what: 'upstream job', covered: [E2E] },
  'jobs[].inputs[].from.output': { what: 'upstream output index', covered: [E2E] },
  'jobs[].inputs[].from.dataset': { what: 'a published dataset by name', covered: [ALERTS] },
  'jobs[].inputs[].where': {
    what: 'read-time filter on the edge, applied by operators that declare filtersInputs (alert_route) and, for jobs that read through it (UDF jobs), by the task-scoped query; refused on the others',
    covered: [ALERTS, ROUTE_WHERE, EDGE_READ],
    refused: { set: (d) => { (d.jobs[1]!.inputs as Job[])[0]!.where = { chain_id: 1 }; }, path: 'jobs[1].inputs[0].where', message: /does not apply input filters/ },
  },
  'jobs[].inputs[].where.severity': { what: 'filter on alert severity', covered: [ALERTS, ROUTE_WHERE] },
  'jobs[].inputs[].where.chain_id': { what: 'filter on chain id', covered: [ROUTE_WHERE] },
  'jobs[].inputs[].where.alert_definition_id': { what: 'filter on alert definition', covered: [ROUTE_WHERE] },
  'jobs[].inputs[].where.label_type': { what: 'filter field alert_events does not have: the reader refuses it', covered: [WHERE_REFUSED] },
  'jobs[].inputs[].where.dataset_key': { what: 'filter field alert_events does not have: the reader refuses it', covered: [WHERE_REFUSED] },
  'jobs[].execution_strategy': {
    what: 'must be a mode the operator runs as (one task per event either way); others are refused',
    covered: [HERE_WRITES],
    refused: { set: (d) => { d.jobs[1]!.execution_strategy = 'PerPartition'; }, path: 'jobs[1].execution_strategy', message: /does not run as 'PerPartition'/ },
  },
  'jobs[].idle_timeout': {
    what: 'not provided by the platform: refused',
    refused: { set: (d) => { d.jobs[1]!.idle_timeout = '5m'; }, path: 'jobs[1].idle_timeout', message: /not supported/ },
  },
  'jobs[].update_strategy': {
    what: 'must be a strategy the operator\'s writes honour; others are refused',
    covered: [HERE_WRITES],
    refused: { set: (d) => { d.jobs[1]!.update_strategy = 'replace'; delete d.jobs[1]!.unique_key; }, path: 'jobs[1].update_strategy', message: /does not write with update_strategy 'replace'/ },
  },
  'jobs[].unique_key': {
    what: 'must be the key the operator\'s writes upsert on; any other key is refused',
    covered: [HERE_WRITES, ALERTS],
    refused: { set: (d) => { d.jobs[1]!.unique_key = ['dedupe_key']; }, path: 'jobs[1].unique_key', message: /upserts its output on \[partition_key\]/ },
  },
  'jobs[].source': { what: 'what starts a source job', covered: [E2E, CRON, ALWAYS_ON] },
  'jobs[].source.kind': { what: 'manual, cron, always_on and webhook sources run', covered: [E2E, CRON, ALWAYS_ON, WEBHOOK] },
  'jobs[].source.schedule': { what: 'cron ticks', covered: [CRON] },
  'jobs[].source.webhook_path': { what: 'the delivery path of a signed webhook source, unique in the org', covered: [WEBHOOK, WEBHOOK_PATH] },
  'jobs[].bootstrap': { what: 'only reset_outputs: false (no action) is accepted', covered: [] , refused: { set: (d) => { d.jobs[0]!.bootstrap = { reset_outputs: true }; }, path: 'jobs[0].bootstrap.reset_outputs', message: /not supported/ } },
  'jobs[].bootstrap.reset_outputs': {
    what: 'true is refused (nothing resets outputs); false says what happens',
    refused: { set: (d) => { d.jobs[0]!.bootstrap = { reset_outputs: true }; }, path: 'jobs[0].bootstrap.reset_outputs', message: /not supported/ },
  },
  'jobs[].secrets': {
    what: 'nothing is injected: a non-empty list is refused',
    refused: { set: (d) => { d.jobs[0]!.secrets = ['rpc_key']; }, path: 'jobs[0].secrets', message: /not injected/ },
  },
  'jobs[].scaling': { what: 'per-job caps', covered: [CAP] },
  'jobs[].scaling.max_concurrency': { what: 'running tasks of the job never exceed it', covered: [CAP] },
  'jobs[].timeout_seconds': { what: 'an attempt past it is stopped and failed', covered: [TIMEOUT, UDF_TIMEOUT] },
  'jobs[].heartbeat_timeout_seconds': { what: 'the lease: a silent attempt is re-leased after it', covered: [LEASE] },
  'jobs[].max_attempts': { what: 'retries stop there', covered: [ATTEMPTS] },
  'jobs[].config': { what: 'operator settings, checked at deploy by the operator', covered: [CONFIG, E2E] },
  'jobs[].udf': { what: 'the user bundle the job runs', covered: [ALERTS, BUNDLE] },
  'jobs[].udf.bundle_id': { what: 'which bundle', covered: [BUNDLE] },
  'jobs[].udf.entrypoint': { what: 'which file of it', covered: [BUNDLE] },
  publish: { what: 'registers outputs as named datasets', covered: [HERE_PUBLISH, ALERTS] },
  'publish.*.from': { what: 'the job output registered', covered: [HERE_PUBLISH] },
  'publish.*.from.job': { what: 'its job', covered: [HERE_PUBLISH] },
  'publish.*.from.output': { what: 'its output index', covered: [HERE_PUBLISH] },
  'publish.*.read_roles': { what: 'who may read it, enforced by the Query Service', covered: [HERE_PUBLISH, READ_ROLES] },
};

/** Every field path the vocabulary in src/dag/schema.ts accepts. */
function schemaPaths(): string[] {
  const out: string[] = [];
  const under = (prefix: string, fields: readonly string[]) => fields.forEach((f) => out.push(prefix ? `${prefix}.${f}` : f));
  under('', S.TOP_FIELDS);
  under('defaults', S.DEFAULTS_FIELDS);
  under('defaults.scaling', S.SCALING_FIELDS);
  under('jobs[]', S.JOB_FIELDS);
  under('jobs[].inputs[]', S.INPUT_FIELDS);
  under('jobs[].inputs[].from', S.INPUT_FROM_FIELDS);
  under('jobs[].inputs[].where', Object.keys(S.WHERE_FIELDS));
  under('jobs[].source', [...new Set(Object.values(S.SOURCE_FIELDS_BY_KIND).flat())]);
  under('jobs[].bootstrap', S.BOOTSTRAP_FIELDS);
  under('jobs[].scaling', S.SCALING_FIELDS);
  under('jobs[].udf', S.UDF_FIELDS);
  under('publish.*', S.PUBLISH_ENTRY_FIELDS);
  under('publish.*.from', S.PUBLISH_FROM_FIELDS);
  // `jobs[].inputs` itself is listed among the job fields; its items are covered above.
  return out;
}

test('every field the DAG schema accepts has an entry: an effect shown by a test, or a refusal', () => {
  const walked = new Set(schemaPaths());
  const listed = new Set(Object.keys(COVERAGE));
  const missing = [...walked].filter((p) => !listed.has(p));
  const stale = [...listed].filter((p) => !walked.has(p));
  assert.deepEqual(missing, [], `fields without an entry in COVERAGE: ${missing.join(', ')}`);
  assert.deepEqual(stale, [], `entries for fields the schema no longer has: ${stale.join(', ')}`);
  for (const [path, e] of Object.entries(COVERAGE)) {
    assert.ok((e.covered?.length ?? 0) > 0 || e.refused, `${path}: neither an effect nor a refusal`);
  }
});

test('each named test exists with that title', async () => {
  const cache = new Map<string, string>();
  for (const [path, e] of Object.entries(COVERAGE)) {
    for (const [file, title] of e.covered ?? []) {
      assert.ok(existsSync(join(ROOT, file)), `${path}: ${file} does not exist`);
      if (!cache.has(file)) cache.set(file, await readFile(join(ROOT, file), 'utf8'));
      assert.ok(cache.get(file)!.includes(title), `${path}: ${file} has no test titled '${title}'`);
    }
  }
});

test('the base DAG validates, and each refused value is refused naming its path', () => {
  parseDag(JSON.stringify(base()), catalog);
  for (const [field, e] of Object.entries(COVERAGE)) {
    if (!e.refused) continue;
    const d = base();
    e.refused.set(d);
    const problems = dagProblems(() => parseDag(JSON.stringify(d), catalog));
    const hit = problems.find((p) => p.path === e.refused!.path);
    assert.ok(hit, `${field}: expected a problem at ${e.refused.path}, got ${JSON.stringify(problems)}`);
    assert.match(hit.message, e.refused.message, field);
  }
});

test('operators declare what they run and write; a DAG that says otherwise is refused', () => {
  // Every operator of this build declares its modes and writes (the type requires it; a
  // reactive operator with no mode could never be deployed).
  for (const info of catalog.values()) {
    if (info.activations.includes('reactive')) assert.ok(info.executionStrategies.length > 0, `${info.name} declares no execution strategy`);
    assert.ok(info.writes.append !== undefined || info.writes.replace === true, `${info.name} declares no update strategy`);
  }
  const ok = base();
  ok.jobs.push({
    name: 'split', activation: 'reactive', runtime: 'ecs_platform', operator: 'range_splitter', execution_strategy: 'PerPartition',
    inputs: [{ from: { job: 'agg', output: 0 } }], outputs: 1, config: { chunk_size: 5 }, update_strategy: 'replace',
  });
  parseDag(JSON.stringify(ok), catalog);

  const bad = structuredClone(ok);
  bad.jobs[2]!.execution_strategy = 'PerUpdate'; // range_splitter needs range (partition) events
  bad.jobs[1]!.unique_key = ['partition_key', 'block_number']; // more than the key it upserts on
  const problems = dagProblems(() => parseDag(JSON.stringify(bad), catalog));
  assert.match(problems.find((p) => p.path === 'jobs[2].execution_strategy')!.message, /range_splitter' does not run as 'PerUpdate' \(it runs as 'PerPartition'\)/);
  assert.match(problems.find((p) => p.path === 'jobs[1].unique_key')!.message, /upserts its output on \[partition_key\]/);

  // alert_evaluate rows are upserted by the sink on dedupe_key: append [dedupe_key] is what happens, replace is not.
  const ae = (over: Job) => ({
    name: 'ae', jobs: [{
      name: 'ev', activation: 'reactive', runtime: 'lambda', operator: 'alert_evaluate', execution_strategy: 'PerUpdate',
      inputs: [{ from: { dataset: 'transfers' } }], outputs: 1, config: { alert_definition_id: '0b6f2d1e-4a7c-4a55-9f3e-1c2d3e4f5a6b' },
      udf: { bundle_id: 'b1', entrypoint: 'index.mjs' }, ...over,
    }],
  });
  parseDag(JSON.stringify(ae({ update_strategy: 'append', unique_key: ['dedupe_key'] })), catalog);
  const aeBad = dagProblems(() => parseDag(JSON.stringify(ae({ update_strategy: 'replace' })), catalog));
  assert.match(aeBad.find((p) => p.path === 'jobs[0].update_strategy')!.message, /does not write with update_strategy 'replace' \(it honours 'append'\)/);
});

test('the example DAGs validate against this build\'s operators', async () => {
  for (const file of ['examples/dags/hello_ranges.yaml', 'examples/udf/alerts.dag.yaml']) {
    const text = await readFile(join(ROOT, file), 'utf8');
    // The alerts example is a template: its bundle id is filled in by the reader.
    parseDag(text.replace(/<[a-z ]*bundle id>/g, 'b1').replace(/<[a-z ]*alert id>/g, '0b6f2d1e-4a7c-4a55-9f3e-1c2d3e4f5a6b'), catalog);
  }
});

const backend = BACKENDS[0]!;
test(`${backend}: deploy refuses each unhonoured field with 422 DAG_INVALID naming its path, and stores nothing; publish registers the dataset with its read roles`, async () => {
  const p = await startPlatform(backend, { workers: 0 });
  try {
    const d = base();
    d.jobs[0]!.secrets = ['rpc_key'];
    d.jobs[0]!.bootstrap = { reset_outputs: true };
    d.jobs[1]!.idle_timeout = '5m';
    d.jobs[1]!.execution_strategy = 'PerPartition';
    d.jobs[1]!.unique_key = ['dedupe_key'];
    (d.jobs[1]!.inputs as Job[])[0]!.where = { chain_id: 1 };
    const r = await p.api('POST', '/v1/dags/fields/versions?activate=true', JSON.stringify(d)); // JSON is YAML
    assert.equal(r.status, 422, JSON.stringify(r.body));
    assert.equal(r.body.code, 'DAG_INVALID');
    const paths = (r.body.problems as Array<{ path: string }>).map((x) => x.path).sort();
    assert.deepEqual(paths, ['jobs[0].bootstrap.reset_outputs', 'jobs[0].secrets', 'jobs[1].execution_strategy', 'jobs[1].idle_timeout', 'jobs[1].inputs[0].where', 'jobs[1].unique_key']);
    const versions = await p.api('GET', '/v1/dags/fields/versions');
    assert.ok(versions.status === 404 || (versions.body.versions ?? []).length === 0, JSON.stringify(versions.body));

    const ok = base();
    ok.publish = { field_ranges: { from: { job: 'agg', output: 0 }, read_roles: ['analyst'] } };
    const dep = await p.api('POST', '/v1/dags/fields/versions?activate=true', JSON.stringify(ok));
    assert.ok(dep.status < 300, JSON.stringify(dep.body));
    const ds = await p.api('GET', '/v1/datasets/field_ranges');
    assert.equal(ds.status, 200, JSON.stringify(ds.body));
    assert.deepEqual(ds.body.producer, { dag_name: 'fields', job_name: 'agg', output_index: 0 });
    assert.deepEqual(ds.body.read_roles, ['analyst']);
  } finally {
    await p.close();
  }
});
