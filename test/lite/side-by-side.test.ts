/**
 * Two `trace lite up` (real child processes) with different TRACE_HOMEs run side by side on free
 * ports: one takes them from `--port-base 0`, the other from `TRACE_<SERVICE>_LISTEN=127.0.0.1:0`
 * for every listener. Each writes the ports it chose to its own lite.json, and every listener
 * there answers `/healthz` naming its service.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createPgDatabase } from '../support/db.js';
import { ROOT } from '../cli/support.js';

const drops: Array<() => Promise<void>> = [];
const homes: string[] = [];

before(async () => {
  for (let i = 0; i < 2; i++) homes.push(await mkdtemp(join(tmpdir(), `trace-lite-side-${i}-`)));
});
after(async () => {
  for (const d of drops) await d();
  for (const h of homes) await rm(h, { recursive: true, force: true });
});

async function pgEnv(home: string): Promise<Record<string, string>> {
  const s = await createPgDatabase('trace_side_s');
  const d = await createPgDatabase('trace_side_d');
  drops.push(s.drop, d.drop);
  return { TRACE_HOME: home, TRACE_STATE_DATABASE_URL: s.url, TRACE_DATA_DATABASE_URL: d.url, TRACE_LOG_LEVEL: 'silent' };
}

function liteUp(args: string[], env: Record<string, string>): Promise<ChildProcess> {
  const child = spawn(process.execPath, [join(ROOT, 'bin/trace.mjs'), 'lite', 'up', '--workers', '0', ...args], {
    cwd: ROOT, env: { PATH: process.env.PATH ?? '', NODE_ENV: 'test', TRACE_FROM_SOURCE: '1', ...env }, stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  return new Promise((resolve, reject) => {
    child.stdout!.setEncoding('utf8').on('data', (d: string) => {
      out += d;
      if (out.includes('Stop: Ctrl-C, or trace lite down')) resolve(child);
    });
    child.stderr!.setEncoding('utf8').on('data', (d: string) => { err += d; });
    child.once('exit', (code) => reject(new Error(`lite up exited ${code}: ${err}`)));
  });
}

const exited = (c: ChildProcess) => new Promise<number | null>((resolve) => {
  if (c.exitCode !== null || c.signalCode !== null) resolve(c.exitCode);
  else c.once('exit', (code) => resolve(code));
});

const URL_KEYS: Record<string, string> = {
  gateway_url: 'gateway', dispatcher_url: 'dispatcher', query_url: 'query', rpc_gateway_url: 'rpc-gateway',
  worker_ops_url: 'worker', sink_ops_url: 'sink', delivery_ops_url: 'delivery',
};

test('two lite platforms on free ports at once, each listener in its lite.json answering /healthz', { timeout: 240_000 }, async () => {
  const pool = { TRACE_RPC_POOL_LOCAL_URL: 'http://127.0.0.1:9' };
  const byFlag = { ...(await pgEnv(homes[0]!)), ...pool };
  const byEnv: Record<string, string> = { ...(await pgEnv(homes[1]!)), ...pool };
  for (const v of ['DISPATCHER', 'GATEWAY', 'QUERY', 'RPC_GATEWAY', 'WORKER', 'SINK', 'DELIVERY']) byEnv[`TRACE_${v}_LISTEN`] = '127.0.0.1:0';
  const children = await Promise.all([liteUp(['--port-base', '0'], byFlag), liteUp([], byEnv)]);
  try {
    const ports = new Set<string>();
    for (const home of homes) {
      const info = JSON.parse(await readFile(join(home, 'lite.json'), 'utf8')) as Record<string, unknown>;
      for (const [key, service] of Object.entries(URL_KEYS)) {
        const url = info[key];
        assert.equal(typeof url, 'string', `${home}: lite.json has ${key}`);
        const port = new URL(url as string).port;
        assert.doesNotMatch(port, /^808\d$/, 'a free port, not a standard one');
        ports.add(port);
        const r = await fetch(`${url as string}/healthz`, { signal: AbortSignal.timeout(10_000) });
        assert.equal(r.status, 200, `${key} of ${home}`);
        assert.deepEqual(await r.json(), { ok: true, service });
      }
    }
    assert.equal(ports.size, 14, 'no two listeners share a port');
  } finally {
    for (const c of children) c.kill('SIGTERM');
    for (const c of children) assert.equal(await exited(c), 0, 'SIGTERM stops lite up cleanly');
  }
});
