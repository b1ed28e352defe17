/**
 * `trace lite up --demo`: a live chain to sync without any provider.
 *
 * Starts a ganache dev chain in this process on 127.0.0.1, deploys a tiny ERC-20-like token,
 * keeps producing one block every `blockIntervalMs` with a few `transfer(address,uint256)`
 * calls (each emits a standard `Transfer` log), starts an RPC egress gateway with the pool
 * `demo` pointing at the chain, applies a `follow_head` chain sync of blocks, transactions and
 * logs through the Dispatcher's admin API, and prints how to watch and query the result.
 *
 * The Dispatcher's chain_sync plugin and the workers' cryo_ingest operator must reach the
 * gateway this starts: give them a getter (`rpcGatewayUrl: () => holder.url`) and set the
 * holder in `onGateway`.
 */
import ganache from 'ganache';
import { TraceError } from '../core/errors.js';
import { startRpcGateway, type StartedRpcGateway } from '../rpc-gateway/gateway.js';

export interface DemoOptions {
  dispatcherUrl: string;
  /** An admin Bearer token (lite.json's dev admin token). */
  adminToken: string;
  host?: string;
  /** Port of the dev chain's JSON-RPC (default 0: any free port). */
  chainPort?: number;
  /** Port of the demo RPC gateway (default 0: any free port). */
  rpcGatewayPort?: number;
  chainId?: number;
  /** A block every this many ms (default 1000, at least 100). */
  blockIntervalMs?: number;
  /** Token transfers per block (default 3, at most 50). */
  transfersPerBlock?: number;
  /** Empty blocks mined before the sync starts, so there is history to catch up on (default 500). */
  historyBlocks?: number;
  /** Name of the chain sync job (default `demo`): datasets `{name}_blocks`, `{name}_transactions`, `{name}_logs`. */
  name?: string;
  /** Where the instructions go (default stderr). */
  write?: (text: string) => void;
  /**
   * Called with the demo gateway's URL once it listens, before the chain sync is applied: point
   * the chain_sync plugin's and cryo_ingest's gateway getters at it here.
   */
  onGateway?: (rpcGatewayUrl: string) => void;
}

export interface DemoHandle {
  chainUrl: string;
  chainId: number;
  rpcGatewayUrl: string;
  pool: string;
  jobName: string;
  datasets: string[];
  token: string;
  /** Blocks produced by the demo loop so far. */
  readonly produced: number;
  stop(): Promise<void>;
}

/** keccak256("Transfer(address,address,uint256)") */
const TRANSFER_TOPIC = 'ddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef';
/** transfer(address,uint256) */
const TRANSFER_SELECTOR = 'a9059cbb';

/**
 * Runtime of the demo token: for `transfer(to, amount)` calldata it emits
 * `Transfer(msg.sender, to, amount)` and returns true. It keeps no balances (a demo, not money).
 */
function tokenRuntime(): string {
  return [
    '602435', '600052', // mstore(0, calldataload(36))       amount
    '600435', // calldataload(4)                                to   (topic2)
    '33', // caller                                             from (topic1)
    `7f${TRANSFER_TOPIC}`, // topic0
    '6020', '6000', 'a3', // log3(0, 32, topic0, from, to)
    '6001', '600052', // mstore(0, 1)
    '6020', '6000', 'f3', // return(0, 32)
  ].join('');
}

function tokenInit(): string {
  const runtime = tokenRuntime();
  const len = (runtime.length / 2).toString(16).padStart(2, '0');
  const header = (offset: string) => `60${len}60${offset}600039` + `60${len}6000f3`;
  const offset = (header('00').length / 2).toString(16).padStart(2, '0');
  return `0x${header(offset)}${runtime}`;
}

const word = (hex: string) => hex.replace(/^0x/, '').padStart(64, '0');

function demoYaml(name: string, chainId: number, pool: string): string {
  const stream = (s: string) => `  ${s}:\n    cryo_dataset_name: ${s}\n    rpc_pool: ${pool}\n    chunk_size: 100\n    max_inflight: 4\n`;
  return `kind: chain_sync
name: ${name}
chain_id: ${chainId}
mode:
  kind: follow_head
  from_block: 0
  tail_lag: 1
  head_poll_interval_seconds: 1
  max_head_age_seconds: 15
streams:
${stream('blocks')}${stream('transactions')}${stream('logs')}`;
}

export async function startDemo(opts: DemoOptions): Promise<DemoHandle> {
  const host = opts.host ?? '127.0.0.1';
  const chainId = opts.chainId ?? 1337;
  const interval = Math.max(100, opts.blockIntervalMs ?? 1000);
  const perBlock = Math.min(50, Math.max(0, opts.transfersPerBlock ?? 3));
  const name = opts.name ?? 'demo';
  const pool = 'demo';
  const write = opts.write ?? ((t: string) => { process.stderr.write(t); });

  const server = ganache.server({
    logging: { quiet: true },
    chain: { chainId },
    wallet: { deterministic: true, totalAccounts: 5, defaultBalance: 1_000_000 },
  });
  await server.listen(opts.chainPort ?? 0, host);
  const chainUrl = `http://${host}:${(server.address() as { port: number }).port}`;
  let gateway: StartedRpcGateway | undefined;
  let timer: NodeJS.Timeout | undefined;
  let stopped = false;
  let busy: Promise<void> | undefined;
  let produced = 0;
  let id = 1;
  const call = async <T>(method: string, params: unknown[] = []): Promise<T> => {
    const res = await fetch(chainUrl, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ jsonrpc: '2.0', id: id++, method, params }) });
    const body = (await res.json()) as { result?: T; error?: { message?: string } };
    if (body.error) throw new TraceError(502, 'DEMO_CHAIN_FAILED', `the demo chain refused ${method}`);
    return body.result as T;
  };

  try {
    const accounts = await call<string[]>('eth_accounts');
    const deploy = await call<string>('eth_sendTransaction', [{ from: accounts[0], data: tokenInit(), gas: '0x30d40' }]);
    const receipt = await call<{ contractAddress: string; status: string }>('eth_getTransactionReceipt', [deploy]);
    if (receipt.status !== '0x1') throw new TraceError(500, 'DEMO_CHAIN_FAILED', 'the demo token could not be deployed');
    const token = receipt.contractAddress;
    await call('miner_stop');
    const history = Math.max(0, opts.historyBlocks ?? 500);
    if (history > 0) await call('evm_mine', [{ blocks: history }]);

    let n = 0;
    const produce = async () => {
      for (let i = 0; i < perBlock; i++) {
        const from = accounts[n % accounts.length]!;
        const to = accounts[(n * 7 + 3) % accounts.length]!;
        const amount = (1 + ((n * 7919) % 100_000)).toString(16);
        n++;
        await call('eth_sendTransaction', [{ from, to: token, data: `0x${TRANSFER_SELECTOR}${word(to)}${word(amount)}`, gas: '0x186a0' }]);
      }
      await call('evm_mine');
      produced++;
    };
    const tick = () => {
      if (stopped || busy) return; // bounded: never more than one block in the making
      busy = produce().catch(() => undefined).finally(() => { busy = undefined; });
    };
    timer = setInterval(tick, interval);
    tick();

    gateway = await startRpcGateway({ pools: { [pool]: [chainUrl] }, host, port: opts.rpcGatewayPort ?? 0 });
    opts.onGateway?.(gateway.url);
    const res = await fetch(`${opts.dispatcherUrl.replace(/\/+$/, '')}/v1/chain-sync`, {
      method: 'POST',
      headers: { authorization: `Bearer ${opts.adminToken}`, 'content-type': 'application/yaml' },
      body: demoYaml(name, chainId, pool),
    });
    if (res.status >= 300) {
      const b = (await res.json().catch(() => ({}))) as { code?: string; error?: string };
      throw new TraceError(502, 'DEMO_APPLY_FAILED', `the Dispatcher refused the demo chain sync: ${b.code ?? res.status} ${b.error ?? ''}`.trim());
    }
    const datasets = ['blocks', 'transactions', 'logs'].map((s) => `${name}_${s}`);
    write(
      `Demo: ganache dev chain ${chainId} at ${chainUrl}, one block with ${perBlock} ERC-20 transfers every ${interval / 1000} s (token ${token})\n` +
      `  RPC gateway ${gateway.url} (pool ${pool}); chain sync "${name}" follows the head into ${datasets.join(', ')}\n` +
      `  Watch:  trace chain-sync status --watch\n` +
      `  Query:  trace query --dataset ${name}_blocks "SELECT count(*) AS blocks, max(block_number) AS head FROM dataset"\n` +
      `          trace query --dataset ${name}_logs "SELECT count(*) AS transfers, count(DISTINCT transaction_hash) AS txs FROM dataset"\n` +
      `          trace query --dataset ${name}_transactions "SELECT block_number, count(*) AS txs FROM dataset GROUP BY 1 ORDER BY 1 DESC LIMIT 5"\n`,
    );
    const gw = gateway;
    return {
      chainUrl, chainId, rpcGatewayUrl: gw.url, pool, jobName: name, datasets, token,
      get produced() { return produced; },
      async stop() {
        stopped = true;
        clearInterval(timer);
        await busy;
        await gw.close();
        await server.close();
      },
    };
  } catch (e) {
    stopped = true;
    clearInterval(timer);
    await busy;
    await gateway?.close().catch(() => undefined);
    await server.close().catch(() => undefined);
    throw e;
  }
}
