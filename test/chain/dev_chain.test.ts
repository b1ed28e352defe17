/** The dev chain keeps what the demo, the tests and the bench rely on (anvil behind src/lite/devchain.ts). */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startDevChain } from '../../src/lite/devchain.js';

test('on-demand mining packs many transactions in one block; snapshots revert the chain; block receipts', async () => {
  const node = await startDevChain({ chainId: 31337, accounts: 3, automine: false });
  try {
    assert.equal(Number(BigInt(await node.call<string>('eth_chainId'))), 31337);
    const [a, b] = await node.call<string[]>('eth_accounts');
    const hashes: string[] = [];
    for (let i = 0; i < 5; i++) hashes.push(await node.call<string>('eth_sendTransaction', [{ from: a, to: b, value: '0x1' }]));
    assert.equal(Number(BigInt(await node.call<string>('eth_blockNumber'))), 0, 'nothing mined until asked');
    await node.mine();
    const block = await node.call<{ number: string; transactions: string[] }>('eth_getBlockByNumber', ['latest', false]);
    assert.deepEqual(block.transactions, hashes, 'all five in one block, in order');
    const receipts = await node.call<Array<{ transactionHash: string; status: string }>>('eth_getBlockReceipts', [block.number]);
    assert.deepEqual(receipts.map((r) => r.transactionHash), hashes);

    const snap = await node.snapshot();
    await node.mine(100);
    assert.equal(Number(BigInt(await node.call<string>('eth_blockNumber'))), 101);
    assert.equal(await node.revert(snap), true);
    assert.equal(Number(BigInt(await node.call<string>('eth_blockNumber'))), 1, 'back at the snapshot');
    await node.setAutomine(true);
    const h = await node.call<string>('eth_sendTransaction', [{ from: a, to: b, value: '0x2' }]);
    assert.equal((await node.receipt(h)).status, '0x1');
  } finally {
    await node.close();
  }
});

test('a missing binary is one clear error', async () => {
  await assert.rejects(startDevChain({ env: { TRACE_ANVIL_BIN: '/nonexistent/anvil' } }), (e: { code?: string; message: string }) => e.code === 'DEV_CHAIN_MISSING' && /TRACE_ANVIL_BIN/.test(e.message));
});
