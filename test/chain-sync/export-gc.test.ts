/**
 * Export and garbage collection against a follow_head sync of the dev chain whose small ranges
 * were compacted, so the store holds superseded files next to the ones the dataset reads:
 * - a DuckDB glob over the store sees blocks more than once before `trace gc` and exactly once
 *   after it; `trace gc --dry-run` lists what would go and changes nothing;
 * - gc never removes what a dataset's current version or a queued task references, nor staging
 *   younger than its retention, and it removes orphaned staging past it;
 * - `trace datasets export` (through the Dispatcher and through the Gateway) writes a folder of
 *   Cryo-named files whose DuckDB glob equals the dataset's query answer;
 * - refusals (unknown dataset, another org, no read role, a file outside the plan, a non-empty
 *   folder) change nothing.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readdir, rm, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BACKENDS, freshDbs } from '../support/db.js';
import { TEST_SECRETS } from '../support/dispatcher.js';
import { mintDevUserToken, createUserVerifier } from '../../src/auth/user.js';
import { bootstrapDeployment, ensureUser } from '../../src/dispatcher/identity.js';
import { buildGateway } from '../../src/gateway/gateway.js';
import { listen } from '../../src/core/http.js';
import { silentLogger } from '../../src/core/log.js';
import { newId } from '../../src/core/ids.js';
import { datasetPrefix } from '../../src/operators/cryo_ingest/payload.js';
import { datasetsExport, gcCmd } from '../../src/cli/commands/export.js';
import { count, currentFiles, duck, fileList, followYaml, sleep, startDevChain, startStack, runCommand as run, waitFor } from './support.js';

const backend = BACKENDS.includes('pglite') ? 'pglite' : 'postgres';

const CRYO_NAME = /^network_1337__(blocks|logs)__(\d{8})_to_(\d{8})\.parquet$/;
const BLOCK_ROWS = (files: string) => `SELECT block_number::BIGINT AS n, lower(hex(block_hash)) AS h FROM read_parquet(${files}) ORDER BY n`;
const LOG_ROWS = (files: string) => `SELECT block_number::BIGINT AS n, log_index::BIGINT AS i, lower(hex(transaction_hash)) AS t FROM read_parquet(${files}) ORDER BY n, i`;

test(`${backend}: export writes a clean Cryo folder; gc removes superseded and orphaned objects, never what a current version or a queued task references`, { timeout: 600_000 }, async () => {
  const chain = await startDevChain(1337);
  const dbs = await freshDbs(backend);
  const st = await startStack({
    state: dbs.state, pools: { dev: [chain.url] }, workers: 2,
    settings: { requeueAfterSeconds: 3600, gcSupersededRetentionSeconds: 0, gcStagingRetentionSeconds: 3600, gcOutboxRetentionSeconds: 0, gcTaskHistoryRetentionSeconds: 0 },
  });
  const home = await mkdtemp(join(tmpdir(), 'trace-export-'));
  const saved = { url: process.env.TRACE_DISPATCHER_URL, token: process.env.TRACE_TOKEN, home: process.env.TRACE_HOME };
  process.env.TRACE_DISPATCHER_URL = st.url;
  process.env.TRACE_TOKEN = st.adminToken;
  process.env.TRACE_HOME = home;
  const gateway = buildGateway({
    routes: { dispatcherUrl: st.url, queryUrl: 'http://127.0.0.1:9' },
    userVerifier: createUserVerifier({ mode: 'dev', secret: TEST_SECRETS.user }),
    limits: { userPerMinute: 100_000, orgPerMinute: 100_000 },
    log: silentLogger,
  });
  const gatewayUrl = await listen(gateway, '127.0.0.1', 0);
  try {
    const status = async () => (await st.api('GET', '/v1/chain-sync/gc_follow')).body;
    const a = await st.api('POST', '/v1/chain-sync', followYaml('gc_follow', 1337, { lag: 2, poll: 1, maxAge: 5, chunk: 20, inflight: 4, streams: ['blocks', 'logs'] }));
    assert.equal(a.status, 201, JSON.stringify(a.body));
    const uuids = Object.fromEntries(a.body.streams.map((s: any) => [s.dataset_key, s.dataset_uuid])) as { blocks: string; logs: string };
    const bases = { blocks: datasetPrefix(1337, uuids.blocks), logs: datasetPrefix(1337, uuids.logs) };

    // The head moves a few blocks at a time and the sync follows: several small ranges per grid
    // window of 20, which are then compacted.
    while ((await chain.head()) < 46) {
      await chain.mineTransfers(2);
      await chain.mineEmpty(4);
      const bound = (await chain.head()) + 1 - 2;
      let last: any;
      await waitFor('the sync follows the head', async () => {
        last = await status();
        return last.streams.every((x: any) => x.committed_through >= bound);
      }, 180_000, 100).catch((e: Error) => { throw new Error(`${e.message} to ${bound}: ${JSON.stringify(last)}`); });
    }
    await waitFor('two compacted windows per stream', async () =>
      (await status()).streams.every((x: any) => x.compaction.windows >= 2 && x.compaction.in_flight === 0), 60_000, 200);

    // Workers stop; one more head move leaves a range task Queued.
    await Promise.all(st.workers.map((w) => w.stop({ graceMs: 0 })));
    st.workers.length = 0;
    await chain.mineEmpty(5);
    const queued = await waitFor('a queued range', async () => (await dbs.state.query<{ task_id: string }>(
      `SELECT r.task_id FROM chain_sync_scheduled_ranges r JOIN tasks t ON t.id = r.task_id WHERE r.status = 'scheduled' AND t.status = 'Queued' AND r.dataset_key = 'blocks'`)).rows[0]?.task_id, 30_000, 200);
    const done = (await dbs.state.query<{ task_id: string }>(
      `SELECT task_id FROM chain_sync_scheduled_ranges WHERE status = 'completed' AND dataset_key = 'blocks' ORDER BY range_start DESC LIMIT 1`)).rows[0]!.task_id;

    // What the Query Service reads (the current view) and what a glob over the store sees.
    const answer = {
      blocks: await duck(BLOCK_ROWS(fileList(await currentFiles(dbs.state, uuids.blocks)))),
      logs: await duck(LOG_ROWS(fileList(await currentFiles(dbs.state, uuids.logs)))),
    };
    const committed = answer.blocks.length;
    assert.ok(committed >= 44, `committed ${committed} blocks`);
    assert.equal(new Set(answer.blocks.map((r: any) => r.n)).size, committed);
    assert.ok(answer.logs.length > 0);
    const glob = async (k: 'blocks' | 'logs') => (await duck<{ n: bigint; d: bigint }>(
      `SELECT count(*) AS n, count(DISTINCT block_number) AS d FROM read_parquet('${join(st.objectRoot, bases[k])}**/*.parquet')`))[0]!;
    const before = await glob('blocks');
    assert.ok(Number(before.n) > Number(before.d), `a glob over the store sees blocks more than once (${before.n} rows, ${before.d} blocks)`);
    assert.equal(Number(before.d), committed);

    // Planted objects: staging of the queued task (old), orphaned staging of a finished task (one
    // old, one fresh), and a superseded range that another dataset's current version still reads.
    const abs = (key: string) => join(st.objectRoot, key);
    const plant = async (key: string, ageDays: number) => {
      await mkdir(join(abs(key), '..'), { recursive: true });
      await writeFile(abs(key), 'partial output');
      if (ageDays > 0) {
        const t = new Date(Date.now() - ageDays * 86_400_000);
        await utimes(abs(key), t, t);
      }
    };
    const live = `${bases.blocks}${queued}/1/part.tmp`;
    const orphanOld = `${bases.blocks}${done}/9/part.tmp`;
    const orphanFresh = `${bases.blocks}${done}/8/part.tmp`;
    await plant(live, 2);
    await plant(orphanOld, 2);
    await plant(orphanFresh, 0);
    const superseded = (await dbs.state.query<{ files: string[] }>(
      `SELECT r.files FROM chain_sync_scheduled_ranges r JOIN chain_sync_compactions c ON c.job_id = r.job_id AND c.dataset_key = r.dataset_key
       AND c.status = 'completed' AND r.range_start >= c.range_start AND r.range_end <= c.range_end
       WHERE r.dataset_key = 'logs' AND r.status = 'completed' AND jsonb_array_length(r.files) > 0 ORDER BY r.range_start LIMIT 1`)).rows[0]!.files;
    const pinnedDir = join(st.objectRoot, bases.logs, superseded[0]!.split('/').slice(0, 2).join('/'));
    const pinnedUuid = newId();
    const pinnedVersion = newId();
    await dbs.state.query(`INSERT INTO datasets (id, org_id, name, kind) VALUES ($1, $2, 'pinned_range', 'external')`, [pinnedUuid, st.orgId]);
    await dbs.state.query(`INSERT INTO dataset_versions (id, dataset_uuid, storage_ref) VALUES ($1, $2, $3)`,
      [pinnedVersion, pinnedUuid, JSON.stringify({ scheme: 'file', prefix: `${pinnedDir}/`, glob: '*.parquet' })]);
    await dbs.state.query(`UPDATE datasets SET current_version = $2 WHERE id = $1`, [pinnedUuid, pinnedVersion]);
    // every object of that attempt prefix (Parquet, manifest.json, _SUCCESS)
    const pinnedKeys = (await st.store.list(`${bases.logs}${superseded[0]!.split('/').slice(0, 2).join('/')}/`)).map((o) => o.key);
    assert.ok(pinnedKeys.length >= 3);

    // ---- Export (before gc: the store still holds superseded files) ----------------------------
    const out = await mkdtemp(join(tmpdir(), 'trace-export-out-'));
    try {
      const plan = (await st.api('GET', '/v1/datasets/gc_follow_blocks/export')).body;
      assert.equal(plan.version, (await dbs.state.query<{ v: string }>(`SELECT current_version AS v FROM datasets WHERE id = $1`, [uuids.blocks])).rows[0]!.v);
      // one file per range, Cryo names, the ranges tile [0, committed) without overlap
      let next = 0;
      for (const f of plan.files) {
        const m = CRYO_NAME.exec(f.name);
        assert.ok(m, f.name);
        assert.equal(f.range_start, Number(m[2]));
        assert.equal(f.range_end, Number(m[3]) + 1);
        assert.equal(f.range_start, next, `ranges tile without gaps or overlap at ${f.name}`);
        next = f.range_end;
      }
      assert.equal(next, committed);
      assert.ok(plan.files.length < (await readdir(join(st.objectRoot, bases.blocks), { recursive: true })).filter((x) => String(x).endsWith('.parquet')).length,
        'the store holds more Parquet files than the plan');

      const exported = JSON.parse(await run(datasetsExport, ['gc_follow_blocks', '--to', join(out, 'blocks'), '--json']));
      assert.equal(exported.files, plan.files.length);
      assert.deepEqual((await readdir(join(out, 'blocks'))).sort(), plan.files.map((f: any) => f.name).sort());
      assert.deepEqual(await duck(BLOCK_ROWS(`'${join(out, 'blocks')}/*.parquet'`)), answer.blocks);
      // through the Gateway
      process.env.TRACE_DISPATCHER_URL = gatewayUrl;
      await run(datasetsExport, ['gc_follow_logs', '--to', join(out, 'logs')]);
      process.env.TRACE_DISPATCHER_URL = st.url;
      assert.ok((await readdir(join(out, 'logs'))).every((n) => CRYO_NAME.test(n)));
      assert.deepEqual(await duck(LOG_ROWS(`'${join(out, 'logs')}/*.parquet'`)), answer.logs);

      // ---- Refusals change nothing -------------------------------------------------------------
      const snapshot = async () => (await st.store.list('')).map((o) => `${o.key}:${o.size}`);
      const storeBefore = await snapshot();
      await assert.rejects(run(datasetsExport, ['nope', '--to', join(out, 'nope')]), (e: any) => e.code === 'DATASET_NOT_FOUND');
      await assert.rejects(readdir(join(out, 'nope')), { code: 'ENOENT' });
      await assert.rejects(run(datasetsExport, ['gc_follow_blocks', '--to', join(out, 'blocks')]), (e: any) => e.code === 'DIR_NOT_EMPTY');
      assert.deepEqual((await readdir(join(out, 'blocks'))).sort(), plan.files.map((f: any) => f.name).sort());
      // --force writes into it
      await run(datasetsExport, ['gc_follow_blocks', '--to', join(out, 'blocks'), '--force']);
      assert.deepEqual(await duck(BLOCK_ROWS(`'${join(out, 'blocks')}/*.parquet'`)), answer.blocks);

      const get = async (url: string, path: string, token: string) => {
        const r = await fetch(`${url}${path}`, { headers: { authorization: `Bearer ${token}` } });
        const bytes = Buffer.from(await r.arrayBuffer());
        return { status: r.status, bytes, body: (() => { try { return JSON.parse(bytes.toString('utf8')); } catch { return undefined; } })() };
      };
      const file = (name: string, v = plan.version) => `/v1/datasets/gc_follow_blocks/export/files/${name}?version=${v}`;
      // a superseded small file exists in the store but is not in the plan
      const small = (await dbs.state.query<{ files: string[] }>(
        `SELECT r.files FROM chain_sync_scheduled_ranges r JOIN chain_sync_compactions c ON c.job_id = r.job_id AND c.dataset_key = r.dataset_key
         AND c.status = 'completed' AND r.range_start >= c.range_start AND r.range_end <= c.range_end
         WHERE r.dataset_key = 'blocks' AND r.status = 'completed' ORDER BY r.range_start LIMIT 1`)).rows[0]!.files[0]!.split('/').pop()!;
      for (const url of [st.url, gatewayUrl]) {
        const notInPlan = await get(url, file(small), st.adminToken);
        assert.equal(notInPlan.status, 404, JSON.stringify(notInPlan.body));
        assert.equal(notInPlan.body.code, 'EXPORT_FILE_NOT_FOUND');
        const ok = await get(url, file(plan.files[0].name), st.adminToken);
        assert.equal(ok.status, 200);
        assert.equal(ok.bytes.length, plan.files[0].bytes);
        assert.equal(ok.bytes.subarray(0, 4).toString('latin1'), 'PAR1');
      }
      assert.equal((await get(st.url, file(plan.files[0].name, pinnedVersion), st.adminToken)).body.code, 'VERSION_NOT_FOUND');
      assert.equal((await get(st.url, '/v1/datasets/gc_follow_blocks/export/files/..%2Fx?version=' + plan.version, st.adminToken)).status, 400);
      assert.equal((await get(st.url, '/v1/datasets/nope/export', st.adminToken)).body.code, 'DATASET_NOT_FOUND');

      // another org's admin, and a member without the dataset's read role
      await bootstrapDeployment(dbs.state, { orgSlug: 'other', adminSub: 'eve' });
      await ensureUser(dbs.state, st.orgId, 'bob', ['member']);
      const eve = await mintDevUserToken(TEST_SECRETS.user, 'eve');
      const bob = await mintDevUserToken(TEST_SECRETS.user, 'bob');
      for (const url of [st.url, gatewayUrl]) {
        assert.equal((await get(url, '/v1/datasets/gc_follow_blocks/export', eve)).body.code, 'NOT_A_MEMBER');
        assert.equal((await get(url, file(plan.files[0].name), eve)).body.code, 'NOT_A_MEMBER');
      }
      assert.equal((await get(st.url, '/v1/datasets/gc_follow_blocks/export', bob)).status, 200);
      await dbs.state.query(`UPDATE datasets SET read_roles = '{finance}' WHERE id = $1`, [uuids.blocks]);
      const forbidden = await get(st.url, file(plan.files[0].name), bob);
      assert.equal(forbidden.status, 403);
      assert.equal(forbidden.body.code, 'DATASET_FORBIDDEN');
      assert.equal((await get(st.url, '/v1/datasets/gc_follow_blocks/export', bob)).body.code, 'DATASET_FORBIDDEN');
      assert.equal((await get(st.url, '/v1/gc', bob)).status, 405);
      const bobGc = await fetch(`${st.url}/v1/gc`, { method: 'POST', headers: { authorization: `Bearer ${bob}`, 'content-type': 'application/json' }, body: '{}' });
      assert.equal(bobGc.status, 403);
      await dbs.state.query(`UPDATE datasets SET read_roles = '{}' WHERE id = $1`, [uuids.blocks]);
      assert.deepEqual(await snapshot(), storeBefore);
    } finally {
      await rm(out, { recursive: true, force: true });
    }

    // ---- gc --dry-run lists and changes nothing --------------------------------------------------
    const rows = async () => ({
      outbox: await count(dbs.state, `SELECT count(*) AS n FROM outbox WHERE status = 'Done'`),
      attempts: await count(dbs.state, `SELECT count(*) AS n FROM task_attempts`),
      events: await count(dbs.state, `SELECT count(*) AS n FROM task_events`),
    });
    const storeBefore = (await st.store.list('')).map((o) => o.key);
    const rowsBefore = await rows();
    assert.ok(rowsBefore.outbox > 0 && rowsBefore.attempts > 0);
    const dry = JSON.parse(await run(gcCmd, ['--dry-run', '--json']));
    assert.equal(dry.dry_run, true);
    const dryKeys = new Set<string>(dry.object_keys.map((o: any) => o.key));
    assert.ok(dry.objects.superseded > 0);
    assert.ok(dryKeys.has(orphanOld));
    assert.equal(dry.object_keys.find((o: any) => o.key === orphanOld).reason, 'staging');
    for (const k of [live, orphanFresh, ...pinnedKeys]) assert.ok(!dryKeys.has(k), `${k} stays`);
    assert.equal(dry.rows.outbox, rowsBefore.outbox);
    assert.equal(dry.rows.task_attempts, rowsBefore.attempts, 'every attempt belongs to a finished task (the queued one has none)');
    assert.deepEqual((await st.store.list('')).map((o) => o.key), storeBefore);
    assert.deepEqual(await rows(), rowsBefore);
    assert.match(await run(gcCmd, ['--dry-run']), /^would remove \d+ superseded objects, 1 staging object/);

    // ---- gc removes them; the current versions and the queued task keep theirs ------------------
    const gc = JSON.parse(await run(gcCmd, ['--json']));
    assert.equal(gc.dry_run, false);
    assert.deepEqual(new Set(gc.object_keys.map((o: any) => o.key)), dryKeys);
    const storeAfter = new Set((await st.store.list('')).map((o) => o.key));
    for (const k of dryKeys) assert.ok(!storeAfter.has(k), `${k} removed`);
    for (const k of [live, orphanFresh, ...pinnedKeys]) assert.ok(storeAfter.has(k), `${k} kept`);
    for (const f of [...await currentFiles(dbs.state, uuids.blocks), ...await currentFiles(dbs.state, uuids.logs)]) {
      assert.ok(storeAfter.has(f.slice(st.objectRoot.length + 1)), `current file ${f} kept`);
    }
    assert.deepEqual(await rows(), { outbox: 0, attempts: 0, events: 0 });
    assert.equal((await dbs.state.query<{ status: string }>(`SELECT status FROM tasks WHERE id = $1`, [queued])).rows[0]!.status, 'Queued');
    const after = await glob('blocks');
    assert.equal(Number(after.n), committed, 'each block exactly once in a glob over the store');
    assert.equal(Number(after.d), committed);
    assert.deepEqual(await duck(BLOCK_ROWS(fileList(await currentFiles(dbs.state, uuids.blocks)))), answer.blocks);
    // logs: the pinned range still doubles its blocks until nothing reads it
    await dbs.state.query(`UPDATE datasets SET current_version = NULL WHERE id = $1`, [pinnedUuid]);
    const again = JSON.parse(await run(gcCmd, ['--json']));
    assert.deepEqual(new Set(again.object_keys.map((o: any) => o.key)), new Set(pinnedKeys));
    const logsGlob = await duck<{ n: bigint }>(`SELECT count(*) AS n FROM read_parquet('${join(st.objectRoot, bases.logs)}**/*.parquet')`);
    assert.equal(Number(logsGlob[0]!.n), answer.logs.length, 'each log exactly once in a glob over the store');

    // The queued range still runs and commits after gc.
    st.startWorkers(1);
    await waitFor('the queued range committed', async () => (await dbs.state.query<{ status: string }>(
      `SELECT status FROM chain_sync_scheduled_ranges WHERE task_id = $1`, [queued])).rows[0]?.status === 'completed', 60_000, 200);
    await sleep(200);
    const final = await glob('blocks');
    assert.equal(Number(final.n), Number(final.d));
  } finally {
    for (const [k, v] of Object.entries({ TRACE_DISPATCHER_URL: saved.url, TRACE_TOKEN: saved.token, TRACE_HOME: saved.home })) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
    await gateway.close();
    await st.stop();
    await dbs.close();
    await chain.close();
    await rm(home, { recursive: true, force: true });
  }
});
