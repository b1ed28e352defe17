/**
 * Data invalidations on the one-process platform (real Dispatcher and databases, tasks driven by
 * hand over the worker contract): an invalidation re-runs the producing task of its scope once,
 * and each downstream task that read the scope once, also when invalidations overlap or
 * processing is cut off and done again; bad requests change nothing; the history shows it all.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { BACKENDS } from '../support/db.js';
import { startPlatform, waitFor, type TestPlatform } from '../support/platform.js';
import { claimOk, deploy, taskCall, trigger, twoJobDag } from '../support/drive.js';
import { trace } from '../cli/support.js';

const WAIT = 120_000;

for (const backend of BACKENDS) {
  describe(`data invalidations (${backend})`, () => {
    let p: TestPlatform;
    let src: { dataset_uuid: string; dataset_version: string };
    const roots: Record<string, { src: string; down: string }> = {};

    const q = async <T = any>(sql: string, params: unknown[] = []) => (await p.dbs.state.query<T & Record<string, unknown>>(sql, params)).rows;
    /** Tasks of a job (of the active DAG), with their attempts. */
    const tasksOf = (job: string) => q<{ id: string; status: string; kind: string | null; reruns: string | null; invalidation_ids: string[]; attempts: number }>(
      `SELECT t.id, t.status, t.trigger->>'kind' AS kind, t.trigger->>'reruns' AS reruns,
              ARRAY(SELECT jsonb_array_elements_text(coalesce(t.trigger->'invalidation_ids', '[]'::jsonb))) AS invalidation_ids,
              (SELECT count(*)::int FROM task_attempts a WHERE a.task_id = t.id) AS attempts
       FROM tasks t JOIN jobs j ON j.id = t.job_id JOIN dag_current_versions c ON c.dag_version_id = j.dag_version_id
       WHERE j.dag_name = 'inv' AND j.name = $1 ORDER BY t.created_at, t.id`, [job]);
    const reruns = async (job: string, root: string) => (await tasksOf(job)).filter((t) => t.reruns === root);
    const unprocessed = async () => Number((await q<{ n: number }>(`SELECT count(*)::int AS n FROM data_invalidations WHERE processed_at IS NULL`))[0]!.n);
    const settled = () => waitFor('every invalidation processed', async () => (await unprocessed()) === 0, WAIT);

    /** Runs one queued task by hand; src tasks emit their partition as an event on inv_src. */
    const run = async (taskId: string, key?: string) => {
      const lease = await claimOk(p, taskId);
      const done = await taskCall(p, 'complete', lease, { status: 'Completed', events: key ? [{ ...src, partition_key: key, start: Number(key.split('-')[0]), end: Number(key.split('-')[1]) }] : [] });
      assert.equal(done.status, 200, JSON.stringify(done.body));
    };
    const queuedRerun = (job: string, root: string) => waitFor(`a queued re-run of ${job} ${root}`, async () =>
      (await reruns(job, root)).find((t) => t.status === 'Queued'), WAIT);
    const invalidate = (body: unknown, name = 'inv_src') => p.api('POST', `/v1/datasets/${name}/invalidations`, body);

    /** Re-runs everything an invalidation set off, level by level, until nothing is left to process. */
    const drive = async (root: { src: string; down: string }) => {
      await settled();
      const s = (await reruns('src', root.src)).filter((t) => t.status === 'Queued');
      for (const t of s) await run(t.id, key(root));
      await settled();
      const d = (await reruns('down', root.down)).filter((t) => t.status === 'Queued');
      for (const t of d) await run(t.id);
      await settled();
    };
    const key = (root: { src: string }) => Object.entries(roots).find(([, r]) => r.src === root.src)![0];

    before(async () => {
      p = await startPlatform(backend, { workers: 0, settings: { leaseSeconds: 120 } });
      const d = await deploy(p, twoJobDag({ name: 'inv', srcOp: 'noop', publish: true }));
      const ds = d.datasets.find((x: { name: string | null }) => x.name === 'inv_src');
      src = { dataset_uuid: ds.dataset_uuid, dataset_version: ds.dataset_version };
      // Three ranges: src produces each, down reads each.
      for (const [a, b] of [[0, 100], [100, 200], [200, 300]] as const) {
        const k = `${a}-${b}`;
        const s = await trigger(p, 'inv', 'src', { start: a, end: b });
        await run(s, k);
        const down = await waitFor(`the down task of ${k}`, async () => (await q<{ id: string }>(
          `SELECT t.id FROM tasks t JOIN task_inputs i ON i.task_id = t.id JOIN jobs j ON j.id = t.job_id
           WHERE j.name = 'down' AND i.input_partition_key = $1 AND t.status = 'Queued'`, [k]))[0]?.id, WAIT);
        await run(down);
        roots[k] = { src: s, down };
      }
    });
    after(async () => {
      await p?.close();
    });

    it('a row range re-runs the producing task and each downstream task of that range exactly once', async () => {
      const before = { src: (await tasksOf('src')).length, down: (await tasksOf('down')).length };
      const r = await invalidate({ scope: 'row_range', start: 10, end: 20, reason: 'reorg' });
      assert.equal(r.status, 201, JSON.stringify(r.body));
      assert.equal(r.body.scope, 'row_range');
      assert.deepEqual(r.body.row_filter, { block_number: { gte: 10, lt: 20 } });
      const root = roots['0-100']!;
      const sr = await queuedRerun('src', root.src);
      assert.equal(sr.kind, 'invalidation');
      assert.deepEqual(sr.invalidation_ids, [r.body.id]);
      // The downstream re-run waits for the upstream one: nothing of down re-runs yet.
      await settled();
      assert.equal((await reruns('down', root.down)).length, 0, 'down re-runs only once src rewrote the range');
      await drive(root);
      const s = await tasksOf('src');
      const d = await tasksOf('down');
      assert.equal(s.length, before.src + 1, 'one src re-run');
      assert.equal(d.length, before.down + 1, 'one down re-run');
      const sRe = await reruns('src', root.src);
      const dRe = await reruns('down', root.down);
      assert.deepEqual(sRe.map((t) => [t.status, t.attempts]), [['Completed', 1]]);
      assert.deepEqual(dRe.map((t) => [t.status, t.attempts]), [['Completed', 1]]);
      // The other ranges were not touched.
      for (const k of ['100-200', '200-300']) {
        assert.equal((await reruns('src', roots[k]!.src)).length, 0, k);
        assert.equal((await reruns('down', roots[k]!.down)).length, 0, k);
      }
      // The history of inv_src shows the invalidation, who re-ran and the cascade onto inv_down.
      const h = await p.api('GET', '/v1/datasets/inv_src/invalidations');
      assert.equal(h.status, 200, JSON.stringify(h.body));
      const inv = h.body.invalidations.find((x: { id: string }) => x.id === r.body.id);
      assert.equal(inv.status, 'done');
      assert.ok(inv.processed_at);
      assert.equal(inv.reason, 'reorg');
      assert.deepEqual(inv.processed_by.map((j: { job_name: string }) => j.job_name), ['src']);
      assert.deepEqual(inv.reruns.map((t: { task_id: string; status: string }) => [t.task_id, t.status]), [[sRe[0]!.id, 'Completed']]);
      assert.equal(inv.cascades.length, 1);
      assert.equal(inv.cascades[0].dataset_name, 'inv_src', 'the rewrite of inv_src');
      const down = await p.api('GET', '/v1/datasets/inv_down/invalidations');
      assert.equal(down.body.invalidations.length, 1, 'down re-run rewrote inv_down once');
      assert.equal(down.body.invalidations[0].source.kind, 'rewrite');
    });

    it('overlapping and duplicate invalidations arriving before the re-run starts run it once', async () => {
      const root = roots['100-200']!;
      const a = await invalidate({ scope: 'row_range', start: 120, end: 160 });
      const b = await invalidate({ scope: 'row_range', start: 150, end: 190 });
      const c = await invalidate({ scope: 'partition', partition_key: '100-200' });
      for (const r of [a, b, c]) assert.equal(r.status, 201, JSON.stringify(r.body));
      await settled();
      const pending = await reruns('src', root.src);
      assert.equal(pending.length, 1, 'one re-run for three overlapping invalidations');
      assert.deepEqual([...pending[0]!.invalidation_ids].sort(), [a.body.id, b.body.id, c.body.id].sort());
      await drive(root);
      assert.deepEqual((await reruns('src', root.src)).map((t) => [t.status, t.attempts]), [['Completed', 1]]);
      assert.deepEqual((await reruns('down', root.down)).map((t) => [t.status, t.attempts]), [['Completed', 1]]);
      const h = await p.api('GET', '/v1/datasets/inv_src/invalidations');
      for (const r of [a, b, c]) {
        const inv = h.body.invalidations.find((x: { id: string }) => x.id === r.body.id);
        assert.equal(inv.status, 'done', JSON.stringify(inv));
        assert.equal(inv.reruns.length, 1);
      }
    });

    it('processing done again (a lost mark, a crash before commit) creates no second re-run', async () => {
      const root = roots['200-300']!;
      const r = await invalidate({ scope: 'partition', partition_key: '200-300' });
      assert.equal(r.status, 201);
      await queuedRerun('src', root.src);
      await settled();
      // As if the processed mark had been lost: the Dispatcher processes the row again.
      await q(`UPDATE data_invalidations SET processed_at = NULL WHERE id = $1`, [r.body.id]);
      await settled();
      assert.equal((await reruns('src', root.src)).length, 1, 'processed twice, one re-run');
      if (backend === 'postgres') {
        // A crash mid-processing: hold the root task's lock so processing stops inside its
        // transaction, kill that backend, then let it go; the next pass does it once.
        await p.dbs.state.tx(async (tx) => {
          await tx.query(`SELECT 1 FROM tasks WHERE id = $1 FOR UPDATE`, [root.src]);
          const again = await invalidate({ scope: 'row_range', start: 210, end: 220 });
          assert.equal(again.status, 201);
          const pid = await waitFor('processing blocked on the root task', async () => (await tx.query<{ pid: number }>(
            `SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() AND wait_event_type = 'Lock'`)).rows[0]?.pid, WAIT);
          await tx.query(`SELECT pg_terminate_backend($1)`, [pid]);
        });
        await settled();
        const re = await reruns('src', root.src);
        assert.equal(re.length, 1, 'the invalidation processed after the crash joined the queued re-run');
        assert.equal(re[0]!.invalidation_ids.length, 2);
      }
      await drive(root);
      assert.deepEqual((await reruns('src', root.src)).map((t) => [t.status, t.attempts]), [['Completed', 1]]);
      assert.deepEqual((await reruns('down', root.down)).map((t) => [t.status, t.attempts]), [['Completed', 1]]);
    });

    it('refuses bad requests in the stable error shape and records nothing', async () => {
      const count = async () => Number((await q<{ n: number }>(`SELECT count(*)::int AS n FROM data_invalidations`))[0]!.n);
      const tasks = async () => Number((await q<{ n: number }>(`SELECT count(*)::int AS n FROM tasks`))[0]!.n);
      const n0 = await count();
      const t0 = await tasks();
      const cases: Array<[unknown, string, number, string]> = [
        [{ scope: 'row_range', start: 5, end: 5 }, 'inv_src', 400, 'INVALID_REQUEST'],
        [{ scope: 'row_range', start: 50, end: 10 }, 'inv_src', 400, 'INVALID_REQUEST'],
        [{ scope: 'row_range', start: -1, end: 10 }, 'inv_src', 400, 'INVALID_REQUEST'],
        [{ scope: 'everything' }, 'inv_src', 400, 'INVALID_REQUEST'],
        [{ scope: 'partition', partition_key: '0-100', extra: 1 }, 'inv_src', 400, 'INVALID_REQUEST'],
        [{ scope: 'row_range', start: 0, end: 10 }, 'nope', 404, 'DATASET_NOT_FOUND'],
        [{ scope: 'partition', partition_key: '7-8' }, 'inv_src', 422, 'PARTITION_NOT_FOUND'],
        // inv_down has no START-END partition: nothing published ranges there, nobody reads it by range.
        [{ scope: 'row_range', start: 0, end: 10 }, 'inv_down', 422, 'DATASET_NOT_RANGE_PARTITIONED'],
      ];
      for (const [body, name, status, code] of cases) {
        const r = await invalidate(body, name);
        assert.equal(r.status, status, `${JSON.stringify(body)} on ${name}: ${JSON.stringify(r.body)}`);
        assert.equal(r.body.code, code);
        assert.equal(typeof r.body.error, 'string');
      }
      const bad = await p.api('POST', '/v1/datasets/Bad-Name/invalidations', { scope: 'partition', partition_key: '0-100' });
      assert.equal(bad.status, 400);
      const member = await p.api('POST', '/v1/datasets/inv_src/invalidations', { scope: 'partition', partition_key: '0-100' }, { authorization: 'Bearer nope' });
      assert.equal(member.status, 401);
      assert.equal(await count(), n0, 'no invalidation recorded');
      assert.equal(await tasks(), t0, 'no task created');
    });

    it('trace invalidate records one and trace datasets show lists the history', async () => {
      const env = { TRACE_DISPATCHER_URL: p.url, TRACE_TOKEN: p.admin };
      const help = await trace(['invalidate', '--help'], env);
      assert.equal(help.code, 0, help.stderr);
      assert.match(help.stdout, /--partition KEY \| --range START:END/);
      const bad = await trace(['invalidate', 'inv_src', '--range', '9:3'], env);
      assert.notEqual(bad.code, 0);
      assert.match(bad.stderr, /END must be greater than START/);
      const both = await trace(['invalidate', 'inv_src', '--range', '1:3', '--partition', '0-100'], env);
      assert.notEqual(both.code, 0);
      const missing = await trace(['invalidate', 'nope', '--range', '1:3', '--json'], env);
      assert.notEqual(missing.code, 0);
      assert.equal(JSON.parse(missing.stderr).code, 'DATASET_NOT_FOUND');
      const ok = await trace(['invalidate', 'inv_src', '--range', '250:260', '--reason', 'cli check', '--json'], env);
      assert.equal(ok.code, 0, ok.stderr);
      const id = JSON.parse(ok.stdout).id as string;
      await settled();
      const shown = await trace(['datasets', 'show', 'inv_src'], env);
      assert.equal(shown.code, 0, shown.stderr);
      assert.match(shown.stdout, /history \(invalidations, newest first\):/);
      assert.ok(shown.stdout.includes(id), shown.stdout);
      assert.match(shown.stdout, /cli check/);
      assert.match(shown.stdout, /inv\.src \S+ Queued/, 'the re-run it set off');
      const asJson = await trace(['datasets', 'show', 'inv_src', '--json'], env);
      assert.equal(asJson.code, 0, asJson.stderr);
      const view = JSON.parse(asJson.stdout);
      assert.equal(view.name, 'inv_src');
      const mine = view.history.find((x: { id: string }) => x.id === id);
      assert.equal(mine.status, 'rerunning');
      assert.ok(mine.processed_at);
    });
  });
}
