/**
 * The DuckDB sandbox on its own: these tests bypass the SQL gate on purpose and show the
 * locked instance still refuses file, network, extension, settings and write access.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { TraceError } from '../../src/core/errors.js';
import { QuerySandbox, scrubEngineMessage } from '../../src/query/executor/engine.js';
import { tempDir, writeParquet, writeThreeRows, type TempDir } from './support.js';

let tmp: TempDir;
let granted: string[];
let secretFile: string;
let otherGrant: string[];

before(async () => {
  tmp = tempDir();
  granted = await writeThreeRows(join(tmp.dir, 'ds-a'));
  secretFile = join(tmp.dir, 'ds-b', 'secret.parquet');
  otherGrant = [secretFile];
  await writeParquet([{ path: secretFile, select: "SELECT 'top-secret' AS s, 42 AS n" }]);
});
after(() => tmp.cleanup());

/** Runs `sql` directly on the locked connection (no gate, no statement-type check). */
async function raw(sb: QuerySandbox, sql: string): Promise<unknown> {
  const r = await sb.connection.runAndReadAll(sql);
  return r.getRowsJson();
}

describe('sandbox lockdown (gate bypassed)', () => {
  let sb: QuerySandbox;
  before(async () => {
    sb = await QuerySandbox.open({ files: granted });
  });
  after(() => sb.close());

  it('still reads the granted dataset view', async () => {
    assert.deepEqual(await raw(sb, 'SELECT count(*)::INTEGER, sum(id)::INTEGER FROM dataset'), [[3, 6]]);
  });

  const denied: Array<[string, RegExp]> = [
    ["SELECT * FROM read_csv('/etc/passwd')", /Permission Error/],
    ["SELECT * FROM read_text('/etc/hostname')", /Permission Error/],
    ["SELECT * FROM glob('/etc/*')", /Permission Error/],
    ["SELECT * FROM read_parquet('https://example.com/x.parquet')", /Permission Error/],
    ["ATTACH '/tmp/trace-sandbox-attach.db' AS x", /Permission Error/],
    ['INSTALL httpfs', /Permission Error|disabled/],
    ['LOAD httpfs', /Permission Error|disabled/],
    ['SET enable_external_access = true', /locked/],
    ["SET allowed_paths = ['/etc/passwd']", /locked/],
    ['SET threads = 64', /locked/],
    ['RESET lock_configuration', /locked/],
    ["COPY (SELECT 1) TO '/tmp/trace-sandbox-copy.csv'", /Permission Error/],
    ["EXPORT DATABASE '/tmp/trace-sandbox-export'", /Permission Error/],
  ];
  for (const [sql, re] of denied) {
    it(`refuses ${JSON.stringify(sql)} on the raw locked connection`, async () => {
      await assert.rejects(raw(sb, sql), (e: Error) => re.test(e.message));
    });
  }

  it('refuses a non-granted Parquet file, by function and by replacement scan', async () => {
    await assert.rejects(raw(sb, `SELECT * FROM read_parquet('${secretFile}')`), /Permission Error/);
    await assert.rejects(raw(sb, `SELECT * FROM '${secretFile}'`), /Permission Error/);
  });

  it('did not write anything outside the sandbox', () => {
    assert.equal(existsSync('/tmp/trace-sandbox-copy.csv'), false);
    assert.equal(existsSync('/tmp/trace-sandbox-attach.db'), false);
    assert.equal(existsSync('/tmp/trace-sandbox-export'), false);
  });

  it('execute() refuses anything that is not one SELECT, including CREATE TABLE shadowing', async () => {
    for (const sql of [
      'CREATE TABLE dataset AS SELECT 42 AS id',
      'CREATE TEMP VIEW dataset AS SELECT 42 AS id',
      "ATTACH ':memory:' AS m",
      'SET threads = 1',
      'INSTALL httpfs',
      'SELECT 1; SELECT 2',
      'DROP VIEW dataset',
    ]) {
      await assert.rejects(sb.execute(sql), (e: unknown) => e instanceof TraceError && e.status >= 400 && e.status < 500, sql);
    }
    const r = await sb.execute('SELECT count(*) AS n FROM dataset');
    assert.deepEqual(r.rows, [['3']]);
  });

  it('a main-schema table cannot shadow the trusted temp view', async () => {
    await raw(sb, 'CREATE TABLE dataset AS SELECT 42 AS id');
    assert.deepEqual(await raw(sb, 'SELECT count(*)::INTEGER FROM dataset'), [[3]]);
  });

  it('execute() maps sandbox denials to 403 and scrubs the path', async () => {
    await assert.rejects(sb.execute(`SELECT * FROM read_parquet('${secretFile}')`), (e: unknown) => {
      assert.ok(e instanceof TraceError);
      assert.equal(e.status, 403);
      assert.equal(e.code, 'QUERY_SANDBOX_DENIED');
      assert.ok(!e.message.includes(tmp.dir), e.message);
      assert.ok(!e.message.includes('secret.parquet'), e.message);
      assert.ok(!e.message.includes('LINE'), e.message);
      return true;
    });
  });
});

describe('grant isolation', () => {
  it("one grant's files are not visible to a query on another grant", async () => {
    const a = await QuerySandbox.open({ files: granted });
    const b = await QuerySandbox.open({ files: otherGrant });
    try {
      assert.deepEqual((await b.execute('SELECT s, n FROM dataset')).rows, [['top-secret', 42]]);
      await assert.rejects(raw(a, `SELECT * FROM read_parquet('${secretFile}')`), /Permission Error/);
      await assert.rejects(raw(b, `SELECT * FROM read_parquet('${granted[0]}')`), /Permission Error/);
      await assert.rejects(a.execute('SELECT s FROM dataset'), (e: unknown) => e instanceof TraceError && e.code === 'QUERY_INVALID');
      assert.deepEqual((await a.execute('SELECT count(*) FROM dataset')).rows, [['3']]);
    } finally {
      a.close();
      b.close();
    }
  });

  it('several relations: each is a view of its own files, and only their files are readable', async () => {
    const sb = await QuerySandbox.open({ relations: [{ name: 'trades', files: granted }, { name: 'secrets', files: otherGrant }] });
    try {
      assert.deepEqual((await sb.execute('SELECT count(*) AS n, min(s) AS s FROM trades, secrets')).rows, [['3', 'top-secret']]);
      // The union of both grants is allowed, one relation's view does not see the other's files.
      await assert.rejects(sb.execute('SELECT s FROM trades'), (e: unknown) => e instanceof TraceError && e.code === 'QUERY_INVALID');
      await assert.rejects(raw(sb, `SELECT * FROM read_parquet('${tmp.dir}/elsewhere.parquet')`), /Permission Error|IO Error/);
      await assert.rejects(raw(sb, 'SET enable_external_access = true'), /lock|configuration/i);
    } finally {
      sb.close();
    }
    await assert.rejects(QuerySandbox.open({ relations: [{ name: 'select', files: granted }] }), (e: unknown) => e instanceof TraceError && e.code === 'QUERY_SANDBOX_FAILED');
    await assert.rejects(QuerySandbox.open({ relations: [{ name: 'a', files: granted }, { name: 'a', files: otherGrant }] }), (e: unknown) => e instanceof TraceError && e.code === 'QUERY_SANDBOX_FAILED');
  });

  it('every query gets a fresh instance: objects made in one are gone in the next', async () => {
    const a = await QuerySandbox.open({ files: granted });
    await raw(a, 'CREATE TABLE leftover AS SELECT 1 AS x');
    a.close();
    const b = await QuerySandbox.open({ files: granted });
    try {
      await assert.rejects(raw(b, 'SELECT * FROM leftover'), /Catalog Error/);
    } finally {
      b.close();
    }
  });
});

describe('sandbox setup', () => {
  it('uses a private spill directory and removes it on close', async () => {
    const root = tempDir('trace-query-spill-');
    try {
      const sb = await QuerySandbox.open({ files: granted }, { tempRoot: root.dir, memoryLimit: '64MB', threads: 1 });
      const dirs = readdirSync(root.dir);
      assert.equal(dirs.length, 1);
      // Forces a spill: a sort far larger than the memory limit still completes.
      const r = await sb.execute('SELECT max(r) FROM (SELECT row_number() OVER (ORDER BY hash(x)) AS r FROM range(6000000) t(x))');
      assert.deepEqual(r.rows, [['6000000']]);
      sb.close();
      assert.deepEqual(readdirSync(root.dir), []);
    } finally {
      root.cleanup();
    }
  });

  it('fails closed on bad grants', async () => {
    await assert.rejects(QuerySandbox.open({ files: [] }), (e: unknown) => e instanceof TraceError && e.code === 'QUERY_SANDBOX_FAILED');
    await assert.rejects(QuerySandbox.open({ files: ['relative/path.parquet'] }), (e: unknown) => e instanceof TraceError && e.code === 'QUERY_SANDBOX_FAILED');
    await assert.rejects(QuerySandbox.open({ files: ['/a/../etc/passwd'] }), (e: unknown) => e instanceof TraceError && e.code === 'QUERY_SANDBOX_FAILED');
    await assert.rejects(QuerySandbox.open({ files: [join(tmp.dir, 'missing.parquet')] }), (e: unknown) => {
      assert.ok(e instanceof TraceError);
      assert.equal(e.status, 503);
      assert.ok(!e.message.includes(tmp.dir), e.message);
      return true;
    });
  });

  it('fails the query when a hardening step cannot be applied', async () => {
    const root = tempDir('trace-query-spill-');
    try {
      await assert.rejects(QuerySandbox.open({ files: granted }, { memoryLimit: 'plenty', tempRoot: root.dir }), (e: unknown) => {
        assert.ok(e instanceof TraceError);
        assert.equal(e.status, 500);
        assert.equal(e.code, 'QUERY_SANDBOX_FAILED');
        return true;
      });
      assert.deepEqual(readdirSync(root.dir), [], 'the spill directory is removed on failure');
    } finally {
      root.cleanup();
    }
  });

  it('refuses s3 grants when httpfs is not installed', async () => {
    await assert.rejects(QuerySandbox.open({ files: ['s3://bucket/data/x.parquet'] }), (e: unknown) => {
      assert.ok(e instanceof TraceError);
      assert.equal(e.status, 501);
      assert.equal(e.code, 'S3_UNSUPPORTED');
      assert.match(e.message, /httpfs/);
      return true;
    });
  });
});

describe('scrubEngineMessage', () => {
  it('removes SQL echoes, paths and URLs', () => {
    const msg = 'IO Error: No files found that match the pattern "/home/u/.trace/objects/ds/x.parquet"\n\nLINE 1: SELECT secret FROM read_parquet(...)\n                        ^';
    const out = scrubEngineMessage(msg);
    assert.equal(out, 'IO Error: No files found that match the pattern "<dataset>"');
    assert.equal(scrubEngineMessage('HTTP Error: s3://bucket/k/x.parquet failed', []), 'HTTP Error: <dataset> failed');
    assert.equal(scrubEngineMessage('x at file:///a/b.parquet and (/c/d.parquet)'), 'x at <dataset> and (<dataset>)');
    assert.equal(scrubEngineMessage('Binder Error: column "a/b" not found'), 'Binder Error: column "a/b" not found');
  });
});
