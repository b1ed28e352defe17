/**
 * Garbage collection of rows (outbox, task history) and its settings: retention by age, only
 * finished tasks' history, the batch cap across a pass, dry runs changing nothing.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { BACKENDS, freshDbs } from '../support/db.js';
import { defaultSettings, dispatcherSettingsFromEnv } from '../../src/dispatcher/settings.js';
import { runGc, scratchGcCollector } from '../../src/dispatcher/gc.js';
import { mkdtemp, rm, utimes } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FileObjectStore } from '../../src/objectstore/file.js';
import { silentLogger } from '../../src/core/log.js';
import { newId } from '../../src/core/ids.js';
import { bootstrapDeployment } from '../../src/dispatcher/identity.js';

const backend = BACKENDS.includes('pglite') ? 'pglite' : 'postgres';

test('gc settings: documented defaults, durations with units, bad values name the variable', () => {
  const d = defaultSettings();
  assert.deepEqual(
    [d.gcSupersededRetentionSeconds, d.gcStagingRetentionSeconds, d.gcOutboxRetentionSeconds, d.gcTaskHistoryRetentionSeconds, d.gcBatch, d.gcIntervalMs],
    [86_400, 7 * 86_400, 7 * 86_400, 30 * 86_400, 10_000, 0],
  );
  assert.deepEqual(dispatcherSettingsFromEnv({
    TRACE_GC_SUPERSEDED_RETENTION: '36h', TRACE_GC_STAGING_RETENTION: '90m', TRACE_GC_OUTBOX_RETENTION: '3600',
    TRACE_GC_TASK_HISTORY_RETENTION: '0', TRACE_GC_BATCH: '50', TRACE_GC_INTERVAL_MS: '60000',
  }), {
    gcSupersededRetentionSeconds: 36 * 3600, gcStagingRetentionSeconds: 90 * 60, gcOutboxRetentionSeconds: 3600,
    gcTaskHistoryRetentionSeconds: 0, gcBatch: 50, gcIntervalMs: 60_000,
  });
  assert.deepEqual(dispatcherSettingsFromEnv({ TRACE_GC_INTERVAL_MS: '0', TRACE_GC_SUPERSEDED_RETENTION: '1d' }), {});
  assert.throws(() => dispatcherSettingsFromEnv({ TRACE_GC_STAGING_RETENTION: '7 days' }), /TRACE_GC_STAGING_RETENTION must be a duration/);
  assert.throws(() => dispatcherSettingsFromEnv({ TRACE_GC_BATCH: '0' }), /TRACE_GC_BATCH/);
});

test(`${backend}: gc removes delivered outbox rows and finished tasks' history past retention, within the batch`, async () => {
  const dbs = await freshDbs(backend);
  try {
    const db = dbs.state;
    const { org_id } = await bootstrapDeployment(db);
    const dag = newId();
    const job = newId();
    await db.query(`INSERT INTO dag_versions (id, org_id, dag_name, yaml_hash, yaml, spec) VALUES ($1, $2, 'gc_dag', 'h', 'x', '{}')`, [dag, org_id]);
    await db.query(`INSERT INTO jobs (id, org_id, name, dag_name, dag_version_id, activation, runtime, operator, config_hash, lineage_hash, timeout_seconds, heartbeat_timeout_seconds, max_attempts)
      VALUES ($1, $2, 'j', 'gc_dag', $3, 'source', 'ecs_platform', 'noop', 'c', 'l', 60, 60, 3)`, [job, org_id, dag]);
    const task = async (status: string, finishedDaysAgo: number, retry = false) => {
      const id = newId();
      await db.query(`INSERT INTO tasks (id, org_id, job_id, status, max_attempts, timeout_seconds, completed_at, updated_at, next_retry_at)
        VALUES ($1, $2, $3, $4, 3, 60, now() - make_interval(days => $5), now() - make_interval(days => $5), $6)`,
      [id, org_id, job, status, finishedDaysAgo, retry ? new Date(Date.now() + 60_000) : null]);
      for (let a = 1; a <= 2; a++) await db.query(`INSERT INTO task_attempts (task_id, attempt, status) VALUES ($1, $2, 'Failed')`, [id, a]);
      await db.query(`INSERT INTO task_events (task_id, attempt, event_key, event, routed) VALUES ($1, 1, 'k', '{}', true)`, [id]);
      return id;
    };
    const old = await task('Completed', 40);
    const oldCanceled = await task('Canceled', 40);
    const oldGaveUp = await task('Failed', 40);
    const recent = await task('Completed', 1);
    const running = await task('Running', 40);
    const retrying = await task('Failed', 40, true);
    for (const [status, days] of [['Done', 10], ['Done', 10], ['Done', 1], ['Failed', 10], ['Pending', 10]] as const) {
      await db.query(`INSERT INTO outbox (kind, payload, status, processed_at) VALUES ('x', '{}', $1, now() - make_interval(days => $2))`, [status, days]);
    }
    const settings = defaultSettings();
    const snapshot = async () => ({
      outbox: (await db.query<{ status: string; n: number }>(`SELECT status, count(*)::int AS n FROM outbox GROUP BY 1 ORDER BY 1`)).rows,
      attempts: (await db.query<{ task_id: string }>(`SELECT task_id FROM task_attempts ORDER BY 1`)).rows.map((r) => r.task_id),
      events: (await db.query<{ task_id: string }>(`SELECT task_id FROM task_events ORDER BY 1`)).rows.map((r) => r.task_id),
    });
    const before = await snapshot();
    const dry = await runGc(db, settings, [], { dryRun: true, log: silentLogger });
    const none = { chain_sync_ranges: 0, chain_sync_compactions: 0, partition_versions: 0, dataset_versions: 0 };
    assert.deepEqual(dry.rows, { outbox: 2, task_attempts: 6, task_events: 3, ...none });
    assert.deepEqual(await snapshot(), before);

    // a batch of 5: both outbox rows, then 3 of the 6 attempts, nothing more
    const first = await runGc(db, { ...settings, gcBatch: 5 }, [], { dryRun: false, log: silentLogger });
    assert.deepEqual(first.rows, { outbox: 2, task_attempts: 3, task_events: 0, ...none });
    assert.equal(first.truncated, true);
    const second = await runGc(db, settings, [], { dryRun: false, log: silentLogger });
    assert.deepEqual(second.rows, { outbox: 0, task_attempts: 3, task_events: 3, ...none });
    assert.equal(second.truncated, false);
    const after = await snapshot();
    assert.deepEqual(after.outbox, [{ status: 'Done', n: 1 }, { status: 'Failed', n: 1 }, { status: 'Pending', n: 1 }]);
    const kept = new Set(after.attempts);
    for (const t of [recent, running, retrying]) assert.ok(kept.has(t));
    for (const t of [old, oldCanceled, oldGaveUp]) assert.ok(!kept.has(t));
    assert.deepEqual(new Set(after.events), new Set([recent, running, retrying]));
    assert.equal((await db.query(`SELECT 1 FROM tasks WHERE id = $1`, [old])).rows.length, 1, 'the task row stays');
  } finally {
    await dbs.close();
  }
});

test(`${backend}: gc removes orphaned task scratch past retention, never a published, live or referenced prefix`, async () => {
  const dbs = await freshDbs(backend);
  const root = await mkdtemp(join(tmpdir(), 'trace-gc-scratch-'));
  try {
    const db = dbs.state;
    const store = new FileObjectStore(root);
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
    const done = await task('Completed');
    const running = await task('Running');
    const put = async (key: string, ageDays: number) => {
      await store.put(key, 'PAR1 data PAR1');
      const t = new Date(Date.now() - ageDays * 86_400_000);
      if (ageDays > 0) await utimes(await store.localPath(key), t, t);
    };
    const orphan = `scratch/${done}/1/a.parquet`;
    const published = `scratch/${done}/2/b.parquet`;
    const fresh = `scratch/${done}/3/c.parquet`;
    const live = `scratch/${running}/1/d.parquet`;
    const current = `scratch/${done}/4/e.parquet`;
    await put(orphan, 10);
    await put(published, 10);
    await put(fresh, 0);
    await put(live, 10);
    await put(current, 10);
    // a version published from attempt 2 (not current), and a dataset whose current version reads attempt 4 by its manifest
    const ds = newId();
    await db.query(`INSERT INTO datasets (id, org_id, name, kind) VALUES ($1, $2, 'out', 'job_output')`, [ds, org_id]);
    const v2 = newId();
    await db.query(`INSERT INTO dataset_versions (id, dataset_uuid, storage_ref, config_hash) VALUES ($1, $2, $3, 'a')`,
      [v2, ds, JSON.stringify({ scheme: 'file', prefix: store.localDir(`scratch/${done}/2/`), glob: '*.parquet' })]);
    await store.put(`scratch/${done}/5/m.json`, JSON.stringify({ parquet_objects: [`${done}/4/e.parquet`] }));
    const t = new Date(Date.now() - 10 * 86_400_000);
    await utimes(await store.localPath(`scratch/${done}/5/m.json`), t, t);
    const v5 = newId();
    await db.query(`INSERT INTO dataset_versions (id, dataset_uuid, storage_ref, config_hash) VALUES ($1, $2, $3, 'b')`,
      [v5, ds, JSON.stringify({ scheme: 'file', prefix: store.localDir('scratch/'), glob: '*.parquet', manifest: `${done}/5/m.json` })]);
    await db.query(`UPDATE datasets SET current_version = $2 WHERE id = $1`, [ds, v5]);
    const settings = defaultSettings();
    const collectors = [scratchGcCollector(() => store)];
    const keys = async () => (await store.list('')).map((o) => o.key);
    const all = await keys();
    const dry = await runGc(db, settings, collectors, { dryRun: true, log: silentLogger });
    assert.deepEqual(dry.object_keys.map((o) => o.key), [orphan]);
    assert.deepEqual(await keys(), all);
    const r = await runGc(db, settings, collectors, { dryRun: false, log: silentLogger });
    assert.deepEqual(r.object_keys, [{ key: orphan, bytes: 14, reason: 'staging' }]);
    assert.deepEqual(await keys(), all.filter((k) => k !== orphan));
  } finally {
    await dbs.close();
    await rm(root, { recursive: true, force: true });
  }
});
