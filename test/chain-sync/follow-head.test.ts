/**
 * follow_head against a dev chain that keeps producing blocks: planning waits for the first
 * head observation, keeps up with the head (minus tail_lag) as blocks arrive, stops with a
 * visible reason while the head observation is stale, and catches up once it is fresh again.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { BACKENDS, freshDbs } from '../support/db.js';
import { chainTruth, committedRows, followYaml, rpcProxy, sleep, startDevChain, startStack, waitFor } from './support.js';

const backend = BACKENDS.includes('pglite') ? 'pglite' : 'postgres';

test(`${backend}: follow_head keeps up as blocks arrive and stops, with a reason, while the head is stale`, { timeout: 180_000 }, async () => {
  const chain = await startDevChain(1337);
  const proxy = await rpcProxy(chain.url);
  const dbs = await freshDbs(backend);
  const st = await startStack({ state: dbs.state, pools: { dev: [proxy.url] }, workers: 2 });
  let mining = true;
  // While the sync is meant to keep up, blocks arrive only as fast as it commits (at most 60
  // ahead of the slowest stream): a loaded machine slows the sync, not the claim under test.
  let throttle = true;
  let committed = 0;
  const miner = (async () => {
    while (mining) {
      if (throttle && (await chain.head()) - committed > 60) {
        await sleep(50);
        continue;
      }
      await chain.mineTransfers(1);
      await sleep(100);
    }
  })();
  try {
    const status = async () => (await st.api('GET', '/v1/chain-sync/dev_follow')).body;
    proxy.failMethods.add('eth_blockNumber'); // no head can be observed yet
    const a = await st.api('POST', '/v1/chain-sync', followYaml('dev_follow', 1337, { lag: 2, poll: 1, maxAge: 3, chunk: 40, inflight: 4 }));
    assert.equal(a.status, 201, JSON.stringify(a.body));
    const uuids = Object.fromEntries(a.body.streams.map((s: any) => [s.dataset_key, s.dataset_uuid])) as { blocks: string; transactions: string; logs: string };
    const waiting = await waitFor('blocked without a head', async () => { const s = await status(); return s.state === 'blocked' && s.head?.[0]?.last_error ? s : undefined; }, 10_000);
    assert.match(waiting.reason, /waiting for a head observation/);
    assert.match(waiting.head[0].last_error, /RPC gateway answered 50\d/);
    assert.equal(waiting.streams[0].next_block, 0);

    // Keeping up while the chain grows.
    proxy.failMethods.clear();
    await waitFor('close to the head while blocks arrive', async () => {
      const s = await status();
      committed = Math.min(...s.streams.map((x: any) => x.committed_through));
      if (s.state === 'blocked' || !s.head?.[0]?.head_block) return false;
      const bound = s.head[0].head_block + 1 - 2;
      return bound > 60 && s.streams.every((x: any) => x.committed_through >= bound - 20);
    }, 90_000, 200);

    // Stale head (the node's head cannot be observed, block data still flows): planning stops
    // with a reason; ranges in flight finish; the cursor does not move while blocks arrive.
    throttle = false;
    proxy.failMethods.add('eth_blockNumber');
    const stale = await waitFor('blocked on a stale head', async () => { const s = await status(); return s.state === 'blocked' ? s : undefined; }, 15_000, 200);
    assert.match(stale.reason, /old \(max_head_age_seconds 3\)/);
    assert.ok(stale.streams.every((x: any) => x.state === 'blocked' && x.target === null));
    await waitFor('in-flight ranges drained', async () => (await status()).streams.every((x: any) => x.inflight.total === 0), 20_000, 200);
    const cursors = (await status()).streams.map((x: any) => x.next_block);
    const headWhileStale = await chain.head();
    await sleep(1500);
    assert.ok((await chain.head()) > headWhileStale, 'the chain kept growing');
    assert.deepEqual((await status()).streams.map((x: any) => x.next_block), cursors, 'nothing planned while stale');

    // Fresh again: planning resumes and catches up with the final head.
    mining = false;
    await miner;
    proxy.failMethods.clear();
    const finalHead = await chain.head();
    const bound = finalHead + 1 - 2;
    const caught = await waitFor('caught up after the head is fresh', async () => {
      const s = await status();
      return s.streams.every((x: any) => x.committed_through === bound && x.inflight.total === 0) ? s : undefined;
    }, 30_000, 200);
    assert.equal(caught.state, 'idle');
    assert.equal(caught.reason, null);

    // Following the head planned small ranges; whole grid windows of them are compacted (re-ingested
    // as one range) and the data below must still be there exactly once.
    await waitFor('a compacted window per stream', async () => (await status()).streams.every((x: any) => x.compaction.windows >= 1 && x.compaction.in_flight === 0), 30_000, 200);
    const truth = await chainTruth(chain, bound);
    const got = await committedRows(st.state, uuids);
    assert.equal(got.blocks.length, bound);
    assert.deepEqual(new Set(got.blocks.map((b) => b.n)).size, bound);
    assert.deepEqual(new Set(got.txs), truth.txs);
    assert.equal(got.txs.length, truth.txs.size);
    assert.deepEqual(new Set(got.logs), truth.logs);
    assert.equal(got.logs.length, truth.logs.size);
  } finally {
    mining = false;
    await miner.catch(() => undefined);
    await st.stop();
    await dbs.close();
    await proxy.close();
    await chain.close();
  }
});
