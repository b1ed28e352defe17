import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseYamlSafely } from '../../src/dag/safe-yaml.js';
import { validateDag } from '../../src/dag/validate.js';
import { parseDag } from '../../src/dag/index.js';
import type { OperatorCatalog } from '../../src/dag/catalog-types.js';
import { SPEC_EXAMPLE, WIDE_EXAMPLE, assertProblem, catalog, plain, problemsOf } from './fixtures.js';

type Doc = Record<string, any>; // tests edit documents freely

const spec = (): Doc => plain(parseYamlSafely(SPEC_EXAMPLE)) as Doc;
const wide = (): Doc => plain(parseYamlSafely(WIDE_EXAMPLE)) as Doc;
const check = (doc: unknown, cat: OperatorCatalog = catalog) => problemsOf(() => validateDag(doc, cat));

test('the spec example DAG validates and gets defaults applied', () => {
  const { spec: dag } = parseDag(SPEC_EXAMPLE, catalog);
  assert.equal(dag.name, 'monad_hot_to_parquet');
  assert.deepEqual(dag.jobs.map((j) => j.name), ['block_follower', 'block_range_aggregate', 'parquet_compact']);
  const [follower, agg, compact] = dag.jobs;
  assert.deepEqual(follower, {
    name: 'block_follower',
    activation: 'source',
    runtime: 'ecs_platform',
    operator: 'block_follower',
    outputs: 2,
    inputs: [],
    update_strategy: 'replace',
    source: { kind: 'always_on' },
    timeout_seconds: 3600,
    heartbeat_timeout_seconds: 60,
    max_attempts: 3,
    config: { chain_id: 10143, rpc_pool: 'monad', start_block: 1000000, emit_strategy: 'per_update' },
  });
  assert.equal(Object.getPrototypeOf(follower!.config), Object.prototype, 'config is an ordinary object');
  assert.deepEqual(agg!.inputs, [{ from: { job: 'block_follower', output: 0 } }]);
  assert.equal(agg!.execution_strategy, 'PerUpdate');
  assert.deepEqual(agg!.unique_key, ['dedupe_key']);
  assert.equal(agg!.timeout_seconds, 60);
  assert.equal(compact!.execution_strategy, 'PerPartition');
  assert.equal(compact!.timeout_seconds, 1800);
  assert.deepEqual(dag.publish, [{ name: 'blocks_parquet', from: { job: 'parquet_compact', output: 0 }, read_roles: [] }]);
});

test('a wider DAG with cron, webhook, manual, UDF, filters and publish validates', () => {
  const { spec: dag } = parseDag(WIDE_EXAMPLE, catalog);
  const by = new Map(dag.jobs.map((j) => [j.name, j]));
  assert.deepEqual(by.get('validator_stats')!.source, { kind: 'cron', schedule: '*/5 * * * *' });
  assert.deepEqual(by.get('hook')!.source, { kind: 'webhook', webhook_path: 'hooks/feed' });
  assert.deepEqual(by.get('kick')!.source, { kind: 'manual' });
  assert.deepEqual(by.get('block_follower')!.bootstrap, { reset_outputs: false });
  assert.deepEqual(by.get('alert_evaluate')!.udf, { bundle_id: 'b-123', entrypoint: 'index.js' });
  assert.equal(by.get('alert_evaluate')!.idle_timeout, undefined);
  assert.deepEqual(by.get('alert_evaluate')!.inputs[1], { from: { dataset: 'address_labels' }, where: { chain_id: 1, label_type: 'cex' } });
  assert.deepEqual(by.get('page_critical')!.inputs[0]!.where, {
    severity: ['warning', 'critical'],
    alert_definition_id: '0b6f2d1e-4a7c-4a55-9f3e-1c2d3e4f5a6b',
  });
  // defaults: timeout 120 and scaling from defaults, job-level scaling wins, built-ins elsewhere
  assert.equal(by.get('block_follower')!.timeout_seconds, 120);
  assert.deepEqual(by.get('block_follower')!.scaling, { max_concurrency: 4 });
  assert.deepEqual(by.get('block_range_split')!.scaling, { max_concurrency: 8 });
  assert.equal(by.get('page_critical')!.max_attempts, 5);
  assert.equal(by.get('hook')!.heartbeat_timeout_seconds, 60);
  assert.deepEqual(dag.publish.map((p) => [p.name, p.read_roles]), [
    ['block_ranges', ['analyst', 'on-call']],
    ['alerts_seen', []],
  ]);
});

test('unknown fields are rejected at every level', () => {
  const d = spec();
  d.owner = 'me';
  d.defaults.runtime = 'lambda';
  d.jobs[0].colour = 'red';
  d.jobs[0].source.every = '5m';
  d.jobs[1].inputs[0].filter = 'x';
  d.jobs[1].inputs[0].from.index = 1;
  d.jobs[1].scaling = { max_concurrency: 2, burst: 3 };
  d.jobs[2].udf_block = {};
  d.publish.blocks_parquet.owner = 'x';
  const p = check(d);
  assertProblem(p, 'owner', /unknown field/);
  assertProblem(p, 'defaults.runtime', /unknown field.*defaults may set only/);
  assertProblem(p, 'jobs[0].colour', /unknown field/);
  assertProblem(p, 'jobs[0].source.every', /unknown field.*always_on/);
  assertProblem(p, 'jobs[1].inputs[0].filter', /unknown field/);
  assertProblem(p, 'jobs[1].inputs[0].from.index', /unknown field/);
  assertProblem(p, 'jobs[1].scaling.burst', /unknown field/);
  assertProblem(p, 'jobs[2].udf_block', /unknown field/);
  assertProblem(p, 'publish.blocks_parquet.owner', /unknown field/);
});

test('reserved backpressure and publish fields are rejected', () => {
  const d = spec();
  d.jobs[0].max_queue_depth = 100;
  d.jobs[1].max_queue_age = '5m';
  d.jobs[2].scaling = { backpressure_mode: 'drop' };
  d.jobs[2].config.max_queue_depth = 1;
  d.defaults.backpressure_mode = 'block';
  d.publish.blocks_parquet.storage = 's3';
  d.publish.blocks_parquet.write_mode = 'append';
  d.publish.blocks_parquet.schema = { a: 'int' };
  const p = check(d);
  assertProblem(p, 'jobs[0].max_queue_depth', /reserved.*not supported in v1/);
  assertProblem(p, 'jobs[1].max_queue_age', /reserved/);
  assertProblem(p, 'jobs[2].scaling.backpressure_mode', /reserved/);
  assertProblem(p, 'jobs[2].config.max_queue_depth', /reserved/);
  assertProblem(p, 'defaults.backpressure_mode', /reserved/);
  assertProblem(p, 'publish.blocks_parquet.storage', /reserved and not supported in v1/);
  assertProblem(p, 'publish.blocks_parquet.write_mode', /reserved/);
  assertProblem(p, 'publish.blocks_parquet.schema', /reserved/);
  assert.ok(!p.some((x) => x.path === 'jobs[0].max_queue_depth' && /unknown field/.test(x.message)), 'reported once, as reserved');
});

test('missing required fields are reported', () => {
  const p1 = check({});
  assertProblem(p1, 'name', /is required/);
  assertProblem(p1, 'jobs', /is required/);
  assertProblem(check({ name: 'x', jobs: [] }), 'jobs', /at least one job/);
  assertProblem(check({ name: 'x', jobs: 'nope' }), 'jobs', /must be a list/);
  assertProblem(check(null), '$', /empty/);
  assertProblem(check(['a']), '$', /must be a mapping/);

  const d = spec();
  for (const k of ['name', 'activation', 'runtime', 'operator', 'outputs']) delete d.jobs[0][k];
  delete d.jobs[1].inputs;
  delete d.jobs[1].execution_strategy;
  delete d.jobs[2].update_strategy;
  const p = check(d);
  for (const k of ['name', 'activation', 'runtime', 'operator', 'outputs']) assertProblem(p, `jobs[0].${k}`, /is required/);
  assertProblem(p, 'jobs[1].inputs', /required for reactive jobs/);
  assertProblem(p, 'jobs[1].execution_strategy', /required for reactive jobs/);
  assertProblem(p, 'jobs[2].update_strategy', /required for reactive jobs/);

  const s = spec();
  delete s.jobs[0].source;
  assertProblem(check(s), 'jobs[0].source', /required for source jobs/);
  const e = spec();
  e.jobs[1].inputs = [];
  assertProblem(check(e), 'jobs[1].inputs', /non-empty list/);
});

test('append needs a non-empty unique_key; unique_key needs append', () => {
  const d = spec();
  delete d.jobs[1].unique_key;
  assertProblem(check(d), 'jobs[1].unique_key', /required when update_strategy is 'append'/);
  const e = spec();
  e.jobs[1].unique_key = [];
  assertProblem(check(e), 'jobs[1].unique_key', /non-empty list/);
  const f = spec();
  f.jobs[2].unique_key = ['id'];
  assertProblem(check(f), 'jobs[2].unique_key', /only valid with update_strategy 'append'/);
  const g = spec();
  g.jobs[1].unique_key = ['a', 'a', 'bad column'];
  const p = check(g);
  assertProblem(p, 'jobs[1].unique_key[1]', /duplicate/);
  assertProblem(p, 'jobs[1].unique_key[2]', /column name/);
});

test('unknown job references and out-of-range outputs are rejected', () => {
  const d = spec();
  d.jobs[1].inputs[0].from = { job: 'no_such_job', output: 0 };
  d.jobs[2].inputs[0].from.output = 1; // block_range_aggregate has 1 output
  d.publish.blocks_parquet.from = { job: 'ghost', output: 0 };
  d.publish.more = { from: { job: 'block_follower', output: 2 } };
  d.publish.neg = { from: { job: 'block_follower', output: -1 } };
  const p = check(d);
  assertProblem(p, 'jobs[1].inputs[0].from.job', /unknown job 'no_such_job'/);
  assertProblem(p, 'jobs[2].inputs[0].from.output', /has 1 output; the only valid output is 0/);
  assertProblem(p, 'publish.blocks_parquet.from.job', /unknown job 'ghost'/);
  assertProblem(p, 'publish.more.from.output', /has 2 outputs; valid outputs are 0\.\.1/);
  assertProblem(p, 'publish.neg.from.output', /non-negative/);
});

test('outputs is an integer from 1 to 16', () => {
  for (const bad of [0, 17, 1.5, '2', -1]) {
    const d = spec();
    d.jobs[0].outputs = bad;
    assertProblem(check(d), 'jobs[0].outputs', /integer from 1 to 16/);
  }
  const d = spec();
  d.jobs[0].outputs = 16;
  assert.equal(validateDag(d, catalog).jobs[0]!.outputs, 16);
});

test('duplicate job names are rejected', () => {
  const d = spec();
  d.jobs[2].name = 'block_follower';
  assertProblem(check(d), 'jobs[2].name', /duplicate job name 'block_follower'.*jobs\[0\]/);
});

test('cycles are reported with their path', () => {
  const d = spec();
  d.jobs[1].inputs.push({ from: { job: 'parquet_compact', output: 0 } });
  const p = check(d);
  const c = p.find((x) => /cycle/.test(x.message));
  assert.ok(c, JSON.stringify(p));
  assert.match(c.message, /block_range_aggregate -> parquet_compact -> block_range_aggregate|parquet_compact -> block_range_aggregate -> parquet_compact/);
  assert.match(c.path, /^jobs\[\d\]\.inputs\[\d\]\.from\.job$/);

  const self = spec();
  self.jobs[2].inputs.push({ from: { job: 'parquet_compact', output: 0 } });
  assertProblem(check(self), 'jobs[2].inputs[1].from.job', /cycle: parquet_compact -> parquet_compact/);

  const three = {
    name: 'loop',
    jobs: ['a', 'b', 'c'].map((n, i, all) => ({
      name: n,
      activation: 'reactive',
      runtime: 'dispatcher',
      operator: 'noop',
      execution_strategy: 'PerUpdate',
      update_strategy: 'replace',
      outputs: 1,
      inputs: [{ from: { job: all[(i + 1) % 3], output: 0 } }],
    })),
  };
  const p3 = check(three);
  assert.ok(p3.some((x) => /cycle: a -> b -> c -> a/.test(x.message)), JSON.stringify(p3));
});

test('where filters: allowlisted fields, typed values, no nesting, no SQL', () => {
  const d = wide();
  const input = (w: unknown) => ({ from: { dataset: 'alert_events' }, where: w });
  const job = d.jobs.find((j: Doc) => j.name === 'page_critical');
  job.inputs = [
    input({ severity: 'urgent' }),
    input({ chain_id: '1' }),
    input({ chain_id: 1.5 }),
    input({ alert_definition_id: 'not-a-uuid' }),
    input({ label_type: 5 }),
    input({ dataset_key: '' }),
    input({ tx_hash: '0xabc' }),
    input({ severity: { eq: 'critical' } }),
    input({ severity: [] }),
    input({ severity: [['critical']] }),
    input("severity = 'critical' OR 1=1"),
    input({}),
    input({ chain_id: [1, 'x'] }),
    input({ severity: null }),
  ];
  const p = check(d);
  const at = (i: number, rest = '') => `jobs[5].inputs[${i}].where${rest}`;
  assertProblem(p, at(0, '.severity'), /'info', 'warning', 'critical'/);
  assertProblem(p, at(1, '.chain_id'), /integer/);
  assertProblem(p, at(2, '.chain_id'), /integer/);
  assertProblem(p, at(3, '.alert_definition_id'), /UUID/);
  assertProblem(p, at(4, '.label_type'), /string/);
  assertProblem(p, at(5, '.dataset_key'), /empty/);
  assertProblem(p, at(6, '.tx_hash'), /not a filterable field/);
  assertProblem(p, at(7, '.severity'), /nested maps/);
  assertProblem(p, at(8, '.severity'), /non-empty list/);
  assertProblem(p, at(9, '.severity[0]'), /single values/);
  assertProblem(p, at(10), /SQL predicates are not supported/);
  assertProblem(p, at(11), /at least one field/);
  assertProblem(p, at(12, '.chain_id[1]'), /integer/);
  assertProblem(p, at(13, '.severity'), /null/);
});

test('where on a job that reads through the task-scoped query: any column, scalar values, one edge per upstream', () => {
  const d = wide();
  d.jobs.push({
    name: 'reader', activation: 'reactive', runtime: 'lambda', operator: 'udf', execution_strategy: 'PerUpdate',
    inputs: [{ from: { dataset: 'trades' }, where: { sym: ['eth', 'sol'], id: 3, live: true, px: 1.5, Mixed_Case: 'x' } }],
    outputs: 1, update_strategy: 'replace', udf: { bundle_id: 'b-1', entrypoint: 'index.js' },
  });
  const spec2 = validateDag(d, catalog);
  assert.deepEqual(spec2.jobs.at(-1)!.inputs[0]!.where, { sym: ['eth', 'sol'], id: 3, live: true, px: 1.5, Mixed_Case: 'x' });

  const reader = d.jobs.at(-1);
  const input = (w: unknown, from: unknown = { dataset: 'trades' }) => ({ from, where: w });
  reader.inputs = [
    input({ 'bad-col': 1 }, { dataset: 'a1' }),
    input({ '1st': 1 }, { dataset: 'a2' }),
    input({ sym: { eq: 'eth' } }, { dataset: 'a3' }),
    input({ sym: null }, { dataset: 'a4' }),
    input({ sym: [] }, { dataset: 'a5' }),
    input({ sym: [['eth']] }, { dataset: 'a6' }),
    input("sym = 'eth' OR 1=1", { dataset: 'a7' }),
    input({}, { dataset: 'a8' }),
    input({ sym: 'x'.repeat(300) }, { dataset: 'a9' }),
    { from: { dataset: 'trades' } },
    input({ sym: 'eth' }),
  ];
  const p = check(d);
  const at = (i: number, rest = '') => `jobs[${d.jobs.length - 1}].inputs[${i}]${rest}`;
  assertProblem(p, at(0, '.where.bad-col'), /not a column name/);
  assertProblem(p, at(1, '.where.1st'), /not a column name/);
  assertProblem(p, at(2, '.where.sym'), /nested maps/);
  assertProblem(p, at(3, '.where.sym'), /null/);
  assertProblem(p, at(4, '.where.sym'), /non-empty list/);
  assertProblem(p, at(5, '.where.sym[0]'), /single values/);
  assertProblem(p, at(6, '.where'), /SQL predicates are not supported/);
  assertProblem(p, at(7, '.where'), /at least one field/);
  assertProblem(p, at(8, '.where.sym'), /at most 256/);
  assertProblem(p, at(10, '.from'), /same upstream as inputs\[9\].*one edge per upstream/);

  // Operators that neither apply a filter nor read through the task-scoped query refuse it.
  const agg = d.jobs.find((j: Doc) => j.operator === 'range_aggregator');
  agg.inputs[0].where = { chain_id: 1 };
  assertProblem(check(d), `jobs[${d.jobs.indexOf(agg)}].inputs[0].where`, /does not apply input filters and does not read its inputs through the task-scoped query/);
});

test('v1 refuses runtime ecs_udf and activation manual with clear messages', () => {
  const d = spec();
  d.jobs[1].runtime = 'ecs_udf';
  d.jobs[2].activation = 'manual';
  d.jobs[0].runtime = 'k8s';
  const p = check(d);
  assertProblem(p, 'jobs[1].runtime', /'ecs_udf' is reserved for v2 and not supported in v1/);
  assertProblem(p, 'jobs[2].activation', /'manual' is reserved and not supported in v1.*source\.kind 'manual'/);
  assertProblem(p, 'jobs[0].runtime', /one of 'lambda', 'ecs_platform', 'dispatcher'/);
});

test('operators must exist, allow the runtime and the activation; hidden ones need allowHidden', () => {
  const d = spec();
  d.jobs[0].operator = 'mystery';
  d.jobs[1].runtime = 'lambda';
  d.jobs[2].activation = 'source';
  d.jobs[2].source = { kind: 'always_on' };
  delete d.jobs[2].inputs;
  delete d.jobs[2].execution_strategy;
  const p = check(d);
  assertProblem(p, 'jobs[0].operator', /unknown operator 'mystery'/);
  assertProblem(p, 'jobs[1].runtime', /does not run on runtime 'lambda' \(supported: 'ecs_platform'\)/);
  assertProblem(p, 'jobs[2].activation', /does not support activation 'source'/);

  const h = spec();
  h.jobs[2].operator = 'cryo_ingest';
  assertProblem(check(h), 'jobs[2].operator', /unknown operator 'cryo_ingest'/);
  assert.equal(validateDag(h, catalog, { allowHidden: true }).jobs[2]!.operator, 'cryo_ingest');
});

test('udf blocks: required, forbidden, lambda only, no secrets, safe entrypoint', () => {
  const d = wide();
  const ae = d.jobs.findIndex((j: Doc) => j.name === 'alert_evaluate');
  delete d.jobs[ae].udf;
  d.jobs[0].udf = { bundle_id: 'b', entrypoint: 'index.js' };
  const p = check(d);
  assertProblem(p, `jobs[${ae}].udf`, /required by operator 'alert_evaluate'/);
  assertProblem(p, 'jobs[0].udf', /does not run user bundles/);

  const s = wide();
  s.jobs[ae].secrets = ['api_key'];
  s.jobs[ae].udf.entrypoint = '../../etc/passwd';
  s.jobs[ae].udf.bundle_id = '';
  const ps = check(s);
  assertProblem(ps, `jobs[${ae}].secrets`, /UDF jobs must not request secrets/);
  assertProblem(ps, `jobs[${ae}].udf.entrypoint`, /relative path inside the bundle/);
  assertProblem(ps, `jobs[${ae}].udf.bundle_id`, /bundle id/);

  // an operator with an optional udf: allowed on lambda, refused elsewhere
  const o = wide();
  o.jobs.push({
    name: 'enrich_blocks',
    activation: 'reactive',
    runtime: 'ecs_platform',
    operator: 'enrich',
    execution_strategy: 'PerUpdate',
    update_strategy: 'replace',
    outputs: 1,
    inputs: [{ from: { job: 'block_follower', output: 0 } }],
    udf: { bundle_id: 'b-1', entrypoint: 'src/main.py' },
  });
  assertProblem(check(o), 'jobs[8].udf', /only on runtime 'lambda'/);
  o.jobs[8].runtime = 'lambda';
  assert.deepEqual(validateDag(o, catalog).jobs[8]!.udf, { bundle_id: 'b-1', entrypoint: 'src/main.py' });

  const m = wide();
  delete m.jobs[ae].udf.entrypoint;
  assertProblem(check(m), `jobs[${ae}].udf.entrypoint`, /is required/);
});

test('names: DAG, job, dataset, role and secret formats', () => {
  const d = wide();
  d.name = 'Bad-Name';
  d.jobs[0].name = '1job';
  d.jobs[6].name = 'x'.repeat(65);
  d.publish.Blocks = { from: { job: 'block_range_aggregate', output: 0 } };
  d.publish.block_ranges.read_roles = ['Admin', 'ok', 'ok'];
  d.jobs[4].inputs[1].from.dataset = 'Address Labels';
  d.jobs[0].secrets = ['has space'];
  const p = check(d);
  assertProblem(p, 'name', /DAG name: lowercase letters/);
  assertProblem(p, 'jobs[0].name', /job name/);
  assertProblem(p, 'jobs[6].name', /at most 64/);
  assertProblem(p, 'publish.Blocks', /dataset name/);
  assertProblem(p, 'publish.block_ranges.read_roles[0]', /role slug/);
  assertProblem(p, 'publish.block_ranges.read_roles[2]', /duplicate/);
  assertProblem(p, 'jobs[4].inputs[1].from.dataset', /dataset name/);
  assertProblem(p, 'jobs[0].secrets[0]', /secret name/);

  const ok = wide();
  ok.publish['d' + 'x'.repeat(127)] = { from: { job: 'block_range_aggregate', output: 0 } };
  assert.equal(validateDag(ok, catalog).publish.length, 3, 'a 128-character dataset name is allowed');
  ok.publish['d' + 'x'.repeat(128)] = { from: { job: 'hook', output: 0 } };
  assertProblem(check(ok), `publish.d${'x'.repeat(128)}`, /dataset name/);
});

test('publish: one name per job output; inputs may not name this DAG\'s own published datasets', () => {
  const d = spec();
  d.publish.blocks_again = { from: { job: 'parquet_compact', output: 0 } };
  assertProblem(check(d), 'publish.blocks_again.from', /already published as 'blocks_parquet'/);

  const e = spec();
  e.jobs[2].inputs[0] = { from: { dataset: 'blocks_parquet' } };
  assertProblem(check(e), 'jobs[2].inputs[0].from.dataset', /published by this DAG; wire it as from: \{job: parquet_compact, output: 0\}/);

  const f = spec();
  f.publish.x = { from: { dataset: 'y' } };
  f.publish.y = ['nope'];
  f.publish.z = { from: { job: 'parquet_compact', output: 0, extra: 1 } };
  const p = check(f);
  assertProblem(p, 'publish.x.from', /only job outputs can be published/);
  assertProblem(p, 'publish.y', /must be a mapping/);
  assertProblem(p, 'publish.z.from.extra', /unknown field/);
  assertProblem(check({ ...spec(), publish: [{ name: 'x' }] }), 'publish', /mapping of dataset name/);
});

test('input edges: job or dataset, not both, not neither', () => {
  const d = spec();
  d.jobs[1].inputs = [
    { from: { job: 'block_follower', output: 0, dataset: 'x' } },
    { from: {} },
    { from: 'block_follower' },
    {},
    'block_follower',
    { from: { job: 'block_follower' } },
  ];
  const p = check(d);
  assertProblem(p, 'jobs[1].inputs[0].from', /not both/);
  assertProblem(p, 'jobs[1].inputs[1].from', /must name a job output/);
  assertProblem(p, 'jobs[1].inputs[2].from', /must be \{job, output\} or \{dataset\}/);
  assertProblem(p, 'jobs[1].inputs[3].from', /is required/);
  assertProblem(p, 'jobs[1].inputs[4]', /must be a mapping/);
  assertProblem(p, 'jobs[1].inputs[5].from.output', /is required/);
  const s = spec();
  s.jobs[0].inputs = [{ from: { job: 'parquet_compact', output: 0 } }];
  assertProblem(check(s), 'jobs[0].inputs', /source jobs take no inputs/);
});

test('source kinds and schedules', () => {
  const job = (source: unknown) => {
    const d = spec();
    d.jobs[0].source = source;
    return d;
  };
  assertProblem(check(job({ kind: 'cron' })), 'jobs[0].source.schedule', /required for source kind 'cron'/);
  assertProblem(check(job({ kind: 'cron', schedule: '61 * * * *' })), 'jobs[0].source.schedule', /invalid cron expression/);
  assertProblem(check(job({ kind: 'cron', schedule: '0 * * * * *' })), 'jobs[0].source.schedule', /five-field.*got 6 fields/);
  assertProblem(check(job({ kind: 'cron', schedule: '* * * *' })), 'jobs[0].source.schedule', /got 4 fields/);
  assertProblem(check(job({ kind: 'cron', schedule: 'H * * * *' })), 'jobs[0].source.schedule', /invalid cron field 'H'/);
  assertProblem(check(job({ kind: 'cron', schedule: '@daily' })), 'jobs[0].source.schedule', /other @ macros are not supported/);
  assertProblem(check(job({ kind: 'cron', schedule: '@every 0s' })), 'jobs[0].source.schedule', /@every/);
  assertProblem(check(job({ kind: 'cron', schedule: '@every 5d' })), 'jobs[0].source.schedule', /@every/);
  assertProblem(check(job({ kind: 'cron', schedule: '@every 745h' })), 'jobs[0].source.schedule', /at most 31 days/);
  for (const ok of ['@every 1s', '@every 5m', '@every 2h', '0 0 * * MON', '*/15 9-17 * * 1-5']) {
    assert.deepEqual(validateDag(job({ kind: 'cron', schedule: ok }), catalog).jobs[0]!.source, { kind: 'cron', schedule: ok });
  }
  assertProblem(check(job({ kind: 'webhook' })), 'jobs[0].source.webhook_path', /required for source kind 'webhook'/);
  assertProblem(check(job({ kind: 'webhook', webhook_path: '../admin' })), 'jobs[0].source.webhook_path', /lowercase segments/);
  assertProblem(check(job({ kind: 'always_on', schedule: '* * * * *' })), 'jobs[0].source.schedule', /unknown field/);
  assertProblem(check(job({ kind: 'stream' })), 'jobs[0].source.kind', /one of 'cron', 'always_on', 'webhook', 'manual'/);
  assertProblem(check(job('always_on')), 'jobs[0].source', /must be a mapping/);
  assert.deepEqual(validateDag(job({ kind: 'manual' }), catalog).jobs[0]!.source, { kind: 'manual' });

  const r = spec();
  r.jobs[1].source = { kind: 'always_on' };
  assertProblem(check(r), 'jobs[1].source', /only valid on source jobs/);
});

test('numeric knobs are bounded', () => {
  const d = spec();
  d.jobs[0].timeout_seconds = 0;
  d.jobs[1].timeout_seconds = 86_401;
  d.jobs[2].heartbeat_timeout_seconds = 4;
  d.jobs[0].heartbeat_timeout_seconds = 3601;
  d.jobs[1].max_attempts = 101;
  d.jobs[2].max_attempts = 0;
  d.jobs[0].scaling = { max_concurrency: 0 };
  d.defaults.max_attempts = 'three';
  const p = check(d);
  assertProblem(p, 'jobs[0].timeout_seconds', /1 to 86400/);
  assertProblem(p, 'jobs[1].timeout_seconds', /1 to 86400/);
  assertProblem(p, 'jobs[2].heartbeat_timeout_seconds', /5 to 3600/);
  assertProblem(p, 'jobs[0].heartbeat_timeout_seconds', /5 to 3600/);
  assertProblem(p, 'jobs[1].max_attempts', /1 to 100/);
  assertProblem(p, 'jobs[2].max_attempts', /1 to 100/);
  assertProblem(p, 'jobs[0].scaling.max_concurrency', /integer from 1/);
  assertProblem(p, 'defaults.max_attempts', /1 to 100/);
});

test('defaults apply to jobs that omit the knobs; built-ins apply without defaults', () => {
  const d = spec();
  d.defaults = { timeout_seconds: 900, heartbeat_timeout_seconds: 30, max_attempts: 7, scaling: { max_concurrency: 2 } };
  const s = validateDag(d, catalog);
  assert.deepEqual(
    s.jobs.map((j) => [j.timeout_seconds, j.heartbeat_timeout_seconds, j.max_attempts, j.scaling]),
    [
      [900, 30, 7, { max_concurrency: 2 }],
      [60, 30, 7, { max_concurrency: 2 }],
      [1800, 30, 7, { max_concurrency: 2 }],
    ],
  );
  const n = spec();
  delete n.defaults;
  const b = validateDag(n, catalog);
  assert.deepEqual([b.jobs[0]!.timeout_seconds, b.jobs[0]!.heartbeat_timeout_seconds, b.jobs[0]!.max_attempts], [3600, 60, 3]);
  assert.equal(b.jobs[0]!.scaling, undefined);
});

test('bootstrap and reactive-only fields are placed by activation', () => {
  const d = spec();
  d.jobs[1].bootstrap = { reset_outputs: true };
  d.jobs[0].bootstrap = { reset_outputs: 'yes' };
  d.jobs[0].execution_strategy = 'PerUpdate';
  d.jobs[0].idle_timeout = '5m';
  d.jobs[2].idle_timeout = '5 minutes';
  d.jobs[1].execution_strategy = 'Batch';
  const p = check(d);
  assertProblem(p, 'jobs[1].bootstrap', /only valid on source jobs/);
  assertProblem(p, 'jobs[0].bootstrap.reset_outputs', /true or false/);
  assertProblem(p, 'jobs[0].execution_strategy', /only valid on reactive jobs/);
  assertProblem(p, 'jobs[0].idle_timeout', /only valid on reactive jobs/);
  assertProblem(p, 'jobs[2].idle_timeout', /duration like/);
  assertProblem(p, 'jobs[1].execution_strategy', /'PerUpdate', 'PerPartition'/);
  const b = spec();
  b.jobs[0].bootstrap = {};
  assertProblem(check(b), 'jobs[0].bootstrap.reset_outputs', /is required/);
});

test('config: a mapping, {} by default, checked by the operator with prefixed paths', () => {
  const d = spec();
  d.jobs[0].config = [1, 2];
  d.jobs[1].config.range_size = -5;
  const p = check(d);
  assertProblem(p, 'jobs[0].config', /must be a mapping/);
  assertProblem(p, 'jobs[1].config.range_size', /positive integer/);

  const e = spec();
  delete e.jobs[2].config;
  assert.deepEqual(validateDag(e, catalog).jobs[2]!.config, {});
  const f = spec();
  delete f.jobs[0].config; // block_follower's validator wants chain_id
  assertProblem(check(f), 'jobs[0].config.chain_id', /integer chain id/);

  // a validator that throws is reported, not propagated
  const throwing: OperatorCatalog = new Map([
    ...catalog,
    ['parquet_compact', { ...catalog.get('parquet_compact')!, validateConfig: () => { throw new Error('boom'); } }],
  ]);
  assertProblem(check(spec(), throwing), 'jobs[2].config', /could not validate/);
  // validators see a copy: mutating it does not change the spec
  const mutating: OperatorCatalog = new Map([
    ...catalog,
    ['parquet_compact', { ...catalog.get('parquet_compact')!, validateConfig: (c: Record<string, unknown>) => { c.chain_id = 1; return []; } }],
  ]);
  assert.equal(validateDag(spec(), mutating).jobs[2]!.config.chain_id, 10143);
});

test('many problems are reported together in one error', () => {
  const d = spec();
  d.name = 'BAD';
  d.jobs[0].runtime = 'ecs_udf';
  d.jobs[1].max_queue_depth = 5;
  delete d.jobs[1].unique_key;
  d.jobs[2].inputs[0].from.job = 'nobody';
  d.jobs[2].inputs.push({ from: { dataset: 'labels' }, where: { colour: 'red' } });
  d.publish.blocks_parquet.storage = 's3';
  const p = check(d);
  assertProblem(p, 'name', /DAG name/);
  assertProblem(p, 'jobs[0].runtime', /ecs_udf/);
  assertProblem(p, 'jobs[1].max_queue_depth', /reserved/);
  assertProblem(p, 'jobs[1].unique_key', /required/);
  assertProblem(p, 'jobs[2].inputs[0].from.job', /unknown job/);
  assertProblem(p, 'jobs[2].inputs[1].where', /does not apply input filters/);
  assertProblem(p, 'publish.blocks_parquet.storage', /reserved/);
  assert.ok(p.length >= 7);
});

test('parseDag adds line numbers to validation problems', () => {
  const yaml = SPEC_EXAMPLE.replace('    update_strategy: append\n', '    update_strategy: append\n    colour: red\n').replace(
    '    unique_key: [dedupe_key]\n',
    '',
  );
  const p = problemsOf(() => parseDag(yaml, catalog));
  const lines = yaml.split('\n');
  const colour = assertProblem(p, 'jobs[1].colour', /unknown field/);
  assert.equal(lines[colour.line! - 1], '    colour: red');
  const uk = assertProblem(p, 'jobs[1].unique_key', /required/);
  assert.equal(lines[uk.line! - 1], '  - name: block_range_aggregate', 'missing fields point at their job');
});

test('documents from JSON are checked for prototype keys too, and nothing is polluted', () => {
  const d = JSON.parse(
    JSON.stringify(spec()).replace('"config":{"chain_id":10143', '"config":{"__proto__":{"polluted":true},"chain_id":10143'),
  ) as Doc;
  assert.ok(Object.hasOwn(d.jobs[0].config, '__proto__'), 'JSON.parse made an own __proto__ key');
  assertProblem(check(d), 'jobs[0].config.__proto__', /not allowed/);
  assert.equal(({} as Record<string, unknown>).polluted, undefined);

  const c = spec();
  c.jobs[0].config.when = new Date(0);
  c.jobs[0].config.fn = () => 1;
  c.jobs[0].config.inf = Infinity;
  const p = check(c);
  assertProblem(p, 'jobs[0].config.when', /unsupported value/);
  assertProblem(p, 'jobs[0].config.fn', /unsupported value/);
  assertProblem(p, 'jobs[0].config.inf', /finite/);
});

test('a misspelt field or operator names the closest allowed one, with its line', () => {
  const yaml = SPEC_EXAMPLE.replace('    update_strategy: append\n', '    update_stratgy: append\n').replace('operator: block_follower', 'operator: block_folower');
  const p = problemsOf(() => parseDag(yaml, catalog));
  const lines = yaml.split('\n');
  const misspelt = assertProblem(p, 'jobs[1].update_stratgy', /unknown field 'update_stratgy'; did you mean 'update_strategy'\?/);
  assert.equal(lines[misspelt.line! - 1], '    update_stratgy: append');
  assertProblem(p, 'jobs[0].operator', /unknown operator 'block_folower'; did you mean 'block_follower'\?/);
  const d = spec();
  d.jobs[0].zzz = 1; // nothing close: no suggestion
  assert.doesNotMatch(assertProblem(check(d), 'jobs[0].zzz', /unknown field/).message, /did you mean/);
});
