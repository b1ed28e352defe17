/**
 * Batch query results (`npm run bench -- query-results`): a query whose whole result is
 * BENCH_RESULT_ROWS rows (1M; a BIGINT, a VARCHAR and a DOUBLE each) run with `mode: "batch"`
 * over HTTP on warm executors, a data database on PGlite and a file object store:
 * - accept: `POST /v1/query` to its 202 (checks, the gate on an executor, the row);
 * - done: from the POST until the status poll says `succeeded` (the Parquet written and stored);
 * - one page of 1,000 rows at the start, middle and end of the result;
 * - the whole result exported as CSV and as Parquet.
 */
import { join } from 'node:path';
import { randomUUID } from 'node:crypto';
import { unauthorized } from '../src/core/errors.js';
import { listen } from '../src/core/http.js';
import { silentLogger } from '../src/core/log.js';
import { FileObjectStore } from '../src/objectstore/file.js';
import { buildQueryApp, executorsOf } from '../src/query/service.js';
import { encodeCursor } from '../src/query/results.js';
import { freshDataDb, tempDir, writeParquet } from '../test/query/support.js';
import { report, round, until } from './util.js';

const ROWS = Number(process.env.BENCH_RESULT_ROWS ?? 1_000_000);

export async function queryResultsBench(): Promise<void> {
  const tmp = tempDir('trace-bench-results-');
  const dir = join(tmp.dir, 'ds');
  await writeParquet([{ path: join(dir, 'part-0.parquet'), select: `SELECT range::BIGINT AS n, 'row-' || range AS label, range * 1.5 AS x FROM range(${ROWS})` }]);
  const data = await freshDataDb('pglite');
  const org = randomUUID();
  const user = randomUUID();
  const app = buildQueryApp({
    dataDb: data.db,
    logger: silentLogger,
    verifyTaskToken: () => { throw unauthorized(); },
    checkTaskLease: async () => {},
    authenticateUser: () => ({ org_id: org, user_id: user, roles: [] }),
    resolveDataset: () => ({ dataset_uuid: randomUUID(), dataset_version: null, storage_ref: { scheme: 'file', prefix: `${dir}/`, glob: '*.parquet' }, read_roles: [] }),
    results: new FileObjectStore(join(tmp.dir, 'objects')),
    config: { maxConcurrent: 2, resultSweepMs: 0 },
  });
  try {
    await executorsOf(app)!.ready();
    const base = await listen(app, '127.0.0.1', 0);
    const h = { authorization: 'Bearer bench', 'content-type': 'application/json' };
    const t0 = performance.now();
    const res = await fetch(`${base}/v1/query`, { method: 'POST', headers: h, body: JSON.stringify({ dataset: 'bench', sql: 'SELECT * FROM dataset', mode: 'batch' }) });
    const accepted = (await res.json()) as { query_id: string };
    const acceptMs = performance.now() - t0;
    let status: { status: string; bytes: number } = { status: 'queued', bytes: 0 };
    await until('the batch result', async () => {
      status = (await (await fetch(`${base}/v1/query-results/${accepted.query_id}?limit=1`, { headers: h })).json()) as typeof status;
      return status.status !== 'queued' && status.status !== 'running';
    }, 600_000);
    const doneMs = performance.now() - t0;
    if (status.status !== 'succeeded') throw new Error(`batch query ${status.status}`);
    const pages: number[] = [];
    for (const offset of [0, Math.floor(ROWS / 2), Math.max(0, ROWS - 1000)]) {
      const p0 = performance.now();
      await (await fetch(`${base}/v1/query-results/${accepted.query_id}?limit=1000${offset > 0 ? `&cursor=${encodeCursor(offset)}` : ''}`, { headers: h })).json();
      pages.push(round(performance.now() - p0, 1));
    }
    const exportMs = async (format: string) => {
      const e0 = performance.now();
      const bytes = (await (await fetch(`${base}/v1/query-results/${accepted.query_id}/export?format=${format}`, { headers: h })).arrayBuffer()).byteLength;
      return { ms: round(performance.now() - e0, 1), bytes };
    };
    const csv = await exportMs('csv');
    const parquet = await exportMs('parquet');
    report({
      bench: 'query-results', rows: ROWS, result_bytes: status.bytes, accept_ms: round(acceptMs, 1), done_ms: round(doneMs, 1),
      page_1000_rows_ms: pages, export_csv_ms: csv.ms, export_csv_bytes: csv.bytes, export_parquet_ms: parquet.ms, export_parquet_bytes: parquet.bytes,
    });
  } finally {
    await app.close();
    await data.close();
    tmp.cleanup();
  }
}
