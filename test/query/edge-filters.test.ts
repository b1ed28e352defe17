/**
 * Input edge filters (ADR 0007) on the whole one-process platform (real Dispatcher, Query
 * Service, object store folder; real Postgres and PGlite), tasks claimed by hand as a worker
 * would:
 *
 * - deploy refuses a `where` naming a column the upstream does not have, a value its column's
 *   type cannot hold, and anything but a map of column: value(s), each with the YAML path and
 *   line of the field, and records nothing;
 * - the filter travels in the task payload and in the attempt's capability grant, and the
 *   task-scoped query shows the consumer exactly the matching rows, beside an unfiltered sibling
 *   that sees them all (a job output upstream, and a registered dataset with a BLOB column);
 * - a filter the files cannot satisfy fails the read (422), never shows unfiltered rows;
 * - a changed filter is a new DAG version and a new version of the consumer's output only.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { decodeJwt } from 'jose';
import { BACKENDS } from '../support/db.js';
import { startPlatform, waitFor, type TestPlatform } from '../support/platform.js';
import { claimOk, deploy, post, taskCall, trigger, type Lease } from '../support/drive.js';
import { FileObjectStore } from '../../src/objectstore/file.js';
import { tempDir, writeParquet, type TempDir } from './support.js';

const ROWS = `SELECT * FROM (VALUES
  (1::BIGINT, 'eth', true, 10.5::DOUBLE),
  (2::BIGINT, 'btc', true, 20.0::DOUBLE),
  (3::BIGINT, 'sol', false, 30.0::DOUBLE),
  (4::BIGINT, 'eth', false, 40.0::DOUBLE),
  (5::BIGINT, 'sol', true, 50.0::DOUBLE)) t(id, sym, live, px)`;

const LOGS = `SELECT * FROM (VALUES
  (1::UINTEGER, from_hex('aa01'), 1::UBIGINT),
  (2::UINTEGER, from_hex('bb02'), 1::UBIGINT),
  (3::UINTEGER, from_hex('aa01'), 10143::UBIGINT)) t(block_number, address, chain_id)`;

/** A producer publishing its output, and consumers reading it through the task-scoped query. */
const dag = (hotWhere: string, extra = '') => `name: edgef
jobs:
  - name: src
    activation: source
    runtime: ecs_platform
    operator: noop
    source: { kind: manual }
    outputs: 1
  - name: all
    activation: reactive
    runtime: ecs_platform
    operator: test_read
    execution_strategy: PerUpdate
    inputs:
      - from: { job: src, output: 0 }
    outputs: 1
    update_strategy: replace
  - name: hot
    activation: reactive
    runtime: ecs_platform
    operator: test_read
    execution_strategy: PerUpdate
    inputs:
      - from: { job: src, output: 0 }
        where: ${hotWhere}
    outputs: 1
    update_strategy: replace
${extra}publish:
  edgef_src:
    from: { job: src, output: 0 }
`;

const HOT = '{ sym: [eth, sol], live: true }';

/** One reactive job reading the registered `logs_x` dataset. */
const logsDag = (name: string, input: string, operator = 'test_read') => `name: ${name}
jobs:
  - name: reader
    activation: reactive
    runtime: ecs_platform
    operator: ${operator}
    execution_strategy: PerUpdate
    inputs:
${input}
    outputs: 1
    update_strategy: replace
`;

for (const backend of BACKENDS) {
  describe(`input edge filters (${backend})`, () => {
    let p: TestPlatform;
    let store: FileObjectStore;
    let tmp: TempDir;
    let out: { dataset_uuid: string; dataset_version: string };

    const taskQuery = (lease: Lease, sql: string) => post({ url: p.info.query_url }, '/v1/task/query',
      { task_id: lease.task_id, attempt: lease.attempt, lease_token: lease.lease_token, sql },
      { 'x-trace-task-capability': lease.capability_token });
    const queuedTaskOf = (job: string, dagName = 'edgef') => waitFor(`a queued task of ${job}`, async () => (await p.dbs.state.query<{ id: string }>(
      `SELECT t.id FROM tasks t JOIN jobs j ON j.id = t.job_id WHERE j.dag_name = $1 AND j.name = $2 AND t.status = 'Queued' ORDER BY t.created_at LIMIT 1`, [dagName, job])).rows[0]?.id, 90_000, 100);
    const versions = async (name: string) => (await p.dbs.state.query<{ n: number }>(`SELECT count(*)::int AS n FROM dag_versions WHERE dag_name = $1`, [name])).rows[0]!.n;
    const jobsOf = async (name: string) => (await p.dbs.state.query<{ n: number }>(`SELECT count(*)::int AS n FROM jobs WHERE dag_name = $1`, [name])).rows[0]!.n;
    const refusedDeploy = async (yaml: string, path: string, message: RegExp) => {
      const name = /^name:\s*(\S+)/m.exec(yaml)![1]!;
      const [v0, j0] = [await versions(name), await jobsOf(name)];
      const r = await p.api('POST', `/v1/dags/${name}/versions?activate=true`, yaml);
      assert.equal(r.status, 422, JSON.stringify(r.body));
      assert.equal(r.body.code, 'DAG_INVALID', JSON.stringify(r.body));
      const problem = (r.body.problems as Array<{ path: string; message: string; line?: number }>).find((x) => x.path === path);
      assert.ok(problem, `no problem at ${path}: ${JSON.stringify(r.body.problems)}`);
      assert.match(problem.message, message);
      assert.equal(typeof problem.line, 'number', `the problem names its line: ${JSON.stringify(problem)}`);
      assert.equal(yaml.split('\n')[problem.line! - 1]!.includes(path.split('.').at(-1)!.replace(/\[\d+\]$/, '')), true, `line ${problem.line} is the field's`);
      assert.deepEqual([await versions(name), await jobsOf(name)], [v0, j0], 'a refused deploy records nothing');
    };

    before(async () => {
      p = await startPlatform(backend, { workers: 0, settings: { leaseSeconds: 60 } });
      store = new FileObjectStore(join(p.info.home, 'objects'));
      tmp = tempDir('trace-edgef-');
      const d = await deploy(p, dag(HOT));
      const o = d.datasets.find((x: { name: string | null }) => x.name === 'edgef_src');
      out = { dataset_uuid: o.dataset_uuid, dataset_version: o.dataset_version };
      await writeParquet([{ path: join(tmp.dir, 'logs', 'part-0.parquet'), select: LOGS }]);
      const reg = await p.api('POST', '/v1/datasets/logs_x/register', { from: `${pathToFileURL(join(tmp.dir, 'logs')).href}/` });
      assert.equal(reg.status, 201, JSON.stringify(reg.body));
    });
    after(async () => {
      await p?.close();
      tmp?.cleanup();
    });

    it('the consumer with a where sees exactly the matching rows; its unfiltered sibling sees all', async () => {
      const producer = await claimOk(p, await trigger(p, 'edgef', 'src'));
      const dir = store.localDir(`scratch/${producer.task_id}/${producer.attempt}/out`);
      await writeParquet([{ path: join(dir, 'part-0.parquet'), select: ROWS }]);
      const ref = { scheme: 'file', prefix: `${dir}/`, glob: '*.parquet' };
      const done = await taskCall(p, 'complete', producer, {
        status: 'Completed',
        events: [{ dataset_uuid: out.dataset_uuid, dataset_version: out.dataset_version, cursor: 1 }],
        datasets_published: [{ ...out, storage_ref: ref }],
      });
      assert.equal(done.status, 200, JSON.stringify(done.body));

      const all = await claimOk(p, await queuedTaskOf('all'));
      const hot = await claimOk(p, await queuedTaskOf('hot'));
      // The filter is in the payload (for operators) and in the signed grant (for the Query Service).
      assert.deepEqual(hot.task.inputs[0].where, { sym: ['eth', 'sol'], live: true });
      assert.equal(all.task.inputs[0].where, undefined);
      const grants = (decodeJwt(hot.capability_token) as { datasets: Array<{ dataset_uuid: string; where?: unknown }> }).datasets;
      assert.deepEqual(grants.map((g) => [g.dataset_uuid, g.where]), [[out.dataset_uuid, { sym: ['eth', 'sol'], live: true }]]);

      const sql = 'SELECT id, sym FROM dataset ORDER BY id';
      const everything = await taskQuery(all, sql);
      assert.equal(everything.status, 200, JSON.stringify(everything.body));
      assert.deepEqual(everything.body.rows, [['1', 'eth'], ['2', 'btc'], ['3', 'sol'], ['4', 'eth'], ['5', 'sol']]);
      const filtered = await taskQuery(hot, sql);
      assert.equal(filtered.status, 200, JSON.stringify(filtered.body));
      assert.deepEqual(filtered.body.rows, [['1', 'eth'], ['5', 'sol']], 'only rows with sym in (eth, sol) and live');
      // However the SQL is written, the relation holds only those rows.
      assert.deepEqual((await taskQuery(hot, 'SELECT count(*) AS n FROM dataset WHERE sym = \'btc\' OR NOT live')).body.rows, [['0']]);
      assert.deepEqual((await taskQuery(hot, 'SELECT count(*) AS n, sum(px) AS s FROM dataset')).body.rows, [['2', 60.5]]);
      for (const l of [all, hot]) assert.equal((await taskCall(p, 'complete', l, { status: 'Completed' })).status, 200);
    });

    it('a changed filter is a new version: the filtered consumer\'s output gets a new version, its sibling\'s does not', async () => {
      const outputs = async (versionId: string) => new Map((await p.dbs.state.query<{ job: string; dataset_version: string }>(
        `SELECT d.producer_job_name AS job, v.dataset_version FROM dag_version_datasets v JOIN datasets d ON d.id = v.dataset_uuid WHERE v.dag_version_id = $1`, [versionId])).rows.map((r) => [r.job, r.dataset_version]));
      const before1 = await deploy(p, dag(HOT));
      assert.equal(before1.created, false, 'the same YAML is the same version');
      const changed = await deploy(p, dag('{ sym: eth }'));
      assert.equal(changed.created, true);
      assert.notEqual(changed.dag_version_id, before1.dag_version_id);
      const [a, b] = [await outputs(before1.dag_version_id), await outputs(changed.dag_version_id)];
      assert.notEqual(b.get('hot'), a.get('hot'));
      assert.equal(b.get('all'), a.get('all'));
      assert.equal(b.get('src'), a.get('src'));
      const hotLineage = async (versionId: string) => (await p.dbs.state.query<{ lineage_hash: string }>(
        `SELECT lineage_hash FROM jobs WHERE dag_version_id = $1 AND name = 'hot'`, [versionId])).rows[0]!.lineage_hash;
      assert.notEqual(await hotLineage(changed.dag_version_id), await hotLineage(before1.dag_version_id));
      await deploy(p, dag(HOT));
    });

    it('a filter on a column the files do not have fails the read (422) instead of showing every row', async () => {
      // A job output declares no schema: deploy accepts the column, the read checks it.
      await deploy(p, dag(HOT, `  - name: odd
    activation: reactive
    runtime: ecs_platform
    operator: test_read
    execution_strategy: PerUpdate
    inputs:
      - from: { job: src, output: 0 }
        where: { colour: red }
    outputs: 1
    update_strategy: replace
  - name: typo
    activation: reactive
    runtime: ecs_platform
    operator: test_read
    execution_strategy: PerUpdate
    inputs:
      - from: { job: src, output: 0 }
        where: { live: 1 }
    outputs: 1
    update_strategy: replace
`));
      const producer = await claimOk(p, await trigger(p, 'edgef', 'src'));
      const cur = (await p.dbs.state.query<{ current_version: string }>(`SELECT current_version FROM datasets WHERE id = $1`, [out.dataset_uuid])).rows[0]!.current_version;
      assert.equal((await taskCall(p, 'complete', producer, { status: 'Completed', events: [{ dataset_uuid: out.dataset_uuid, dataset_version: cur, cursor: 2 }] })).status, 200);
      for (const [job, re] of [['odd', /column colour/], ['typo', /column live.*true or false/]] as const) {
        const lease = await claimOk(p, await queuedTaskOf(job));
        const r = await taskQuery(lease, 'SELECT count(*) AS n FROM dataset');
        assert.equal(r.status, 422, JSON.stringify(r.body));
        assert.equal(r.body.code, 'INPUT_FILTER_INVALID', JSON.stringify(r.body));
        assert.match(r.body.error, re);
        assert.equal((await taskCall(p, 'complete', lease, { status: 'Completed' })).status, 200);
      }
      for (const job of ['all', 'hot']) {
        const l = await claimOk(p, await queuedTaskOf(job));
        assert.equal((await taskCall(p, 'complete', l, { status: 'Completed' })).status, 200);
      }
    });

    it('a registered dataset: deploy checks the filter against its columns and types, and the read applies it (BLOB as 0x hex)', async () => {
      const input = (where: string) => `      - from: { dataset: logs_x }\n        where: ${where}`;
      await refusedDeploy(logsDag('lx1', input('{ colour: red }')), 'jobs[0].inputs[0].where.colour', /dataset "logs_x" has no column 'colour'/);
      await refusedDeploy(logsDag('lx2', input('{ adress: "0xaa01" }')), 'jobs[0].inputs[0].where.adress', /did you mean 'address'/);
      await refusedDeploy(logsDag('lx3', input('{ chain_id: "one" }')), 'jobs[0].inputs[0].where.chain_id', /non-negative integer.*UBIGINT/);
      await refusedDeploy(logsDag('lx4', input('{ chain_id: [1, -2] }')), 'jobs[0].inputs[0].where.chain_id[1]', /non-negative integer/);
      await refusedDeploy(logsDag('lx5', input('{ address: "aa01" }')), 'jobs[0].inputs[0].where.address', /0x-prefixed hex/);
      await refusedDeploy(logsDag('lx6', input('{ block_number: true }')), 'jobs[0].inputs[0].where.block_number', /non-negative integer/);
      // Disallowed syntax: SQL text, operators as maps, functions or subqueries as keys.
      await refusedDeploy(logsDag('lx7', input('"chain_id = 1 OR 1=1"')), 'jobs[0].inputs[0].where', /SQL predicates are not supported/);
      await refusedDeploy(logsDag('lx8', input('{ chain_id: { gt: 1 } }')), 'jobs[0].inputs[0].where.chain_id', /nested maps/);
      await refusedDeploy(logsDag('lx9', input('{ "lower(address)": x }')), 'jobs[0].inputs[0].where.lower(address)', /not a column name/);
      // An operator that reads no rows through the task-scoped query cannot take a filter.
      await refusedDeploy(logsDag('lx10', input('{ chain_id: 1 }'), 'noop'), 'jobs[0].inputs[0].where', /does not apply input filters/);

      await deploy(p, logsDag('lxok', input('{ address: "0xAA01", chain_id: 1 }')));
      await deploy(p, logsDag('lxall', '      - from: { dataset: logs_x }'));
      const read = async (name: string) => {
        const lease = await claimOk(p, await trigger(p, name, 'reader', { cursor: 1 }));
        const r = await taskQuery(lease, 'SELECT block_number FROM dataset ORDER BY block_number');
        assert.equal(r.status, 200, JSON.stringify(r.body));
        assert.equal((await taskCall(p, 'complete', lease, { status: 'Completed' })).status, 200);
        return r.body.rows;
      };
      assert.deepEqual(await read('lxall'), [[1], [2], [3]]);
      assert.deepEqual(await read('lxok'), [[1]], 'address 0xaa01 on chain 1 only');
    });
  });
}
