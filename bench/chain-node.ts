// The dev chain of the chain benchmark in its own process (its own core): anvil with an
// ERC-20-like token and transfers sprinkled over the history. Prints {url, pid, head, txs} once
// ready (pid: anvil's own process, whose CPU the bench reads and caps) and runs until SIGTERM.
// Args: BLOCKS TX_BLOCKS TX_PER_BLOCK.
import { buildHistory, startDevChain } from '../test/chain-sync/support.js';

const [blocks, txBlocks, perBlock] = process.argv.slice(2).map(Number);
const chain = await startDevChain(1337);
await buildHistory(chain, blocks!, txBlocks!, perBlock!);
const head = await chain.head();
let txs = 0;
for (let b = 0; b <= head; b += 500) {
  const batch = Array.from({ length: Math.min(500, head + 1 - b) }, (_, i) => ({ jsonrpc: '2.0', id: i, method: 'eth_getBlockTransactionCountByNumber', params: [`0x${(b + i).toString(16)}`] }));
  const res = (await (await fetch(chain.url, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(batch) })).json()) as Array<{ result: string }>;
  for (const r of res) txs += Number(BigInt(r.result));
}
process.stdout.write(`${JSON.stringify({ url: chain.url, pid: chain.pid, head, txs })}\n`);
process.on('SIGTERM', () => { void chain.close().then(() => process.exit(0)); });
