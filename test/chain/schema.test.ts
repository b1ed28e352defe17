import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ingestRange, type IngestResult } from '../../src/operators/cryo_ingest/ingest.js';
import { CRYO_COLUMNS, DUCKDB_TYPE } from '../../src/operators/cryo_ingest/schema.js';
import { describeParquet, duck } from './support.js';

/**
 * The Parquet we write must look like Cryo's: same column names, order and types. The
 * expected schema is checked in (cryo_expected_schema.json, written from Cryo's dataset
 * definitions) so this runs anywhere; where the real Cryo fixture exists the transactions
 * schema is also compared with it.
 */

const FIXTURE_DIR = new URL('../../../shared/fixtures/cryo-monad/', import.meta.url).pathname;
type Schema = Record<string, Array<{ name: string; type: string }>>;

let work: string;
let out: IngestResult;
let expected: Schema;

before(async () => {
  work = await mkdtemp(join(tmpdir(), 'trace-cryo-schema-'));
  out = await ingestRange({ chainId: 143, datasets: ['blocks', 'transactions', 'logs'], start: 45_216, end: 45_240, outDir: work, mode: 'fake' });
  expected = JSON.parse(await readFile(new URL('./cryo_expected_schema.json', import.meta.url), 'utf8')) as Schema;
});

after(async () => {
  if (work) await rm(work, { recursive: true, force: true });
});

const fileOf = (dataset: string) => join(work, out.files.find((f) => f.dataset === dataset)!.path);

test('written files match the checked-in Cryo schema for blocks, transactions and logs', async () => {
  assert.deepEqual(Object.keys(expected).sort(), ['blocks', 'logs', 'transactions']);
  for (const dataset of ['blocks', 'transactions', 'logs']) {
    assert.deepEqual(await describeParquet(fileOf(dataset)), expected[dataset], dataset);
  }
});

test('the column table in code agrees with the checked-in schema', () => {
  for (const [dataset, cols] of Object.entries(CRYO_COLUMNS)) {
    assert.deepEqual(
      cols.map((c) => ({ name: c.name, type: DUCKDB_TYPE[c.kind] })),
      expected[dataset],
      dataset,
    );
  }
});

test('transactions match the real Cryo fixture column for column', async (t) => {
  const fixture = join(FIXTURE_DIR, 'tx_45000.parquet');
  if (!existsSync(fixture)) {
    t.skip(`real Cryo fixture not found at ${fixture}; the checked-in schema test still ran`);
    return;
  }
  assert.deepEqual(await describeParquet(fileOf('transactions')), await describeParquet(fixture));
  assert.deepEqual(await describeParquet(fixture), expected.transactions, 'the checked-in schema is the fixture schema');
  // physical Parquet types agree too (UINT_32 vs UINT_64 etc.)
  const physical = async (p: string) =>
    duck<{ name: string; type: string | null; converted_type: string | null }>(
      `SELECT name, type, converted_type FROM parquet_schema('${p}') WHERE name <> 'duckdb_schema' AND name <> 'arrow_schema' ORDER BY name`,
    );
  const ours = (await physical(fileOf('transactions'))).filter((r) => r.type !== null);
  const theirs = (await physical(fixture)).filter((r) => r.type !== null);
  assert.deepEqual(
    ours.map((r) => [r.name, r.type, r.converted_type]),
    theirs.map((r) => [r.name, r.type, r.converted_type]),
  );
});

test('a Cryo fixture reads together with our files in one scan (same schema, same value encodings)', async (t) => {
  const fixture = join(FIXTURE_DIR, 'tx_45000.parquet');
  if (!existsSync(fixture)) {
    t.skip(`real Cryo fixture not found at ${fixture}`);
    return;
  }
  const rows = await duck<{ n: number }>(`SELECT count(*)::INT AS n FROM read_parquet(['${fixture}', '${fileOf('transactions')}'])`);
  assert.ok(rows[0]!.n > out.row_counts.transactions!);
  const enc = await duck<{ src: string; bin32: boolean; str_matches_f64: boolean }>(
    `SELECT CASE WHEN filename LIKE '%tx_45000%' THEN 'cryo' ELSE 'trace' END AS src,
            bool_and(octet_length(value_binary) = 32) AS bin32,
            bool_and(abs(value_string::DOUBLE - value_f64) <= 1e-9 * greatest(1, value_f64)) AS str_matches_f64
     FROM read_parquet(['${fixture}', '${fileOf('transactions')}'], filename = true) GROUP BY 1 ORDER BY 1`,
  );
  assert.deepEqual(enc, [
    { src: 'cryo', bin32: true, str_matches_f64: true },
    { src: 'trace', bin32: true, str_matches_f64: true },
  ]);
});
