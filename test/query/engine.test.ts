import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { TraceError } from '../../src/core/errors.js';
import { ENGINE_LIMITS, clampLimit, runQuery } from '../../src/query/executor/engine.js';
import { SqlGate, type GatedSql } from '../../src/query/executor/gate.js';
import { tempDir, writeParquet, writeThreeRows, type TempDir } from './support.js';

let tmp: TempDir;
let gate: SqlGate;
let three: string[];
let typed: string[];
let big: string[];

before(async () => {
  tmp = tempDir();
  gate = await SqlGate.create();
  three = await writeThreeRows(join(tmp.dir, 'three'));
  typed = [join(tmp.dir, 'typed', 'types.parquet')];
  big = [join(tmp.dir, 'big', 'big.parquet')];
  await writeParquet([
    {
      path: typed[0]!,
      select: `SELECT
        9007199254740993::BIGINT AS i64,
        18446744073709551615::UBIGINT AS u64,
        42::INTEGER AS i32,
        -7::SMALLINT AS i16,
        1.5::DOUBLE AS f64,
        'nan'::DOUBLE AS fnan,
        12345678901234567.891::DECIMAL(20,3) AS dec,
        '\\xDE\\xAD\\xBE\\xEF'::BLOB AS bin,
        TIMESTAMP '2024-03-04 05:06:07.123456' AS ts,
        TIMESTAMPTZ '2024-03-04 05:06:07+02:00' AS tstz,
        TIMESTAMP_MS '2024-03-04 05:06:07.5' AS ts_ms,
        DATE '2024-02-29' AS d,
        DATE '1969-12-31' AS d_before_epoch,
        TIME '01:02:03' AS t,
        true AS flag,
        NULL::VARCHAR AS nothing,
        'héllo' AS txt,
        [1, 2, 3]::BIGINT[] AS list64,
        {'a': 1::BIGINT, 'b': [DATE '2020-01-01'], 'c': {'d': '\\x01'::BLOB}} AS st,
        MAP {'k': 2::BIGINT} AS m,
        '00000000-0000-0000-0000-000000000001'::UUID AS id`,
    },
    { path: big[0]!, select: `SELECT range AS n, repeat('x', 1000) AS pad FROM range(20000)` },
  ]);
});
after(() => {
  gate.close();
  tmp.cleanup();
});

const q = (sql: string): Promise<GatedSql> => gate.check(sql);

describe('runQuery', () => {
  it('returns the deterministic three-row dataset over two files', async () => {
    const r = await runQuery({ grant: { files: three }, sql: await q('SELECT id, name, amount FROM dataset ORDER BY id') });
    assert.deepEqual(r.columns, [
      { name: 'id', type: 'BIGINT' },
      { name: 'name', type: 'VARCHAR' },
      { name: 'amount', type: 'DECIMAL(10,2)' },
    ]);
    assert.deepEqual(r.rows, [
      ['1', 'alpha', '10.50'],
      ['2', 'beta', '20.25'],
      ['3', 'gamma', '30.00'],
    ]);
    assert.equal(r.truncated, false);
  });

  it('converts every type to JSON-safe values', async () => {
    const r = await runQuery({ grant: { files: typed }, sql: await q('SELECT * FROM dataset') });
    const row = Object.fromEntries(r.columns.map((c, i) => [c.name, r.rows[0]![i]]));
    const types = Object.fromEntries(r.columns.map((c) => [c.name, c.type]));
    assert.deepEqual(row, {
      i64: '9007199254740993',
      u64: '18446744073709551615',
      i32: 42,
      i16: -7,
      f64: 1.5,
      fnan: 'NaN',
      dec: '12345678901234567.891',
      bin: '0xdeadbeef',
      ts: '2024-03-04T05:06:07.123456Z',
      tstz: '2024-03-04T03:06:07Z',
      ts_ms: '2024-03-04T05:06:07.500000Z',
      d: '2024-02-29',
      d_before_epoch: '1969-12-31',
      t: '01:02:03',
      flag: true,
      nothing: null,
      txt: 'héllo',
      list64: ['1', '2', '3'],
      st: { a: '1', b: ['2020-01-01'], c: { d: '0x01' } },
      m: [{ key: 'k', value: '2' }],
      id: '00000000-0000-0000-0000-000000000001',
    });
    assert.equal(types.i64, 'BIGINT');
    assert.equal(types.dec, 'DECIMAL(20,3)');
    assert.equal(types.tstz, 'TIMESTAMP WITH TIME ZONE');
    assert.equal(types.st, 'STRUCT("a" BIGINT, "b" DATE[], "c" STRUCT("d" BLOB))');
    // The whole result survives a JSON round trip unchanged.
    assert.deepEqual(JSON.parse(JSON.stringify(r.rows)), r.rows);
  });

  it('computes values in SQL, including infinities and sub-second timestamps', async () => {
    const r = await runQuery({
      grant: { files: three },
      sql: await q(
        "SELECT 'infinity'::TIMESTAMP AS a, '-infinity'::DATE AS b, TIMESTAMP_NS '2024-01-01 00:00:00.000000001' AS c, 'inf'::DOUBLE AS d, " +
          "TIMESTAMP '1900-01-01 00:00:00' AS e, 170141183460469231731687303715884105727::HUGEINT AS f, 2::UHUGEINT AS g, INTERVAL 3 DAY AS h",
      ),
    });
    assert.deepEqual(r.rows, [
      ['infinity', '-infinity', '2024-01-01T00:00:00.000000001Z', 'Infinity', '1900-01-01T00:00:00Z', '170141183460469231731687303715884105727', '2', '3 days'],
    ]);
    assert.equal(r.columns[5]!.type, 'HUGEINT');
  });

  it('clamps the limit to [1, 10000] and reports truncation', async () => {
    assert.equal(clampLimit(undefined), ENGINE_LIMITS.maxRows);
    assert.equal(clampLimit(0), 1);
    assert.equal(clampLimit(-5), 1);
    assert.equal(clampLimit(2.9), 2);
    assert.equal(clampLimit(1e9), 10_000);
    const sql = await q('SELECT n FROM dataset ORDER BY n');
    const two = await runQuery({ grant: { files: big }, sql, limit: 2 });
    assert.deepEqual(two.rows, [['0'], ['1']]);
    assert.equal(two.truncated, true);
    const zero = await runQuery({ grant: { files: big }, sql, limit: 0 });
    assert.deepEqual(zero.rows, [['0']]);
    assert.equal(zero.truncated, true);
    const huge = await runQuery({ grant: { files: big }, sql: await q('SELECT n FROM dataset'), limit: 50_000 });
    assert.equal(huge.rows.length, 10_000);
    assert.equal(huge.truncated, true);
    const exact = await runQuery({ grant: { files: three }, sql: await q('SELECT id FROM dataset'), limit: 3 });
    assert.equal(exact.rows.length, 3);
    assert.equal(exact.truncated, false);
  });

  it('keeps the statement ORDER BY and its own LIMIT under the wrapper', async () => {
    const r = await runQuery({ grant: { files: big }, sql: await q('SELECT n FROM dataset ORDER BY n DESC LIMIT 3'), limit: 10 });
    assert.deepEqual(r.rows, [['19999'], ['19998'], ['19997']]);
    assert.equal(r.truncated, false);
  });

  it('truncates at the inline byte cap', async () => {
    const r = await runQuery({ grant: { files: big }, sql: await q('SELECT n, pad FROM dataset ORDER BY n'), maxBytes: 50_000 });
    assert.equal(r.truncated, true);
    assert.ok(r.rows.length > 10 && r.rows.length < 60, `rows: ${r.rows.length}`);
    assert.ok(Buffer.byteLength(JSON.stringify(r)) <= 50_000 + 200);
    const def = await runQuery({ grant: { files: big }, sql: await q('SELECT n, pad FROM dataset ORDER BY n') });
    // 10,000 rows of ~1 KB stay under 10 MiB, so the row clamp decides.
    assert.equal(def.rows.length, 10_000);
    assert.ok(Buffer.byteLength(JSON.stringify(def.rows)) <= ENGINE_LIMITS.maxBytes);
  });

  it('interrupts a query at the timeout', async () => {
    const heavy = await q(
      'SELECT count(*) FROM dataset a, dataset b, dataset c, dataset d, dataset e, dataset f, dataset g, dataset h, dataset i, dataset j ' +
        'WHERE (a.n * 3 + b.n * 5 + c.n * 7 + d.n + e.n + f.n + g.n + h.n + i.n + j.n) % 1000 = 999',
    );
    const t0 = Date.now();
    await assert.rejects(runQuery({ grant: { files: big }, sql: heavy, timeoutMs: 400 }), (e: unknown) => {
      assert.ok(e instanceof TraceError);
      assert.equal(e.status, 504);
      assert.equal(e.code, 'QUERY_TIMEOUT');
      return true;
    });
    assert.ok(Date.now() - t0 < 5_000, `took ${Date.now() - t0} ms`);
    // The process is still healthy afterwards.
    const r = await runQuery({ grant: { files: three }, sql: await q('SELECT count(*) FROM dataset') });
    assert.deepEqual(r.rows, [['3']]);
  });

  it('returns user errors as 400 without paths or SQL echoes', async () => {
    await assert.rejects(runQuery({ grant: { files: three }, sql: await q('SELECT no_such_column FROM dataset') }), (e: unknown) => {
      assert.ok(e instanceof TraceError);
      assert.equal(e.status, 400);
      assert.equal(e.code, 'QUERY_INVALID');
      assert.ok(!e.message.includes('LINE'), e.message);
      assert.ok(!e.message.includes(tmp.dir), e.message);
      return true;
    });
    await assert.rejects(runQuery({ grant: { files: three }, sql: await q("SELECT 'x'::INTEGER FROM dataset") }), (e: unknown) => e instanceof TraceError && e.status === 400);
  });

  it('scrubs granted file paths from attach errors', async () => {
    const corrupt = join(tmp.dir, 'corrupt', 'bad.parquet');
    mkdirSync(join(tmp.dir, 'corrupt'), { recursive: true });
    writeFileSync(corrupt, 'this is not parquet');
    await assert.rejects(runQuery({ grant: { files: [corrupt] }, sql: await q('SELECT 1 FROM dataset') }), (e: unknown) => {
      assert.ok(e instanceof TraceError);
      assert.equal(e.code, 'DATASET_ATTACH_FAILED');
      assert.ok(!e.message.includes(tmp.dir), e.message);
      assert.ok(!e.message.includes('bad.parquet'), e.message);
      return true;
    });
  });

  it('refuses SQL that did not come from the gate', async () => {
    await assert.rejects(
      runQuery({ grant: { files: three }, sql: { sql: 'SELECT 1' } as GatedSql }),
      (e: unknown) => e instanceof TraceError && e.code === 'SQL_NOT_GATED',
    );
  });
});
