/**
 * `trace lite up` as a user runs it (real child processes): a taken port or a home in use ends
 * it with one line and a non-zero status before anything runs; `trace lite down` stops the
 * instance lite.json names and waits for it; a lock left by a dead process is taken over.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createPgDatabase } from '../support/db.js';
import { acquireHomeLock, lockPath, pidAlive } from '../../src/lite/lock.js';
import { startLite } from '../../src/lite/lite.js';
import { silentLogger } from '../../src/core/log.js';
import { ROOT, trace } from './support.js';

let home: string;
let env: Record<string, string>;
const drops: Array<() => Promise<void>> = [];

before(async () => {
  home = await mkdtemp(join(tmpdir(), 'trace-lite-cli-'));
  const s = await createPgDatabase('trace_litecli_s');
  const d = await createPgDatabase('trace_litecli_d');
  drops.push(s.drop, d.drop);
  env = { TRACE_HOME: home, TRACE_STATE_DATABASE_URL: s.url, TRACE_DATA_DATABASE_URL: d.url, TRACE_LOG_LEVEL: 'silent' };
});
after(async () => {
  for (const d of drops) await d();
  await rm(home, { recursive: true, force: true });
});

/** Starts `trace lite up` and resolves once it printed that it is up (lite.json is written by then). */
function liteUp(args: string[]): Promise<{ child: ChildProcess; stdout: string }> {
  const child = spawn(process.execPath, [join(ROOT, 'bin/trace.mjs'), 'lite', 'up', ...args], {
    cwd: ROOT, env: { PATH: process.env.PATH ?? '', NODE_ENV: 'test', TRACE_FROM_SOURCE: '1', ...env }, stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  return new Promise((resolve, reject) => {
    child.stdout!.setEncoding('utf8').on('data', (d: string) => {
      out += d;
      if (out.includes('Stop: Ctrl-C, or trace lite down')) resolve({ child, stdout: out });
    });
    child.stderr!.setEncoding('utf8').on('data', (d: string) => { err += d; });
    child.once('exit', (code) => reject(new Error(`lite up exited ${code}: ${err}`)));
  });
}

const exited = (c: ChildProcess) => new Promise<number | null>((resolve) => {
  if (c.exitCode !== null || c.signalCode !== null) resolve(c.exitCode);
  else c.once('exit', (code) => resolve(code));
});

async function listenAnywhere(): Promise<{ server: Server; port: number }> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { server, port: (server.address() as { port: number }).port };
}

test('a taken port: one line naming the service and port, non-zero exit, nothing left behind', { timeout: 120_000 }, async () => {
  const { server, port } = await listenAnywhere();
  try {
    // The Dispatcher listens on --port-base + 1, and binds first.
    const r = await trace(['lite', 'up', '--port-base', String(port - 1), '--workers', '0'], env, { timeoutMs: 90_000 });
    assert.equal(r.code, 1, r.stderr);
    assert.equal(r.stderr, `trace lite up: the Dispatcher cannot listen on 127.0.0.1:${port}: the port is in use (another trace lite up, or another program) (PORT_IN_USE)\n`);
    await assert.rejects(readFile(join(home, 'lite.json')));
    await assert.rejects(readFile(lockPath(home)), 'the home lock is released');

    // A port taken after others were bound: everything bound so far is closed again and the
    // same home starts at once afterwards.
    const partial = await startLite({ home, env, workers: 1, log: silentLogger, ports: { dispatcher: 0, query: port, gateway: 0 } }).catch((e: unknown) => e);
    assert.equal((partial as { code?: string }).code, 'PORT_IN_USE');
    assert.match((partial as Error).message, new RegExp(`^the Query Service cannot listen on 127\\.0\\.0\\.1:${port}`));
    const ok = await startLite({ home, env, workers: 1, log: silentLogger, ports: { dispatcher: 0, query: 0, gateway: 0 } });
    await ok.stop();
  } finally {
    server.close();
  }
});

test('one instance per home; lite down stops it and waits; a dead owner\'s lock is taken over', { timeout: 180_000 }, async () => {
  const first = await liteUp(['--port-base', '0', '--workers', '0']);
  try {
    const info = JSON.parse(await readFile(join(home, 'lite.json'), 'utf8')) as { pid: number; dispatcher_url: string };
    assert.equal(info.pid, first.child.pid);
    assert.match(first.stdout, /Trace is up \(postgres profile/);
    assert.equal((await readFile(lockPath(home), 'utf8')).trim(), String(first.child.pid));

    const second = await trace(['lite', 'up', '--port-base', '0', '--workers', '0'], env, { timeoutMs: 90_000 });
    assert.equal(second.code, 1);
    assert.equal(second.stderr, `trace lite up: ${home} is in use by another trace lite up (pid ${first.child.pid}); stop it with \`trace lite down --home ${home}\` or choose another --home (HOME_LOCKED)\n`);
    assert.equal((await fetch(`${info.dispatcher_url}/healthz`)).status, 200, 'the first instance is untouched');

    const down = await trace(['lite', 'down'], env);
    assert.equal(down.code, 0, down.stderr);
    assert.equal(down.stdout, `stopped trace lite up on ${home} (pid ${first.child.pid})\n`);
    assert.equal(pidAlive(first.child.pid!), false, 'lite down returns once the process has exited');
    await exited(first.child);
    await assert.rejects(readFile(join(home, 'lite.json')), 'lite.json is removed');
    await assert.rejects(readFile(lockPath(home)), 'the lock is released');
    assert.equal((await trace(['lite', 'down', '--json'], env)).code, 1, 'nothing left to stop');
  } finally {
    first.child.kill('SIGKILL');
  }

  // A crashed instance leaves its lock (and lite.json) behind: the next start takes over.
  const dead = spawn(process.execPath, ['-e', '0']);
  await exited(dead);
  await writeFile(lockPath(home), `${dead.pid}\n`);
  await writeFile(join(home, 'lite.json'), JSON.stringify({ pid: dead.pid }));
  const staleDown = await trace(['lite', 'down'], env);
  assert.equal(staleDown.code, 0);
  assert.match(staleDown.stdout, /is not running \(pid \d+ has exited\); removed its stale lite.json/);
  const next = await liteUp(['--port-base', '0', '--workers', '0']);
  try {
    assert.equal((await readFile(lockPath(home), 'utf8')).trim(), String(next.child.pid));
  } finally {
    next.child.kill('SIGTERM');
    assert.equal(await exited(next.child), 0, 'SIGTERM stops lite up cleanly');
  }
  await assert.rejects(readFile(lockPath(home)));
});

test('acquireHomeLock: a live owner refuses, our own release removes only our lock', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'trace-lock-'));
  try {
    const lock = await acquireHomeLock(dir);
    await assert.rejects(acquireHomeLock(dir), (e: { code?: string }) => e.code === 'HOME_LOCKED');
    await lock.release();
    const live = spawn(process.execPath, ['-e', 'setTimeout(() => {}, 60000)']);
    try {
      await writeFile(lockPath(dir), `${live.pid}\n`);
      await assert.rejects(acquireHomeLock(dir), (e: { code?: string; message: string }) => e.code === 'HOME_LOCKED' && e.message.includes(`pid ${live.pid}`));
    } finally {
      live.kill();
      await exited(live);
    }
    const taken = await acquireHomeLock(dir);
    assert.equal((await readFile(lockPath(dir), 'utf8')).trim(), String(process.pid));
    await writeFile(lockPath(dir), '999999999\n'); // someone else's now
    await taken.release();
    assert.equal((await readFile(lockPath(dir), 'utf8')).trim(), '999999999', 'a lock we no longer own is left alone');
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
