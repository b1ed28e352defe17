/**
 * The planner, apply rules, pause/resume and the completion verification, driven by hand over
 * HTTP (no chain: range outputs are written by cryo_ingest in fake mode). Both backends.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { rm } from 'node:fs/promises';
import { BACKENDS, freshDbs } from '../support/db.js';
import { TEST_SECRETS } from '../support/dispatcher.js';
import { ensureUser } from '../../src/dispatcher/identity.js';
import { mintDevUserToken } from '../../src/auth/user.js';
import { createCryoIngestOperator } from '../../src/operators/cryo_ingest/operator.js';
import { attemptPrefix } from '../../src/operators/cryo_ingest/payload.js';
import { parseStorageRef, resolveStorageFiles } from '../../src/query/storage.js';
import { claim, complete, count, currentFiles, duck, fileList, fixedYaml, followYaml, runOperator, sleep, startStack, waitFor, type Stack } from './support.js';

const DEAD_POOL = { dev: ['http://127.0.0.1:9'] };

async function ranges(st: Stack, name: string): Promise<Array<{ dataset_key: string; range_start: number; range_end: number; status: string; task_id: string }>> {
  return (await st.state.query<{ dataset_key: string; range_start: number; range_end: number; status: string; task_id: string }>(
    `SELECT r.dataset_key, r.range_start::int8 AS range_start, r.range_end::int8 AS range_end, r.status, r.task_id
     FROM chain_sync_scheduled_ranges r JOIN chain_sync_jobs j ON j.job_id = r.job_id WHERE j.name = $1 ORDER BY r.dataset_key, r.range_start`, [name])).rows
    .map((r) => ({ ...r, range_start: Number(r.range_start), range_end: Number(r.range_end) }));
}

async function footprint(st: Stack) {
  const n = (t: string) => count(st.state, `SELECT count(*)::int AS n FROM ${t}`);
  return { jobs: await n('chain_sync_jobs'), streams: await n('chain_sync_streams'), dags: await n('dag_versions'), taskJobs: await n('jobs'),
    datasets: await n('datasets'), tasks: await n('tasks'), ranges: await n('chain_sync_scheduled_ranges'), outbox: await n('outbox') };
}

for (const backend of BACKENDS) {
  test(`${backend}: apply is idempotent, plans up to max_inflight, follows the change rules, pauses and resumes`, async () => {
    const dbs = await freshDbs(backend);
    const st = await startStack({ state: dbs.state, pools: DEAD_POOL, plannerIntervalMs: 100 });
    try {
      // Refused YAML stores nothing.
      const before = await footprint(st);
      const bad = await st.api('POST', '/v1/chain-sync', `kind: chain_sync\nname: p\nchain_id: 1\nmode: {kind: fixed_target, from_block: 10, to_block: 5}\nstreams:\n  blocks: {cryo_dataset_name: blocks, rpc_pool: "https://x.example/KEY0123456789abcdef"}\n  BAD: {cryo_dataset_name: logs, rpc_pool: dev}\n`);
      assert.equal(bad.status, 422, JSON.stringify(bad.body));
      assert.equal(bad.body.code, 'CHAIN_SYNC_INVALID');
      assert.deepEqual(bad.body.problems.map((p: any) => p.path).sort(), ['mode.to_block', 'streams.BAD', 'streams.blocks.rpc_pool']);
      assert.ok(!JSON.stringify(bad.body).includes('x.example'));
      assert.equal((await st.api('POST', '/v1/chain-sync', 'kind: [')).status, 400);
      assert.deepEqual(await footprint(st), before, 'nothing stored on refusal');
      // Members are not admins.
      await ensureUser(st.state, st.orgId, 'bob', ['member']);
      const bob = await fetch(`${st.url}/v1/chain-sync`, { headers: { authorization: `Bearer ${await mintDevUserToken(TEST_SECRETS.user, 'bob')}` } });
      assert.equal(bob.status, 403);

      const yaml = fixedYaml('p', 1337, 100_000, { chunk: 100, inflight: 3 });
      const a = await st.api('POST', '/v1/chain-sync', yaml);
      assert.equal(a.status, 201, JSON.stringify(a.body));
      assert.equal(a.body.streams.length, 3);
      await waitFor('3 ranges per stream', async () => (await ranges(st, 'p')).length === 9);
      const r1 = await ranges(st, 'p');
      assert.deepEqual(r1.filter((r) => r.dataset_key === 'blocks').map((r) => [r.range_start, r.range_end]), [[0, 100], [100, 200], [200, 300]]);
      assert.equal(await count(st.state, `SELECT count(DISTINCT task_id)::int AS n FROM chain_sync_scheduled_ranges`), 9);
      // The queue is served in order: wake-ups interleave the streams (one range each per round).
      const order = (await st.state.query<{ dataset_key: string }>(
        `SELECT r.dataset_key FROM outbox o JOIN chain_sync_scheduled_ranges r ON r.task_id::text = o.payload->>'task_id'
         WHERE o.kind = 'enqueue_task' ORDER BY o.id`)).rows.map((r) => r.dataset_key);
      assert.deepEqual(order, ['blocks', 'logs', 'transactions', 'blocks', 'logs', 'transactions', 'blocks', 'logs', 'transactions']);
      assert.equal(await count(st.state, `SELECT count(*)::int AS n FROM chain_sync_cursor WHERE next_block = 300`), 3);
      const tasks = await st.state.query<{ status: string; dag_name: string; name: string; operator: string; trigger: any }>(
        `SELECT t.status, j.dag_name, j.name, j.operator, t.trigger FROM tasks t JOIN jobs j ON j.id = t.job_id ORDER BY j.name, (t.trigger->>'range_start')::int`);
      assert.equal(tasks.rows.length, 9);
      assert.ok(tasks.rows.every((t) => t.status === 'Queued' && t.dag_name === 'chain_sync:p' && t.operator === 'cryo_ingest'));
      assert.deepEqual([tasks.rows[0]!.trigger.range_start, tasks.rows[0]!.trigger.range_end, tasks.rows[0]!.trigger.kind], [0, 100, 'manual']);
      // The tasks show up in `trace tasks` like any other.
      const listed = await st.api('GET', '/v1/tasks?limit=100');
      assert.equal(listed.body.tasks.filter((t: any) => t.dag_name === 'chain_sync:p').length, 9);

      // Re-applying the same YAML changes and plans nothing.
      const fp = await footprint(st);
      const again = await st.api('POST', '/v1/chain-sync', yaml);
      assert.equal(again.status, 200);
      assert.equal(again.body.changed, false);
      await st.plugin.tick();
      await st.plugin.tick();
      assert.deepEqual(await footprint(st), fp);

      // The cursor only moves forward; the ledger refuses a second row for a range start.
      await assert.rejects(st.state.query(`UPDATE chain_sync_cursor SET next_block = 0 WHERE dataset_key = 'blocks'`));
      const t0 = r1[0]!;
      await assert.rejects(st.state.query(
        `INSERT INTO chain_sync_scheduled_ranges (job_id, dataset_key, range_start, range_end, task_id)
         SELECT job_id, dataset_key, range_start, range_end + 1, task_id FROM chain_sync_scheduled_ranges WHERE task_id = $1`, [t0.task_id]));

      // Changes that would corrupt data are refused as a whole; nothing changes.
      const hash = (await st.state.query<{ yaml_hash: string }>(`SELECT yaml_hash FROM chain_sync_jobs WHERE name = 'p'`)).rows[0]!.yaml_hash;
      const moved = await st.api('POST', '/v1/chain-sync', fixedYaml('p', 1, 100_000, { chunk: 100, inflight: 3, from: 50 }));
      assert.equal(moved.status, 422);
      assert.deepEqual(moved.body.problems.map((p: any) => p.path).sort(), ['chain_id', 'mode.from_block']);
      const swapped = await st.api('POST', '/v1/chain-sync', fixedYaml('p', 1337, 100_000, { chunk: 100, inflight: 3 }).replace('cryo_dataset_name: logs', 'cryo_dataset_name: blocks'));
      assert.equal(swapped.status, 422);
      assert.deepEqual(swapped.body.problems.map((p: any) => p.path), ['streams.logs.cryo_dataset_name']);
      assert.equal((await st.state.query<{ yaml_hash: string }>(`SELECT yaml_hash FROM chain_sync_jobs WHERE name = 'p'`)).rows[0]!.yaml_hash, hash);
      // Another job cannot take over the same datasets (same chain + dataset_key).
      const thief = await st.api('POST', '/v1/chain-sync', fixedYaml('q', 1337, 1000, { streams: ['blocks'] }));
      assert.equal(thief.status, 422);
      assert.match(thief.body.problems[0].message, /already produced by chain sync p/);

      // Pause: raising max_inflight plans nothing; resume plans up to it.
      assert.equal((await st.api('POST', '/v1/chain-sync/p/pause')).status, 200);
      const up = await st.api('POST', '/v1/chain-sync', fixedYaml('p', 1337, 100_000, { chunk: 100, inflight: 5 }));
      assert.equal(up.status, 200);
      assert.equal(up.body.changed, true);
      await st.plugin.tick();
      await new Promise((r) => setTimeout(r, 300));
      assert.equal((await ranges(st, 'p')).length, 9, 'paused: nothing planned');
      const paused = await st.api('GET', '/v1/chain-sync/p');
      assert.equal(paused.body.state, 'paused');
      assert.match(paused.body.reason, /paused/);
      assert.equal((await st.api('POST', '/v1/chain-sync/p/resume')).status, 200);
      await waitFor('5 ranges per stream', async () => (await ranges(st, 'p')).length === 15);

      // A stream left out of the YAML stops planning; its datasets stay.
      await st.api('POST', '/v1/chain-sync', fixedYaml('p', 1337, 100_000, { chunk: 100, inflight: 6, streams: ['blocks'] }));
      await waitFor('blocks tops up to 6', async () => (await ranges(st, 'p')).filter((r) => r.dataset_key === 'blocks').length === 6);
      await st.plugin.tick();
      assert.equal((await ranges(st, 'p')).filter((r) => r.dataset_key === 'logs').length, 5);
      const s = await st.api('GET', '/v1/chain-sync/p');
      assert.deepEqual(s.body.streams.map((x: any) => [x.dataset_key, x.active, x.state]), [['blocks', true, 'planning'], ['logs', false, 'removed'], ['transactions', false, 'removed']]);
      assert.equal(s.body.streams[0].inflight.queued, 6);
      assert.equal((await st.api('GET', '/v1/chain-sync/nope')).status, 404);
    } finally {
      await st.stop();
      await dbs.close();
    }
  });

  test(`${backend}: completions are verified before anything is committed; one good completion publishes once`, async () => {
    const dbs = await freshDbs(backend);
    const st = await startStack({ state: dbs.state, pools: DEAD_POOL, plannerIntervalMs: 100 });
    try {
      const a = await st.api('POST', '/v1/chain-sync', fixedYaml('v', 1337, 300, { chunk: 100, inflight: 3, streams: ['blocks'] }));
      const uuid = a.body.streams[0].dataset_uuid as string;
      await waitFor('3 ranges', async () => (await ranges(st, 'v')).length === 3);
      const [r0, r1, r2] = await ranges(st, 'v');
      const fake = createCryoIngestOperator({ objectStore: st.store, mode: 'fake' });
      const lease = await claim(st, r0!.task_id);
      assert.equal(lease.task.config.dataset_uuid, uuid);
      assert.equal(lease.task.trigger.range_start, 0);
      const out = await runOperator(fake, lease);
      const pub = out.datasets_published[0];
      assert.equal(pub.storage_ref.prefix, `${st.store.localDir(attemptPrefix(1337, uuid, r0!.task_id, 1))}/`);

      const prefix = attemptPrefix(1337, uuid, r0!.task_id, 1);
      const refusals: Array<[string, unknown[], string]> = [
        ['none', [], 'PUBLICATION_INVALID'],
        ['two', [pub, pub], 'PUBLICATION_INVALID'],
        ['foreign uuid', [{ ...pub, dataset_uuid: randomUUID() }], 'PUBLICATION_MISMATCH'],
        ['other range', [{ ...pub, range_end: 150 }], 'PUBLICATION_MISMATCH'],
        ['other storage', [{ ...pub, storage_ref: { scheme: 'file', prefix: '/etc/', glob: '*' } }], 'PUBLICATION_MISMATCH'],
      ];
      for (const [what, published, code] of refusals) {
        const r = await complete(st, lease, { status: 'Completed', datasets_published: published });
        assert.equal(r.status, 422, `${what}: ${JSON.stringify(r.body)}`);
        assert.equal(r.body.code, code, what);
      }
      const marker = await st.store.get(`${prefix}_SUCCESS`);
      await rm(`${st.store.localDir(prefix)}/_SUCCESS`);
      const unmarked = await complete(st, lease, { status: 'Completed', datasets_published: [pub] });
      assert.equal(unmarked.status, 422);
      assert.equal(unmarked.body.code, 'OUTPUT_NOT_COMMITTED');
      assert.equal(await count(st.state, `SELECT count(*)::int AS n FROM dataset_versions WHERE dataset_uuid = $1`, [uuid]), 0, 'nothing registered');
      assert.equal(await count(st.state, `SELECT count(*)::int AS n FROM partition_versions WHERE dataset_uuid = $1`, [uuid]), 0);
      assert.equal((await st.state.query<{ status: string }>(`SELECT status FROM tasks WHERE id = $1`, [r0!.task_id])).rows[0]!.status, 'Running');

      await st.store.put(`${prefix}_SUCCESS`, marker);
      const good = await complete(st, lease, { status: 'Completed', datasets_published: [pub], outputs: out.outputs });
      assert.equal(good.status, 200, JSON.stringify(good.body));
      await waitFor('range committed', async () => (await ranges(st, 'v'))[0]!.status === 'completed', 10_000);
      const again = await complete(st, lease, { status: 'Completed', datasets_published: [pub] });
      assert.equal(again.status, 200, 'a repeat is a no-op');
      await st.plugin.tick();
      assert.equal(await count(st.state, `SELECT count(*)::int AS n FROM partition_versions WHERE dataset_uuid = $1 AND partition_key = '0-100'`, [uuid]), 1);
      assert.equal(await count(st.state, `SELECT count(*)::int AS n FROM dataset_versions WHERE dataset_uuid = $1 AND range_start = 0 AND range_end = 100 AND config_hash NOT LIKE 'view:%'`, [uuid]), 1);
      const files = await currentFiles(st.state, uuid);
      assert.deepEqual(files, [`${st.store.localDir(prefix)}/network_1337__blocks__00000000_to_00000099.parquet`]);

      // The completion hook (what completeTask calls inside its transaction) verifies and commits too.
      const l1 = await claim(st, r1!.task_id);
      const o1 = await runOperator(fake, l1);
      const job = (await st.state.query<any>(`SELECT id, operator, dag_name, config FROM jobs WHERE id = (SELECT job_id FROM tasks WHERE id = $1)`, [r1!.task_id])).rows[0];
      await assert.rejects(st.state.tx((q) => st.plugin.completionHook(q, { id: r1!.task_id, attempt: 1 }, job, { status: 'Completed', datasets_published: [] })), /exactly one dataset/);
      assert.equal(await st.state.tx((q) => st.plugin.completionHook(q, { id: r1!.task_id, attempt: 1 }, job, { status: 'Completed', datasets_published: o1.datasets_published })), true);
      assert.equal(await st.state.tx((q) => st.plugin.completionHook(q, { id: r1!.task_id, attempt: 1 }, { ...job, operator: 'noop' }, { status: 'Completed', datasets_published: [] })), false);
      assert.equal((await ranges(st, 'v'))[1]!.status, 'completed');
      assert.equal((await currentFiles(st.state, uuid)).length, 2);
      assert.equal((await complete(st, l1, { status: 'Completed', datasets_published: o1.datasets_published })).status, 200);
      await st.plugin.tick();
      assert.equal(await count(st.state, `SELECT count(*)::int AS n FROM partition_versions WHERE dataset_uuid = $1`, [uuid]), 2);

      // A query pinned to an earlier view keeps its exact file list.
      const firstView = (await st.state.query<{ storage_ref: unknown }>(`SELECT storage_ref FROM dataset_versions WHERE dataset_uuid = $1 AND config_hash LIKE 'view:%' ORDER BY created_at LIMIT 1`, [uuid])).rows[0]!;
      assert.equal((await resolveStorageFiles(parseStorageRef(firstView.storage_ref))).length, 1);

      // A task canceled by an admin gives its range up; resume re-plans it on a new task.
      assert.equal((await st.api('POST', `/v1/tasks/${r2!.task_id}/cancel`)).status, 200);
      const gaveUp = await st.api('GET', '/v1/chain-sync/v');
      assert.equal(gaveUp.body.streams[0].inflight.gave_up, 1);
      assert.match(gaveUp.body.reason, /gave up/);
      const resumed = await st.api('POST', '/v1/chain-sync/v/resume');
      assert.equal(resumed.body.redriven, 1);
      const r2b = (await ranges(st, 'v'))[2]!;
      assert.notEqual(r2b.task_id, r2!.task_id);
      const l2 = await claim(st, r2b.task_id);
      const o2 = await runOperator(fake, l2);
      assert.equal((await complete(st, l2, { status: 'Completed', datasets_published: o2.datasets_published })).status, 200);
      const done = await waitFor('completed', async () => { const s = await st.api('GET', '/v1/chain-sync/v'); return s.body.state === 'completed' ? s.body : undefined; }, 10_000);
      assert.equal(done.streams[0].committed_blocks, 300);
      assert.equal(done.streams[0].rows, 300);
      assert.equal((await currentFiles(st.state, uuid)).length, 3);
    } finally {
      await st.stop();
      await dbs.close();
    }
  });
  test(`${backend}: follow_head ranges stay in the chunk grid; a window of small ranges is compacted into one, and the view switches at once`, async () => {
    const dbs = await freshDbs(backend);
    const st = await startStack({ state: dbs.state, pools: DEAD_POOL, plannerIntervalMs: 100 });
    try {
      const a = await st.api('POST', '/v1/chain-sync', followYaml('f', 1337, { chunk: 10, inflight: 4, lag: 0, maxAge: 600, streams: ['blocks'] }));
      assert.equal(a.status, 201, JSON.stringify(a.body));
      const uuid = a.body.streams[0].dataset_uuid as string;
      const fake = createCryoIngestOperator({ objectStore: st.store, mode: 'fake' });
      // The head observer cannot reach DEAD_POOL (it only records errors); heads are set here.
      const head = (n: number) => st.state.query(
        `INSERT INTO chain_head_observations (org_id, chain_id, rpc_pool, head_block, observed_at, source, last_attempt_at) VALUES ($1, 1337, 'dev', $2, now(), 'test', now())
         ON CONFLICT (org_id, chain_id, rpc_pool) DO UPDATE SET head_block = EXCLUDED.head_block, observed_at = now()`, [st.orgId, n]);
      const run = async (taskId: string) => {
        const l = await claim(st, taskId);
        const o = await runOperator(fake, l);
        const r = await complete(st, l, { status: 'Completed', datasets_published: o.datasets_published, outputs: o.outputs });
        assert.equal(r.status, 200, JSON.stringify(r.body));
      };
      const spans = async () => (await ranges(st, 'f')).map((r) => [r.range_start, r.range_end]);
      const compactions = async () => (await st.state.query<{ range_start: number; range_end: number; status: string; task_id: string; replaces: number }>(
        `SELECT range_start::int8 AS range_start, range_end::int8 AS range_end, status, task_id, replaces FROM chain_sync_compactions ORDER BY range_start`)).rows
        .map((c) => ({ ...c, range_start: Number(c.range_start), range_end: Number(c.range_end) }));
      const rowsOf = async (files: string[]) => (await duck<{ n: bigint; d: bigint; lo: number; hi: number }>(
        `SELECT count(*) AS n, count(DISTINCT block_number) AS d, min(block_number) AS lo, max(block_number) AS hi FROM read_parquet(${fileList(files)})`))[0]!;

      // The head moves a few blocks at a time; a range is cut at the grid line 10.
      await head(2);
      await waitFor('[0,3)', async () => (await spans()).length === 1);
      await head(6);
      await waitFor('[3,7)', async () => (await spans()).length === 2);
      await head(13);
      await waitFor('4 ranges', async () => (await spans()).length === 4);
      assert.deepEqual(await spans(), [[0, 3], [3, 7], [7, 10], [10, 14]]);
      for (const r of await ranges(st, 'f')) await run(r.task_id);
      const small = await currentFiles(st.state, uuid);
      assert.equal(small.length, 4);

      // [0,10) is complete with three ranges: one compaction re-ingests it whole.
      const [c] = await waitFor('compaction planned', async () => { const cs = await compactions(); return cs.length === 1 ? cs : undefined; });
      assert.deepEqual([c!.range_start, c!.range_end, c!.status, c!.replaces], [0, 10, 'scheduled', 3]);
      const lease = await claim(st, c!.task_id);
      assert.deepEqual([lease.task.trigger.range_start, lease.task.trigger.range_end], [0, 10]);
      assert.deepEqual(await currentFiles(st.state, uuid), small, 'nothing switches before the compaction commits');
      const o = await runOperator(fake, lease);
      assert.equal((await complete(st, lease, { status: 'Completed', datasets_published: o.datasets_published, outputs: o.outputs })).status, 200);
      const after = await currentFiles(st.state, uuid);
      assert.equal(after.length, 2, 'the window is one file set now, beside [10,14)');
      assert.ok(after.some((f) => f.endsWith('__00000000_to_00000009.parquet')));
      assert.ok(after.some((f) => f.endsWith('__00000010_to_00000013.parquet')));
      const got = await rowsOf(after);
      assert.deepEqual([Number(got.n), Number(got.d), Number(got.lo), Number(got.hi)], [14, 14, 0, 13], 'every block once');
      assert.deepEqual(await spans(), [[0, 3], [3, 7], [7, 10], [10, 14]], 'the ledger is never rewritten');
      const s1 = (await st.api('GET', '/v1/chain-sync/f')).body.streams[0];
      assert.deepEqual(s1.compaction, { windows: 1, in_flight: 0, abandoned: 0 });
      assert.equal(s1.committed_blocks, 14);

      // A compaction whose task gives up is abandoned; the small ranges keep serving the window.
      await head(19);
      await waitFor('[14,20)', async () => (await spans()).length === 5);
      await run((await ranges(st, 'f'))[4]!.task_id);
      const c2 = await waitFor('second compaction', async () => (await compactions()).find((x) => x.range_start === 10));
      assert.equal((await st.api('POST', `/v1/tasks/${c2.task_id}/cancel`)).status, 200);
      await waitFor('abandoned', async () => (await compactions()).find((x) => x.range_start === 10)?.status === 'abandoned');
      const view = await currentFiles(st.state, uuid);
      assert.equal(view.length, 3);
      const all = await rowsOf(view);
      assert.deepEqual([Number(all.n), Number(all.d)], [20, 20]);
      assert.deepEqual((await st.api('GET', '/v1/chain-sync/f')).body.streams[0].compaction, { windows: 1, in_flight: 0, abandoned: 1 });
      await sleep(300);
      assert.equal((await compactions()).length, 2, 'an abandoned window is not planned again');
    } finally {
      await st.stop();
      await dbs.close();
    }
  });
}
