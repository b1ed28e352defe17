/**
 * An input edge filter on a UDF job, end to end on the real parts: the same Node alert bundle
 * (examples/udf/node-alert) evaluates one alert over a Parquet dataset through `/v1/task/query`
 * in two jobs, one reading the dataset unfiltered and one through `where: {block_number: [...]}`.
 * The bundle's SQL is the same; only the filtered job's task sees fewer rows, so it raises fewer
 * alerts.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { BACKENDS } from '../support/db.js';
import { buildBundleFromDir } from '../../src/cli/commands/udf.js';
import { buildUdfPlatform, deployDag, registerParquetDataset, triggerJob, uploadBundle, waitTask, type UdfPlatform } from './support.js';

const ROOT = new URL('../../', import.meta.url).pathname;
const ago = (ms: number) => new Date(Date.now() - ms).toISOString();

function transfersSql(): string {
  const rows: Array<[number, string, number, string]> = [
    [100, `0x${'aa'.repeat(32)}`, 1500, ago(60_000)],
    [101, `0x${'bb'.repeat(32)}`, 20000, ago(50_000)],
    [102, `0x${'cc'.repeat(32)}`, 7000, ago(40_000)],
    [103, `0x${'dd'.repeat(32)}`, 10, ago(30_000)],
  ];
  const values = rows.map(([b, h, v, t]) => `(${b}::INTEGER, '${h}', ${v}::DOUBLE, TIMESTAMPTZ '${t}')`).join(', ');
  return `SELECT * FROM (VALUES ${values}) t(block_number, tx_hash, value, block_time)`;
}

for (const backend of BACKENDS) {
  describe(`input edge filter on a UDF job (${backend})`, () => {
    let p: UdfPlatform;
    before(async () => {
      p = await buildUdfPlatform(backend, { settings: { leaseSeconds: 30 }, delivery: false });
    });
    after(async () => {
      await p?.close();
    });

    it('the filtered job\'s bundle sees only the matching rows', async () => {
      await registerParquetDataset(p, 'transfers', transfersSql());
      const alert = await p.api('POST', '/v1/alerts', { name: 'transfers >= 1000', condition: { min_value: 1000 }, channels: [{ type: 'webhook', url: 'http://127.0.0.1:9/hook' }] });
      assert.equal(alert.status, 201, JSON.stringify(alert.body));
      const zip = await buildBundleFromDir(join(ROOT, 'examples/udf/node-alert'));
      const bundle = await uploadBundle(p, zip.zip, { runtime: 'node' });
      assert.equal(bundle.status, 200, JSON.stringify(bundle.body));
      const job = (name: string, where: string) => `  - name: ${name}
    activation: reactive
    runtime: lambda
    operator: alert_evaluate
    execution_strategy: PerUpdate
    inputs:
      - from: { dataset: transfers }${where}
    outputs: 1
    update_strategy: append
    unique_key: [dedupe_key]
    timeout_seconds: 60
    config:
      alert_definition_id: ${alert.body.id}
    udf:
      bundle_id: "${bundle.bundle_id}"
      entrypoint: index.mjs
`;
      await deployDag(p, `name: udf_where
jobs:
${job('all', '')}${job('some', '\n        where: { block_number: [101, 102, 103] }')}`);
      const run = async (name: string) => {
        const t = await waitTask(p, await triggerJob(p, 'udf_where', name, { cursor: 1 }), ['Completed', 'Failed'], 120_000);
        assert.equal(t.status, 'Completed', t.error_message ?? '');
        return t.outputs;
      };
      assert.deepEqual(await run('all'), [{ alerts: 3 }]);
      assert.deepEqual(await run('some'), [{ alerts: 2 }], 'block 100 is filtered out before the bundle reads');
    });
  });
}
