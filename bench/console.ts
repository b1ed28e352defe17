/**
 * `npm run bench -- console`: web console page loads through the Gateway on the one-process
 * platform over real Postgres, with 10,000 tasks (each with an attempt) and a dataset of 1,000
 * versions, each with a partition produced by one of those tasks (lineage to the task and its
 * input). Per page: the time from sending the request (with a session cookie) to the last byte
 * of the HTML, sequentially, p50 and p95. Each page load includes the user API calls it makes.
 */
import { silentLogger } from '../src/core/log.js';
import { startPlatform } from '../test/support/platform.js';
import { deploy, twoJobDag } from '../test/support/drive.js';
import { percentile, report, round } from './util.js';

const TASKS = Number(process.env.TRACE_BENCH_CONSOLE_TASKS ?? 10_000);
const VERSIONS = Number(process.env.TRACE_BENCH_CONSOLE_VERSIONS ?? 1_000);
const LOADS = Number(process.env.TRACE_BENCH_CONSOLE_LOADS ?? 30);

const DAG = twoJobDag({ name: 'cb', srcOp: 'noop', publish: true });

const SEED_TASKS = `
WITH t AS (
  INSERT INTO tasks (id, org_id, job_id, dedupe_key, status, attempt, max_attempts, timeout_seconds, error_message, created_at, started_at, completed_at)
  SELECT gen_random_uuid(), $1, $2, 'bench:' || g, (ARRAY['Completed','Completed','Completed','Failed','Queued','Running','Canceled'])[1 + g % 7], 1, 3, 60,
         CASE WHEN g % 7 = 3 THEN 'operator failed: bench error ' || g END, now() - make_interval(secs => g), now() - make_interval(secs => g), now()
  FROM generate_series(1, $3::int) g
  RETURNING id, status, error_message
)
INSERT INTO task_attempts (task_id, attempt, worker_id, status, error_message, finished_at)
SELECT id, 1, 'bench-worker', status, error_message, now() FROM t`;

const SEED_VERSIONS = `
WITH producers AS (
  SELECT id, row_number() OVER (ORDER BY id) AS n FROM tasks WHERE job_id = $5 LIMIT $3
), v AS (
  INSERT INTO dataset_versions (id, dataset_uuid, config_hash, range_start, range_end, created_at)
  SELECT gen_random_uuid(), $1, 'bench', g * 100, (g + 1) * 100, now() - make_interval(secs => g) FROM generate_series(1, $3::int) g
  RETURNING id, range_start
), p AS (
  INSERT INTO partition_versions (dataset_uuid, dataset_version, partition_key, location, row_count, bytes)
  SELECT $1, v.id, v.range_start || '-' || (v.range_start + 100), 'file:///bench/objects/scratch/' || pr.id || '/1/', 100, 4096
  FROM v JOIN producers pr ON pr.n = v.range_start / 100
  RETURNING 1
)
INSERT INTO task_inputs (task_id, input_dataset_uuid, input_partition_key, input_dataset_version)
SELECT id, $2, '', $4 FROM producers`;

export async function consoleBench(): Promise<void> {
  // The Gateway's per-user rate limit (100/min by default) would otherwise cap the loop.
  const p = await startPlatform('postgres', {
    workers: 0, log: silentLogger, env: { TRACE_GATEWAY_RATE_USER_PER_MINUTE: '1000000', TRACE_GATEWAY_RATE_ORG_PER_MINUTE: '1000000' },
  });
  const pages: Array<[string, string]> = [
    ['overview', '/console'],
    ['dags', '/console/dags'],
    ['tasks', '/console/tasks'],
    ['tasks_failed', '/console/tasks?status=Failed'],
    ['datasets', '/console/datasets'],
    ['dataset_lineage', '/console/datasets/cb_down'],
  ];
  const times = new Map<string, number[]>();
  try {
    const d = await deploy(p, DAG);
    const src = d.datasets.find((x: { name: string | null }) => x.name === 'cb_src');
    const down = d.datasets.find((x: { name: string | null }) => x.name === 'cb_down');
    const jobs = (await p.dbs.state.query<{ id: string; name: string }>(`SELECT id, name FROM jobs WHERE dag_version_id = $1`, [d.dag_version_id])).rows;
    const downJob = jobs.find((j) => j.name === 'down')!.id;
    await p.dbs.state.query(SEED_TASKS, [p.info.org_id, downJob, TASKS]);
    await p.dbs.state.query(SEED_VERSIONS, [down.dataset_uuid, src.dataset_uuid, VERSIONS, src.dataset_version, downJob]);
    await p.dbs.state.query('ANALYZE');

    const login = await fetch(`${p.info.gateway_url}/console/login`, { method: 'POST', redirect: 'manual', body: new URLSearchParams({ token: p.admin }) });
    const cookie = (login.headers.get('set-cookie') ?? '').split(';')[0]!;
    if (login.status !== 303 || !cookie) throw new Error(`console sign-in failed: ${login.status}`);
    for (const [name, path] of pages) {
      const list: number[] = [];
      for (let i = 0; i < LOADS + 2; i++) {
        const t0 = performance.now();
        const r = await fetch(`${p.info.gateway_url}${path}`, { headers: { cookie } });
        const body = await r.text();
        const ms = performance.now() - t0;
        if (r.status !== 200) throw new Error(`${path} answered ${r.status}: ${body.slice(0, 300)}`);
        if (i >= 2) list.push(ms); // the first two loads warm caches and connections
      }
      times.set(name, list);
    }
  } finally {
    await p.close();
  }
  const common = { suite: 'console', backend: 'postgres', tasks: TASKS, dataset_versions: VERSIONS, loads: LOADS };
  for (const [name] of pages) {
    const list = times.get(name)!;
    report({ ...common, metric: `page_load_${name}_p50`, value: round(percentile(list, 50)), unit: 'ms' });
    report({ ...common, metric: `page_load_${name}_p95`, value: round(percentile(list, 95)), unit: 'ms' });
  }
}
