/** `trace lite up --demo`: the demo chain produces transfers and its follow_head sync publishes them. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { BACKENDS, freshDbs } from '../support/db.js';
import { startDemo, type DemoHandle } from '../../src/lite/demo.js';
import { committedRows, startStack, waitFor } from './support.js';

const backend = BACKENDS.includes('pglite') ? 'pglite' : 'postgres';

test(`${backend}: the demo applies a follow_head sync of a live dev chain and its transfers become queryable`, { timeout: 60_000 }, async () => {
  const dbs = await freshDbs(backend);
  const holder: { demo?: DemoHandle; url?: string } = {};
  const st = await startStack({ state: dbs.state, pools: {}, workers: 1, rpcGatewayUrl: () => holder.url });
  let printed = '';
  try {
    holder.demo = await startDemo({ dispatcherUrl: st.url, adminToken: st.adminToken, blockIntervalMs: 150, transfersPerBlock: 2, historyBlocks: 200, write: (t) => { printed += t; }, onGateway: (url) => { holder.url = url; } });
    const demo = holder.demo;
    assert.match(printed, /trace chain-sync status --watch/);
    assert.match(printed, /trace query --dataset demo_logs/);
    const s = await waitFor('transfers committed', async () => {
      const b = (await st.api('GET', '/v1/chain-sync/demo')).body;
      const logs = b.streams?.find((x: any) => x.dataset_key === 'logs');
      if (!(logs && logs.rows >= 4 && b.streams.every((x: any) => x.committed_through > 200))) return undefined;
      // Streams commit independently: wait until the transfers' transactions are committed too.
      const rows = await committedRows(st.state, Object.fromEntries(b.streams.map((x: any) => [x.dataset_key, x.dataset_uuid])) as { blocks: string; transactions: string; logs: string });
      return rows.txs.length >= 4 && rows.logs.length >= 4 ? b : undefined;
    }, 40_000, 200);
    assert.equal(s.mode.kind, 'follow_head');
    const uuids = Object.fromEntries(s.streams.map((x: any) => [x.dataset_key, x.dataset_uuid])) as { blocks: string; transactions: string; logs: string };
    const got = await committedRows(st.state, uuids);
    assert.ok(got.logs.length >= 4);
    assert.ok(got.txs.length >= 4);
    assert.equal(new Set(got.blocks.map((b) => b.n)).size, got.blocks.length, 'no block twice');
    assert.ok(demo.produced >= 2);
    assert.equal(holder.url, demo.rpcGatewayUrl);
  } finally {
    await holder.demo?.stop();
    await st.stop();
    await dbs.close();
  }
});
