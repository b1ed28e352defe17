/**
 * The read-time input filter inside the executor (src/query/executor/engine.ts): the relation a
 * filtered grant attaches holds exactly the matching rows, on a fresh instance and on a pooled
 * one (whose instances are keyed by the whole grant, filter included); values are typed literals
 * (strings with quotes stay strings, BLOB from 0x hex, big unsigned integers as digit strings);
 * a column the files lack or a value its type cannot hold fails the query (422).
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { TraceError } from '../../src/core/errors.js';
import { filterValueProblem } from '../../src/core/input-filter.js';
import { filterPredicate, runQuery, type RelationGrant } from '../../src/query/executor/engine.js';
import { SandboxPool } from '../../src/query/executor/instances.js';
import { SqlGate } from '../../src/query/executor/gate.js';
import { tempDir, writeParquet, type TempDir } from './support.js';

let tmp: TempDir;
let gate: SqlGate;
let files: string[];

before(async () => {
  tmp = tempDir('trace-qfilter-');
  gate = await SqlGate.create();
  files = [join(tmp.dir, 'rows', 'part-0.parquet')];
  await writeParquet([{
    path: files[0]!,
    select: `SELECT * FROM (VALUES
      (1::BIGINT, 'eth', true, from_hex('aa01'), 18446744073709551615::UBIGINT),
      (2::BIGINT, 'O''Brien', false, from_hex('bb02'), 1::UBIGINT),
      (3::BIGINT, 'x'' OR 1=1 --', true, from_hex(''), 2::UBIGINT)) t(id, sym, live, addr, big)`,
  }]);
});
after(() => {
  gate.close();
  tmp.cleanup();
});

const ids = async (relation: RelationGrant, pool?: SandboxPool) => {
  const sql = await gate.check('SELECT id FROM dataset ORDER BY id');
  const r = await runQuery({ grant: { relations: [relation] }, sql, ...(pool ? { pool } : {}) });
  return r.rows.map((row) => Number(row[0]));
};

describe('input filter in the executor', () => {
  it('shows only matching rows; quotes in values are data, not SQL', async () => {
    const rel = (where?: RelationGrant['where']): RelationGrant => ({ name: 'dataset', files, ...(where ? { where } : {}) });
    assert.deepEqual(await ids(rel()), [1, 2, 3]);
    assert.deepEqual(await ids(rel({ sym: "O'Brien" })), [2]);
    assert.deepEqual(await ids(rel({ sym: "x' OR 1=1 --" })), [3]);
    assert.deepEqual(await ids(rel({ sym: "eth' OR '1'='1" })), []);
    assert.deepEqual(await ids(rel({ live: true, id: [1, 2, 3] })), [1, 3]);
    assert.deepEqual(await ids(rel({ addr: ['0xAA01', '0x'] })), [1, 3]);
    assert.deepEqual(await ids(rel({ big: '18446744073709551615' })), [1]);
    assert.deepEqual(await ids(rel({ big: [1, 2] })), [2, 3]);
  });

  it('a pooled instance never mixes filters: each grant gets its own relation', async () => {
    const pool = new SandboxPool({}, { maxInstances: 4, idleMs: 60_000 });
    try {
      for (let i = 0; i < 2; i++) {
        assert.deepEqual(await ids({ name: 'dataset', files, where: { live: false } }, pool), [2]);
        assert.deepEqual(await ids({ name: 'dataset', files }, pool), [1, 2, 3]);
        assert.deepEqual(await ids({ name: 'dataset', files, where: { live: true } }, pool), [1, 3]);
      }
    } finally {
      pool.close();
    }
  });

  it('fails closed (422 INPUT_FILTER_INVALID) on a column the files lack or a value its type cannot hold', async () => {
    for (const [where, re] of [
      [{ colour: 'red' }, /column colour/],
      [{ live: 'yes' }, /true or false/],
      [{ addr: 'aa01' }, /0x-prefixed hex/],
      [{ big: -1 }, /non-negative integer/],
      [{ id: 1.5 }, /integer/],
      [{ sym: 5 }, /string/],
    ] as const) {
      await assert.rejects(ids({ name: 'dataset', files, where }), (e: unknown) => {
        assert.ok(e instanceof TraceError, String(e));
        assert.equal(e.status, 422);
        assert.equal(e.code, 'INPUT_FILTER_INVALID');
        assert.match(e.message, re);
        return true;
      });
    }
    // A malformed filter from outside never reaches the engine.
    await assert.rejects(ids({ name: 'dataset', files, where: { 'id) OR (1=1': 1 } }), (e: unknown) => (e as TraceError).code === 'QUERY_SANDBOX_FAILED');
  });

  it('builds quoted identifiers and typed literals', () => {
    const cols = new Map([['sym', 'VARCHAR'], ['addr', 'BLOB'], ['n', 'UBIGINT'], ['ok', 'BOOLEAN'], ['px', 'DOUBLE']]);
    assert.equal(filterPredicate({ sym: "a'b", addr: '0xff', n: [1, '2'], ok: false, px: 1.5 }, cols),
      `("sym" = 'a''b') AND ("addr" = from_hex('ff')) AND ("n" IN (1, '2')) AND ("ok" = FALSE) AND ("px" = 1.5)`);
    assert.equal(filterValueProblem('TIMESTAMP', '2024-01-01'), undefined);
    assert.match(filterValueProblem('UUID', true) ?? '', /string or a number/);
  });
});
