/**
 * Query isolation figures (suite `isolation`), on real Postgres (state for users and the
 * registry, data for audit) and Parquet written here:
 * 1. the executor hop: the same small statement through an executor process (IPC there and
 *    back, the gate and sandbox in the executor) beside the same gate and sandbox in this
 *    process, alternated;
 * 2. `POST /v1/query` of a small query, p50 and p99, alone and while four hostile queries are in
 *    flight (CPU-bound for minutes; DuckDB's interrupt never reaches them) from another user,
 *    re-sent as soon as each is killed at its deadline, so the executors keep dying and being
 *    replaced throughout; and the Query Service's /healthz meanwhile.
 * Knobs: BENCH_ISOLATION_RUNS (200), BENCH_ISOLATION_DEADLINE_MS (3000).
 */
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { DuckDBInstance } from '@duckdb/node-api';
import { silentLogger } from '../src/core/log.js';
import { createCapabilityVerifier } from '../src/auth/capability.js';
import { createUserVerifier, mintDevUserToken } from '../src/auth/user.js';
import { bootstrapDeployment, ensureUser } from '../src/dispatcher/identity.js';
import { registerExternalDataset } from '../src/dispatcher/http/dataset-admin-routes.js';
import { startQueryService } from '../src/lite/query.js';
import { executorsOf } from '../src/query/service.js';
import { ExecutorPool } from '../src/query/executors.js';
import { SqlGate } from '../src/query/executor/gate.js';
import { SandboxPool } from '../src/query/executor/instances.js';
import { runQuery } from '../src/query/executor/engine.js';
import { parseStorageRef, resolveStorageFiles } from '../src/query/storage.js';
import { freshDbs } from '../test/support/db.js';
import { percentile, report, round } from './util.js';

const RUNS = Number(process.env.BENCH_ISOLATION_RUNS ?? 200);
const DEADLINE_MS = Number(process.env.BENCH_ISOLATION_DEADLINE_MS ?? 3_000);
const SECRET = 'c'.repeat(48);
const SMALL = 'SELECT count(*) AS n, max(id) AS m FROM dataset WHERE k = 7';
const HOSTILE = "SELECT levenshtein(lpad('a', 1000000, 'a'), lpad('b', 1000000, 'b')) AS d";

async function timedPost(url: string, token: string, body: unknown): Promise<{ ms: number; status: number }> {
  const t0 = performance.now();
  const res = await fetch(url, { method: 'POST', headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' }, body: JSON.stringify(body) });
  await res.arrayBuffer();
  return { ms: performance.now() - t0, status: res.status };
}

export async function isolationQueryBench(): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'trace-bench-isolation-'));
  const dbs = await freshDbs('postgres');
  try {
    const small = join(dir, 'small');
    await mkdir(small, { recursive: true });
    const inst = await DuckDBInstance.create(':memory:');
    const c = await inst.connect();
    await c.run(`COPY (SELECT range AS id, range % 100 AS k FROM range(1000)) TO '${join(small, 'part-0.parquet')}' (FORMAT parquet)`);
    c.closeSync();
    inst.closeSync();
    const files = await resolveStorageFiles(parseStorageRef({ scheme: 'file', prefix: `${small}/`, glob: '*.parquet' }));
    const common = { bench: 'isolation', backend: 'postgres' };

    // 1. The executor hop.
    {
      const gate = await SqlGate.create();
      const inProcess = new SandboxPool({});
      const pool = new ExecutorPool({ size: 1 });
      await pool.ready();
      const relations = [{ name: 'dataset', files }];
      const local = async () => {
        const t0 = performance.now();
        const r = await runQuery({ grant: { relations }, sql: await gate.check(SMALL), limit: 100, pool: inProcess });
        JSON.stringify(r);
        return performance.now() - t0;
      };
      const remote = async () => {
        const t0 = performance.now();
        await pool.execute({ caller: 'bench', sql: SMALL, relations, limit: 100, maxBytes: 1_000_000, timeoutMs: 10_000 });
        return performance.now() - t0;
      };
      try {
        for (let i = 0; i < 20; i++) { await local(); await remote(); }
        const a: number[] = [];
        const b: number[] = [];
        for (let i = 0; i < RUNS; i++) { a.push(await local()); b.push(await remote()); }
        const p = { ...common, runs: RUNS, unit: 'ms' };
        report({ ...p, system: 'in_process', metric: 'gate_and_sandbox_p50', value: round(percentile(a, 50)) });
        report({ ...p, system: 'in_process', metric: 'gate_and_sandbox_p99', value: round(percentile(a, 99)) });
        report({ ...p, system: 'executor', metric: 'gate_and_sandbox_p50', value: round(percentile(b, 50)) });
        report({ ...p, system: 'executor', metric: 'gate_and_sandbox_p99', value: round(percentile(b, 99)) });
        report({ ...p, system: 'executor', metric: 'executor_hop_p50', value: round(percentile(b, 50) - percentile(a, 50)) });
      } finally {
        await pool.close();
        inProcess.close();
        gate.close();
      }
    }

    // 2. Over HTTP, alone and beside four hostile queries.
    const { org_id } = await bootstrapDeployment(dbs.state, { adminSub: 'bench' });
    await ensureUser(dbs.state, org_id, 'hostile', ['member']);
    await registerExternalDataset(dbs.state, org_id, 'bench_small', `${pathToFileURL(small).href}/`, undefined, { roots: [dir] });
    const svc = await startQueryService({
      state: dbs.state,
      data: dbs.data,
      orgId: org_id,
      userVerifier: createUserVerifier({ mode: 'dev', secret: SECRET }),
      capabilityVerifier: createCapabilityVerifier({ hs256: { current: { kid: 'bench', secret: SECRET } } }),
      dispatcherUrl: 'http://127.0.0.1:9',
      host: '127.0.0.1',
      port: 0,
      log: silentLogger,
      config: { userTimeoutMs: DEADLINE_MS },
    });
    const pool = executorsOf(svc.app)!;
    const benchToken = await mintDevUserToken(SECRET, 'bench');
    const hostileToken = await mintDevUserToken(SECRET, 'hostile');
    const url = `${svc.url}/v1/query`;
    const smallRuns = async (): Promise<number[]> => {
      const out: number[] = [];
      for (let i = 0; i < RUNS; i++) {
        const r = await timedPost(url, benchToken, { dataset: 'bench_small', sql: SMALL });
        if (r.status !== 200) throw new Error(`small query failed: ${r.status}`);
        out.push(r.ms);
      }
      return out;
    };
    try {
      for (let i = 0; i < 20; i++) await timedPost(url, benchToken, { dataset: 'bench_small', sql: SMALL });
      const alone = await smallRuns();
      let hostile = true;
      let killed = 0;
      const attacker = async () => {
        while (hostile) {
          try {
            const r = await timedPost(url, hostileToken, { dataset: 'bench_small', sql: HOSTILE });
            if (r.status === 504) killed++;
          } catch {
            return; // the service is stopping
          }
        }
      };
      const attackers = [attacker(), attacker(), attacker(), attacker()];
      while (pool.stats().busy < 2) await new Promise((r) => setTimeout(r, 10));
      const health: number[] = [];
      let probing = true;
      const prober = (async () => {
        while (probing) {
          const t0 = performance.now();
          await (await fetch(`${svc.url}/healthz`)).arrayBuffer();
          health.push(performance.now() - t0);
          await new Promise((r) => setTimeout(r, 50));
        }
      })();
      const t0 = performance.now();
      const beside = await smallRuns();
      const seconds = (performance.now() - t0) / 1000;
      probing = false;
      await prober;
      hostile = false;
      const p = { ...common, runs: RUNS, unit: 'ms', deadline_ms: DEADLINE_MS, executors: pool.pids().length };
      report({ ...p, system: 'trace', hostile: 0, metric: 'small_query_p50', value: round(percentile(alone, 50)) });
      report({ ...p, system: 'trace', hostile: 0, metric: 'small_query_p99', value: round(percentile(alone, 99)) });
      report({ ...p, system: 'trace', hostile: 4, metric: 'small_query_p50', value: round(percentile(beside, 50)) });
      report({ ...p, system: 'trace', hostile: 4, metric: 'small_query_p99', value: round(percentile(beside, 99)) });
      report({ ...p, system: 'trace', hostile: 4, metric: 'healthz_p99', value: round(percentile(health, 99)) });
      report({ ...common, system: 'trace', hostile: 4, metric: 'hostile_killed_at_deadline', value: killed, unit: 'queries', window_s: round(seconds, 1) });
      await svc.stop();
      await Promise.allSettled(attackers);
    } finally {
      await svc.stop();
    }
  } finally {
    await dbs.close();
    await rm(dir, { recursive: true, force: true });
  }
}
