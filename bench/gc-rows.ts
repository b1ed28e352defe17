/**
 * gc of superseded dataset versions at scale: V versions (one partition row each) over 10
 * datasets and T tasks with inputs, on real Postgres; times one dry run and one pass that
 * removes all but the kept versions.
 *
 *   node --import tsx bench/gc-rows.ts [V=20000] [T=50000]
 */
import { freshDbs } from '../test/support/db.js';
import { defaultSettings } from '../src/dispatcher/settings.js';
import { runGc } from '../src/dispatcher/gc.js';
import { silentLogger } from '../src/core/log.js';
import { bootstrapDeployment } from '../src/dispatcher/identity.js';
import { newId } from '../src/core/ids.js';

const V = Number(process.argv[2] ?? 20000);
const T = Number(process.argv[3] ?? 50000);
const dbs = await freshDbs('postgres');
const db = dbs.state;
const { org_id } = await bootstrapDeployment(db);
const dag = newId(); const job = newId();
await db.query(`INSERT INTO dag_versions (id, org_id, dag_name, yaml_hash, yaml, spec) VALUES ($1, $2, 'd', 'h', 'x', '{}')`, [dag, org_id]);
await db.query(`INSERT INTO jobs (id, org_id, name, dag_name, dag_version_id, activation, runtime, operator, config_hash, lineage_hash, timeout_seconds, heartbeat_timeout_seconds, max_attempts)
  VALUES ($1, $2, 'j', 'd', $3, 'source', 'ecs_platform', 'noop', 'c', 'l', 60, 60, 3)`, [job, org_id, dag]);
for (let d = 0; d < 10; d++) {
  const ds = newId();
  await db.query(`INSERT INTO datasets (id, org_id, name, kind) VALUES ($1, $2, $3, 'job_output')`, [ds, org_id, `ds${d}`]);
  await db.query(`INSERT INTO dataset_versions (id, dataset_uuid, config_hash, created_at)
    SELECT gen_random_uuid(), $1, 'h' || i, now() - make_interval(mins => i) FROM generate_series(1, $2) i`, [ds, V / 10]);
  await db.query(`INSERT INTO partition_versions (dataset_uuid, dataset_version, partition_key) SELECT dataset_uuid, id, 'p' FROM dataset_versions WHERE dataset_uuid = $1`, [ds]);
}
await db.query(`INSERT INTO tasks (id, org_id, job_id, status, max_attempts, timeout_seconds, inputs)
  SELECT gen_random_uuid(), $1, $2, 'Completed', 3, 60, jsonb_build_array(jsonb_build_object('dataset_uuid', gen_random_uuid(), 'dataset_version', gen_random_uuid()))
  FROM generate_series(1, $3)`, [org_id, job, T]);
const s = { ...defaultSettings(), gcSupersededRetentionSeconds: 0, gcBatch: 1_000_000 };
let t = Date.now();
const dry = await runGc(db, s, [], { dryRun: true, log: silentLogger });
console.log(`dry run: ${Date.now() - t} ms`, dry.rows);
t = Date.now();
const real = await runGc(db, s, [], { dryRun: false, log: silentLogger });
console.log(`pass: ${Date.now() - t} ms`, real.rows);
await dbs.close();
