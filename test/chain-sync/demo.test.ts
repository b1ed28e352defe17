/**
 * `trace lite up --demo` in process: the dev chain produces transfers, its follow_head sync
 * publishes them as queryable Parquet, and the demo's alert reaches the demo's webhook receiver.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BACKENDS } from '../support/db.js';
import { createPgDatabase } from '../support/db.js';
import { startLite, type LiteHandle } from '../../src/lite/lite.js';
import { silentLogger } from '../../src/core/log.js';
import { committedRows, waitFor } from './support.js';

const backend = BACKENDS.includes('pglite') ? 'pglite' : 'postgres';

test(`${backend}: the demo syncs a live dev chain into queryable Parquet and delivers its alert to its receiver`, { timeout: 300_000 }, async () => {
  const home = await mkdtemp(join(tmpdir(), 'trace-demo-'));
  const env: NodeJS.ProcessEnv = { TRACE_HOME: home };
  const drops: Array<() => Promise<void>> = [];
  if (backend === 'postgres') {
    const s = await createPgDatabase('trace_demo_s');
    const d = await createPgDatabase('trace_demo_d');
    drops.push(s.drop, d.drop);
    env.TRACE_STATE_DATABASE_URL = s.url;
    env.TRACE_DATA_DATABASE_URL = d.url;
  }
  let lite: LiteHandle | undefined;
  try {
    lite = await startLite({
      home, env, workers: 1, log: silentLogger, demo: true,
      ports: { dispatcher: 0, query: 0, gateway: 0, rpcGateway: 0 },
      demoOptions: { blockIntervalMs: 200, transfersPerBlock: 4, historyBlocks: 200, publishIntervalMs: 1000, alertMinValue: 50_000 },
    });
    const demo = lite.demo!;
    const info = JSON.parse(await readFile(join(home, 'lite.json'), 'utf8'));
    assert.deepEqual(
      [info.demo.chain_url, info.demo.rpc_gateway_url, info.demo.webhook_url, info.demo.alert_id],
      [demo.chainUrl, demo.rpcGatewayUrl, demo.webhookUrl, demo.alertId],
      'lite.json names the chain, the RPC gateway, the receiver and the alert',
    );
    const api = async (path: string) => (await fetch(`${lite!.info.dispatcher_url}${path}`, { headers: { authorization: `Bearer ${lite!.info.admin_token}` } })).json() as Promise<any>;
    const s = await waitFor('transfers committed', async () => {
      const b = await api('/v1/chain-sync/demo');
      if (!(b.streams?.every((x: any) => x.committed_through > 200))) return undefined;
      const rows = await committedRows(lite!.dbs.state, Object.fromEntries(b.streams.map((x: any) => [x.dataset_key, x.dataset_uuid])) as { blocks: string; transactions: string; logs: string });
      return rows.txs.length >= 4 && rows.logs.length >= 4 ? { b, rows } : undefined;
    }, 120_000, 200);
    assert.equal(s.b.mode.kind, 'follow_head');
    assert.equal(new Set(s.rows.blocks.map((b) => b.n)).size, s.rows.blocks.length, 'no block twice');

    const hook = await waitFor('an alert delivered to the demo receiver', async () => demo.received.find((r) => (r.body as any)?.alert_definition_id === demo.alertId), 120_000, 200);
    assert.ok(hook.idempotency_key, 'deliveries carry an Idempotency-Key');
    const payload = (hook.body as any).payload ?? (hook.body as any).event?.payload;
    assert.ok(JSON.stringify(hook.body).includes('0x'), `the alert names a transaction: ${JSON.stringify(hook.body).slice(0, 300)}`);
    assert.ok(payload === undefined || Number(payload.value) >= 50_000, 'only transfers at or above the threshold alert');
    const listed = await (await fetch(demo.webhookUrl.replace(/\/hook$/, '/'))).json() as { count: number };
    assert.ok(listed.count >= 1, 'the receiver lists what it got');
  } finally {
    await lite?.stop();
    for (const d of drops) await d();
    await rm(home, { recursive: true, force: true });
  }
});
