/**
 * Garbage collection of consumed buffer batches, superseded dataset versions and replaced chain
 * sync ledger rows: what is past retention and named by nothing goes, a pending batch, a current
 * or kept version, a version something names and a ledger row the identity checks read stay,
 * and a dry run lists the same and changes nothing.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, utimes } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BACKENDS, freshDbs } from '../support/db.js';
import { defaultSettings, dispatcherSettingsFromEnv } from '../../src/dispatcher/settings.js';
import { runGc } from '../../src/dispatcher/gc.js';
import { bufferGcCollector } from '../../src/dispatcher/buffer-gc.js';
import { FileObjectStore } from '../../src/objectstore/file.js';
import { silentLogger } from '../../src/core/log.js';
import { newId } from '../../src/core/ids.js';
import { bootstrapDeployment } from '../../src/dispatcher/identity.js';
import type { Db } from '../../src/db/db.js';

const DAY = 86_400_000;

async function jobFixture(db: Db) {
  const { org_id } = await bootstrapDeployment(db);
  const dag = newId();
  const job = newId();
  await db.query(`INSERT INTO dag_versions (id, org_id, dag_name, yaml_hash, yaml, spec) VALUES ($1, $2, 'gc_dag', 'h', 'x', '{}')`, [dag, org_id]);
  await db.query(`INSERT INTO jobs (id, org_id, name, dag_name, dag_version_id, activation, runtime, operator, config_hash, lineage_hash, timeout_seconds, heartbeat_timeout_seconds, max_attempts)
    VALUES ($1, $2, 'j', 'gc_dag', $3, 'source', 'ecs_platform', 'noop', 'c', 'l', 60, 60, 3)`, [job, org_id, dag]);
  const task = async (status: string) => {
    const id = newId();
    await db.query(`INSERT INTO tasks (id, org_id, job_id, status, max_attempts, timeout_seconds) VALUES ($1, $2, $3, $4, 3, 60)`, [id, org_id, job, status]);
    return id;
  };
  return { org_id, dag, job, task };
}

test('TRACE_GC_KEEP_VERSIONS: default 2, at least 1, a bad value names the variable', () => {
  assert.equal(defaultSettings().gcKeepVersions, 2);
  assert.deepEqual(dispatcherSettingsFromEnv({ TRACE_GC_KEEP_VERSIONS: '5' }), { gcKeepVersions: 5 });
  assert.deepEqual(dispatcherSettingsFromEnv({ TRACE_GC_KEEP_VERSIONS: '2' }), {});
  assert.throws(() => dispatcherSettingsFromEnv({ TRACE_GC_KEEP_VERSIONS: '0' }), /TRACE_GC_KEEP_VERSIONS/);
});

for (const backend of BACKENDS) {
  test(`${backend}: gc removes consumed buffer batches past retention, never a pending one; a dry run changes nothing`, async () => {
    const dbs = await freshDbs(backend);
    const root = await mkdtemp(join(tmpdir(), 'trace-gc-buffers-'));
    try {
      const db = dbs.state;
      const store = new FileObjectStore(root);
      const { org_id, job, task } = await jobFixture(db);
      const done = await task('Completed');
      const running = await task('Running');
      const put = async (key: string, ageDays: number) => {
        await store.put(key, '{"a":1}\n');
        const t = new Date(Date.now() - ageDays * DAY);
        await utimes(await store.localPath(key), t, t);
      };
      const publish = async (taskId: string, attempt: number, key: string) => {
        const id = newId();
        await db.query(`INSERT INTO buffer_publishes (id, org_id, task_id, attempt, job_id, batch_uri, content_type, batch_size_bytes, dedupe_scope)
          VALUES ($1, $2, $3, $4, $5, $6, 'application/jsonl', 8, 'task')`, [id, org_id, taskId, attempt, job, store.url(key)]);
        return id;
      };
      const commit = async (publishId: string, taskId: string, attempt: number, key: string, ageDays: number) => {
        await dbs.data.query(`INSERT INTO buffer_batches (publish_id, org_id, dataset, task_id, attempt, job_id, batch_uri, rows_total, rows_inserted, committed_at)
          VALUES ($1, $2, 'alert_events', $3, $4, $5, $6, 1, 1, now() - make_interval(days => $7))`, [publishId, org_id, taskId, attempt, job, store.url(key), ageDays]);
      };
      const consumedOld = `buffers/${done}/1/a.jsonl`;
      const consumedRecently = `buffers/${done}/1/b.jsonl`;
      const pending = `buffers/${done}/1/c.jsonl`;
      const unpublished = `buffers/${done}/2/d.jsonl`;
      const unpublishedLive = `buffers/${running}/1/e.jsonl`;
      const pendingLive = `buffers/${running}/1/f.jsonl`;
      const unpublishedFresh = `buffers/${done}/3/g.jsonl`;
      for (const k of [consumedOld, consumedRecently, pending, unpublished, unpublishedLive, pendingLive]) await put(k, 10);
      await put(unpublishedFresh, 0);
      await commit(await publish(done, 1, consumedOld), done, 1, consumedOld, 10);
      await commit(await publish(done, 1, consumedRecently), done, 1, consumedRecently, 0);
      await publish(done, 1, pending);
      await publish(running, 1, pendingLive);

      const settings = defaultSettings();
      const collectors = [bufferGcCollector({ data: dbs.data, getStore: () => store })];
      const keys = async () => (await store.list('')).map((o) => o.key);
      const all = await keys();
      const dry = await runGc(db, settings, collectors, { dryRun: true, log: silentLogger });
      assert.deepEqual(dry.object_keys, [{ key: consumedOld, bytes: 8, reason: 'consumed' }, { key: unpublished, bytes: 8, reason: 'staging' }]);
      assert.deepEqual({ consumed: dry.objects.consumed, staging: dry.objects.staging }, { consumed: 1, staging: 1 });
      assert.deepEqual(await keys(), all, 'a dry run changes nothing');

      const r = await runGc(db, settings, collectors, { dryRun: false, log: silentLogger });
      assert.deepEqual(r.object_keys, dry.object_keys);
      assert.deepEqual(await keys(), all.filter((k) => k !== consumedOld && k !== unpublished));
      for (const k of [pending, pendingLive, consumedRecently, unpublishedLive, unpublishedFresh]) assert.ok(await store.exists(k), `${k} stays`);

      // A pending batch stays however old; once the sink commits it, it goes after the retention.
      const again = await runGc(db, { ...settings, gcSupersededRetentionSeconds: 0, gcStagingRetentionSeconds: 0 }, collectors, { dryRun: false, log: silentLogger });
      assert.deepEqual(new Set(again.object_keys.map((o) => o.key)), new Set([consumedRecently, unpublishedFresh]));
      assert.ok(await store.exists(pending) && await store.exists(pendingLive) && await store.exists(unpublishedLive));
    } finally {
      await dbs.close();
      await rm(root, { recursive: true, force: true });
    }
  });

  test(`${backend}: gc removes superseded dataset versions and replaced chain sync ledger rows, never a current, kept or named one`, async () => {
    const dbs = await freshDbs(backend);
    try {
      const db = dbs.state;
      const { org_id, dag, job, task } = await jobFixture(db);
      const running = await task('Running');
      const dataset = async (name: string) => {
        const id = newId();
        await db.query(`INSERT INTO datasets (id, org_id, name, kind) VALUES ($1, $2, $3, 'job_output')`, [id, org_id, name]);
        return id;
      };
      let n = 0;
      const version = async (ds: string, daysAgo: number, partitions = 0) => {
        const id = newId();
        await db.query(`INSERT INTO dataset_versions (id, dataset_uuid, config_hash, created_at) VALUES ($1, $2, $3, now() - make_interval(days => $4))`,
          [id, ds, `h${n++}`, daysAgo]);
        for (let p = 0; p < partitions; p++) {
          await db.query(`INSERT INTO partition_versions (dataset_uuid, dataset_version, partition_key) VALUES ($1, $2, $3)`, [ds, id, `p${p}`]);
        }
        return id;
      };
      // Dataset a, newest first: v5 (newest, not current after a rollback), v4 (current), v3,
      // v2 (a deploy's pointer set), v1 (a running task's input), v0, vj (a job's output).
      const a = await dataset('a');
      const vj = await version(a, 70, 1);
      const v0 = await version(a, 60, 1);
      const v1 = await version(a, 50, 1);
      const v2 = await version(a, 40);
      const v3 = await version(a, 30, 2);
      const v4 = await version(a, 20);
      const v5 = await version(a, 10);
      await db.query(`UPDATE datasets SET current_version = $2 WHERE id = $1`, [a, v4]);
      await db.query(`INSERT INTO dag_version_datasets (dag_version_id, dataset_uuid, dataset_version) VALUES ($1, $2, $3)`, [dag, a, v2]);
      await db.query(`INSERT INTO task_inputs (task_id, input_dataset_uuid, input_dataset_version) VALUES ($1, $2, $3)`, [running, a, v1]);
      await db.query(`UPDATE jobs SET outputs = $2::jsonb WHERE id = $1`, [job, JSON.stringify([{ output_index: 0, dataset_uuid: a, dataset_version: vj }])]);
      // Dataset b: one old version, not current: the newest is always kept.
      const b = await dataset('b');
      const vb = await version(b, 90, 1);
      // Dataset c: current is the oldest of three, all old: kept with keep 1 too.
      const c = await dataset('c');
      const c0 = await version(c, 80);
      const c1 = await version(c, 70);
      const c2 = await version(c, 60);
      await db.query(`UPDATE datasets SET current_version = $2 WHERE id = $1`, [c, c0]);

      // A chain sync stream: [0,5) [5,10) replaced by compaction [0,10); [10,20) not replaced;
      // [20,25) [25,30) replaced by [20,30), [30,35) in flight. Another stream's compaction is fresh.
      const csJob = newId();
      await db.query(`INSERT INTO chain_sync_jobs (job_id, org_id, name, chain_id, mode, from_block, tail_lag, head_poll_interval_seconds, max_head_age_seconds, yaml, yaml_hash, spec)
        VALUES ($1, $2, 'cs', 1337, 'follow_head', 0, 2, 1, 5, 'y', 'h', '{}')`, [csJob, org_id]);
      const stream = async (key: string) => {
        const ds = await dataset(`cs_${key}`);
        await db.query(`INSERT INTO chain_sync_streams (job_id, dataset_key, cryo_dataset_name, rpc_pool, dataset_uuid, dataset_name, config_hash, chunk_size, max_inflight, task_job_id)
          VALUES ($1, $2, $2, 'dev', $3, $4, 'c', 10, 4, $5)`, [csJob, key, ds, `cs_${key}`, job]);
        return ds;
      };
      const blocks = await stream('blocks');
      const logs = await stream('logs');
      const rangeVersions = new Map<string, string>();
      const range = async (key: string, ds: string, start: number, end: number, status: 'completed' | 'scheduled') => {
        const t = await task(status === 'completed' ? 'Completed' : 'Queued');
        const v = status === 'completed' ? await version(ds, 100 - start, 1) : null;
        if (v) rangeVersions.set(`${key}:${start}`, v);
        await db.query(`INSERT INTO chain_sync_scheduled_ranges (job_id, dataset_key, range_start, range_end, task_id, status, dataset_version, files, completed_at)
          VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb, CASE WHEN $6 = 'completed' THEN now() - interval '20 days' END)`,
        [csJob, key, start, end, t, status, v, v ? '[]' : null]);
      };
      const compaction = async (key: string, ds: string, start: number, end: number, status: string, daysAgo: number) => {
        const t = await task(status === 'completed' ? 'Completed' : status === 'abandoned' ? 'Failed' : 'Queued');
        const v = status === 'completed' ? await version(ds, daysAgo) : null;
        await db.query(`INSERT INTO chain_sync_compactions (job_id, dataset_key, range_start, range_end, task_id, status, replaces, dataset_version, files, completed_at, updated_at)
          VALUES ($1, $2, $3, $4, $5, $6, 2, $7, $8::jsonb, CASE WHEN $6 = 'completed' THEN now() - make_interval(days => $9) END, now() - make_interval(days => $9))`,
        [csJob, key, start, end, t, status, v, v ? '[]' : null, daysAgo]);
      };
      for (const [s, e, st] of [[0, 5, 'completed'], [5, 10, 'completed'], [10, 20, 'completed'], [20, 25, 'completed'], [25, 30, 'completed'], [30, 35, 'scheduled']] as const) {
        await range('blocks', blocks, s, e, st);
      }
      await compaction('blocks', blocks, 0, 10, 'completed', 10);
      await compaction('blocks', blocks, 20, 30, 'completed', 10);
      await compaction('blocks', blocks, 40, 50, 'abandoned', 10);
      for (const [s, e] of [[0, 5], [5, 10], [10, 15]] as const) await range('logs', logs, s, e, 'completed');
      await compaction('logs', logs, 0, 10, 'completed', 0);
      await compaction('logs', logs, 10, 20, 'abandoned', 0);
      // The publication the completion of [30,35) registered, its commit pending: named by the range.
      const pendingPub = newId();
      await db.query(`INSERT INTO dataset_versions (id, dataset_uuid, config_hash, range_start, range_end, created_at) VALUES ($1, $2, 'pending', 30, 35, now() - interval '99 days')`,
        [pendingPub, blocks]);
      // the views: each stream's current version
      for (const ds of [blocks, logs]) await db.query(`UPDATE datasets SET current_version = $2 WHERE id = $1`, [ds, await version(ds, 1)]);

      const snapshot = async () => ({
        versions: (await db.query<{ id: string }>(`SELECT id FROM dataset_versions ORDER BY id`)).rows.map((r) => r.id),
        partitions: (await db.query<{ n: number }>(`SELECT count(*)::int AS n FROM partition_versions`)).rows[0]!.n,
        ranges: (await db.query<{ k: string }>(`SELECT dataset_key || ':' || range_start AS k FROM chain_sync_scheduled_ranges ORDER BY 1`)).rows.map((r) => r.k),
        compactions: (await db.query<{ k: string }>(`SELECT dataset_key || ':' || range_start AS k FROM chain_sync_compactions ORDER BY 1`)).rows.map((r) => r.k),
      });
      const settings = defaultSettings();
      const before = await snapshot();
      const dry = await runGc(db, settings, [], { dryRun: true, log: silentLogger });
      assert.deepEqual(await snapshot(), before, 'a dry run changes nothing');
      const counts = (r: typeof dry) => ({
        chain_sync_ranges: r.rows.chain_sync_ranges, chain_sync_compactions: r.rows.chain_sync_compactions,
        partition_versions: r.rows.partition_versions, dataset_versions: r.rows.dataset_versions,
      });
      // v0 (1 partition) and v3 (2 partitions) of a; blocks [0,5) [5,10) [20,25); the old abandoned compaction
      const expected = { chain_sync_ranges: 3, chain_sync_compactions: 1, partition_versions: 3, dataset_versions: 2 };
      assert.deepEqual(counts(dry), expected);
      assert.equal(dry.keep_versions, 2);

      const first = await runGc(db, settings, [], { dryRun: false, log: silentLogger });
      assert.deepEqual(counts(first), expected);
      const after = await snapshot();
      assert.deepEqual(before.versions.filter((v) => !after.versions.includes(v)).sort(), [v0, v3].sort());
      for (const v of [v1, v2, v4, v5, vj, vb, c0, c1, c2]) assert.ok(after.versions.includes(v), 'a current, kept or named version stays');
      assert.deepEqual(after.ranges, ['blocks:10', 'blocks:25', 'blocks:30', 'logs:0', 'logs:10', 'logs:5']);
      assert.deepEqual(after.compactions, ['blocks:0', 'blocks:20', 'logs:0', 'logs:10']);
      for (const ds of [a, c, blocks, logs]) {
        const cur = (await db.query<{ ok: boolean }>(`SELECT EXISTS (SELECT 1 FROM dataset_versions v JOIN datasets d ON d.current_version = v.id WHERE d.id = $1) AS ok`, [ds])).rows[0]!;
        assert.ok(cur.ok, 'every current version stays');
      }

      // The next pass removes the versions (and their partition rows) the removed ranges named.
      const second = await runGc(db, settings, [], { dryRun: false, log: silentLogger });
      assert.deepEqual(counts(second), { chain_sync_ranges: 0, chain_sync_compactions: 0, partition_versions: 3, dataset_versions: 3 });
      const left = (await snapshot()).versions;
      for (const k of ['blocks:0', 'blocks:5', 'blocks:20']) assert.ok(!left.includes(rangeVersions.get(k)!));
      for (const k of ['blocks:10', 'blocks:25', 'logs:0', 'logs:5', 'logs:10']) assert.ok(left.includes(rangeVersions.get(k)!));
      assert.ok(left.includes(pendingPub), 'the publication of a range whose commit is pending stays');
      const third = await runGc(db, settings, [], { dryRun: false, log: silentLogger });
      assert.deepEqual(counts(third), { chain_sync_ranges: 0, chain_sync_compactions: 0, partition_versions: 0, dataset_versions: 0 });

      // Keep 1: only the newest and the current stay unnamed: c1 of c goes (c2 newest, c0 current);
      // a keeps v5 (newest), v4 (current) and what is named.
      const keep1 = await runGc(db, { ...settings, gcKeepVersions: 1 }, [], { dryRun: false, log: silentLogger });
      assert.equal(keep1.rows.dataset_versions, 1);
      await db.query(`DELETE FROM dag_version_datasets WHERE dataset_version = $1`, [v2]);
      const unnamed = await runGc(db, { ...settings, gcKeepVersions: 1 }, [], { dryRun: false, log: silentLogger });
      assert.deepEqual([unnamed.rows.dataset_versions, unnamed.rows.partition_versions], [1, 0], 'v2 goes once no deploy names it');
      const final = (await snapshot()).versions;
      for (const v of [v4, v5, v1, vj, c0, c2, vb]) assert.ok(final.includes(v));
      assert.ok(!final.includes(v2) && !final.includes(c1));

      // The batch caps a pass across every kind.
      await db.query(`DELETE FROM task_inputs`);
      await db.query(`UPDATE jobs SET outputs = '[]'::jsonb`);
      const capped = await runGc(db, { ...settings, gcKeepVersions: 1, gcBatch: 1 }, [], { dryRun: false, log: silentLogger });
      assert.equal(capped.truncated, true);
      assert.equal(capped.rows.partition_versions + capped.rows.dataset_versions, 1);
    } finally {
      await dbs.close();
    }
  });
}
