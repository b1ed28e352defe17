/**
 * Alerting end to end on the real one-process platform (`startLite` through `startPlatform`):
 * a Parquet dataset registered through `POST /v1/datasets/{name}/register`, the Node example
 * bundle (examples/udf/node-alert) uploaded through the bundle routes, an alert definition with
 * two webhook channels on a local receiver, and examples/udf/alerts.dag.yaml adapted to those ids.
 * Triggering the evaluation runs the UDF in a child process, the lite sink writes the alert events
 * once, alert_route creates the deliveries and the lite Delivery Service posts them with an
 * `Idempotency-Key`. Evaluating the same input again adds no rows and sends nothing twice;
 * registering new files runs the reactive evaluation once on its own. The
 * registered dataset answers `/v1/query` the same through the Query Service and the Gateway.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createHash } from 'node:crypto';
import { parse as parseYaml, stringify as stringifyYaml } from 'yaml';
import { BACKENDS } from '../support/db.js';
import { startPlatform, waitFor, type TestPlatform } from '../support/platform.js';
import { writeParquet } from '../query/support.js';
import { startReceiver, type Receiver } from '../alerting/support.js';
import { buildBundleFromDir } from '../../src/cli/commands/udf.js';

const ROOT = new URL('../../', import.meta.url).pathname;
const DATASET = 'lite_transfers';
const ago = (ms: number) => new Date(Date.now() - ms).toISOString();

/** Four rows reach value >= 1000; the one 30 days old is too stale to deliver. */
function transfersSql(): string {
  const rows: Array<[number, string, number, string]> = [
    [100, `0x${'aa'.repeat(32)}`, 1500, ago(60_000)],
    [101, `0x${'bb'.repeat(32)}`, 20000, ago(50_000)],
    [102, `0x${'cc'.repeat(32)}`, 7000, ago(40_000)],
    [103, `0x${'dd'.repeat(32)}`, 10, ago(30_000)],
    [90, `0x${'ee'.repeat(32)}`, 99999, ago(30 * 86_400_000)],
  ];
  const values = rows.map(([b, h, v, t]) => `(${b}::INTEGER, '${h}', ${v}::DOUBLE, TIMESTAMPTZ '${t}')`).join(', ');
  return `SELECT * FROM (VALUES ${values}) t(block_number, tx_hash, value, block_time)`;
}

interface DagJob { name: string; inputs?: Array<{ from: { dataset: string } }>; config?: Record<string, unknown>; udf?: Record<string, unknown> }

/** examples/udf/alerts.dag.yaml with the Node evaluation and the route job, wired to these ids. */
async function alertsDag(dataset: string, alertId: string, bundleId: string): Promise<{ name: string; yaml: string }> {
  const doc = parseYaml(await readFile(join(ROOT, 'examples/udf/alerts.dag.yaml'), 'utf8')) as { name: string; jobs: DagJob[] };
  doc.jobs = doc.jobs.filter((j) => j.name === 'evaluate_node' || j.name === 'route');
  const ev = doc.jobs.find((j) => j.name === 'evaluate_node')!;
  assert.ok(ev && doc.jobs.some((j) => j.name === 'route'), 'the example DAG has evaluate_node and route');
  ev.inputs = [{ from: { dataset } }];
  ev.config = { ...ev.config, alert_definition_id: alertId };
  ev.udf = { ...ev.udf, bundle_id: bundleId };
  return { name: doc.name, yaml: stringifyYaml(doc) };
}

for (const backend of BACKENDS) {
  describe(`alerting end to end on the lite platform (${backend})`, () => {
    let p: TestPlatform;
    let rec: Receiver;
    let dataDir: string;
    const ids = { alert: '', bundle: '', dag: '' };

    before(async () => {
      rec = await startReceiver();
      dataDir = await mkdtemp(join(tmpdir(), 'trace-lite-e2e-'));
      p = await startPlatform(backend, { workers: 1, env: { TRACE_DELIVERY_ALLOW_HTTP_LOOPBACK: '1' } });
    });
    after(async () => {
      await p?.close();
      await rec?.close();
      await rm(dataDir, { recursive: true, force: true });
    });

    const count = async (sql: string, params: unknown[] = []) => Number((await p.dbs.data.query<{ n: number }>(sql, params)).rows[0]!.n);
    const events = () => count(`SELECT count(*)::int AS n FROM alert_events WHERE alert_definition_id = $1`, [ids.alert]);
    const deliveries = () => count(`SELECT count(*)::int AS n FROM alert_deliveries WHERE alert_definition_id = $1`, [ids.alert]);
    const task = async (id: string) =>
      (await p.dbs.state.query<{ status: string; attempt: number; error_message: string | null; outputs: unknown }>(
        `SELECT status, attempt, error_message, outputs FROM tasks WHERE id = $1`, [id])).rows[0];
    const waitTask = (id: string) => waitFor(`task ${id} to finish`, async () => {
      const t = await task(id);
      return t && ['Completed', 'Failed', 'Canceled'].includes(t.status) ? t : undefined;
    }, 40_000);
    const trigger = async (job: string, body: Record<string, unknown>) => {
      const r = await p.api('POST', `/v1/dags/${ids.dag}/jobs/${job}/trigger`, body);
      assert.equal(r.status, 201, JSON.stringify(r.body));
      return r.body.task_id as string;
    };
    const quiet = () => waitFor('the pipeline to go quiet', async () => {
      const busy = await p.dbs.state.query<{ n: number }>(`SELECT count(*)::int AS n FROM tasks WHERE status IN ('Queued', 'Running')`);
      const outbox = await p.dbs.state.query<{ n: number }>(`SELECT count(*)::int AS n FROM outbox WHERE status = 'Pending'`);
      const pending = await count(`SELECT count(*)::int AS n FROM alert_deliveries WHERE status = 'Pending'`);
      return Number(busy.rows[0]!.n) === 0 && Number(outbox.rows[0]!.n) === 0 && pending === 0 && (await p.queue.depth('buffers')) === 0;
    }, 30_000);

    it('registers the dataset and answers /v1/query the same through the Query Service and the Gateway', async () => {
      await writeParquet([{ path: join(dataDir, 'part-0.parquet'), select: transfersSql() }]);
      const reg = await p.api('POST', `/v1/datasets/${DATASET}/register`, { from: `file://${dataDir}/` });
      assert.equal(reg.status, 201, JSON.stringify(reg.body));
      assert.equal(reg.body.kind, 'external');
      assert.equal(reg.body.files, 1);
      await quiet(); // its dataset update is routed (to no one yet) before any DAG reads the dataset

      const q = { dataset: DATASET, sql: 'SELECT block_number, value FROM dataset WHERE value >= 1000 ORDER BY block_number', limit: 100 };
      const ask = async (base: string) => {
        const res = await fetch(`${base}/v1/query`, {
          method: 'POST', headers: { authorization: `Bearer ${p.info.admin_token}`, 'content-type': 'application/json' }, body: JSON.stringify(q),
        });
        return { status: res.status, body: await res.json() as { rows: unknown[][] } & Record<string, unknown> };
      };
      const direct = await ask(p.info.query_url);
      const viaGateway = await ask(p.info.gateway_url);
      assert.equal(direct.status, 200, JSON.stringify(direct.body));
      assert.equal(viaGateway.status, 200, JSON.stringify(viaGateway.body));
      assert.deepEqual(direct.body.rows.map((r) => Number(r[0])), [90, 100, 101, 102]);
      assert.deepEqual(viaGateway.body, direct.body);
      // Without a token the Gateway turns the request away.
      const anon = await fetch(`${p.info.gateway_url}/v1/query`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(q) });
      assert.equal(anon.status, 401);
    });

    it('evaluates with the uploaded Node bundle, sinks, routes and delivers each alert exactly once', async () => {
      const a = await p.api('POST', '/v1/alerts', { name: 'lite: transfers >= 1000', condition: { min_value: 1000 }, channels: [
        { name: 'ops', type: 'webhook', url: `${rec.url}/ops` }, { name: 'pager', type: 'webhook', url: `${rec.url}/pager` }] });
      assert.equal(a.status, 201, JSON.stringify(a.body));
      ids.alert = a.body.id;

      const built = await buildBundleFromDir(join(ROOT, 'examples/udf/node-alert'));
      const open = await p.api('POST', '/v1/udf/bundles', { runtime: 'node' });
      assert.equal(open.status, 201, JSON.stringify(open.body));
      const put = await fetch(open.body.upload.url, { method: 'PUT', body: built.zip, headers: open.body.upload.headers });
      assert.equal(put.status, 200, await put.text());
      const fin = await p.api('POST', `/v1/udf/bundles/${open.body.bundle_id}/finalize`, { sha256: createHash('sha256').update(built.zip).digest('hex') });
      assert.equal(fin.status, 200, JSON.stringify(fin.body));
      ids.bundle = open.body.bundle_id;

      const dag = await alertsDag(DATASET, ids.alert, ids.bundle);
      ids.dag = dag.name;
      const dep = await p.api('POST', `/v1/dags/${dag.name}/versions?activate=true`, dag.yaml);
      assert.ok(dep.status < 300, JSON.stringify(dep.body));

      const t = await trigger('evaluate_node', { cursor: 1 });
      const done = await waitTask(t);
      assert.equal(done.status, 'Completed', done.error_message ?? '');
      assert.deepEqual(done.outputs, [{ alerts: 4 }]);

      // 3 fresh events x 2 channels; the 30-day-old event is written but not delivered.
      await waitFor('6 notifications', async () => rec.requests.length >= 6, 30_000);
      await quiet();
      assert.equal(await events(), 4);
      const ev = (await p.dbs.data.query<{ severity: string; producer_task_id: string; org_id: string }>(
        `SELECT severity, producer_task_id, org_id FROM alert_events WHERE alert_definition_id = $1 ORDER BY block_number`, [ids.alert])).rows;
      assert.deepEqual(ev.map((e) => e.severity), ['critical', 'warning', 'critical', 'warning']);
      assert.ok(ev.every((e) => e.producer_task_id === t && e.org_id === p.info.org_id));
      assert.equal(await deliveries(), 6);
      assert.equal(rec.requests.length, 6);
      const keys = rec.requests.map((r) => r.headers['idempotency-key']);
      assert.ok(keys.every((k) => typeof k === 'string' && k.length > 0), 'every notification has an Idempotency-Key');
      assert.equal(new Set(keys).size, 6, 'one key per delivery');
      assert.ok(rec.requests.every((r) => r.body.delivery_id === r.headers['idempotency-key'] && r.body.alert_definition_id === ids.alert));
      assert.deepEqual(rec.requests.map((r) => r.url).sort(), ['/ops', '/ops', '/ops', '/pager', '/pager', '/pager']);
      assert.ok(!rec.requests.some((r) => String(r.body.dedupe_key).endsWith('ee'.repeat(32))), 'the stale event was not delivered');

      const list = await p.api('GET', `/v1/alerts/${ids.alert}/deliveries`);
      assert.equal(list.status, 200, JSON.stringify(list.body));
      const ds = list.body.deliveries as Array<{ delivery_id: string; status: string; attempt: number }>;
      assert.equal(ds.length, 6);
      assert.ok(ds.every((d) => d.status === 'Delivered' && d.attempt === 1), JSON.stringify(ds));
      assert.deepEqual(ds.map((d) => d.delivery_id).sort(), [...keys].sort(), 'Idempotency-Key is the delivery id');
    });

    it('evaluating the same input again adds no alert events and sends nothing twice', async () => {
      assert.ok(ids.dag, 'the previous test deployed the DAG');
      const before = { events: await events(), deliveries: await deliveries(), requests: rec.requests.length };
      const t = await trigger('evaluate_node', { cursor: 1 });
      const done = await waitTask(t);
      assert.equal(done.status, 'Completed', done.error_message ?? '');
      assert.deepEqual(done.outputs, [{ alerts: 4 }], 'the UDF found the same alerts');
      await quiet();
      // Give a stray delivery a moment to show up before counting.
      await new Promise((r) => setTimeout(r, 500));
      assert.equal(await events(), before.events);
      assert.equal(await deliveries(), before.deliveries);
      assert.equal(rec.requests.length, before.requests);
      const batch = (await p.dbs.data.query<{ rows_inserted: number }>(`SELECT rows_inserted FROM buffer_batches WHERE task_id = $1`, [t])).rows;
      assert.deepEqual(batch.map((b) => Number(b.rows_inserted)), [0], 'the re-run batch was committed with nothing new');
    });

    it('registering new files is a dataset update: the reactive evaluation runs once on its own; an unchanged folder runs nothing', async () => {
      assert.ok(ids.dag, 'the earlier test deployed the DAG');
      const evaluations = async () => (await p.dbs.state.query<{ id: string; status: string; outputs: unknown }>(
        `SELECT t.id, t.status, t.outputs FROM tasks t JOIN jobs j ON j.id = t.job_id
          WHERE j.dag_name = $1 AND j.name = 'evaluate_node' AND t.trigger->>'kind' = 'event'`, [ids.dag])).rows;
      assert.equal((await evaluations()).length, 0, 'no event-triggered evaluation before the new files');
      const before = { events: await events(), deliveries: await deliveries(), requests: rec.requests.length };
      await writeParquet([{ path: join(dataDir, 'part-1.parquet'), select: `SELECT 104::INTEGER AS block_number, '0x${'ff'.repeat(32)}' AS tx_hash, 5000::DOUBLE AS value, TIMESTAMPTZ '${ago(20_000)}' AS block_time` }]);
      const reg = await p.api('POST', `/v1/datasets/${DATASET}/register`, { from: `file://${dataDir}/` });
      assert.equal(reg.status, 201, JSON.stringify(reg.body));
      assert.equal(reg.body.changed, true);
      assert.equal(reg.body.routed, true);

      const [run] = await waitFor('the event-triggered evaluation', async () => {
        const rows = await evaluations();
        return rows.length > 0 && rows.every((r) => r.status === 'Completed' || r.status === 'Failed') ? rows : undefined;
      }, 40_000);
      assert.equal(run!.status, 'Completed');
      assert.deepEqual(run!.outputs, [{ alerts: 5 }], 'the evaluation read the new version: four old transfers and the new one');
      await waitFor('2 more notifications', async () => rec.requests.length >= before.requests + 2, 30_000);
      await quiet();
      assert.equal(await events(), before.events + 1, 'only the new transfer is a new alert event');
      assert.equal(await deliveries(), before.deliveries + 2);

      // The same file set again: 200, no version change, no event, no task.
      const again = await p.api('POST', `/v1/datasets/${DATASET}/register`, { from: `file://${dataDir}/` });
      assert.equal(again.status, 200, JSON.stringify(again.body));
      assert.equal(again.body.routed, false);
      await quiet();
      assert.equal((await evaluations()).length, 1, 'each update ran the evaluation exactly once');
      assert.equal(rec.requests.length, before.requests + 2);
    });
  });
}
