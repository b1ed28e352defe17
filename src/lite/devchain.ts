/**
 * A local EVM development chain: Foundry's `anvil` (npm `@foundry-rs/anvil`, a development
 * dependency that ships the prebuilt binary) as a child process serving JSON-RPC over HTTP on
 * 127.0.0.1. Used by `trace lite up --demo`, the chain tests and the chain benchmark.
 *
 * The binary is found at TRACE_ANVIL_BIN, else in the platform package npm installed beside
 * `@foundry-rs/anvil`, else as `anvil` on PATH (a Foundry install). Nothing here imports the
 * package: a production install (`npm ci --omit=dev`) loads this file without it and fails only
 * when a chain is actually started, with one line saying how to add it.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { accessSync, constants } from 'node:fs';
import { delimiter, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { TraceError } from '../core/errors.js';

export interface DevChainOptions {
  chainId?: number;
  host?: string;
  /** 0 (default) picks a free port. */
  port?: number;
  /** Funded, unlocked dev accounts (default 5). */
  accounts?: number;
  /** Ether per account (default 1,000,000). */
  balance?: number;
  /** Mine a block per transaction (default) or only on `mine()` (many transactions per block). */
  automine?: boolean;
  /** Block author of the blocks mined from now on. */
  coinbase?: string;
  /** Timestamp (unix seconds) of the genesis block; default now. Two chains with different ones have different genesis blocks. */
  genesisTimestamp?: number;
  env?: NodeJS.ProcessEnv;
}

export interface DevChainNode {
  url: string;
  chainId: number;
  pid: number;
  call<T = unknown>(method: string, params?: unknown[]): Promise<T>;
  /** Mines `blocks` blocks (default 1); pending transactions go into the first. */
  mine(blocks?: number): Promise<void>;
  setAutomine(on: boolean): Promise<void>;
  /**
   * The receipt of a transaction, waiting until it is mined (with automine the node answers
   * eth_sendTransaction before the block exists). Fails after `timeoutMs` (default 10 s).
   */
  receipt<T = { status: string; contractAddress: string | null; blockNumber: string }>(hash: string, timeoutMs?: number): Promise<T>;
  /** `evm_snapshot`: an id to revert to. */
  snapshot(): Promise<string>;
  /** `evm_revert`: back to the snapshot's state (chain head included). */
  revert(id: string): Promise<boolean>;
  close(): Promise<void>;
}

const PLATFORM: Record<string, string> = { linux: 'linux', darwin: 'darwin', win32: 'win32' };
const ARCH: Record<string, string> = { x64: 'amd64', arm64: 'arm64' };

function executable(path: string): boolean {
  try {
    accessSync(path, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/** Where the anvil binary is, or a TraceError that says in one line how to get it. */
export function anvilBinary(env: NodeJS.ProcessEnv = process.env): string {
  if (env.TRACE_ANVIL_BIN) {
    if (executable(env.TRACE_ANVIL_BIN)) return env.TRACE_ANVIL_BIN;
    throw new TraceError(500, 'DEV_CHAIN_MISSING', `TRACE_ANVIL_BIN=${env.TRACE_ANVIL_BIN} is not an executable file`);
  }
  const exe = process.platform === 'win32' ? 'anvil.exe' : 'anvil';
  const plat = PLATFORM[process.platform];
  const arch = ARCH[process.arch];
  if (plat && arch) {
    try {
      const pkg = fileURLToPath(import.meta.resolve(`@foundry-rs/anvil-${plat}-${arch}/package.json`));
      const bin = join(dirname(pkg), 'bin', exe);
      if (executable(bin)) return bin;
    } catch {
      // not installed: try PATH
    }
  }
  for (const dir of (env.PATH ?? '').split(delimiter)) {
    if (dir && executable(join(dir, exe))) return join(dir, exe);
  }
  throw new TraceError(500, 'DEV_CHAIN_MISSING',
    'the dev chain (Foundry\'s anvil, a development dependency) is not installed: run `npm install` in the Trace checkout without --omit=dev, or `npm install @foundry-rs/anvil`, or set TRACE_ANVIL_BIN');
}

// Children still running when this process exits are killed with it.
const running = new Set<ChildProcess>();
let exitHook = false;

export async function startDevChain(opts: DevChainOptions = {}): Promise<DevChainNode> {
  const bin = anvilBinary(opts.env ?? process.env);
  const host = opts.host ?? '127.0.0.1';
  const chainId = opts.chainId ?? 1337;
  const args = [
    '--host', host, '--port', String(opts.port ?? 0), '--chain-id', String(chainId),
    '--accounts', String(opts.accounts ?? 5), '--balance', String(opts.balance ?? 1_000_000),
    // First come, first mined (by default anvil orders a block by fee), so blocks are predictable.
    '--order', 'fifo',
    ...(opts.automine === false ? ['--no-mining'] : []),
    ...(opts.genesisTimestamp !== undefined ? ['--timestamp', String(opts.genesisTimestamp)] : []),
  ];
  const child = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  running.add(child);
  if (!exitHook) {
    exitHook = true;
    process.once('exit', () => { for (const c of running) c.kill('SIGKILL'); });
  }
  let stderr = '';
  child.stderr!.setEncoding('utf8').on('data', (d: string) => { stderr = (stderr + d).slice(-2000); });
  const exited = new Promise<void>((resolve) => child.once('exit', () => { running.delete(child); resolve(); }));
  const url = await new Promise<string>((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => { child.kill('SIGKILL'); reject(new TraceError(500, 'DEV_CHAIN_FAILED', 'the dev chain did not start listening within 30 s')); }, 30_000);
    const onData = (d: string) => {
      out += d;
      const m = /Listening on (\S+)\r?\n/.exec(out); // the whole line: a chunk may end mid-address
      if (m) {
        clearTimeout(timer);
        resolve(`http://${m[1]}`);
      }
    };
    // Keep reading after start-up: an unread pipe would stall the node once its buffer fills.
    child.stdout!.setEncoding('utf8').on('data', onData);
    child.once('error', (e) => { clearTimeout(timer); reject(new TraceError(500, 'DEV_CHAIN_FAILED', `cannot run the dev chain ${bin}: ${e.message}`)); });
    child.once('exit', (code) => { clearTimeout(timer); reject(new TraceError(500, 'DEV_CHAIN_FAILED', `the dev chain exited at start (code ${code}): ${stderr.trim().split('\n').pop() ?? ''}`)); });
  });

  let id = 1;
  const call = async <T>(method: string, params: unknown[] = []): Promise<T> => {
    const res = await fetch(url, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ jsonrpc: '2.0', id: id++, method, params }) });
    const body = (await res.json()) as { result?: T; error?: { code?: number; message?: string } };
    if (body.error) throw new TraceError(502, 'DEV_CHAIN_FAILED', `the dev chain refused ${method}: ${body.error.message ?? body.error.code}`);
    return body.result as T;
  };
  const node: DevChainNode = {
    url,
    chainId,
    pid: child.pid!,
    call,
    async mine(blocks = 1) {
      if (blocks === 1) await call('evm_mine');
      else if (blocks > 1) await call('anvil_mine', [`0x${blocks.toString(16)}`]);
    },
    async setAutomine(on) { await call('evm_setAutomine', [on]); },
    async receipt<T>(hash: string, timeoutMs = 10_000): Promise<T> {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const r = await call<T | null>('eth_getTransactionReceipt', [hash]);
        if (r) return r;
        if (Date.now() > deadline) throw new TraceError(502, 'DEV_CHAIN_FAILED', `transaction ${hash} was not mined within ${timeoutMs} ms`);
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
    },
    snapshot: () => call<string>('evm_snapshot'),
    revert: (snap) => call<boolean>('evm_revert', [snap]),
    async close() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      await exited;
    },
  };
  try {
    if (opts.coinbase) await call('anvil_setCoinbase', [opts.coinbase]);
  } catch (e) {
    await node.close();
    throw e;
  }
  return node;
}
