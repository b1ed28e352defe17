/**
 * The user routes the console reads, on the one-process platform (real Dispatcher, Gateway,
 * Postgres): `GET /v1/dags` (every DAG with its versions and the active one) and
 * `GET /v1/datasets/{name}/versions` (versions, partitions, and per partition the task that
 * produced it and that task's inputs), both through the Gateway. Org scoping, read roles and the
 * stable error shape are checked too.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { startPlatform, waitFor, type TestPlatform } from '../support/platform.js';
import { claimOk, deploy, taskCall, trigger, twoJobDag } from '../support/drive.js';
import { FileObjectStore } from '../../src/objectstore/file.js';
import { writeParquet } from '../query/support.js';
import { mintDevUserToken } from '../../src/auth/user.js';
import { ensureUser } from '../../src/dispatcher/identity.js';
import { TEST_USER_SECRET, addOtherOrg } from './support.js';

const DAG = (downExtra = '') => twoJobDag({ name: 'lineage', srcOp: 'noop', downExtra, publish: true });

describe('user routes for DAG versions and dataset lineage', () => {
  let p: TestPlatform;
  let member: string;
  let v1: string;
  let v2: string;
  let downTask: string;
  let srcOut: { dataset_uuid: string; dataset_version: string };

  const gw = async (path: string, token: string) => {
    const r = await fetch(`${p.info.gateway_url}${path}`, { headers: { authorization: `Bearer ${token}` } });
    return { status: r.status, body: await r.json() as any };
  };

  before(async () => {
    p = await startPlatform('postgres', { workers: 0, settings: { leaseSeconds: 60 }, env: { TRACE_USER_JWT_SECRET: TEST_USER_SECRET } });
    await ensureUser(p.dbs.state, p.info.org_id, 'member1', ['member']);
    member = await mintDevUserToken(TEST_USER_SECRET, 'member1');
    v1 = (await deploy(p, DAG())).dag_version_id;
    const d2 = await deploy(p, DAG('\n    timeout_seconds: 120'));
    v2 = d2.dag_version_id;
    const activate = await p.api('PUT', '/v1/dags/lineage/active', { dag_version_id: v2 });
    assert.equal(activate.status, 200, JSON.stringify(activate.body));
    const src = d2.datasets.find((x: { name: string | null }) => x.name === 'lineage_src');
    const down = d2.datasets.find((x: { name: string | null }) => x.name === 'lineage_down');
    srcOut = { dataset_uuid: src.dataset_uuid, dataset_version: src.dataset_version };

    // src completes with an event; routing creates the down task, which publishes a partition.
    const lease = await claimOk(p, await trigger(p, 'lineage', 'src'));
    const done = await taskCall(p, 'complete', lease, { status: 'Completed', events: [{ ...srcOut, cursor: 7 }] });
    assert.equal(done.status, 200, JSON.stringify(done.body));
    downTask = await waitFor('the down task', async () => (await p.dbs.state.query<{ id: string }>(
      `SELECT t.id FROM tasks t JOIN jobs j ON j.id = t.job_id WHERE j.name = 'down' AND j.dag_version_id = $1`, [v2])).rows[0]?.id);
    const dl = await claimOk(p, downTask);
    const store = new FileObjectStore(join(p.info.home, 'objects'));
    const dir = store.localDir(`scratch/${dl.task_id}/${dl.attempt}/out`);
    await writeParquet([{ path: join(dir, 'part-0.parquet'), select: `SELECT * FROM range(5) t(block_number)` }]);
    const pub = await taskCall(p, 'complete', dl, {
      status: 'Completed',
      datasets_published: [{ dataset_uuid: down.dataset_uuid, dataset_version: down.dataset_version, storage_ref: { scheme: 'file', prefix: `${dir}/`, glob: '*.parquet' }, range_start: 0, range_end: 100, row_count: 5 }],
    });
    assert.equal(pub.status, 200, JSON.stringify(pub.body));
    await addOtherOrg(p.dbs.state);
  });
  after(async () => {
    await p?.close();
  });

  it('GET /v1/dags lists each DAG with its versions and marks the active one', async () => {
    const r = await gw('/v1/dags', member);
    assert.equal(r.status, 200, JSON.stringify(r.body));
    const names = r.body.dags.map((d: { dag_name: string }) => d.dag_name);
    assert.deepEqual(names, ['lineage'], 'only this org\'s DAGs; hidden and foreign DAGs are not listed');
    const dag = r.body.dags[0];
    assert.equal(dag.active_version, v2);
    assert.deepEqual(dag.versions.map((v: { dag_version_id: string; active: boolean }) => [v.dag_version_id, v.active]), [[v1, false], [v2, true]]);
    assert.equal(dag.versions[0].jobs, 2);
  });

  it('GET /v1/datasets/{name}/versions gives partitions with the producing task and its inputs', async () => {
    const r = await gw('/v1/datasets/lineage_down/versions', member);
    assert.equal(r.status, 200, JSON.stringify(r.body));
    const withParts = r.body.versions.filter((v: { partitions: unknown[] }) => v.partitions.length > 0);
    assert.equal(withParts.length, 1, JSON.stringify(r.body));
    const part = withParts[0].partitions[0];
    assert.equal(part.partition_key, '0-100');
    assert.equal(part.row_count, 5);
    assert.equal(part.producer.task_id, downTask);
    assert.equal(part.producer.attempt, 1);
    assert.equal(`${part.producer.dag_name}.${part.producer.job_name}`, 'lineage.down');
    assert.equal(part.producer.status, 'Completed');
    assert.ok(part.producer.inputs.some((i: { dataset_name: string; dataset_version: string }) => i.dataset_name === 'lineage_src' && i.dataset_version === srcOut.dataset_version),
      JSON.stringify(part.producer.inputs));
    assert.equal(r.body.versions.filter((v: { current: boolean }) => v.current).length <= 1, true);
  });

  it('the console\'s dataset page shows the partition, the task that produced it and that task\'s inputs', async () => {
    const res = await fetch(`${p.info.gateway_url}/console/datasets/lineage_down`, { headers: { authorization: `Bearer ${member}` } });
    assert.equal(res.status, 200);
    const page = await res.text();
    assert.match(page, /<td class="mono">0-100<\/td>/, 'the partition');
    assert.ok(page.includes(`href="/console/tasks/${downTask}"`), 'a link to the producing task');
    assert.match(page, /lineage\.down \(attempt 1\)/);
    assert.ok(page.includes('href="/console/datasets/lineage_src"'), 'the input it read, linked');
  });

  it('refuses bad names and unknown datasets in the stable error shape', async () => {
    const bad = await gw('/v1/datasets/Bad-Name/versions', member);
    assert.equal(bad.status, 400);
    assert.equal(bad.body.code, 'INVALID_REQUEST');
    assert.equal(typeof bad.body.error, 'string');
    const missing = await gw('/v1/datasets/nope/versions', member);
    assert.equal(missing.status, 404);
    assert.deepEqual([missing.body.code, typeof missing.body.error], ['DATASET_NOT_FOUND', 'string']);
    const limit = await gw('/v1/datasets/lineage_down/versions?limit=0', member);
    assert.equal(limit.status, 400);
    const unauth = await fetch(`${p.info.gateway_url}/v1/dags`);
    assert.equal(unauth.status, 401);
  });

  it('another org\'s datasets and users get nothing', async () => {
    const foreign = await gw('/v1/datasets/other_org_secret/versions', member);
    assert.equal(foreign.status, 404, 'a dataset of another org is not found');
    const outsider = await gw('/v1/dags', await mintDevUserToken(TEST_USER_SECRET, 'outsider'));
    assert.equal(outsider.status, 403);
    assert.equal(outsider.body.code, 'NOT_A_MEMBER');
  });

  it('a dataset with read roles the member lacks is not found', async () => {
    await p.dbs.state.query(`UPDATE datasets SET read_roles = '{auditors}' WHERE org_id = $1 AND name = 'lineage_src'`, [p.info.org_id]);
    try {
      assert.equal((await gw('/v1/datasets/lineage_src/versions', member)).status, 404);
      assert.equal((await gw('/v1/datasets/lineage_src/versions', p.admin)).status, 200);
    } finally {
      await p.dbs.state.query(`UPDATE datasets SET read_roles = '{}' WHERE org_id = $1 AND name = 'lineage_src'`, [p.info.org_id]);
    }
  });

});
