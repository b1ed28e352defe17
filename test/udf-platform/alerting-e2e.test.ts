/**
 * Alerting end to end on the real parts: a Node bundle and a Python bundle (examples/udf, built
 * and uploaded like `trace udf upload`) each evaluate an alert over a Parquet dataset through
 * `/v1/task/query`, write a JSONL batch through a signed upload URL and publish it; the sink writes
 * the events once; the `alert_events` dataset event triggers `alert_route`, which creates one
 * delivery per channel (staleness-gated); the Delivery Service posts each notification to a
 * local receiver with a stable `Idempotency-Key`. Running the same tasks again, routing again, or
 * retrying an attempt that already published adds no rows and no second delivery.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { BACKENDS } from '../support/db.js';
import { buildBundleFromDir } from '../../src/cli/commands/udf.js';
import { yazlZip, manifestFor } from '../udf/support/zips.js';
import {
  buildUdfPlatform, deployDag, registerParquetDataset, triggerJob, uploadBundle, waitFor, waitTask, type UdfPlatform,
} from './support.js';
import { startReceiver, type Receiver } from '../alerting/support.js';

const ROOT = new URL('../../', import.meta.url).pathname;
const ago = (ms: number) => new Date(Date.now() - ms).toISOString();

function transfersSql(): string {
  const rows: Array<[number, string, number, string]> = [
    [100, `0x${'aa'.repeat(32)}`, 1500, ago(60_000)],
    [101, `0x${'bb'.repeat(32)}`, 20000, ago(50_000)],
    [102, `0x${'cc'.repeat(32)}`, 7000, ago(40_000)],
    [103, `0x${'dd'.repeat(32)}`, 10, ago(30_000)],
    [90, `0x${'ee'.repeat(32)}`, 99999, ago(30 * 86_400_000)], // too old to deliver
  ];
  const values = rows.map(([b, h, v, t]) => `(${b}::INTEGER, '${h}', ${v}::DOUBLE, TIMESTAMPTZ '${t}')`).join(', ');
  return `SELECT * FROM (VALUES ${values}) t(block_number, tx_hash, value, block_time)`;
}

for (const backend of BACKENDS) {
  describe(`alerting end to end: node and python bundles (${backend})`, () => {
    let p: UdfPlatform;
    let rec: Receiver;
    const ids = { a: '', b: '', c: '', nodeBundle: '' };
    before(async () => {
      p = await buildUdfPlatform(backend, { settings: { leaseSeconds: 30 } });
      rec = await startReceiver();
    });
    after(async () => {
      await p.close();
      await rec.close();
    });
    const count = async (sql: string, params: unknown[] = []) => Number((await p.dbs.data.query<{ n: number }>(sql, params)).rows[0]!.n);
    const eventsOf = (def: string) => count(`SELECT count(*)::int AS n FROM alert_events WHERE alert_definition_id = $1`, [def]);
    const deliveriesOf = (def: string) => count(`SELECT count(*)::int AS n FROM alert_deliveries WHERE alert_definition_id = $1`, [def]);
    const requestsFor = (def: string) => rec.requests.filter((r) => r.body.alert_definition_id === def);
    const quiet = async () => {
      await waitFor('the pipeline to go quiet', async () => {
        const busy = await p.dbs.state.query<{ n: number }>(`SELECT count(*)::int AS n FROM tasks WHERE status IN ('Queued', 'Running')`);
        const pending = await count(`SELECT count(*)::int AS n FROM alert_deliveries WHERE status = 'Pending'`);
        const outbox = await p.dbs.state.query<{ n: number }>(`SELECT count(*)::int AS n FROM outbox WHERE status = 'Pending'`);
        return Number(busy.rows[0]!.n) === 0 && pending === 0 && Number(outbox.rows[0]!.n) === 0 && (await p.queue.depth('buffers')) === 0;
      }, 30_000);
    };

    it('evaluates, sinks, routes and delivers each alert exactly once', async () => {
      const transfers = await registerParquetDataset(p, 'transfers', transfersSql());
      const a = await p.api('POST', '/v1/alerts', { name: 'node: transfers >= 1000', condition: { min_value: 1000 }, channels: [
        { name: 'ops', type: 'webhook', url: `${rec.url}/ops` }, { name: 'pager', type: 'webhook', url: `${rec.url}/pager` }] });
      const b = await p.api('POST', '/v1/alerts', { name: 'python: transfers >= 5000', condition: { min_value: 5000 }, channels: [{ type: 'webhook', url: `${rec.url}/b` }] });
      assert.equal(a.status, 201, JSON.stringify(a.body));
      assert.equal(b.status, 201);
      ids.a = a.body.id;
      ids.b = b.body.id;

      const nodeZip = await buildBundleFromDir(join(ROOT, 'examples/udf/node-alert'));
      const pyZip = await buildBundleFromDir(join(ROOT, 'examples/udf/python-alert'));
      assert.equal(nodeZip.manifest.entrypoint, 'index.mjs');
      assert.equal(pyZip.manifest.runtime, 'python');
      const nodeB = await uploadBundle(p, nodeZip.zip, { runtime: 'node' });
      const pyB = await uploadBundle(p, pyZip.zip, { runtime: 'python' });
      assert.equal(nodeB.status, 200, JSON.stringify(nodeB.body));
      assert.equal(pyB.status, 200, JSON.stringify(pyB.body));
      ids.nodeBundle = nodeB.bundle_id;

      await deployDag(p, `name: alerts_e2e
jobs:
  - name: eval_node
    activation: reactive
    runtime: lambda
    operator: alert_evaluate
    execution_strategy: PerUpdate
    inputs:
      - from: { dataset: transfers }
    outputs: 1
    update_strategy: append
    unique_key: [dedupe_key]
    timeout_seconds: 60
    config:
      alert_definition_id: ${ids.a}
    udf:
      bundle_id: "${nodeB.bundle_id}"
      entrypoint: index.mjs
  - name: eval_python
    activation: reactive
    runtime: lambda
    operator: alert_evaluate
    execution_strategy: PerUpdate
    inputs:
      - from: { dataset: transfers }
    outputs: 1
    update_strategy: append
    unique_key: [dedupe_key]
    timeout_seconds: 60
    config:
      alert_definition_id: ${ids.b}
    udf:
      bundle_id: "${pyB.bundle_id}"
      entrypoint: main.py
  - name: route
    activation: reactive
    runtime: ecs_platform
    operator: alert_route
    execution_strategy: PerUpdate
    inputs:
      - from: { dataset: alert_events }
        where: { severity: [warning, critical] }
    outputs: 1
    update_strategy: replace
    config:
      max_delivery_age: 7d
`);
      const tNode = await triggerJob(p, 'alerts_e2e', 'eval_node', { cursor: 1 });
      const tPy = await triggerJob(p, 'alerts_e2e', 'eval_python', { cursor: 1 });
      const rn = await waitTask(p, tNode, ['Completed', 'Failed']);
      const rp = await waitTask(p, tPy, ['Completed', 'Failed']);
      assert.equal(rn.status, 'Completed', rn.error_message ?? '');
      assert.equal(rp.status, 'Completed', rp.error_message ?? '');
      assert.deepEqual(rn.outputs, [{ alerts: 4 }]);
      assert.deepEqual(rp.outputs, [{ alerts: 3 }]);

      await waitFor('8 notifications', async () => rec.requests.length >= 8, 30_000);
      await quiet();
      assert.equal(await eventsOf(ids.a), 4);
      assert.equal(await eventsOf(ids.b), 3);
      const ev = (await p.dbs.data.query<any>(`SELECT * FROM alert_events WHERE alert_definition_id = $1 ORDER BY block_number`, [ids.a])).rows;
      assert.deepEqual(ev.map((e) => e.severity), ['critical', 'warning', 'critical', 'warning']);
      assert.equal(ev[1].producer_task_id, tNode);
      assert.equal(ev[1].org_id, p.orgId);
      assert.equal(Number(ev[1].chain_id), 143);
      // One delivery per (fresh event, channel): 3 x 2 for A, 2 x 1 for B; the stale event gets none.
      assert.equal(await deliveriesOf(ids.a), 6);
      assert.equal(await deliveriesOf(ids.b), 2);
      assert.equal(rec.requests.length, 8);
      const rows = (await p.dbs.data.query<{ id: string; status: string; channel: string }>(`SELECT id, status, channel FROM alert_deliveries`)).rows;
      assert.ok(rows.every((r) => r.status === 'Delivered'));
      const keys = rec.requests.map((r) => r.headers['idempotency-key']);
      assert.deepEqual([...keys].sort(), rows.map((r) => r.id).sort(), 'Idempotency-Key is the delivery id');
      assert.ok(rec.requests.every((r) => r.body.delivery_id === r.headers['idempotency-key']));
      assert.deepEqual(requestsFor(ids.a).map((r) => r.url).sort(), ['/ops', '/ops', '/ops', '/pager', '/pager', '/pager']);
      assert.ok(!rec.requests.some((r) => r.body.dedupe_key.endsWith('ee'.repeat(32))), 'the stale event was not delivered');
      // The user API shows the deliveries.
      const list = await p.api('GET', `/v1/alerts/${ids.a}/deliveries`);
      assert.equal(list.body.deliveries.length, 6);
      assert.ok(list.body.deliveries.every((d: { status: string; attempt: number }) => d.status === 'Delivered' && d.attempt === 1));
      // The queries were audited against the granted dataset only.
      const audits = (await p.dbs.data.query<{ dataset_id: string }>(`SELECT DISTINCT dataset_id FROM query_audit`)).rows;
      assert.deepEqual(audits.map((x) => x.dataset_id), [transfers.dataset_uuid]);
    });

    it('running the same tasks again, or routing again, adds no rows and sends nothing twice', async () => {
      const before = { a: await eventsOf(ids.a), b: await eventsOf(ids.b), da: await deliveriesOf(ids.a), db: await deliveriesOf(ids.b), requests: rec.requests.length };
      const again = [await triggerJob(p, 'alerts_e2e', 'eval_node', { cursor: 2 }), await triggerJob(p, 'alerts_e2e', 'eval_python', { cursor: 2 })];
      for (const t of again) assert.equal((await waitTask(p, t, ['Completed', 'Failed'])).status, 'Completed');
      const route = await triggerJob(p, 'alerts_e2e', 'route', { start: 0, end: 1_000_000_000 });
      const r = await waitTask(p, route, ['Completed', 'Failed']);
      assert.equal(r.status, 'Completed', r.error_message ?? '');
      assert.equal((r.outputs as Array<{ created: number }>)[0]!.created, 0);
      await quiet();
      assert.equal(await eventsOf(ids.a), before.a);
      assert.equal(await eventsOf(ids.b), before.b);
      assert.equal(await deliveriesOf(ids.a), before.da);
      assert.equal(await deliveriesOf(ids.b), before.db);
      assert.equal(rec.requests.length, before.requests);
      const dup = (await p.dbs.data.query<{ rows_inserted: number }>(`SELECT rows_inserted FROM buffer_batches ORDER BY committed_at DESC LIMIT 2`)).rows;
      assert.deepEqual(dup.map((x) => x.rows_inserted), [0, 0], 'the re-run batches were committed with nothing new');
    });

    it('a retried attempt that had already published adds no rows and no second delivery', async () => {
      const c = await p.api('POST', '/v1/alerts', { name: 'retry: transfers >= 7000', condition: { min_value: 7000 }, channels: [{ type: 'webhook', url: `${rec.url}/c` }] });
      ids.c = c.body.id;
      // The example's evaluation, but the first attempt crashes right after publishing its batch.
      const dir = join(ROOT, 'examples/udf/node-alert');
      const files = [
        { name: 'alert.mjs', data: await readFile(join(dir, 'alert.mjs')) },
        { name: 'trace-udf.mjs', data: await readFile(join(dir, 'trace-udf.mjs')) },
        { name: 'index.mjs', data: `import { run } from './trace-udf.mjs';\nimport { evaluate } from './alert.mjs';\nrun(async (inv) => {\n  const out = await evaluate(inv);\n  if (inv.attempt === 1) throw new Error('crashed after publishing');\n  return out;\n});\n` },
      ];
      const zip = await yazlZip([{ name: 'bundle_manifest.json', data: JSON.stringify(manifestFor(files, { runtime: 'node', entrypoint: 'index.mjs' })) }, ...files]);
      const up = await uploadBundle(p, zip);
      assert.equal(up.status, 200);
      await deployDag(p, `name: alerts_retry
jobs:
  - name: eval
    activation: reactive
    runtime: lambda
    operator: alert_evaluate
    execution_strategy: PerUpdate
    inputs:
      - from: { dataset: transfers }
    outputs: 1
    update_strategy: append
    unique_key: [dedupe_key]
    max_attempts: 3
    config:
      alert_definition_id: ${ids.c}
    udf:
      bundle_id: "${up.bundle_id}"
      entrypoint: index.mjs
`);
      const t = await triggerJob(p, 'alerts_retry', 'eval', { cursor: 1 });
      const done = await waitTask(p, t, ['Completed'], 40_000);
      assert.equal(done.attempt, 2, 'the first attempt failed and was retried');
      await waitFor('two notifications for C', async () => requestsFor(ids.c).length >= 2, 30_000);
      await quiet();
      assert.equal(await eventsOf(ids.c), 3, 'events of both attempts written once');
      assert.equal(await deliveriesOf(ids.c), 2);
      assert.equal(requestsFor(ids.c).length, 2);
      const batches = (await p.dbs.data.query<{ attempt: number; rows_inserted: number }>(`SELECT attempt, rows_inserted FROM buffer_batches WHERE task_id = $1 ORDER BY attempt`, [t])).rows;
      assert.deepEqual(batches, [{ attempt: 1, rows_inserted: 3 }, { attempt: 2, rows_inserted: 0 }]);
    });
  });
}
