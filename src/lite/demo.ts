/**
 * `trace lite up --demo`: a live chain to sync and an alert that fires, without any provider.
 *
 * - starts an anvil dev chain (src/lite/devchain.ts) on 127.0.0.1, deploys a tiny ERC-20-like
 *   token and keeps producing one block every `blockIntervalMs` with a few
 *   `transfer(address,uint256)` calls (each emits a standard `Transfer` log);
 * - starts an RPC egress gateway with the pool `demo` pointing at the chain and applies a
 *   `follow_head` chain sync of blocks, transactions and logs through the Dispatcher's admin API;
 * - writes every transfer it made (block_number, tx_hash, value, block_time, from the chain's
 *   receipts and blocks) to the external Parquet dataset `transfers`, registered again every
 *   `publishIntervalMs` when new transfers were mined;
 * - starts a local webhook receiver, creates the alert definition "demo: transfers >= 90000"
 *   delivering to it, uploads examples/udf/node-alert as a bundle and deploys the DAG
 *   `demo_alerts` (alert_evaluate over `transfers`, then alert_route) and triggers its first
 *   evaluation; each later registration of `transfers` is a dataset update that runs the
 *   reactive evaluation again, so alerts reach the receiver as the chain runs.
 *
 * The receiver is plain http on loopback: the caller must turn on the Delivery Service's
 * development switch for this process (`trace lite up --demo` does, and says so).
 *
 * The Dispatcher's chain_sync plugin and the workers' cryo_ingest operator must reach the
 * gateway this starts: give them a getter (`rpcGatewayUrl: () => holder.url`) and set the
 * holder in `onGateway`.
 */
import { createServer, type Server } from 'node:http';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { TraceError } from '../core/errors.js';
import type { Logger } from '../core/log.js';
import { startRpcGateway, type StartedRpcGateway } from '../rpc-gateway/gateway.js';
import { startDevChain, type DevChainNode } from './devchain.js';

export interface DemoOptions {
  dispatcherUrl: string;
  /** An admin Bearer token (lite.json's dev admin token). */
  adminToken: string;
  /** Where the `transfers` Parquet files go (`<home>/demo/transfers`). */
  home: string;
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
  /** How often new transfers are written and `transfers` registered again (default 5000 ms). */
  publishIntervalMs?: number;
  /** Transfers of at least this value raise an alert (default 90000; values are 1..100000). */
  alertMinValue?: number;
  log?: Logger;
  /**
   * Called with the demo gateway's URL once it listens, before the chain sync is applied: point
   * the chain_sync plugin's and cryo_ingest's gateway getters at it here.
   */
  onGateway?: (rpcGatewayUrl: string) => void;
}

export interface ReceivedWebhook {
  at: string;
  path: string;
  idempotency_key: string | undefined;
  body: unknown;
}

export interface DemoHandle {
  chainUrl: string;
  chainId: number;
  rpcGatewayUrl: string;
  pool: string;
  jobName: string;
  datasets: string[];
  token: string;
  /** The local receiver's URL (`GET` it for what arrived). */
  webhookUrl: string;
  alertId: string;
  alertDag: string;
  /** Webhooks the receiver got, oldest first (the last 1,000). */
  readonly received: ReceivedWebhook[];
  /** Blocks produced by the demo loop so far. */
  readonly produced: number;
  stop(): Promise<void>;
}

/** keccak256("Transfer(address,address,uint256)") */
const TRANSFER_TOPIC = 'ddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef';
/** transfer(address,uint256) */
const TRANSFER_SELECTOR = 'a9059cbb';
export const DEMO_ALERT_DAG = 'demo_alerts';
const ALERT_BUNDLE_DIR = fileURLToPath(new URL('../../examples/udf/node-alert/', import.meta.url));

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

function alertDagYaml(bundleId: string, alertId: string, chainId: number): string {
  return `# The demo's alert: the node-alert example bundle over the demo's transfers, then routing.
name: ${DEMO_ALERT_DAG}
jobs:
  - name: evaluate
    activation: reactive
    runtime: lambda
    operator: alert_evaluate
    execution_strategy: PerUpdate
    inputs:
      - from: { dataset: transfers }
    outputs: 1
    update_strategy: append
    unique_key: [dedupe_key]
    config:
      alert_definition_id: ${alertId}
      params: { chain_id: ${chainId} }
    udf:
      bundle_id: "${bundleId}"
      entrypoint: index.mjs

  - name: route
    activation: reactive
    runtime: ecs_platform
    operator: alert_route
    execution_strategy: PerUpdate
    inputs:
      - from: { dataset: alert_events }
        where:
          severity: [warning, critical]
    outputs: 1
    update_strategy: replace
    config:
      max_delivery_age: 7d
`;
}

/** A webhook receiver on loopback that keeps what it gets; `GET /` lists it. */
async function startReceiver(host: string): Promise<{ url: string; received: ReceivedWebhook[]; close(): Promise<void>; server: Server }> {
  const received: ReceivedWebhook[] = [];
  const server = createServer((req, res) => {
    if (req.method === 'GET') {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ count: received.length, received: received.slice(-100) }));
      return;
    }
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (size <= 256 * 1024) chunks.push(c);
    });
    req.on('end', () => {
      let body: unknown;
      try { body = JSON.parse(Buffer.concat(chunks).toString('utf8')); } catch { body = Buffer.concat(chunks).toString('utf8').slice(0, 1000); }
      const key = req.headers['idempotency-key'];
      received.push({ at: new Date().toISOString(), path: req.url ?? '/', idempotency_key: Array.isArray(key) ? key[0] : key, body });
      if (received.length > 1000) received.splice(0, received.length - 1000);
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end('{"ok":true}');
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, host, () => resolve());
  });
  const port = (server.address() as { port: number }).port;
  return {
    url: `http://${host}:${port}/hook`,
    received,
    server,
    close: () => new Promise<void>((resolve) => { server.closeAllConnections(); server.close(() => resolve()); }),
  };
}

interface Transfer { block_number: number; tx_hash: string; value: number; block_time: string }

export async function startDemo(opts: DemoOptions): Promise<DemoHandle> {
  const host = opts.host ?? '127.0.0.1';
  const chainId = opts.chainId ?? 1337;
  const interval = Math.max(100, opts.blockIntervalMs ?? 1000);
  const perBlock = Math.min(50, Math.max(0, opts.transfersPerBlock ?? 3));
  const name = opts.name ?? 'demo';
  const pool = 'demo';
  const minValue = opts.alertMinValue ?? 90_000;
  const dispatcher = opts.dispatcherUrl.replace(/\/+$/, '');
  const transfersDir = join(opts.home, 'demo', 'transfers');

  const admin = async <T>(method: string, path: string, body?: unknown, contentType = 'application/json'): Promise<T> => {
    const res = await fetch(`${dispatcher}${path}`, {
      method,
      headers: { authorization: `Bearer ${opts.adminToken}`, ...(body !== undefined ? { 'content-type': contentType } : {}) },
      ...(body !== undefined ? { body: typeof body === 'string' ? body : JSON.stringify(body) } : {}),
    });
    const b = (await res.json().catch(() => ({}))) as T & { code?: string; error?: string };
    if (res.status >= 300) throw new TraceError(502, 'DEMO_SETUP_FAILED', `the demo's ${method} ${path.split('?')[0]} was refused: ${b.code ?? res.status} ${b.error ?? ''}`.trim());
    return b;
  };

  const stops: Array<() => Promise<void>> = [];
  let timer: NodeJS.Timeout | undefined;
  let publisher: NodeJS.Timeout | undefined;
  let stopped = false;
  let busy: Promise<void> | undefined;
  let publishing: Promise<void> | undefined;
  let produced = 0;
  const pending: Transfer[] = [];
  const stopAll = async () => {
    stopped = true;
    clearInterval(timer);
    clearInterval(publisher);
    await busy;
    await publishing;
    for (const s of stops.reverse()) await s().catch(() => undefined);
  };

  try {
    const node: DevChainNode = await startDevChain({ chainId, host, ...(opts.chainPort !== undefined ? { port: opts.chainPort } : {}) });
    stops.push(() => node.close());
    const { call } = node;
    const accounts = await call<string[]>('eth_accounts');
    const deploy = await call<string>('eth_sendTransaction', [{ from: accounts[0], data: tokenInit(), gas: '0x30d40' }]);
    const receipt = await node.receipt<{ contractAddress: string; status: string }>(deploy);
    if (receipt.status !== '0x1') throw new TraceError(500, 'DEMO_CHAIN_FAILED', 'the demo token could not be deployed');
    const token = receipt.contractAddress;
    await node.setAutomine(false);
    const history = Math.max(0, opts.historyBlocks ?? 500);
    if (history > 0) await node.mine(history);

    let n = 0;
    const produce = async () => {
      const sent: Array<{ hash: string; value: number }> = [];
      for (let i = 0; i < perBlock; i++) {
        const from = accounts[n % accounts.length]!;
        const to = accounts[(n * 7 + 3) % accounts.length]!;
        const value = 1 + ((n * 7919) % 100_000);
        n++;
        sent.push({ hash: await call<string>('eth_sendTransaction', [{ from, to: token, data: `0x${TRANSFER_SELECTOR}${word(to)}${word(value.toString(16))}`, gas: '0x186a0' }]), value });
      }
      await node.mine();
      produced++;
      if (sent.length === 0) return;
      const block = await call<{ number: string; timestamp: string; transactions: string[] }>('eth_getBlockByNumber', ['latest', false]);
      const mined = new Set(block.transactions);
      const blockTime = new Date(Number(BigInt(block.timestamp)) * 1000).toISOString();
      for (const s of sent) if (mined.has(s.hash)) pending.push({ block_number: Number(BigInt(block.number)), tx_hash: s.hash, value: s.value, block_time: blockTime });
    };
    const tick = () => {
      if (stopped || busy) return; // bounded: never more than one block in the making
      busy = produce().catch((e: unknown) => opts.log?.warn({ err: e instanceof Error ? e.message : String(e) }, 'demo block failed')).finally(() => { busy = undefined; });
    };

    const gateway: StartedRpcGateway = await startRpcGateway({ pools: { [pool]: [node.url] }, host, port: opts.rpcGatewayPort ?? 0 });
    stops.push(() => gateway.close());
    opts.onGateway?.(gateway.url);
    await admin('POST', '/v1/chain-sync', demoYaml(name, chainId, pool), 'application/yaml');
    const datasets = ['blocks', 'transactions', 'logs'].map((s) => `${name}_${s}`);

    const receiver = await startReceiver(host);
    stops.push(() => receiver.close());

    // The transfers dataset: one Parquet file per publish, the folder registered again.
    const { DuckDBInstance } = await import('@duckdb/node-api');
    const duck = await DuckDBInstance.create(':memory:');
    const conn = await duck.connect();
    stops.push(async () => { conn.closeSync(); duck.closeSync(); });
    await mkdir(transfersDir, { recursive: true });
    let lastBlock = -1;
    const publish = async (): Promise<boolean> => {
      const rows = pending.splice(0, pending.length);
      if (rows.length === 0) return false;
      const first = rows[0]!.block_number;
      const last = rows[rows.length - 1]!.block_number;
      const values = rows.map((r) => `(${r.block_number}::BIGINT, '${r.tx_hash}', ${r.value}::DOUBLE, TIMESTAMPTZ '${r.block_time}')`).join(', ');
      const file = join(transfersDir, `transfers_${String(first).padStart(10, '0')}_${String(last).padStart(10, '0')}.parquet`);
      await conn.run(`COPY (SELECT * FROM (VALUES ${values}) t(block_number, tx_hash, value, block_time)) TO '${file.replace(/'/g, "''")}' (FORMAT parquet)`);
      await admin('POST', '/v1/datasets/transfers/register', { from: pathToFileURL(`${transfersDir}/`).href, glob: '*.parquet' });
      lastBlock = last;
      return true;
    };
    // The first registration came before the DAG existed: its first evaluation is triggered by hand.
    const trigger = () => admin('POST', `/v1/dags/${DEMO_ALERT_DAG}/jobs/evaluate/trigger`, { cursor: lastBlock, idempotency_key: `transfers:${lastBlock}` });

    // One block of transfers, so `transfers` exists before the DAG that reads it is deployed.
    await produce();
    await publish();

    const { buildBundleFromDir, uploadBundleZip } = await import('../cli/commands/udf.js');
    const built = await buildBundleFromDir(ALERT_BUNDLE_DIR);
    const bundle = await uploadBundleZip({ baseUrl: dispatcher, token: opts.adminToken, workerToken: undefined }, built.zip,
      { runtime: built.manifest.runtime, entrypoint: built.manifest.entrypoint, name: 'demo node-alert' });
    const alert = await admin<{ id: string }>('POST', '/v1/alerts', {
      name: `demo: transfers >= ${minValue}`,
      condition: { min_value: minValue },
      channels: [{ type: 'webhook', url: receiver.url }],
    });
    await admin('POST', `/v1/dags/${DEMO_ALERT_DAG}/versions?activate=true`, alertDagYaml(bundle.bundle_id, alert.id, chainId), 'application/yaml');
    await trigger();

    timer = setInterval(tick, interval);
    tick();
    publisher = setInterval(() => {
      if (stopped || publishing) return;
      // A registration that changes `transfers` is a dataset update: the Dispatcher routes it to
      // every reactive job reading `transfers` (this demo's and the README example's).
      publishing = publish()
        .then(() => undefined)
        .catch((e: unknown) => opts.log?.warn({ err: e instanceof Error ? e.message : String(e) }, 'demo transfers publish failed'))
        .finally(() => { publishing = undefined; });
    }, Math.max(500, opts.publishIntervalMs ?? 5000));

    return {
      chainUrl: node.url, chainId, rpcGatewayUrl: gateway.url, pool, jobName: name, datasets, token,
      webhookUrl: receiver.url, alertId: alert.id, alertDag: DEMO_ALERT_DAG,
      received: receiver.received,
      get produced() { return produced; },
      stop: stopAll,
    };
  } catch (e) {
    await stopAll();
    throw e;
  }
}
