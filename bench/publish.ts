/**
 * `npm run bench -- publish`: a job output published on task completion, on the one-process
 * platform over real Postgres. Per round: a fresh DAG (so its output has a fresh version), one
 * claimed source task, a Parquet file in the attempt's own prefix, then
 * - completion latency: `POST /v1/task/complete` with `datasets_published` (the ref is checked
 *   for Parquet and recorded in the completion's transaction);
 * - publish→queryable latency: from sending that completion until `POST /v1/query` on the
 *   published name answers with the file's rows.
 */
import { join } from 'node:path';
import { FileObjectStore } from '../src/objectstore/file.js';
import { silentLogger } from '../src/core/log.js';
import { startPlatform } from '../test/support/platform.js';
import { claimOk, deploy, post, taskCall, trigger } from '../test/support/drive.js';
import { writeParquet } from '../test/query/support.js';
import { percentile, report, round } from './util.js';

const ROUNDS = Number(process.env.TRACE_BENCH_PUBLISH_ROUNDS ?? 40);

const dag = (i: number) => `name: pb${i}
jobs:
  - name: src
    activation: source
    runtime: ecs_platform
    operator: noop
    source: { kind: manual }
    outputs: 1
publish:
  pb${i}_out:
    from: { job: src, output: 0 }
`;

export async function publishBench(): Promise<void> {
  const p = await startPlatform('postgres', { workers: 0, settings: { leaseSeconds: 60 }, log: silentLogger });
  const store = new FileObjectStore(join(p.info.home, 'objects'));
  const complete: number[] = [];
  const queryable: number[] = [];
  try {
    for (let i = 0; i < ROUNDS; i++) {
      const d = await deploy(p, dag(i));
      const out = d.datasets.find((x: { name: string | null }) => x.name === `pb${i}_out`);
      const lease = await claimOk(p, await trigger(p, `pb${i}`, 'src'));
      const dir = store.localDir(`scratch/${lease.task_id}/${lease.attempt}/out`);
      await writeParquet([{ path: join(dir, 'part-0.parquet'), select: `SELECT range AS id FROM range(1000)` }]);
      const t0 = performance.now();
      const r = await taskCall(p, 'complete', lease, {
        status: 'Completed',
        datasets_published: [{ dataset_uuid: out.dataset_uuid, dataset_version: out.dataset_version, storage_ref: { scheme: 'file', prefix: `${dir}/`, glob: '*.parquet' } }],
      });
      const t1 = performance.now();
      if (r.status !== 200) throw new Error(`completion refused: ${JSON.stringify(r.body)}`);
      for (;;) {
        const q = await post({ url: p.info.query_url }, '/v1/query', { dataset: `pb${i}_out`, sql: 'SELECT count(*) AS n FROM dataset' }, { authorization: `Bearer ${p.admin}` });
        if (q.status === 200 && q.body.rows[0][0] === '1000') break;
        if (performance.now() - t0 > 30_000) throw new Error(`pb${i}_out never became queryable: ${JSON.stringify(q.body)}`);
      }
      queryable.push(performance.now() - t0);
      complete.push(t1 - t0);
    }
  } finally {
    await p.close();
  }
  const common = { suite: 'publish', backend: 'postgres', rounds: ROUNDS };
  report({ ...common, metric: 'completion_with_publication_p50', value: round(percentile(complete, 50)), unit: 'ms' });
  report({ ...common, metric: 'completion_with_publication_p99', value: round(percentile(complete, 99)), unit: 'ms' });
  report({ ...common, metric: 'publish_to_queryable_p50', value: round(percentile(queryable, 50)), unit: 'ms' });
  report({ ...common, metric: 'publish_to_queryable_p99', value: round(percentile(queryable, 99)), unit: 'ms' });
}
