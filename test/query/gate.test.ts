import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { DuckDBInstance, type DuckDBConnection } from '@duckdb/node-api';
import { SqlGate, SqlRejected, checkParseTree, scanSql, validateSql, isGatedSql, DENIED_KEYWORDS, type GateRule } from '../../src/query/executor/gate.js';
import { SQL_KEYWORDS, relationNameProblem } from '../../src/query/executor/relations.js';

let gate: SqlGate;
let parser: DuckDBInstance;
let conn: DuckDBConnection;

before(async () => {
  gate = await SqlGate.create();
  parser = await DuckDBInstance.create(':memory:');
  conn = await parser.connect();
});
after(() => {
  gate.close();
  conn.closeSync();
  parser.closeSync();
});

async function rejects(sql: string, rule?: GateRule): Promise<SqlRejected> {
  try {
    await gate.check(sql);
  } catch (e) {
    assert.ok(e instanceof SqlRejected, `expected SqlRejected, got ${String(e)}`);
    assert.equal(e.status, 400);
    assert.equal(e.code, 'SQL_REJECTED');
    if (rule) assert.equal(e.rule, rule, `rule for ${JSON.stringify(sql.slice(0, 80))}: ${e.message}`);
    assert.match(e.message, new RegExp(`rule ${e.rule}`));
    return e;
  }
  assert.fail(`gate accepted ${JSON.stringify(sql.slice(0, 120))}`);
}

/** Stage 2 alone, on the engine's parse of `sql` (bypasses the scanner entirely). */
async function stage2(sql: string): Promise<void> {
  const r = await conn.runAndReadAll('SELECT json_serialize_sql($1::VARCHAR)', [sql]);
  checkParseTree(String(r.getRowsJson()[0]![0]), sql, gate.functions);
}

async function stage2Rejects(sql: string, rule: GateRule): Promise<void> {
  await assert.rejects(stage2(sql), (e: unknown) => e instanceof SqlRejected && e.rule === rule, `stage 2 should reject (${rule}): ${sql}`);
}

describe('SQL gate: accepts read-only SELECTs (no over-blocking)', () => {
  const accepted = [
    // query_sql_gating.md acceptance
    'SELECT 1',
    'WITH t AS (SELECT 1) SELECT * FROM t',
    // query_service_user_query.md over-blocking check
    "SELECT 'https://example.com'",
    // string literals containing markers, keywords and readers
    "SELECT 'a;b', 'x -- y', 'p /* q */ r', 'read_csv(''/etc/passwd'')', 'DROP TABLE t; INSERT INTO x', 's3://bucket/key.parquet'",
    "SELECT 'ünïcödé ✓ 日本' AS greeting",
    "SELECT E'it\\'s; DROP', X'00ff' FROM dataset",
    "SELECT count(*) FROM dataset WHERE name = 'FROM x' AND name <> ';'",
    // comments
    '-- a leading comment\nSELECT 1 /* inline */ ; -- trailing comment',
    'SELECT 1 /* outer /* nested */ still a comment */',
    // everyday analysis
    'SELECT a, b FROM dataset WHERE a BETWEEN 1 AND 3 AND b LIKE \'x%\' OR b ILIKE \'%y\' AND b NOT IN (\'a\', \'b\') AND a IS NOT NULL',
    'SELECT CASE WHEN a > 1 THEN \'x\' ELSE \'y\' END, COALESCE(a, 0), NULLIF(a, 1), a::VARCHAR, CAST(a AS DECIMAL(18,3)), TRY_CAST(b AS INT), a::STRUCT(x INT), a::INT[] FROM dataset',
    'SELECT count(*), count(DISTINCT a), sum(a) FILTER (WHERE a > 1), avg(a), arg_max(b, a), list(a ORDER BY a), string_agg(b, \',\'), quantile_cont(a, 0.5) FROM dataset GROUP BY ALL HAVING count(*) > 0 ORDER BY ALL',
    'SELECT row_number() OVER (PARTITION BY b ORDER BY a), lag(a) OVER w, sum(a) OVER (ORDER BY a ROWS BETWEEN 1 PRECEDING AND CURRENT ROW) FROM dataset WINDOW w AS (ORDER BY a) QUALIFY row_number() OVER (ORDER BY a) < 3',
    'WITH RECURSIVE t(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM t WHERE n < 3) SELECT * FROM t',
    'WITH x AS MATERIALIZED (SELECT * FROM dataset), y AS (SELECT * FROM x) SELECT * FROM y UNION SELECT * FROM x EXCEPT SELECT * FROM dataset',
    'SELECT * FROM dataset d1 JOIN dataset d2 USING (a) LEFT JOIN dataset d3 ON d1.a = d3.a CROSS JOIN (SELECT 1) s, LATERAL (SELECT d1.a + 1 AS z) l',
    "SELECT [1,2,3][1], [1,2,3][1:2], {'k': 1}.k, list_transform([1,2], x -> x * 2), [x * 2 FOR x IN [1,2] IF x > 1], unnest([1,2]), '{\"a\":1}'::JSON ->> 'a'",
    "SELECT extract(year FROM TIMESTAMP '2024-01-01'), trim(both ' ' FROM ' x '), substring('abc' FROM 1 FOR 2), date_trunc('day', now()), INTERVAL 1 DAY, epoch_ms(1), strftime(now(), '%Y')",
    'SELECT DISTINCT ON (b) * EXCLUDE (a), COLUMNS(\'b.*\') FROM dataset USING SAMPLE 10% ORDER BY b DESC NULLS LAST LIMIT 10 OFFSET 2',
    "SELECT * FROM dataset PIVOT (sum(a) FOR b IN ('x', 'y'))",
    'SELECT typeof(a), pg_typeof(a), a COLLATE nocase, list_reduce([1,2], lambda x, y: x + y) FROM dataset',
    '(SELECT 1) UNION ALL (SELECT 2)',
    'SELECT "dataset".a FROM "Dataset"',
    'SELECT hash, count(*) FROM dataset GROUP BY hash HAVING count(*) > 1',
    'SELECT "select", "drop" FROM dataset',
    'SELECT a FROM dataset WHERE a IN (SELECT a FROM dataset WHERE EXISTS (SELECT 1))',
  ];
  for (const sql of accepted) {
    it(`accepts ${JSON.stringify(sql.slice(0, 70))}`, async () => {
      const g = await gate.check(sql);
      assert.ok(isGatedSql(g));
      assert.ok(!g.sql.trimEnd().endsWith(';'), 'trailing ; is stripped');
    });
  }

  it('validateSql (the shared gate) accepts the spec examples', async () => {
    assert.equal((await validateSql('SELECT 1')).sql, 'SELECT 1');
    assert.equal((await validateSql('WITH t AS (SELECT 1) SELECT * FROM t;')).sql, 'WITH t AS (SELECT 1) SELECT * FROM t');
  });
});

describe('SQL gate: spec reject list', () => {
  const cases: Array<[string, GateRule]> = [
    ['INSTALL httpfs', 'not_select'],
    ['LOAD httpfs', 'not_select'],
    ["ATTACH 'other.db' AS o", 'not_select'],
    ["SELECT * FROM read_csv('/etc/passwd')", 'denied_function'],
    ["SELECT * FROM parquet_scan('x.parquet')", 'denied_function'],
    ["SELECT * FROM read_parquet('s3://bucket/other/*.parquet')", 'denied_function'],
    ["SELECT * FROM 'file.csv'", 'string_literal_relation'],
    ['SELECT 1; SELECT 2', 'multiple_statements'],
    // empty statements count as statements, as in the reference gate
    ['SELECT 1;;', 'multiple_statements'],
    ['SELECT 1; ;', 'multiple_statements'],
    ['SELECT 1; /* c */ ; -- c', 'multiple_statements'],
    [';', 'empty'],
    ['INSERT INTO dataset VALUES (1)', 'not_select'],
    ['DELETE FROM dataset', 'not_select'],
    ['PRAGMA database_list', 'not_select'],
  ];
  for (const [sql, rule] of cases) it(`rejects ${JSON.stringify(sql)} (${rule})`, async () => { await rejects(sql, rule); });
});

describe('SQL gate: adversarial inputs', () => {
  const cases: Array<[string, GateRule]> = [
    // comments between a function name and its parenthesis, case games, quoting
    ["SELECT * FROM read_csv /* hide */ ('/etc/passwd')", 'denied_function'],
    ["SELECT * FROM read_csv -- hide\n('/etc/passwd')", 'denied_function'],
    ["SELECT * FROM ReAd_CsV('/etc/passwd')", 'denied_function'],
    ['SELECT * FROM "read_csv"(\'/etc/passwd\')', 'denied_function'],
    ["SELECT main.read_csv('/etc/passwd')", 'denied_function'],
    // nested subqueries and CTEs hiding a reader
    ["SELECT * FROM (SELECT * FROM (SELECT * FROM read_parquet('/x.parquet')))", 'denied_function'],
    ["WITH t AS (SELECT * FROM read_text('/etc/hostname')) SELECT * FROM t", 'denied_function'],
    ["SELECT a FROM dataset WHERE a IN (SELECT * FROM sniff_csv('/x'))", 'denied_function'],
    ["SELECT * FROM dataset t JOIN LATERAL read_csv(t.b) r ON true", 'denied_function'],
    // CTE scoping: a CTE is visible only inside the query that defines it
    ['WITH t AS (SELECT 1) SELECT * FROM (SELECT * FROM t) s, u', 'table_reference'],
    ['SELECT (SELECT 1 FROM (WITH u AS (SELECT 1) SELECT * FROM u)), * FROM u', 'table_reference'],
    ['WITH "x.parquet" AS (SELECT 1) SELECT * FROM "x.parquet"', 'cte_name'],
    // relations other than dataset
    ['SELECT * FROM "x.parquet"', 'table_reference'],
    ["SELECT * FROM dataset, 'x.csv'", 'string_literal_relation'],
    ["SELECT * FROM dataset JOIN '/etc/passwd' USING (a)", 'string_literal_relation'],
    ['SELECT * FROM main.dataset', 'qualified_reference'],
    ['SELECT * FROM memory.main.dataset', 'qualified_reference'],
    ['SELECT * FROM information_schema.tables', 'qualified_reference'],
    ['SELECT * FROM pg_settings', 'table_reference'],
    ['SELECT * FROM dataset AT (VERSION => 1)', 'time_travel'],
    // table functions, query(), settings and environment
    ['SELECT * FROM range(10)', 'table_function'],
    ['SELECT * FROM generate_series(1, 3)', 'table_function'],
    ['SELECT * FROM unnest([1, 2])', 'table_function'],
    ["SELECT * FROM query('SELECT 1')", 'denied_function'],
    ["SELECT query_table('dataset')", 'denied_function'],
    ["SELECT getenv('HOME')", 'denied_function'],
    ["SELECT current_setting('allowed_paths')", 'denied_function'],
    ['SELECT * FROM duckdb_settings()', 'denied_function'],
    ["SELECT * FROM glob('/tmp/*')", 'denied_function'],
    ['SELECT pg_get_viewdef(1)', 'denied_function'],
    ["SELECT json_execute_serialized_sql('x')", 'denied_function'],
    ["SELECT write_log('x')", 'denied_function'],
    ['SELECT no_such_function(1)', 'unknown_function'],
    ['SELECT version()', 'table_function'],
    // PRAGMA / SET / other statements, also hidden behind comments
    ['/* comment */ PRAGMA version', 'not_select'],
    ['SET enable_external_access = true', 'not_select'],
    ["COPY (SELECT 1) TO '/tmp/out.csv'", 'not_select'],
    ['SELECT * FROM (DESCRIBE dataset)', 'denied_keyword'],
    ['WITH x AS (INSERT INTO y VALUES (1) RETURNING *) SELECT * FROM x', 'denied_keyword'],
    ['SELECT 1 WHERE 1 = 1 OR (SELECT 1 FROM dataset) = 1 UNION SELECT 1 FROM dataset; DROP TABLE dataset', 'multiple_statements'],
    ['FROM dataset', 'not_select'],
    ['VALUES (1)', 'not_select'],
    ['EXPLAIN SELECT 1', 'not_select'],
    // multi-statement tricks with strings, backslashes and comments
    ["SELECT 'a\\'; DROP TABLE x; --'", 'multiple_statements'],
    ["SELECT E'\\''; DROP TABLE x", 'multiple_statements'],
    ['SELECT 1 /* /* */ ; DROP TABLE x', 'unterminated'],
    ['SELECT 1 /* unterminated', 'unterminated'],
    ["SELECT 'unterminated", 'unterminated'],
    ['SELECT "unterminated', 'unterminated'],
    ['SELECT 1\n;\n DROP TABLE x', 'multiple_statements'],
    // dollar quoting, parameters, unicode escapes, look-alikes, odd characters
    ['SELECT $$ ; DROP TABLE x $$', 'dollar_quoting'],
    ['SELECT $tag$x$tag$', 'dollar_quoting'],
    ['SELECT $1', 'dollar_quoting'],
    ["SELECT U&'\\0041'", 'unicode_escape'],
    ['SELECT 1 \uFF26\uFF32\uFF2F\uFF2D dataset', 'non_ascii'],
    ['SELECT * FROM d\u0430taset', 'non_ascii'],
    ['SELECT * FROM "d\u0430taset"', 'non_ascii'],
    ["SELECT * FROM re\u0430d_csv('/etc/passwd')", 'non_ascii'],
    ['SELECT 1 -- caf\u00e9', 'non_ascii'],
    ['SELECT 1\u00a0', 'non_ascii'],
    ['SELECT 1\u0000', 'control_character'],
    ['SELECT `a` FROM dataset', 'unsupported_character'],
    ['SELECT * FROM dataset WHERE x = ?', 'unsupported_construct'],
    // structure and size
    ['', 'empty'],
    ['   ', 'empty'],
    ['-- only a comment', 'empty'],
    [';', 'empty'],
    ['SELECT 1)', 'unbalanced_parentheses'],
    ['SELECT ((1)', 'unbalanced_parentheses'],
    [`SELECT ${'('.repeat(150)}1${')'.repeat(150)}`, 'too_deep'],
    [`SELECT '${'x'.repeat(110 * 1024)}'`, 'too_large'],
    ['SELECT 1 INTO x', 'parse_error'],
    ['SELECT FROM WHERE', 'parse_error'],
  ];
  for (const [sql, rule] of cases) it(`rejects ${JSON.stringify(sql.slice(0, 70))} (${rule})`, async () => { await rejects(sql, rule); });

  it('never echoes the SQL in rejection messages', async () => {
    const marker = 'ZZ_SECRET_MARKER_42';
    for (const sql of [
      `SELECT * FROM read_csv('/etc/${marker}')`,
      `SELECT * FROM '${marker}.parquet'`,
      `SELECT * FROM ${marker}`,
      `SELECT ${marker}(1)`,
      `SELECT '${marker}'; DROP TABLE x`,
      `SELECT 1 FROM dataset WHERE ${marker} = (`,
      `SELECT ${marker} ${marker} ${marker} FROM`,
    ]) {
      const e = await rejects(sql);
      assert.ok(!e.message.includes(marker), `message leaks SQL: ${e.message}`);
      assert.ok(!e.message.includes('/etc'), `message leaks a path: ${e.message}`);
      assert.ok(!JSON.stringify(e.toJSON()).includes(marker));
    }
  });
});

describe('SQL gate stage 2 (the engine parse) decides on its own', () => {
  // Each of these is also caught by the scanner; here the scanner is bypassed to prove the
  // parse-tree allowlist alone refuses them.
  it('refuses reader functions in any position', async () => {
    await stage2Rejects("SELECT * FROM read_csv('/etc/passwd')", 'table_function');
    await stage2Rejects("SELECT * FROM (SELECT * FROM read_parquet('/x'))", 'table_function');
    await stage2Rejects("SELECT read_blob('/x')", 'denied_function');
    await stage2Rejects("SELECT current_setting('allowed_paths')", 'denied_function');
    await stage2Rejects("WITH t AS (SELECT * FROM read_text('/etc/hostname')) SELECT * FROM t", 'table_function');
  });
  it('refuses string-literal relations and foreign tables', async () => {
    await stage2Rejects("SELECT * FROM 'x.parquet'", 'string_literal_relation');
    await stage2Rejects("SELECT 'é', * FROM 'x.parquet'", 'string_literal_relation');
    await stage2Rejects('SELECT * FROM other_table', 'table_reference');
    await stage2Rejects('SELECT * FROM main.dataset', 'qualified_reference');
  });
  it('refuses non-SELECT statements and batches', async () => {
    await stage2Rejects('CREATE TABLE x AS SELECT 1', 'parse_error');
    await stage2Rejects("ATTACH 'x.db'", 'parse_error');
    await stage2Rejects('SELECT 1; SELECT 2', 'statement_count');
  });
  it('refuses unknown and non-builtin functions', async () => {
    await stage2Rejects('SELECT totally_unknown(1)', 'unknown_function');
    await stage2Rejects("SELECT pg_catalog.pg_get_viewdef(1)", 'qualified_reference');
  });
  it('fails closed on parse-tree shapes it does not recognise', () => {
    const tree = (node: unknown) => JSON.stringify({ error: false, statements: [{ node: { type: 'SELECT_NODE', modifiers: [], cte_map: { map: [] }, select_list: [node] } }] });
    const expectRule = (node: unknown, rule: GateRule) =>
      assert.throws(() => checkParseTree(tree(node), 'SELECT 1', gate.functions), (e: unknown) => e instanceof SqlRejected && e.rule === rule);
    expectRule({ class: 'SOMETHING_NEW', type: 'X' }, 'unsupported_construct');
    expectRule({ function_name: 'lower', children: [] }, 'unsupported_construct');
    expectRule({ type: 'BASE_TABLE', table_name: 'other', schema_name: '', catalog_name: '' }, 'table_reference');
    expectRule({ type: 'SHOW_REF', alias: '', sample: null }, 'unsupported_construct');
    expectRule({ type: 'DELETE_NODE', modifiers: [] }, 'unsupported_construct');
    assert.throws(() => checkParseTree('{"error":false,"statements":[]}', '', gate.functions), (e: unknown) => e instanceof SqlRejected && e.rule === 'statement_count');
    assert.throws(() => checkParseTree('not json', '', gate.functions), (e: unknown) => e instanceof SqlRejected && e.rule === 'parse_error');
  });

  it('accepts an ordinary SELECT over dataset', async () => {
    await stage2('WITH t AS (SELECT a FROM dataset) SELECT count(*) FROM t JOIN dataset USING (a)');
  });
});

describe('SQL gate stage 1 (scanner)', () => {
  it('returns the statement without the trailing semicolon and comments', () => {
    assert.equal(scanSql('SELECT 1 ; -- done').body, 'SELECT 1');
    assert.equal(scanSql("SELECT ';' /* x */").body, "SELECT ';'");
    assert.equal(scanSql('  -- c\nSELECT 1').body, '  -- c\nSELECT 1');
  });
  it('only the gate can mint gated SQL', () => {
    assert.equal(isGatedSql({ sql: 'SELECT 1' }), false);
  });
});

describe('SQL gate: granted relation names', () => {
  it('allows exactly the given relations and CTEs; the verdict depends on the relation set', async () => {
    const rel = ['blocks', 'logs'];
    const g = await gate.check('SELECT b.number, count(*) FROM blocks b JOIN logs l ON l.block_number = b.number GROUP BY 1', rel);
    assert.deepEqual(g.relations, ['blocks', 'logs']);
    await gate.check('WITH x AS (SELECT * FROM logs) SELECT * FROM x, blocks', ['LOGS', 'Blocks']);
    const byDefault = await gate.check('SELECT * FROM dataset');
    assert.deepEqual(byDefault.relations, ['dataset']);
    // The same text passes for one set of relations and not for another (no cached verdict leaks).
    await assert.rejects(gate.check('SELECT * FROM dataset', rel), (e: unknown) => e instanceof SqlRejected && e.rule === 'table_reference');
    await assert.rejects(gate.check('SELECT * FROM blocks'), (e: unknown) => e instanceof SqlRejected && e.rule === 'table_reference');
    await assert.rejects(gate.check('SELECT * FROM blocks, other', rel), (e: unknown) => e instanceof SqlRejected && e.rule === 'table_reference');
    await assert.rejects(gate.check('SELECT * FROM main.blocks', rel), (e: unknown) => e instanceof SqlRejected && e.rule === 'qualified_reference');
  });
});

describe('relation names', () => {
  it('refuse every DuckDB keyword outside the unreserved category, and the gate denied keywords', async () => {
    const r = await conn.runAndReadAll(`SELECT keyword_name FROM duckdb_keywords() WHERE keyword_category <> 'unreserved' ORDER BY 1`);
    const engine = r.getRowsJson().map((row) => String(row[0]));
    assert.deepEqual([...SQL_KEYWORDS].sort(), engine, 'SQL_KEYWORDS matches this DuckDB build');
    for (const k of engine) assert.ok(relationNameProblem(k), k);
    for (const k of DENIED_KEYWORDS) assert.ok(relationNameProblem(k.toLowerCase()), k);
    for (const ok of ['blocks', 'logs', 'dataset', 'Blocks', '_x1', 'year', 'values_2']) assert.equal(relationNameProblem(ok), undefined, ok);
    for (const bad of ['', '1a', 'a-b', 'a b', 'ä', 'x'.repeat(64), '"q"']) assert.ok(relationNameProblem(bad), bad);
  });
});
