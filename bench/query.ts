/**
 * Query Service benchmark, on real Postgres (state for users and the registry, data for audit)
 * and real Parquet written here with DuckDB:
 * 1. fixed per-query overhead: `POST /v1/query` of `SELECT 1 AS x FROM dataset LIMIT 1` over
 *    HTTP (auth, registry lookup, SQL gate, file listing, sandbox attach and lockdown, audit row)
 *    beside raw DuckDB running the same query on the same file from an already-open connection;
 * 2. a full aggregation over a multi-million-row dataset of several files, through the service
 *    and raw DuckDB with the same thread count as the sandbox;
 * 3. a join of two datasets in one query (`{"datasets": {"blocks": ..., "logs": ...}}`), demo-like
 *    blocks and logs in Cryo's columns and file naming, beside raw DuckDB on the same files.
 * Targets: overhead p50 under 5 ms, aggregation and join under 1.2x raw.
 * Knobs: BENCH_QUERY_RUNS (200), BENCH_QUERY_ROWS (5M), BENCH_QUERY_FILES (8), BENCH_QUERY_AGG_RUNS
 * (9), BENCH_JOIN_BLOCKS (200k; ten logs per block), BENCH_JOIN_RUNS (9).
 */
import http from 'node:http';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { DuckDBInstance } from '@duckdb/node-api';
import { silentLogger } from '../src/core/log.js';
import { createCapabilityVerifier } from '../src/auth/capability.js';
import { createUserVerifier, mintDevUserToken } from '../src/auth/user.js';
import { bootstrapDeployment } from '../src/dispatcher/identity.js';
import { registerExternalDataset } from '../src/dispatcher/http/dataset-admin-routes.js';
import { ENGINE_LIMITS } from '../src/query/executor/engine.js';
import { parseStorageRef, resolveStorageFiles } from '../src/query/storage.js';
import { startQueryService } from '../src/lite/query.js';
import { freshDbs } from '../test/support/db.js';
import { percentile, report, round } from './util.js';

const RUNS = Number(process.env.BENCH_QUERY_RUNS ?? 200);
const ROWS = Number(process.env.BENCH_QUERY_ROWS ?? 5_000_000);
const FILES = Number(process.env.BENCH_QUERY_FILES ?? 8);
const AGG_RUNS = Number(process.env.BENCH_QUERY_AGG_RUNS ?? 9);
const SECRET = 'b'.repeat(48);
const OVERHEAD_SQL = 'SELECT 1 AS x FROM dataset LIMIT 1';
const AGG_SQL = 'SELECT k, count(*) AS n, sum(x) AS sx, avg(y) AS ay FROM dataset GROUP BY k ORDER BY k';
const JOIN_BLOCKS = Number(process.env.BENCH_JOIN_BLOCKS ?? 200_000);
const JOIN_RUNS = Number(process.env.BENCH_JOIN_RUNS ?? 9);
const BLOCKS_PER_FILE = 10_000;
/** ERC-20 Transfer. */
const TRANSFER = 'ddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef';
const JOIN_SQL = `SELECT b.timestamp // 3600 AS hour, count(*) AS transfers, count(DISTINCT l.address) AS contracts, sum(b.gas_used) AS gas
FROM logs l JOIN blocks b ON b.block_number = l.block_number
WHERE l.topic0 = unhex('${TRANSFER}')
GROUP BY 1 ORDER BY 1`;

/** Demo-like blocks and logs (Cryo's columns and `{dataset}__{start}_to_{end}.parquet` names), ten logs per block. */
async function writeChain(dir: string): Promise<{ blocks: string; logs: string }> {
  const blocks = join(dir, 'blocks');
  const logs = join(dir, 'logs');
  await mkdir(blocks, { recursive: true });
  await mkdir(logs, { recursive: true });
  const inst = await DuckDBInstance.create(':memory:');
  const c = await inst.connect();
  try {
    for (let lo = 0; lo < JOIN_BLOCKS; lo += BLOCKS_PER_FILE) {
      const hi = Math.min(JOIN_BLOCKS, lo + BLOCKS_PER_FILE);
      const range = `${String(lo).padStart(8, '0')}_to_${String(hi - 1).padStart(8, '0')}`;
      await c.run(`COPY (SELECT range::UINTEGER AS block_number, unhex(sha256(range::VARCHAR)) AS block_hash,
                          (1700000000 + range * 2)::UINTEGER AS timestamp, unhex(lpad(printf('%x', range % 50), 40, '0')) AS author,
                          (range * 7919 % 30000000)::UBIGINT AS gas_used, ''::BLOB AS extra_data,
                          (1000000000 + range % 997)::UBIGINT AS base_fee_per_gas, 1337::UBIGINT AS chain_id
                        FROM range(${lo}, ${hi}))
               TO '${join(blocks, `blocks__${range}.parquet`)}' (FORMAT parquet)`);
      await c.run(`COPY (SELECT (n // 10)::UINTEGER AS block_number, (n % 10 // 2)::UINTEGER AS transaction_index, (n % 10)::UINTEGER AS log_index,
                          unhex(sha256((n // 2)::VARCHAR)) AS transaction_hash, unhex(lpad(printf('%x', n % 200), 40, '0')) AS address,
                          CASE WHEN n % 3 = 0 THEN unhex('${TRANSFER}') ELSE unhex(sha256((n % 20)::VARCHAR)) END AS topic0,
                          unhex(lpad(printf('%x', n % 1000), 64, '0')) AS topic1, unhex(lpad(printf('%x', n % 1001), 64, '0')) AS topic2,
                          NULL::BLOB AS topic3, unhex(lpad(printf('%x', n), 64, '0')) AS data, 32::UINTEGER AS n_data_bytes, 1337::UBIGINT AS chain_id
                        FROM range(${lo * 10}, ${hi * 10}) t(n))
               TO '${join(logs, `logs__${range}.parquet`)}' (FORMAT parquet)`);
    }
  } finally {
    c.closeSync();
    inst.closeSync();
  }
  return { blocks, logs };
}

const median = (xs: number[]) => percentile(xs, 50);
const sqlList = (files: string[]) => `[${files.map((f) => `'${f.replace(/'/g, "''")}'`).join(', ')}]`;

async function writeData(dir: string): Promise<{ small: string; big: string }> {
  const small = join(dir, 'small');
  const big = join(dir, 'big');
  await mkdir(small, { recursive: true });
  await mkdir(big, { recursive: true });
  const inst = await DuckDBInstance.create(':memory:');
  const c = await inst.connect();
  try {
    await c.run(`COPY (SELECT range AS id, range % 100 AS k FROM range(1000)) TO '${join(small, 'part-0.parquet')}' (FORMAT parquet)`);
    const per = Math.ceil(ROWS / FILES);
    for (let i = 0; i < FILES; i++) {
      const lo = i * per;
      const hi = Math.min(ROWS, lo + per);
      await c.run(`COPY (SELECT range AS id, (hash(range) % 1000)::INTEGER AS k, range * 7 AS x, (range % 9973) / 7.0 AS y
                         FROM range(${lo}, ${hi})) TO '${join(big, `part-${String(i).padStart(3, '0')}.parquet`)}' (FORMAT parquet)`);
    }
  } finally {
    c.closeSync();
    inst.closeSync();
  }
  return { small, big };
}

export async function queryBench(): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'trace-bench-query-'));
  const dbs = await freshDbs('postgres');
  try {
    const { small, big } = await writeData(dir);
    const chain = await writeChain(dir);
    const { org_id } = await bootstrapDeployment(dbs.state, { adminSub: 'bench' });
    await registerExternalDataset(dbs.state, org_id, 'bench_small', `${pathToFileURL(small).href}/`, undefined, { roots: [dir] });
    await registerExternalDataset(dbs.state, org_id, 'bench_big', `${pathToFileURL(big).href}/`, undefined, { roots: [dir] });
    await registerExternalDataset(dbs.state, org_id, 'bench_blocks', `${pathToFileURL(chain.blocks).href}/`, undefined, { roots: [dir] });
    await registerExternalDataset(dbs.state, org_id, 'bench_logs', `${pathToFileURL(chain.logs).href}/`, undefined, { roots: [dir] });
    const svc = await startQueryService({
      state: dbs.state,
      data: dbs.data,
      orgId: org_id,
      userVerifier: createUserVerifier({ mode: 'dev', secret: SECRET }),
      capabilityVerifier: createCapabilityVerifier({ hs256: { current: { kid: 'bench', secret: SECRET } } }),
      // User queries only: no task lease is ever asked about.
      dispatcherUrl: 'http://127.0.0.1:9',
      ...(process.env.BENCH_QUERY_NICE !== undefined ? { config: { executorNice: Number(process.env.BENCH_QUERY_NICE) } } : {}),
      host: '127.0.0.1',
      port: 0,
      log: silentLogger,
    });
    const token = await mintDevUserToken(SECRET, 'bench');
    // A plain keep-alive HTTP/1.1 client: the figure is the service's, not the client library's.
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
    const post = (dataset: string | Record<string, string>, sql: string): Promise<number> => new Promise((resolve, reject) => {
      const body = JSON.stringify(typeof dataset === 'string' ? { dataset, sql } : { datasets: dataset, sql });
      const t0 = performance.now();
      const req = http.request(`${svc.url}/v1/query`, {
        method: 'POST',
        agent,
        headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) },
      }, (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => { text += c; });
        res.on('end', () => {
          const ms = performance.now() - t0;
          if (res.statusCode !== 200) reject(new Error(`query failed: ${res.statusCode} ${text}`));
          else resolve(ms);
        });
      });
      req.on('error', reject);
      req.end(body);
    });

    const smallFiles = await resolveStorageFiles(parseStorageRef({ scheme: 'file', prefix: `${small}/`, glob: '*.parquet' }));
    const bigFiles = await resolveStorageFiles(parseStorageRef({ scheme: 'file', prefix: `${big}/`, glob: '*.parquet' }));
    const raw = await DuckDBInstance.create(':memory:', { threads: String(ENGINE_LIMITS.threads), memory_limit: ENGINE_LIMITS.memoryLimit });
    const rc = await raw.connect();
    const rawRun = async (sql: string): Promise<number> => {
      const t0 = performance.now();
      const r = await rc.runAndReadAll(sql);
      r.getRows();
      return performance.now() - t0;
    };

    try {
      // 1. Fixed overhead. Service and raw runs alternate, so load on a shared machine hits both.
      const rawSmall = `SELECT 1 AS x FROM read_parquet(${sqlList(smallFiles)}) LIMIT 1`;
      for (let i = 0; i < 20; i++) {
        await post('bench_small', OVERHEAD_SQL);
        await rawRun(rawSmall);
      }
      const svcLat: number[] = [];
      const rawLat: number[] = [];
      for (let i = 0; i < RUNS; i++) {
        svcLat.push(await post('bench_small', OVERHEAD_SQL));
        rawLat.push(await rawRun(rawSmall));
      }
      const common = { bench: 'query', runs: RUNS, backend: 'postgres' };
      report({ ...common, system: 'trace', metric: 'overhead_query_p50', value: round(percentile(svcLat, 50)), unit: 'ms', target: '< 5' });
      report({ ...common, system: 'trace', metric: 'overhead_query_p99', value: round(percentile(svcLat, 99)), unit: 'ms' });
      report({ ...common, system: 'duckdb', metric: 'overhead_query_p50', value: round(percentile(rawLat, 50)), unit: 'ms' });
      report({ ...common, system: 'duckdb', metric: 'overhead_query_p99', value: round(percentile(rawLat, 99)), unit: 'ms' });
      report({ ...common, system: 'trace', metric: 'overhead_added_p50', value: round(percentile(svcLat, 50) - percentile(rawLat, 50)), unit: 'ms' });
      // The same with a different SQL text each time: no gate verdict is reused.
      const distinct: number[] = [];
      for (let i = 0; i < RUNS; i++) distinct.push(await post('bench_small', `SELECT ${i + 2} AS x FROM dataset LIMIT 1`));
      report({ ...common, system: 'trace', metric: 'overhead_distinct_sql_p50', value: round(percentile(distinct, 50)), unit: 'ms' });
      report({ ...common, system: 'trace', metric: 'overhead_distinct_sql_p99', value: round(percentile(distinct, 99)), unit: 'ms' });

      // 2. Full aggregation.
      const aggCommon = { bench: 'query', rows: ROWS, files: FILES, runs: AGG_RUNS, threads: ENGINE_LIMITS.threads, backend: 'postgres' };
      const rawAggSql = AGG_SQL.replace('FROM dataset', `FROM read_parquet(${sqlList(bigFiles)})`);
      await post('bench_big', AGG_SQL);
      await rawRun(rawAggSql);
      const svcAgg: number[] = [];
      const rawAgg: number[] = [];
      for (let i = 0; i < AGG_RUNS; i++) {
        svcAgg.push(await post('bench_big', AGG_SQL));
        rawAgg.push(await rawRun(rawAggSql));
      }
      report({ ...aggCommon, system: 'trace', metric: 'aggregation_median', value: round(median(svcAgg)), unit: 'ms' });
      report({ ...aggCommon, system: 'duckdb', metric: 'aggregation_median', value: round(median(rawAgg)), unit: 'ms' });
      report({ ...aggCommon, system: 'trace', metric: 'aggregation_vs_raw', value: round(median(svcAgg) / median(rawAgg), 3), unit: 'ratio', target: '< 1.2' });

      // 3. A join of two datasets.
      const blockFiles = await resolveStorageFiles(parseStorageRef({ scheme: 'file', prefix: `${chain.blocks}/`, glob: '*.parquet' }));
      const logFiles = await resolveStorageFiles(parseStorageRef({ scheme: 'file', prefix: `${chain.logs}/`, glob: '*.parquet' }));
      const rawJoinSql = JOIN_SQL.replace('FROM logs l', `FROM read_parquet(${sqlList(logFiles)}) l`).replace('JOIN blocks b', `JOIN read_parquet(${sqlList(blockFiles)}) b`);
      const both = { blocks: 'bench_blocks', logs: 'bench_logs' };
      await post(both, JOIN_SQL);
      await rawRun(rawJoinSql);
      const svcJoin: number[] = [];
      const rawJoin: number[] = [];
      for (let i = 0; i < JOIN_RUNS; i++) {
        svcJoin.push(await post(both, JOIN_SQL));
        rawJoin.push(await rawRun(rawJoinSql));
      }
      const joinCommon = { bench: 'query', blocks: JOIN_BLOCKS, logs: JOIN_BLOCKS * 10, files: blockFiles.length + logFiles.length, runs: JOIN_RUNS, threads: ENGINE_LIMITS.threads, backend: 'postgres' };
      report({ ...joinCommon, system: 'trace', metric: 'join_median', value: round(median(svcJoin)), unit: 'ms' });
      report({ ...joinCommon, system: 'duckdb', metric: 'join_median', value: round(median(rawJoin)), unit: 'ms' });
      report({ ...joinCommon, system: 'trace', metric: 'join_vs_raw', value: round(median(svcJoin) / median(rawJoin), 3), unit: 'ratio', target: '< 1.2' });
    } finally {
      rc.closeSync();
      raw.closeSync();
      agent.destroy();
      await svc.stop();
    }
  } finally {
    await dbs.close();
    await rm(dir, { recursive: true, force: true });
  }
}
