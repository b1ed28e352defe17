/**
 * CLI start-up: wall time of `trace --help` and of `trace tasks --json` against a running
 * Dispatcher (the one-process platform on the test Postgres, started here), each a fresh
 * process of the built CLI (dist/, as installed), beside `node -e 0` in the same run. Builds
 * dist/ first unless BENCH_CLI_NO_BUILD is set. Targets: `--help` p50 < 300 ms, `tasks --json`
 * p50 < 600 ms on the 2-core machine.
 *
 * Knobs: BENCH_CLI_RUNS (15 per command, after one warm-up run each).
 */
import { spawn, spawnSync } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { startLite } from '../src/lite/lite.js';
import { silentLogger } from '../src/core/log.js';
import { createPgDatabase } from '../test/support/db.js';
import { percentile, report, round } from './util.js';

const ROOT = new URL('../', import.meta.url).pathname;
const RUNS = Math.max(1, Number(process.env.BENCH_CLI_RUNS ?? 15));

/** Wall time of one child process, start to exit (async: the Dispatcher here must keep answering). */
function wall(args: string[], env: NodeJS.ProcessEnv): Promise<number> {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const c = spawn(process.execPath, args, { env, stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    c.stderr!.on('data', (b: Buffer) => { err += b.toString(); });
    c.once('exit', (code) => {
      const ms = performance.now() - t0;
      if (code !== 0) reject(new Error(`${args.join(' ')} exited ${code}: ${err.slice(0, 300)}`));
      else resolve(ms);
    });
  });
}

async function measure(name: string, args: string[], env: NodeJS.ProcessEnv, extra: Record<string, unknown> = {}): Promise<void> {
  await wall(args, env); // warm the file cache
  const samples: number[] = [];
  for (let i = 0; i < RUNS; i++) samples.push(await wall(args, env));
  report({ bench: 'cli', system: name === 'node -e 0' ? 'node' : 'trace', metric: `${name} wall time p50`, value: round(percentile(samples, 50), 1), unit: 'ms', runs: RUNS, ...extra });
  report({ bench: 'cli', system: name === 'node -e 0' ? 'node' : 'trace', metric: `${name} wall time p90`, value: round(percentile(samples, 90), 1), unit: 'ms', runs: RUNS, ...extra });
}

export async function cliBench(): Promise<void> {
  if (!process.env.BENCH_CLI_NO_BUILD) {
    const b = spawnSync(process.execPath, [join(ROOT, 'node_modules/typescript/bin/tsc'), '-p', join(ROOT, 'tsconfig.build.json')], { stdio: 'inherit' });
    if (b.status !== 0) throw new Error('npm run build failed');
  }
  const bin = join(ROOT, 'bin/trace.mjs');
  const home = await mkdtemp(join(tmpdir(), 'trace-bench-cli-'));
  const s = await createPgDatabase('trace_bench_cli_s');
  const d = await createPgDatabase('trace_bench_cli_d');
  const lite = await startLite({
    home, workers: 0, log: silentLogger, ports: { dispatcher: 0, query: 0, gateway: 0, rpcGateway: 0 },
    env: { TRACE_HOME: home, TRACE_STATE_DATABASE_URL: s.url, TRACE_DATA_DATABASE_URL: d.url },
  });
  try {
    const env = { PATH: process.env.PATH, TRACE_HOME: home, NODE_ENV: 'production' };
    await measure('node -e 0', ['-e', '0'], env);
    await measure('trace --help', [bin, '--help'], env, { target_ms: 300 });
    await measure('trace tasks --json', [bin, 'tasks', '--json'], { ...env, TRACE_DISPATCHER_URL: lite.info.dispatcher_url, TRACE_TOKEN: lite.info.admin_token }, { target_ms: 600 });
  } finally {
    await lite.stop();
    await s.drop();
    await d.drop();
    await rm(home, { recursive: true, force: true });
  }
}
