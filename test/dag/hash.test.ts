import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { parseDag, yamlHash, jobConfigHash, lineageHashes, topoOrder, validateDag, parseYamlSafely } from '../../src/dag/index.js';
import type { DagSpec } from '../../src/dag/types.js';
import { SPEC_EXAMPLE, WIDE_EXAMPLE, catalog, plain, traceErrorOf } from './fixtures.js';

type Doc = Record<string, any>; // tests edit documents freely

const doc = (yaml = WIDE_EXAMPLE): Doc => plain(parseYamlSafely(yaml)) as Doc;
const specOf = (d: Doc): DagSpec => validateDag(d, catalog);
const job = (d: Doc, name: string): Doc => d.jobs.find((j: Doc) => j.name === name);

/** Names whose lineage hash differs between two specs. */
function changed(a: DagSpec, b: DagSpec): string[] {
  const ha = lineageHashes(a);
  const hb = lineageHashes(b);
  return [...ha.keys()].filter((k) => ha.get(k) !== hb.get(k)).sort();
}

test('yamlHash is sha256 of the exact bytes and parseDag returns it', () => {
  const expected = createHash('sha256').update(Buffer.from(SPEC_EXAMPLE, 'utf8')).digest('hex');
  assert.equal(yamlHash(SPEC_EXAMPLE), expected);
  assert.equal(yamlHash(new TextEncoder().encode(SPEC_EXAMPLE)), expected);
  const a = parseDag(SPEC_EXAMPLE, catalog);
  const b = parseDag(SPEC_EXAMPLE, catalog);
  assert.equal(a.yamlHash, expected);
  assert.equal(b.yamlHash, a.yamlHash, 'deploying the same YAML twice yields the same hash');
  assert.deepEqual(b.spec, a.spec);
  assert.equal(parseDag(new TextEncoder().encode(SPEC_EXAMPLE), catalog).yamlHash, expected, 'bytes and string agree');
  // any byte change is a new version, even one that does not change the spec
  const commented = parseDag(SPEC_EXAMPLE + '# trailing comment\n', catalog);
  assert.notEqual(commented.yamlHash, a.yamlHash);
  assert.deepEqual(commented.spec, a.spec);
  assert.match(yamlHash('é'), /^[0-9a-f]{64}$/);
  assert.equal(yamlHash('é'), createHash('sha256').update(Buffer.from([0xc3, 0xa9])).digest('hex'));
});

test('parseDag refuses bytes that are not UTF-8', () => {
  const e = traceErrorOf(() => parseDag(new Uint8Array([0x6e, 0x61, 0x6d, 0x65, 0x3a, 0x20, 0xff, 0xfe]), catalog));
  assert.equal(e.status, 400);
  assert.equal(e.code, 'YAML_MALFORMED');
});

test('jobConfigHash covers materialization fields only and ignores key order', () => {
  const base = specOf(doc());
  const agg = base.jobs.find((j) => j.name === 'block_range_aggregate')!;
  const h = jobConfigHash(agg);
  assert.match(h, /^[0-9a-f]{64}$/);
  // scheduling knobs do not count
  assert.equal(jobConfigHash({ ...agg, timeout_seconds: 5, max_attempts: 9, heartbeat_timeout_seconds: 5, scaling: { max_concurrency: 1 } }), h);
  assert.equal(jobConfigHash({ ...agg, name: 'renamed' }), h);
  // config key order does not count
  assert.equal(jobConfigHash({ ...agg, config: { range_size: 10000, cursor_column: 'block_number' } }), h);
  // each materialization field does
  const variants = [
    { ...agg, config: { ...agg.config, range_size: 5000 } },
    { ...agg, runtime: 'lambda' as const },
    { ...agg, operator: 'range_splitter' },
    { ...agg, update_strategy: 'replace' as const, unique_key: undefined },
    { ...agg, unique_key: ['dedupe_key', 'block_number'] },
    { ...agg, execution_strategy: 'PerPartition' as const },
    { ...agg, udf: { bundle_id: 'b', entrypoint: 'index.js' } },
  ];
  const hashes = new Set([h, ...variants.map(jobConfigHash)]);
  assert.equal(hashes.size, variants.length + 1);
});

test('lineage: an edit changes the edited job and everything downstream, nothing upstream', () => {
  const base = specOf(doc());
  const again = specOf(doc());
  assert.deepEqual(lineageHashes(again), lineageHashes(base), 'same spec, same hashes');
  assert.equal(lineageHashes(base).size, base.jobs.length);

  // edit the middle of the chain block_follower -> block_range_aggregate -> block_range_split
  const mid = doc();
  job(mid, 'block_range_aggregate').config.range_size = 5000;
  assert.deepEqual(changed(base, specOf(mid)), ['block_range_aggregate', 'block_range_split']);

  // edit the leaf: only the leaf
  const leaf = doc();
  job(leaf, 'block_range_split').config.chunk_size = 500;
  assert.deepEqual(changed(base, specOf(leaf)), ['block_range_split']);

  // edit the source: its whole downstream subgraph, not the unrelated jobs
  const src = doc();
  job(src, 'block_follower').config.chain_id = 1;
  assert.deepEqual(changed(base, specOf(src)), ['alert_evaluate', 'block_follower', 'block_range_aggregate', 'block_range_split']);

  // scheduling knobs change nothing
  const knobs = doc();
  job(knobs, 'block_follower').timeout_seconds = 10;
  job(knobs, 'block_range_aggregate').scaling = { max_concurrency: 1 };
  knobs.defaults.timeout_seconds = 30;
  assert.deepEqual(changed(base, specOf(knobs)), []);

  // rewiring an input (other output of the same job) changes the consumer and its downstream
  const wire = doc();
  job(wire, 'block_range_aggregate').inputs[0].from.output = 1;
  assert.deepEqual(changed(base, specOf(wire)), ['block_range_aggregate', 'block_range_split']);

  // a where filter or a dataset input name changes the consumer
  const filt = doc();
  job(filt, 'page_critical').inputs[0].where.severity = ['critical'];
  assert.deepEqual(changed(base, specOf(filt)), ['page_critical']);
  const ds = doc();
  job(ds, 'alert_evaluate').inputs[1].from.dataset = 'address_labels_v2';
  assert.deepEqual(changed(base, specOf(ds)), ['alert_evaluate']);

  // reordering jobs in the file changes nothing
  const shuffled = doc();
  shuffled.jobs.reverse();
  assert.deepEqual(changed(base, specOf(shuffled)), []);
});

test('lineage hashes of the spec example are stable across parses', () => {
  const a = lineageHashes(parseDag(SPEC_EXAMPLE, catalog).spec);
  const b = lineageHashes(parseDag(SPEC_EXAMPLE.replace('timeout_seconds: 1800', 'timeout_seconds: 900'), catalog).spec);
  assert.deepEqual([...a.entries()], [...b.entries()]);
  const c = lineageHashes(parseDag(SPEC_EXAMPLE.replace('range_size: 10000', 'range_size: 20000'), catalog).spec);
  assert.equal(c.get('block_follower'), a.get('block_follower'));
  assert.notEqual(c.get('block_range_aggregate'), a.get('block_range_aggregate'));
  assert.notEqual(c.get('parquet_compact'), a.get('parquet_compact'));
});

test('topoOrder puts upstream first and keeps declaration order for ties', () => {
  const s = specOf(doc());
  const order = topoOrder(s);
  assert.equal(order.length, s.jobs.length);
  const pos = new Map(order.map((n, i) => [n, i]));
  for (const j of s.jobs) {
    for (const input of j.inputs) {
      if ('job' in input.from) assert.ok(pos.get(input.from.job)! < pos.get(j.name)!, `${input.from.job} before ${j.name}`);
    }
  }
  const reversed = doc();
  reversed.jobs.reverse();
  assert.deepEqual(topoOrder(specOf(reversed)), [
    'kick',
    'hook',
    'page_critical',
    'validator_stats',
    'block_follower',
    'alert_evaluate',
    'block_range_aggregate',
    'block_range_split',
  ]);
  // a hand-built spec with a cycle is refused
  const cyclic: DagSpec = {
    name: 'x',
    publish: [],
    jobs: ['a', 'b'].map((name, i) => ({
      name,
      activation: 'reactive' as const,
      runtime: 'dispatcher' as const,
      operator: 'noop',
      outputs: 1,
      inputs: [{ from: { job: i === 0 ? 'b' : 'a', output: 0 } }],
      timeout_seconds: 1,
      heartbeat_timeout_seconds: 5,
      max_attempts: 1,
      config: {},
    })),
  };
  assert.equal(traceErrorOf(() => topoOrder(cyclic)).code, 'DAG_INVALID');
  assert.equal(traceErrorOf(() => lineageHashes(cyclic)).code, 'DAG_INVALID');
});
