/**
 * A chain sync commits blocks of one chain only. Against real anvil dev chains, with range tasks
 * run by hand (no background workers, so what is planned and committed is exactly what the test
 * drives): the first commit records the chain's identity; a normal continuing sync passes the
 * parent-hash check; a range read from another chain (other genesis) or from a reorganized chain
 * (parent hash) is refused and halts the sync; a planning round that finds another chain, a
 * reorganized chain or a node behind the committed blocks halts the sync and plans nothing; resume
 * clears the halt only when the re-check passes.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { BACKENDS, freshDbs } from '../support/db.js';
import { startRpcGateway } from '../../src/rpc-gateway/gateway.js';
import { createCryoIngestOperator } from '../../src/operators/cryo_ingest/operator.js';
import type { Operator } from '../../src/operators/types.js';
import { claim, complete, count, fixedYaml, followYaml, rpcProxy, runOperator, startDevChain, startStack, waitFor, type DevChain, type Stack } from './support.js';

interface RangeRow { dataset_key: string; range_start: number; range_end: number; status: string; task_id: string; first_parent_hash: string | null; last_block_hash: string | null }

async function ranges(st: Stack, name: string): Promise<RangeRow[]> {
  return (await st.state.query<RangeRow>(
    `SELECT r.dataset_key, r.range_start::int8 AS range_start, r.range_end::int8 AS range_end, r.status, r.task_id, r.first_parent_hash, r.last_block_hash
     FROM chain_sync_scheduled_ranges r JOIN chain_sync_jobs j ON j.job_id = r.job_id WHERE j.name = $1 ORDER BY r.dataset_key, r.range_start`, [name])).rows
    .map((r) => ({ ...r, range_start: Number(r.range_start), range_end: Number(r.range_end) }));
}

/** Runs every scheduled range whose task is queued with `op` and completes it; returns the answers. */
async function runQueued(st: Stack, name: string, op: Operator): Promise<Array<{ range: RangeRow; status: number; body: any }>> {
  const out: Array<{ range: RangeRow; status: number; body: any }> = [];
  const queued = (await st.state.query<{ id: string }>(`SELECT id FROM tasks WHERE status = 'Queued'`)).rows.map((r) => r.id);
  for (const r of (await ranges(st, name)).filter((x) => x.status === 'scheduled' && queued.includes(x.task_id))) {
    const l = await claim(st, r.task_id);
    const o = await runOperator(op, l);
    const res = await complete(st, l, { status: 'Completed', datasets_published: o.datasets_published, outputs: o.outputs });
    out.push({ range: r, ...res });
  }
  return out;
}

const blockHash = async (c: DevChain, n: number) => (await c.call<{ hash: string }>('eth_getBlockByNumber', [`0x${n.toString(16)}`, false])).hash.toLowerCase();
const mineTo = async (c: DevChain, n: number) => c.mineEmpty(n - (await c.head()));
const views = (st: Stack) => st.state.query<{ id: string; current_version: string | null }>(`SELECT id, current_version FROM datasets ORDER BY id`).then((r) => r.rows);

for (const backend of BACKENDS) {
  test(`${backend}: a follow_head sync commits one chain: another genesis or a reorganized parent is refused at commit and at planning, and halts it until a passing resume`, { timeout: 180_000 }, async () => {
    const chain = await startDevChain(1337);
    const other = await startDevChain(1337, { genesisTimestamp: 1_700_000_000 });
    const proxy = await rpcProxy(chain.url);
    const otherGateway = await startRpcGateway({ pools: { dev: [other.url] }, port: 0, host: '127.0.0.1' });
    const dbs = await freshDbs(backend);
    const st = await startStack({ state: dbs.state, pools: { dev: [proxy.url] }, workers: 0, plannerIntervalMs: 100, settings: { leaseSeconds: 60 } });
    try {
      await other.mineEmpty(100);
      const genesis = await blockHash(chain, 0);
      assert.notEqual(await blockHash(other, 0), genesis, 'the two dev chains have different genesis blocks');
      const native = st.registry.get('cryo_ingest')!;
      // A worker whose RPC pool serves the other chain (the Dispatcher still sees the first one).
      const fromOther = createCryoIngestOperator({ objectStore: st.store, rpcGatewayUrl: otherGateway.url, mode: 'native' });
      const status = async () => (await st.api('GET', '/v1/chain-sync/ident')).body;
      const planned = async () => (await ranges(st, 'ident')).length;
      const waitPlanned = (n: number) => waitFor(`${n} ranges planned`, async () => (await planned()) === n, 20_000, 50);

      await chain.mineTransfers(2);
      await mineTo(chain, 31);
      const a = await st.api('POST', '/v1/chain-sync', followYaml('ident', 1337, { lag: 2, chunk: 10, inflight: 8, maxAge: 600, poll: 1, streams: ['blocks', 'logs'] }));
      assert.equal(a.status, 201, JSON.stringify(a.body));
      await waitPlanned(6);
      assert.equal((await status()).identity, null, 'no identity before the first commit');
      for (const r of await runQueued(st, 'ident', native)) assert.equal(r.status, 200, JSON.stringify(r.body));

      // The first commit recorded the chain; every range its boundary hashes.
      const s1 = await waitFor('identity recorded', async () => { const s = await status(); return s.identity ? s : undefined; });
      assert.equal(s1.identity.chain_id, 1337);
      assert.equal(s1.identity.genesis_hash, genesis);
      assert.equal(s1.halt, null);
      const r1 = (await ranges(st, 'ident')).filter((r) => r.dataset_key === 'logs');
      assert.deepEqual(r1.map((r) => [r.range_start, r.range_end, r.status]), [[0, 10, 'completed'], [10, 20, 'completed'], [20, 30, 'completed']]);
      assert.equal(r1[2]!.last_block_hash, await blockHash(chain, 29));
      assert.equal(r1[1]!.first_parent_hash, await blockHash(chain, 9));

      // A normal continuing sync passes the parent-hash check.
      const beforeReorg = await chain.call<string>('evm_snapshot');
      await mineTo(chain, 41);
      await waitPlanned(8);
      for (const r of await runQueued(st, 'ident', native)) assert.equal(r.status, 200, JSON.stringify(r.body));

      // Commit: a range read from another chain is refused and halts the sync; nothing is written.
      await mineTo(chain, 46);
      await waitPlanned(10);
      const viewsBefore = await views(st);
      const [bad, sibling] = (await ranges(st, 'ident')).filter((r) => r.status === 'scheduled');
      const lb = await claim(st, bad!.task_id);
      const ob = await runOperator(fromOther, lb);
      const refused = await complete(st, lb, { status: 'Completed', datasets_published: ob.datasets_published });
      assert.equal(refused.status, 422, JSON.stringify(refused.body));
      assert.equal(refused.body.code, 'CHAIN_GENESIS_MISMATCH');
      const halted = await status();
      assert.equal(halted.state, 'halted');
      assert.equal(halted.halt.code, 'CHAIN_GENESIS_MISMATCH');
      assert.match(halted.reason, /^halted: CHAIN_GENESIS_MISMATCH/);
      assert.ok(halted.streams.every((s: any) => s.state === 'halted'));
      // While halted even a range of the right chain commits nothing, and nothing is planned.
      const ls = await claim(st, sibling!.task_id);
      const os = await runOperator(native, ls);
      const held = await complete(st, ls, { status: 'Completed', datasets_published: os.datasets_published });
      assert.equal(held.status, 422, JSON.stringify(held.body));
      assert.equal(held.body.code, 'CHAIN_SYNC_HALTED');
      await mineTo(chain, 60);
      await waitFor('the head observed', async () => (await status()).head?.[0]?.head_block === 60, 10_000, 50);
      await st.plugin.tick();
      assert.equal(await planned(), 10, 'a halted sync plans nothing');
      assert.deepEqual(await views(st), viewsBefore, 'no view moved');
      assert.equal(await count(st.state, `SELECT count(*)::int AS n FROM dataset_versions WHERE range_start = 40 AND config_hash NOT LIKE 'view:%'`), 0, 'no range version registered');
      assert.ok((await ranges(st, 'ident')).filter((r) => r.range_start === 40).every((r) => r.status === 'scheduled'));

      // Resume: the pool serves the recorded chain, so the check passes and the halt clears.
      for (const t of [bad!.task_id, sibling!.task_id]) assert.equal((await st.api('POST', `/v1/tasks/${t}/cancel`)).status, 200);
      const resumed = await st.api('POST', '/v1/chain-sync/ident/resume');
      assert.equal(resumed.status, 200, JSON.stringify(resumed.body));
      assert.equal(resumed.body.halt_cleared, true);
      assert.equal(resumed.body.redriven, 2);
      await waitPlanned(14);
      for (const r of await runQueued(st, 'ident', native)) assert.equal(r.status, 200, JSON.stringify(r.body));
      const ok = await status();
      assert.equal(ok.halt, null);
      assert.ok(ok.streams.every((s: any) => s.committed_through === 59), JSON.stringify(ok.streams.map((s: any) => s.committed_through)));

      // Planning: the pool now serves another chain. The round halts the sync and plans nothing
      // (the other chain's head is far ahead, so planning would otherwise continue).
      assert.equal((await st.api('POST', '/v1/chain-sync/ident/pause')).status, 200);
      await st.plugin.tick(); // a planning round already asking the node has ended
      proxy.target = other.url;
      assert.equal((await st.api('POST', '/v1/chain-sync/ident/resume')).status, 200);
      const h2 = await waitFor('halted by planning', async () => { const s = await status(); return s.halt ? s : undefined; }, 20_000, 50);
      assert.equal(h2.halt.code, 'CHAIN_GENESIS_MISMATCH');
      assert.equal(h2.state, 'halted');
      assert.equal(await planned(), 14, 'nothing planned from the other chain');
      const stays = await st.api('POST', '/v1/chain-sync/ident/resume');
      assert.equal(stays.status, 409, JSON.stringify(stays.body));
      assert.equal(stays.body.code, 'CHAIN_GENESIS_MISMATCH');
      assert.equal((await status()).state, 'halted');
      proxy.target = chain.url;
      await waitFor('the head observed again', async () => (await status()).head?.[0]?.head_block === 60, 10_000, 50);
      assert.equal((await st.api('POST', '/v1/chain-sync/ident/resume')).status, 200);
      assert.equal((await status()).halt, null);

      // A range planned before the chain is reorganized below the committed blocks.
      await mineTo(chain, 61);
      await waitPlanned(16);
      const pending = (await ranges(st, 'ident')).find((r) => r.status === 'scheduled' && r.dataset_key === 'blocks')!;
      assert.equal((await st.api('POST', '/v1/chain-sync/ident/pause')).status, 200);
      await st.plugin.tick(); // a planning round already asking the node has ended
      assert.equal(await chain.call<boolean>('evm_revert', [beforeReorg]), true);
      await chain.mineTransfers(1); // block 32 differs, so every block after it does
      await mineTo(chain, 80);
      assert.notEqual(await blockHash(chain, 58), (await ranges(st, 'ident')).find((r) => r.dataset_key === 'blocks' && r.range_end === 59)!.last_block_hash);
      // Planning: the node's block at the end of the committed data is not the committed one.
      assert.equal((await st.api('POST', '/v1/chain-sync/ident/resume')).status, 200);
      const h3 = await waitFor('halted by planning', async () => { const s = await status(); return s.halt ? s : undefined; }, 20_000, 50);
      assert.equal(h3.halt.code, 'CHAIN_PARENT_MISMATCH');
      assert.match(h3.halt.reason, /block 58 of rpc_pool dev/);
      assert.equal(await planned(), 16, 'nothing planned on the reorganized chain');
      // Commit: the range read after the reorganization does not link to the committed one.
      const lp = await claim(st, pending.task_id);
      const op = await runOperator(native, lp);
      const unlinked = await complete(st, lp, { status: 'Completed', datasets_published: op.datasets_published });
      assert.equal(unlinked.status, 422, JSON.stringify(unlinked.body));
      assert.equal(unlinked.body.code, 'CHAIN_PARENT_MISMATCH');
      assert.equal((await ranges(st, 'ident')).find((r) => r.task_id === pending.task_id)!.status, 'scheduled');
      const still = await st.api('POST', '/v1/chain-sync/ident/resume');
      assert.equal(still.status, 409, JSON.stringify(still.body));
      assert.equal(still.body.code, 'CHAIN_PARENT_MISMATCH');
    } finally {
      await st.stop();
      await dbs.close();
      await otherGateway.close();
      await proxy.close();
      await other.close();
      await chain.close();
    }
  });

  test(`${backend}: a fixed_target sync whose node falls behind the committed blocks (a reset dev chain) halts instead of looking caught up`, { timeout: 120_000 }, async () => {
    const chain = await startDevChain(1337);
    const dbs = await freshDbs(backend);
    const st = await startStack({ state: dbs.state, pools: { dev: [chain.url] }, workers: 0, plannerIntervalMs: 100, settings: { leaseSeconds: 60 } });
    try {
      const native = st.registry.get('cryo_ingest')!;
      const status = async () => (await st.api('GET', '/v1/chain-sync/behind')).body;
      const fresh = await chain.call<string>('evm_snapshot');
      await mineTo(chain, 40);
      const a = await st.api('POST', '/v1/chain-sync', fixedYaml('behind', 1337, 60, { chunk: 10, inflight: 2, streams: ['blocks'] }));
      assert.equal(a.status, 201, JSON.stringify(a.body));
      await waitFor('2 ranges', async () => (await ranges(st, 'behind')).length === 2, 20_000, 50);
      for (const r of await runQueued(st, 'behind', native)) assert.equal(r.status, 200, JSON.stringify(r.body));
      await waitFor('2 more ranges', async () => (await ranges(st, 'behind')).length === 4, 20_000, 50);
      assert.equal((await status()).halt, null);

      // The node goes back to (almost) genesis: same chain id, same genesis, head far behind.
      assert.equal(await chain.call<boolean>('evm_revert', [fresh]), true);
      const head = await chain.head();
      const s = await waitFor('halted', async () => { const x = await status(); return x.halt ? x : undefined; }, 20_000, 50);
      assert.equal(s.halt.code, 'CHAIN_HEAD_BEHIND');
      assert.equal(s.state, 'halted');
      assert.equal(s.streams[0].state, 'halted');
      assert.match(s.halt.reason, new RegExp(`head of rpc_pool dev is block ${head}, ${19 - head} blocks behind block 19`));
      const again = await st.api('POST', '/v1/chain-sync/behind/resume');
      assert.equal(again.status, 409);
      assert.equal(again.body.code, 'CHAIN_HEAD_BEHIND');
      // A new chain grown past the committed blocks is still not the committed chain.
      await chain.mineTransfers(1);
      await mineTo(chain, 60);
      const parent = await st.api('POST', '/v1/chain-sync/behind/resume');
      assert.equal(parent.status, 409);
      assert.equal(parent.body.code, 'CHAIN_PARENT_MISMATCH');
      assert.equal((await status()).halt.code, 'CHAIN_PARENT_MISMATCH', 'the halt reason follows the latest check');
      assert.equal((await ranges(st, 'behind')).length, 4, 'nothing planned while halted');
    } finally {
      await st.stop();
      await dbs.close();
      await chain.close();
    }
  });
}
