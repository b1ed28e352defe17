/**
 * The executor pool (src/query/executors.ts) with real executor processes and real DuckDB:
 * a warm pool, the deadline kill, both memory caps, crashes, fairness between callers, and the
 * owned spill root with stale directories of crashed runs removed at start.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { TraceError } from '../../src/core/errors.js';
import { ExecutorPool, type ExecuteRequest } from '../../src/query/executors.js';
import { ensureSpillRoot, executorDirName, processStartTime } from '../../src/query/executor/spill.js';
import { tempDir, writeParquet, type TempDir } from './support.js';

/** CPU-bound for minutes inside one scalar call: DuckDB's interrupt never reaches it. */
const HOSTILE_CPU = "SELECT levenshtein(lpad('a', 1000000, 'a'), lpad('b', 1000000, 'b')) AS d";
const MIB = 1024 * 1024;

let tmp: TempDir;
let files: string[];

before(async () => {
  tmp = tempDir('trace-qexec-');
  files = [join(tmp.dir, 'ds', 'part-0.parquet')];
  await writeParquet([{ path: files[0]!, select: 'SELECT range AS n FROM range(100)' }]);
});
after(() => tmp.cleanup());

const req = (sql: string, over: Partial<ExecuteRequest> = {}): ExecuteRequest => ({
  caller: 'user:a', sql, relations: [{ name: 'dataset', files }], limit: 100, maxBytes: 1_000_000, timeoutMs: 20_000, ...over,
});

async function rejection(p: Promise<unknown>): Promise<TraceError> {
  try {
    await p;
  } catch (e) {
    assert.ok(e instanceof TraceError, String(e));
    return e;
  }
  assert.fail('expected a rejection');
}

async function until(cond: () => boolean, what: string): Promise<void> {
  const deadline = Date.now() + 20_000;
  while (!cond()) {
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

const alive = (pid: number) => existsSync(`/proc/${pid}`) && processStartTime(pid) !== undefined;

describe('executor pool', () => {
  let pool: ExecutorPool;
  let spill: string;

  before(async () => {
    spill = join(tmp.dir, 'spill-a');
    mkdirSync(spill);
    pool = new ExecutorPool({ size: 2, maxPerCaller: 1, tempRoot: spill, memoryCapBytes: 384 * MIB });
    await pool.ready();
  });
  after(async () => pool.close());

  it('starts its executors in advance, each with its own 0700 directory in the owned root', async () => {
    assert.equal(pool.pids().length, 2);
    assert.deepEqual(pool.stats(), { starting: 0, idle: 2, busy: 0, queued: 0 });
    const root = pool.spillRoot;
    assert.equal(root, join(spill, `trace-query-${process.getuid!()}`));
    assert.equal(statSync(root).mode & 0o777, 0o700);
    const dirs = readdirSync(root).sort();
    assert.deepEqual(dirs, pool.pids().map((pid) => executorDirName(pid, processStartTime(pid)!)).sort());
    for (const d of dirs) assert.equal(statSync(join(root, d)).mode & 0o777, 0o700);
    const r = await pool.execute(req('SELECT count(*) AS n FROM dataset'));
    assert.deepEqual(JSON.parse(r.body), { columns: [{ name: 'n', type: 'BIGINT' }], rows: [['100']], truncated: false });
    assert.equal(r.rowCount, 1);
  });

  it('runs the full gate in the executor: refusals come back as 400 with the rule', async () => {
    for (const sql of ["SELECT * FROM read_csv('/etc/passwd')", 'SELECT 1;;', 'SELECT * FROM other']) {
      const e = await rejection(pool.execute(req(sql)));
      assert.equal(e.status, 400);
      assert.equal(e.code, 'SQL_REJECTED');
      assert.equal(typeof e.extra?.rule, 'string');
    }
  });

  it('kills the executor at the deadline (504), removes its directory and replaces it', async () => {
    const t0 = Date.now();
    const p = pool.execute(req(HOSTILE_CPU, { timeoutMs: 1_000 }));
    await until(() => pool.busyPids().length === 1, 'the query to start');
    const [pid] = pool.busyPids();
    const dir = join(pool.spillRoot, executorDirName(pid!, processStartTime(pid!)!));
    assert.ok(existsSync(dir));
    const e = await rejection(p);
    assert.equal(e.status, 504);
    assert.equal(e.code, 'QUERY_TIMEOUT');
    assert.ok(Date.now() - t0 < 5_000, 'answered at the deadline');
    await until(() => !alive(pid!), 'the killed executor to be gone');
    await until(() => !existsSync(dir), 'its directory to be removed');
    await pool.ready();
    assert.equal(pool.pids().length, 2);
    assert.ok(!pool.pids().includes(pid!));
    assert.equal(JSON.parse((await pool.execute(req('SELECT 42 AS x'))).body).rows[0][0], 42);
  });

  it('an allocation past the OS data limit fails inside the engine (422) and the executor lives on', async () => {
    const before = pool.pids();
    const e = await rejection(pool.execute(req('SELECT len(list_resize([1], 200000000)) AS n')));
    assert.equal(e.status, 422);
    assert.equal(e.code, 'QUERY_RESOURCE_LIMIT');
    assert.deepEqual(pool.pids().sort(), before.sort(), 'no executor was killed');
    assert.equal(JSON.parse((await pool.execute(req('SELECT count(*) AS n FROM dataset'))).body).rows[0][0], '100');
  });

  it('a crashed executor fails its own query only (500) and is replaced', async () => {
    const slow = pool.execute(req(HOSTILE_CPU, { caller: 'user:crash', timeoutMs: 30_000 }));
    await until(() => pool.busyPids().length === 1, 'the query to start');
    const [pid] = pool.busyPids();
    const other = pool.execute(req('SELECT count(*) AS n FROM dataset', { caller: 'user:other' }));
    process.kill(pid!, 'SIGKILL');
    const e = await rejection(slow);
    assert.equal(e.status, 500);
    assert.equal(e.code, 'QUERY_EXECUTOR_CRASHED');
    assert.equal(JSON.parse((await other).body).rows[0][0], '100');
    await pool.ready();
    assert.equal(pool.pids().length, 2);
  });

  it('one caller holds at most maxPerCaller executors; other callers go first', async () => {
    const a1 = pool.execute(req(HOSTILE_CPU, { caller: 'user:greedy', timeoutMs: 1_500 }));
    const a2 = pool.execute(req('SELECT 2 AS x', { caller: 'user:greedy' }));
    await until(() => pool.busyPids().length === 1, 'the first query to start');
    assert.equal(pool.stats().queued, 1, "the greedy caller's second query waits although an executor is idle");
    const b = await pool.execute(req('SELECT 3 AS x', { caller: 'user:polite' }));
    assert.equal(JSON.parse(b.body).rows[0][0], 3);
    assert.equal(pool.stats().queued, 1, 'still waiting while its first query runs');
    assert.equal((await rejection(a1)).code, 'QUERY_TIMEOUT');
    assert.equal(JSON.parse((await a2).body).rows[0][0], 2);
  });

  it('429 QUERY_BUSY beyond the wait queue', async () => {
    const small = new ExecutorPool({ size: 1, maxQueued: 1, tempRoot: spill, memoryCapBytes: 384 * MIB });
    try {
      await small.ready();
      const running = small.execute(req(HOSTILE_CPU, { caller: 'user:x', timeoutMs: 1_000 }));
      const waiting = small.execute(req('SELECT 1 AS x', { caller: 'user:y' }));
      const e = await rejection(small.execute(req('SELECT 1 AS x', { caller: 'user:z' })));
      assert.equal(e.status, 429);
      assert.equal(e.code, 'QUERY_BUSY');
      assert.equal((await rejection(running)).code, 'QUERY_TIMEOUT');
      assert.equal(JSON.parse((await waiting).body).rows[0][0], 1);
    } finally {
      await small.close();
    }
  });
});

describe('executor pool without the OS limit', () => {
  it('kills an executor whose resident memory passes the cap (422) and replaces it', async () => {
    const spill = join(tmp.dir, 'spill-b');
    mkdirSync(spill);
    const pool = new ExecutorPool({ size: 1, tempRoot: spill, memoryCapBytes: 256 * MIB, osMemoryLimit: false, memoryPollMs: 50 });
    try {
      await pool.ready();
      const [pid] = pool.pids();
      const e = await rejection(pool.execute(req('SELECT len(list_resize([1], 200000000)) AS n')));
      assert.equal(e.status, 422);
      assert.equal(e.code, 'QUERY_RESOURCE_LIMIT');
      assert.match(e.message, /more than 256 MiB/);
      await until(() => !alive(pid!), 'the executor to be killed');
      await pool.ready();
      assert.equal(JSON.parse((await pool.execute(req('SELECT 1 AS x'))).body).rows[0][0], 1);
    } finally {
      await pool.close();
    }
  });
});

describe('spill directories of crashed runs', () => {
  it('are removed when a pool starts; directories of live executors are kept', async () => {
    const spill = join(tmp.dir, 'spill-c');
    mkdirSync(spill);
    const root = ensureSpillRoot(spill);
    // A whole service crashes with its executors: nobody cleans up after them.
    const host = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', `
      const { ExecutorPool } = await import(${JSON.stringify(new URL('../../src/query/executors.ts', import.meta.url).href)});
      const pool = new ExecutorPool({ size: 2, tempRoot: ${JSON.stringify(spill)}, memoryCapBytes: ${384 * MIB} });
      await pool.ready();
      process.stdout.write(JSON.stringify(pool.pids()) + '\\n');
      setInterval(() => {}, 1000);
    `], { stdio: ['ignore', 'pipe', 'inherit'] });
    const line = await new Promise<string>((resolve, reject) => {
      createInterface({ input: host.stdout! }).once('line', resolve);
      host.once('exit', () => reject(new Error('the host exited early')));
    });
    const pids = JSON.parse(line) as number[];
    const crashed = pids.map((pid) => executorDirName(pid, processStartTime(pid)!));
    for (const d of crashed) writeFileSync(join(root, d, 'spill.tmp'), 'x'.repeat(4096));
    // Frozen first, so they cannot clean up when their parent disappears; then all killed.
    for (const pid of pids) process.kill(pid, 'SIGSTOP');
    host.kill('SIGKILL');
    for (const pid of pids) process.kill(pid, 'SIGKILL');
    await until(() => pids.every((pid) => !alive(pid)), 'the executors to die');
    for (const d of crashed) assert.ok(existsSync(join(root, d, 'spill.tmp')), 'left behind by the crash');
    // A directory of a live process (this one) and a stray entry.
    const live = executorDirName(process.pid, processStartTime(process.pid)!);
    mkdirSync(join(root, live));
    writeFileSync(join(root, 'stray'), '');

    const pool = new ExecutorPool({ size: 1, tempRoot: spill, memoryCapBytes: 384 * MIB });
    try {
      for (const d of crashed) assert.ok(!existsSync(join(root, d)), `${d} removed at start`);
      assert.ok(!existsSync(join(root, 'stray')));
      assert.ok(existsSync(join(root, live)), 'a live process keeps its directory');
      await pool.ready();
      const [pid] = pool.pids();
      assert.ok(existsSync(join(root, executorDirName(pid!, processStartTime(pid!)!))));
    } finally {
      await pool.close();
    }
  });

  it('the owned root refuses a symbolic link', () => {
    const spill = join(tmp.dir, 'spill-d');
    mkdirSync(spill);
    const target = join(tmp.dir, 'elsewhere');
    mkdirSync(target);
    symlinkSync(target, join(spill, `trace-query-${process.getuid!()}`));
    assert.throws(() => ensureSpillRoot(spill), /is not a directory/);
  });
});
