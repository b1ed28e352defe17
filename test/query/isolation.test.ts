/**
 * Hostile queries cannot take the platform down (the one-process platform, real Postgres and
 * PGlite, real executor processes):
 * - four CPU-bound queries that DuckDB's own interrupt never reaches run while the Dispatcher's
 *   health route, its dataset routes (list and registration) and a small query of another user
 *   keep answering within 2 s; at the deadline they answer 504, their executors are gone and
 *   burn no more CPU, and everything answers normally afterwards;
 * - queries that allocate far past the memory cap answer 422 (or 504) while no executor grows
 *   past its cap and the service's own resident memory stays where it was.
 * Memory is read from /proc; CPU time of the executors from /proc/<pid>/stat.
 *
 * "Within 2 s" allows for the machine: on a shared 2-core machine under heavy load the same
 * probes can take a second or more with no hostile query at all, so the bound is 2 s or three
 * times the slowest probe of a baseline measured just before, whichever is larger. Without
 * isolation the probes wait for the hostile queries themselves (DuckDB holding the libuv thread
 * pool for as long as the queries compute: minutes), far past either bound.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { mintDevUserToken } from '../../src/auth/user.js';
import { ensureUser } from '../../src/dispatcher/identity.js';
import { loadOrCreateSecrets } from '../../src/lite/secrets.js';
import { residentBytes } from '../../src/query/executors.js';
import { BACKENDS } from '../support/db.js';
import { startPlatform, type TestPlatform } from '../support/platform.js';
import { tempDir, writeThreeRows, type TempDir } from './support.js';

const MIB = 1024 * 1024;
const CAP = 384 * MIB;
const DEADLINE_MS = 3_000;
const HOSTILE_CPU = "SELECT levenshtein(lpad('a', 1000000, 'a'), lpad('b', 1000000, 'b')) AS d FROM dataset LIMIT 1";
const HOSTILE_MEMORY = ['SELECT len(list_resize([1], 1000000000)) AS n', "SELECT length(lpad('a', 2000000000, 'a')) AS n"];

/** Executor processes of this (test = service) process. */
function executorPids(): number[] {
  const out: number[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = readFileSync(`/proc/${name}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      if (ppid === process.pid && readFileSync(`/proc/${name}/cmdline`, 'utf8').includes('executor/main')) out.push(Number(name));
    } catch {
      // gone meanwhile
    }
  }
  return out;
}

/** utime + stime of a process in clock ticks (0 when it is gone). */
function cpuTicks(pid: number): number {
  try {
    const f = readFileSync(`/proc/${pid}/stat`, 'utf8').slice(0, undefined).split(') ')[1]!.split(' ');
    return Number(f[11]) + Number(f[12]);
  } catch {
    return 0;
  }
}

interface Timed { status: number; body: any; ms: number }

async function timed(url: string, init: RequestInit = {}): Promise<Timed> {
  const t0 = performance.now();
  const res = await fetch(url, init);
  const text = await res.text();
  let body: unknown = text;
  try { body = JSON.parse(text); } catch { /* not JSON */ }
  return { status: res.status, body, ms: performance.now() - t0 };
}

for (const backend of BACKENDS) {
  describe(`isolation from hostile queries (${backend})`, () => {
    let p: TestPlatform;
    let tmp: TempDir;
    let dir: string;
    let analyst: string;

    before(async () => {
      tmp = tempDir('trace-qiso-');
      dir = join(tmp.dir, 'trades');
      await writeThreeRows(dir);
      p = await startPlatform(backend, { workers: 0, query: { userTimeoutMs: DEADLINE_MS, executorMemoryBytes: CAP } });
      assert.equal((await p.api('POST', '/v1/datasets/trades/register', { from: `${pathToFileURL(dir).href}/` })).status, 201);
      await ensureUser(p.dbs.state, p.info.org_id, 'analyst', ['member']);
      analyst = await mintDevUserToken((await loadOrCreateSecrets(p.info.home)).user_jwt_secret, 'analyst');
    });
    after(async () => {
      await p?.close();
      tmp?.cleanup();
    });

    const query = (token: string, sql: string) => timed(`${p.info.query_url}/v1/query`, {
      method: 'POST',
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
      body: JSON.stringify({ dataset: 'trades', sql }),
    });
    const auth = () => ({ authorization: `Bearer ${p.admin}` });
    const probes = () => Promise.all([
      timed(`${p.url}/healthz`),
      timed(`${p.url}/v1/datasets`, { headers: auth() }),
      timed(`${p.url}/v1/datasets/trades/register`, { method: 'POST', headers: { ...auth(), 'content-type': 'application/json' }, body: JSON.stringify({ from: `${pathToFileURL(dir).href}/` }) }),
      query(analyst, 'SELECT count(*) AS n FROM dataset'),
    ]);

    /** The bound for a probe while hostile queries run (see the file comment). */
    async function probeBound(): Promise<number> {
      let slowest = 0;
      for (let i = 0; i < 5; i++) for (const x of await probes()) slowest = Math.max(slowest, x.ms);
      return Math.max(2_000, 3 * slowest);
    }

    it('four CPU-bound queries: the rest answers within 2 s meanwhile, they stop at the deadline, all is normal after', async () => {
      const bound = await probeBound();
      const rssBefore = residentBytes(process.pid)!;
      const hostile = Array.from({ length: 4 }, () => query(p.admin, HOSTILE_CPU));
      let settled = false;
      void Promise.all(hostile).finally(() => { settled = true; });
      const seen = new Set<number>();
      const worst = [0, 0, 0, 0];
      let rounds = 0;
      while (!settled) {
        for (const pid of executorPids()) seen.add(pid);
        const r = await probes();
        r.forEach((x, i) => {
          assert.ok(x.status < 300, `probe ${i}: ${x.status} ${JSON.stringify(x.body)}`);
          worst[i] = Math.max(worst[i]!, x.ms);
        });
        assert.deepEqual(r[3]!.body.rows, [["3"]]);
        rounds++;
      }
      assert.ok(rounds >= 3, `probed ${rounds} times while the hostile queries ran`);
      for (const [i, ms] of worst.entries()) assert.ok(ms < bound, `probe ${i} took ${Math.round(ms)} ms while hostile queries ran (bound ${Math.round(bound)} ms)`);
      for (const h of await Promise.all(hostile)) {
        assert.equal(h.status, 504, JSON.stringify(h.body));
        assert.equal(h.body.code, 'QUERY_TIMEOUT');
      }
      // Nothing keeps computing: the executors that ran them are gone, and once the replacements
      // have started, the executors alive use (almost) no CPU. One still computing would use a
      // whole core in every window.
      const gone = [...seen].filter((pid) => !executorPids().includes(pid));
      assert.ok(gone.length >= 4, `${gone.length} executors killed`);
      let busy = Infinity;
      for (let w = 0; w < 15 && busy >= 0.3; w++) {
        const live = executorPids();
        const t0 = new Map(live.map((pid) => [pid, cpuTicks(pid)]));
        const w0 = performance.now();
        await new Promise((r) => setTimeout(r, 1_000));
        const seconds = (performance.now() - w0) / 1000;
        busy = [...t0].reduce((sum, [pid, ticks]) => sum + (cpuTicks(pid) - ticks), 0) / 100 / seconds;
      }
      assert.ok(busy < 0.3, `executors kept using ${busy.toFixed(2)} CPU-s per second after the deadline`);
      const after = await probes();
      for (const x of after) assert.ok(x.status < 300 && x.ms < bound, JSON.stringify(x));
      const own = await query(p.admin, 'SELECT sum(id) AS s FROM dataset');
      assert.equal(own.status, 200, JSON.stringify(own.body));
      assert.deepEqual(own.body.rows, [['6']]);
      assert.ok(residentBytes(process.pid)! - rssBefore < 200 * MIB, 'the service grew by less than 200 MiB');
    });

    it('queries that allocate past the cap fail alone; no executor and not the service grows past its bound', async () => {
      const bound = await probeBound();
      const rssBefore = residentBytes(process.pid)!;
      let peakExecutor = 0;
      let peakService = 0;
      const sample = setInterval(() => {
        for (const pid of executorPids()) peakExecutor = Math.max(peakExecutor, residentBytes(pid) ?? 0);
        peakService = Math.max(peakService, residentBytes(process.pid) ?? 0);
      }, 25);
      try {
        const results = await Promise.all([...HOSTILE_MEMORY, ...HOSTILE_MEMORY].map((sql) => query(p.admin, sql)));
        const meanwhile = await probes();
        for (const x of meanwhile) assert.ok(x.status < 300 && x.ms < bound, JSON.stringify(x));
        for (const r of results) {
          assert.ok(r.status === 422 || r.status === 504, JSON.stringify(r.body));
          assert.ok(['QUERY_RESOURCE_LIMIT', 'QUERY_TIMEOUT'].includes(r.body.code), JSON.stringify(r.body));
        }
        assert.equal(results[0]!.body.code, 'QUERY_RESOURCE_LIMIT', 'list_resize fails on the memory cap');
      } finally {
        clearInterval(sample);
      }
      // The OS limit caps the data segment; the poll kills anything else that grows past the cap.
      assert.ok(peakExecutor < CAP + 64 * MIB, `an executor reached ${Math.round(peakExecutor / MIB)} MiB`);
      assert.ok(peakService - rssBefore < 200 * MIB, `the service grew by ${Math.round((peakService - rssBefore) / MIB)} MiB`);
      const ok = await query(analyst, 'SELECT count(*) AS n FROM dataset');
      assert.equal(ok.status, 200, JSON.stringify(ok.body));
    });
  });
}
