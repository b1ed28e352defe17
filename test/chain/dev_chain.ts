import { startDevChain } from '../../src/lite/devchain.js';
import { rpcCall } from './support.js';

/**
 * A small offline EVM chain for ingest tests: anvil on 127.0.0.1, a hand-assembled token
 * contract that emits ERC-20 `Transfer` events, and a few blocks packed with several
 * transactions of different types (legacy, access-list, EIP-1559), a contract creation, a
 * reverted call and an empty block.
 */

export const TRANSFER_TOPIC = 'ddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef';
export const COINBASE = '0x000000000000000000000000000000000000c0fe';

/**
 * Runtime: empty calldata reverts; otherwise emits
 * LOG3(Transfer, from = caller, to = calldata[0:32]) with data = calldata[32:64].
 */
function runtimeCode(): string {
  const revertAt = 0x36;
  const code = [
    '36', '15', '60' + revertAt.toString(16).padStart(2, '0'), '57', // CALLDATASIZE ISZERO PUSH1 revert JUMPI
    '6020', '35', '6000', '52', // value = calldataload(32); mstore(0, value)
    '6000', '35', // to = calldataload(0)
    '33', // from = caller
    '7f' + TRANSFER_TOPIC,
    '6020', '6000', 'a3', // LOG3(offset 0, size 32, topic0, from, to)
    '00', // STOP
    '5b', '6000', '80', 'fd', // JUMPDEST PUSH1 0 DUP1 REVERT
  ].join('');
  if (code.length / 2 !== 0x3b || code.slice(0x36 * 2, 0x36 * 2 + 2) !== '5b') throw new Error('runtime layout drifted');
  return code;
}

/** Init code: emits a mint Transfer(0 -> deployer, 100), then returns the runtime. */
export function tokenInitCode(): string {
  const runtime = runtimeCode();
  const len = (runtime.length / 2).toString(16).padStart(2, '0');
  const head = (offset: string) =>
    ['6064', '6000', '52', '33', '6000', '7f' + TRANSFER_TOPIC, '6020', '6000', 'a3', `60${len}`, `60${offset}`, '6000', '39', `60${len}`, '6000', 'f3'].join('');
  const initLen = head('00').length / 2;
  return `0x${head(initLen.toString(16).padStart(2, '0'))}${runtime}`;
}

export const word = (hex: string): string => hex.replace(/^0x/, '').padStart(64, '0');

export interface TestChain {
  url: string;
  chainId: number;
  head: number;
  token: string;
  accounts: string[];
  close(): Promise<void>;
}

export async function startTestChain(chainId = 1337): Promise<TestChain> {
  const node = await startDevChain({ chainId, accounts: 4, coinbase: COINBASE });
  const url = node.url;
  const call = <T>(method: string, params: unknown[] = []) => rpcCall<T>(url, method, params);
  const accounts = await call<string[]>('eth_accounts');
  const [a0, a1, a2, a3] = accounts as [string, string, string, string];

  // block 1: deploy (automine)
  const deployHash = await call<string>('eth_sendTransaction', [{ from: a0, data: tokenInitCode(), gas: '0x493e0' }]);
  const deployReceipt = await node.receipt<{ contractAddress: string; status: string }>(deployHash);
  if (deployReceipt.status !== '0x1') throw new Error('token deploy failed');
  const token = deployReceipt.contractAddress;
  const transfer = (from: string, to: string, amount: number, extra: Record<string, unknown> = {}) =>
    call<string>('eth_sendTransaction', [{ from, to: token, data: `0x${word(to)}${word(amount.toString(16))}`, gas: '0x186a0', ...extra }]);

  await node.setAutomine(false);
  // block 2: several transfers, a big native transfer, a legacy tx, a reverted call
  await transfer(a0, a1, 5);
  await transfer(a0, a2, 7);
  await transfer(a1, a3, 1);
  await call('eth_sendTransaction', [{ from: a2, to: a3, value: '0x3635c9adc5dea00000' }]); // 1000 ETH, above u64
  await call('eth_sendTransaction', [{ from: a3, to: a0, value: '0x1', gasPrice: '0x4a817c800', type: '0x0' }]);
  await call('eth_sendTransaction', [{ from: a1, to: token, data: '0x', gas: '0x186a0' }]); // reverts
  await call('evm_mine');
  // block 3: empty
  await call('evm_mine');
  // block 4: transfers from two senders and an access-list transaction
  for (let i = 0; i < 3; i++) await transfer(a0, a3, 10 + i);
  for (let i = 0; i < 2; i++) await transfer(a2, a1, 20 + i);
  await call('eth_sendTransaction', [{ from: a3, to: a2, value: '0x2', gasPrice: '0x4a817c800', type: '0x1', accessList: [] }]);
  await call('evm_mine');
  // block 5: a single transfer
  await transfer(a1, a0, 99);
  await call('evm_mine');

  const head = Number(BigInt(await call<string>('eth_blockNumber')));
  return { url, chainId, head, token, accounts, close: () => node.close() };
}
