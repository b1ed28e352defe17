/**
 * Every way data is published ends in a dataset version the Query Service reads, on the whole
 * one-process platform (real Dispatcher, Query Service, sink, object store folder; real Postgres
 * and PGlite):
 *
 * - a job output published on task completion (`datasets_published`): the storage ref lands on
 *   the version deploy created, in the completion's own transaction; `POST /v1/query` and the
 *   downstream task's `POST /v1/task/query` read it. A repeat is idempotent; another ref is 409
 *   PUBLICATION_CONFLICT; a ref with no Parquet, outside the attempt's prefix, or from a stale
 *   attempt changes nothing.
 * - the buffered `alert_events` dataset: a batch the sink commits becomes queryable.
 * - `datasets register`: Parquet only, allowed roots only, no unconfigured object store, and
 *   dataset-name errors state the allowed form.
 *
 * (Chain sync publications are read through `/v1/query` in test/chain-sync/fixed-target.test.ts.)
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { BACKENDS } from '../support/db.js';
import { startPlatform, waitFor, type TestPlatform } from '../support/platform.js';
import { claimOk, deploy, post, taskCall, trigger, type Lease } from '../support/drive.js';
import { FileObjectStore } from '../../src/objectstore/file.js';
import { tempDir, writeParquet, type TempDir } from './support.js';

const DAG = `name: pubpaths
jobs:
  - name: src
    activation: source
    runtime: ecs_platform
    operator: noop
    source: { kind: manual }
    outputs: 1
    max_attempts: 3
  - name: down
    activation: reactive
    runtime: ecs_platform
    operator: noop
    execution_strategy: PerUpdate
    inputs:
      - from: { job: src, output: 0 }
    outputs: 1
    update_strategy: replace
publish:
  pub_out:
    from: { job: src, output: 0 }
`;

const ROWS = `SELECT * FROM (VALUES (1::BIGINT, 'a'), (2::BIGINT, 'b'), (3::BIGINT, 'c')) t(id, tag)`;

for (const backend of BACKENDS) {
  describe(`publish paths end in queryable datasets (${backend})`, () => {
    let p: TestPlatform;
    let store: FileObjectStore;
    let tmp: TempDir;
    let out: { dataset_uuid: string; dataset_version: string };

    const query = (dataset: string, sql: string) => post({ url: p.info.query_url }, '/v1/query', { dataset, sql }, { authorization: `Bearer ${p.admin}` });
    const versionRef = async (version: string) =>
      (await p.dbs.state.query<{ storage_ref: any }>(`SELECT storage_ref FROM dataset_versions WHERE id = $1`, [version])).rows[0]?.storage_ref ?? null;
    /** Writes Parquet into the attempt's own prefix and returns the ref naming it. */
    const writeOutput = async (lease: Lease, sub = 'out', select = ROWS) => {
      const dir = store.localDir(`scratch/${lease.task_id}/${lease.attempt}/${sub}`);
      await writeParquet([{ path: join(dir, 'part-0.parquet'), select }]);
      return { scheme: 'file', prefix: `${dir}/`, glob: '*.parquet' };
    };
    const publication = (ref: unknown) => ({ dataset_uuid: out.dataset_uuid, dataset_version: out.dataset_version, storage_ref: ref });
    const refused = (r: { status: number; body: any }, status: number, code: string, field?: string) => {
      assert.equal(r.status, status, JSON.stringify(r.body));
      assert.equal(r.body.code, code, JSON.stringify(r.body));
      if (field) assert.match(r.body.error, new RegExp(field.replace(/[[\].]/g, '\\$&')), JSON.stringify(r.body));
    };

    before(async () => {
      p = await startPlatform(backend, { workers: 0, settings: { leaseSeconds: 60 } });
      store = new FileObjectStore(join(p.info.home, 'objects'));
      tmp = tempDir('trace-pubpaths-');
      const d = await deploy(p, DAG);
      const o = d.datasets.find((x: { name: string | null }) => x.name === 'pub_out');
      out = { dataset_uuid: o.dataset_uuid, dataset_version: o.dataset_version };
    });
    after(async () => {
      await p?.close();
      tmp?.cleanup();
    });

    it('before anything is published the deployed version has no storage ref (the query says so)', async () => {
      assert.equal(await versionRef(out.dataset_version), null);
      refused(await query('pub_out', 'SELECT count(*) FROM dataset'), 403, 'STORAGE_REF_MISSING');
    });

    it('refuses refs the platform cannot read, naming the field, and changes nothing', async () => {
      const lease = await claimOk(p, await trigger(p, 'pubpaths', 'src'));
      // No Parquet there: an empty folder of the attempt, then a file that only looks like one.
      const emptyDir = store.localDir(`scratch/${lease.task_id}/${lease.attempt}/empty`);
      mkdirSync(emptyDir, { recursive: true });
      const fakeDir = store.localDir(`scratch/${lease.task_id}/${lease.attempt}/fake`);
      mkdirSync(fakeDir, { recursive: true });
      writeFileSync(join(fakeDir, 'part-0.parquet'), 'PAR1 but not really');
      // Real Parquet, but outside the attempt's own prefix.
      await writeParquet([{ path: join(tmp.dir, 'elsewhere', 'part-0.parquet'), select: ROWS }]);
      const cases: Array<[unknown, string]> = [
        [{ scheme: 'file', prefix: `${emptyDir}/`, glob: '*.parquet' }, 'STORAGE_REF_UNREADABLE'],
        [{ scheme: 'file', prefix: `${fakeDir}/`, glob: '*.parquet' }, 'STORAGE_REF_UNREADABLE'],
        [{ scheme: 'file', prefix: `${join(tmp.dir, 'elsewhere')}/` }, 'STORAGE_REF_OUTSIDE_ATTEMPT'],
        [{ scheme: 'file', prefix: '/etc/', glob: 'passwd' }, 'STORAGE_REF_OUTSIDE_ATTEMPT'],
        [{ scheme: 'ftp', prefix: 'x' }, 'STORAGE_REF_INVALID'],
      ];
      for (const [ref, code] of cases) {
        const r = await taskCall(p, 'complete', lease, { status: 'Completed', datasets_published: [publication(ref)] });
        refused(r, 400, code, 'datasets_published[0].storage_ref');
      }
      assert.equal(await versionRef(out.dataset_version), null);
      const t = (await p.dbs.state.query<{ status: string }>(`SELECT status FROM tasks WHERE id = $1`, [lease.task_id])).rows[0]!;
      assert.equal(t.status, 'Running', 'a refused completion leaves the task running');
      assert.equal((await taskCall(p, 'complete', lease, { status: 'Failed', error_message: 'gave up' })).status, 200);
    });

    let ref: Record<string, unknown>;
    let producer: Lease;

    it('a job output published on completion is queryable through /v1/query and the consumer\'s /v1/task/query', async () => {
      producer = await claimOk(p, await trigger(p, 'pubpaths', 'src'));
      ref = await writeOutput(producer);
      const done = await taskCall(p, 'complete', producer, {
        status: 'Completed',
        events: [{ dataset_uuid: out.dataset_uuid, dataset_version: out.dataset_version, cursor: 1 }],
        datasets_published: [publication(ref)],
      });
      assert.equal(done.status, 200, JSON.stringify(done.body));
      assert.deepEqual(await versionRef(out.dataset_version), ref);

      const r = await query('pub_out', 'SELECT count(*) AS n, max(tag) AS top FROM dataset');
      assert.equal(r.status, 200, JSON.stringify(r.body));
      assert.deepEqual(r.body.rows, [['3', 'c']]);

      // The consumer's task is granted the version (with its ref) and reads it.
      const downTask = await waitFor('the consumer task', async () => (await p.dbs.state.query<{ id: string }>(
        `SELECT t.id FROM tasks t JOIN jobs j ON j.id = t.job_id WHERE j.name = 'down' AND t.status = 'Queued'`)).rows[0]?.id);
      const consumer = await claimOk(p, downTask);
      const tq = await post({ url: p.info.query_url }, '/v1/task/query',
        { task_id: consumer.task_id, attempt: consumer.attempt, lease_token: consumer.lease_token, sql: 'SELECT sum(id) AS s FROM dataset' },
        { 'x-trace-task-capability': consumer.capability_token });
      assert.equal(tq.status, 200, JSON.stringify(tq.body));
      assert.deepEqual(tq.body.rows, [['6']]);
      assert.equal((await taskCall(p, 'complete', consumer, { status: 'Completed' })).status, 200);
    });

    it('the same ref again is idempotent; another ref for the version is 409 PUBLICATION_CONFLICT and changes nothing', async () => {
      const lease = await claimOk(p, await trigger(p, 'pubpaths', 'src'));
      const other = await writeOutput(lease, 'other', `SELECT 99::BIGINT AS id, 'z' AS tag`);
      refused(await taskCall(p, 'complete', lease, { status: 'Completed', datasets_published: [publication(other)] }), 409, 'PUBLICATION_CONFLICT', 'datasets_published[0].storage_ref');
      assert.deepEqual(await versionRef(out.dataset_version), ref);
      assert.deepEqual((await query('pub_out', 'SELECT count(*) AS n FROM dataset')).body.rows, [['3']]);
      // The first ref again: accepted, nothing changes.
      const same = await taskCall(p, 'complete', lease, { status: 'Completed', datasets_published: [publication(ref)] });
      assert.equal(same.status, 200, JSON.stringify(same.body));
      assert.deepEqual(await versionRef(out.dataset_version), ref);
    });

    it('a stale attempt\'s completion changes nothing', async () => {
      // The producer's attempt already finished; its lease token does not complete anything new.
      const r = await taskCall(p, 'complete', { ...producer, lease_token: randomUUID() }, { status: 'Completed', datasets_published: [publication(ref)] });
      assert.ok(r.status === 403 || r.status === 409, JSON.stringify(r.body));
      assert.deepEqual(await versionRef(out.dataset_version), ref);
    });

    it('a batch the sink commits to alert_events becomes queryable', async () => {
      const lease = await claimOk(p, await trigger(p, 'pubpaths', 'src'));
      const now = new Date().toISOString();
      const def = randomUUID();
      const text = ['k1', 'k2'].map((k) => JSON.stringify({ alert_definition_id: def, dedupe_key: `pub-${backend}-${k}`, event_time: now, severity: 'critical', payload: { chain_id: 1, block_number: 7 } })).join('\n') + '\n';
      const key = `buffers/${lease.task_id}/${lease.attempt}/b0.jsonl`;
      await store.put(key, text);
      const pub = await taskCall(p, 'buffer-publish', lease, { batch_uri: store.url(key), content_type: 'application/jsonl', batch_size_bytes: Buffer.byteLength(text), dedupe_scope: 'alert_events' });
      assert.equal(pub.status, 200, JSON.stringify(pub.body));
      const r = await waitFor('alert_events to answer with the committed rows', async () => {
        const q = await query('alert_events', `SELECT count(*) AS n, min(severity) AS sev, min(payload) AS payload FROM dataset WHERE alert_definition_id = '${def}'`);
        return q.status === 200 && q.body.rows[0][0] === '2' ? q : undefined;
      });
      assert.deepEqual(r.body.rows, [['2', 'critical', '{"chain_id": 1, "block_number": 7}']]);
      assert.equal((await taskCall(p, 'complete', lease, { status: 'Completed' })).status, 200);
    });

    it('register: Parquet only, allowed roots only, no unconfigured object store, names state their form', async () => {
      const reg = (name: string, from: string, glob?: string) => p.api('POST', `/v1/datasets/${name}/register`, { from, ...(glob ? { glob } : {}) });
      refused(await reg('pw', 'file:///etc/', 'passwd'), 400, 'SOURCE_OUTSIDE_ROOTS', 'from');
      refused(await reg('s3data', 's3://some-bucket/data/'), 400, 'OBJECT_STORE_NOT_CONFIGURED', 'from');
      const junk = join(tmp.dir, 'junk');
      mkdirSync(junk, { recursive: true });
      writeFileSync(join(junk, 'a.parquet'), 'not parquet at all');
      refused(await reg('junk', `${pathToFileURL(junk).href}/`), 400, 'SOURCE_NOT_PARQUET', 'from');
      const bad = await reg('Bad-Name', `${pathToFileURL(junk).href}/`);
      assert.equal(bad.status, 400, JSON.stringify(bad.body));
      assert.match(JSON.stringify(bad.body), /\^\[a-z\]\[a-z0-9_\]\{0,127\}\$/);
      const named = await query('Bad-Name', 'SELECT 1');
      assert.equal(named.status, 400, JSON.stringify(named.body));
      assert.match(JSON.stringify(named.body), /\^\[a-z\]\[a-z0-9_\]\{0,127\}\$/);
      const none = (await p.dbs.state.query<{ n: number }>(`SELECT count(*)::int AS n FROM datasets WHERE name IN ('pw', 's3data', 'junk')`)).rows[0]!.n;
      assert.equal(none, 0);

      // A good folder registers and reads.
      const good = join(tmp.dir, 'good');
      await writeParquet([{ path: join(good, 'part-0.parquet'), select: ROWS }]);
      const ok = await reg('good', `${pathToFileURL(good).href}/`);
      assert.equal(ok.status, 201, JSON.stringify(ok.body));
      assert.deepEqual((await query('good', 'SELECT count(*) FROM dataset')).body.rows, [['3']]);
    });
  });
}
