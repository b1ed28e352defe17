/**
 * What the CLI loads: a command imports only what it uses (no service, database, DuckDB,
 * Fastify or AWS SDK for help or an admin call), and a production install without
 * devDependencies runs every command but `lite up --demo`, which fails in one line saying how
 * to add the dev chain, and exits (nothing left running).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { COMMANDS } from '../../src/cli/cli.js';
import { createPgDatabase } from '../support/db.js';
import { ROOT, inBatches, trace } from './support.js';

const HOOKS = ['--import', join(ROOT, 'test/cli/fixtures/register-hooks.mjs')];
const HEAVY = ['fastify', '@duckdb/node-api', '@aws-sdk/client-s3', '@aws-sdk/client-sqs', '@aws-sdk/client-lambda', '@aws-sdk/client-sts', '@electric-sql/pglite', 'pg', 'pino', '@foundry-rs/anvil'];

async function loadedBy(args: string[], env: Record<string, string> = {}): Promise<{ code: number; loaded: Set<string>; stderr: string }> {
  const dir = await mkdtemp(join(tmpdir(), 'trace-startup-'));
  try {
    const file = join(dir, 'loaded.txt');
    const r = await trace(args, { TRACE_HOME: dir, TRACE_TEST_LOADED_FILE: file, ...env }, { nodeArgs: HOOKS });
    const text = await readFile(file, 'utf8').catch(() => '');
    return { code: r.code, loaded: new Set(text.split('\n').filter(Boolean)), stderr: r.stderr };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

test('trace --help and an admin command load no service', async () => {
  const help = await loadedBy(['--help']);
  assert.equal(help.code, 0, help.stderr);
  const tasks = await loadedBy(['tasks', '--json'], { TRACE_DISPATCHER_URL: 'http://127.0.0.1:9' });
  assert.equal(tasks.code, 1, 'the Dispatcher is unreachable, but the command ran');
  for (const r of [help, tasks]) {
    const heavy = HEAVY.filter((p) => r.loaded.has(p));
    assert.deepEqual(heavy, [], `loaded ${heavy.join(', ')}`);
  }
  // The check can fail: a command that runs a service does load them.
  const migrate = await loadedBy(['migrate', '--json']);
  assert.ok(migrate.loaded.has('@electric-sql/pglite'), `migrate loads the embedded database (${[...migrate.loaded].join(', ')})`);
});

test('without devDependencies every command answers, and lite up --demo says in one line how to add the dev chain', { timeout: 240_000 }, async () => {
  const pkg = JSON.parse(await readFile(join(ROOT, 'package.json'), 'utf8')) as { devDependencies: Record<string, string> };
  const env = { TRACE_TEST_BLOCKED: Object.keys(pkg.devDependencies).join(','), PATH: dirname(process.execPath) };
  const helps = await inBatches(COMMANDS, 4, async (c) => ({ c, r: await trace([...c.name.split(' '), '--help'], env, { nodeArgs: HOOKS }) }));
  for (const { c, r } of helps) assert.equal(r.code, 0, `trace ${c.name} --help: ${r.stderr}`);

  const home = await mkdtemp(join(tmpdir(), 'trace-prod-'));
  const s = await createPgDatabase('trace_prod_s');
  const d = await createPgDatabase('trace_prod_d');
  try {
    const dbEnv = { ...env, TRACE_HOME: home, TRACE_STATE_DATABASE_URL: s.url, TRACE_DATA_DATABASE_URL: d.url };
    const migrate = await trace(['migrate'], dbEnv, { nodeArgs: HOOKS });
    assert.equal(migrate.code, 0, migrate.stderr);
    const demo = await trace(['lite', 'up', '--demo', '--port-base', '0', '--workers', '0'], { ...dbEnv, TRACE_LOG_LEVEL: 'silent' }, { nodeArgs: HOOKS, timeoutMs: 180_000 });
    assert.equal(demo.code, 1, demo.stderr);
    const lines = demo.stderr.trim().split('\n');
    assert.equal(lines.length, 1, demo.stderr);
    assert.match(lines[0]!, /^trace lite up: the dev chain \(Foundry's anvil, a development dependency\) is not installed: run `npm install` .*\(DEV_CHAIN_MISSING\)$/);
    await assert.rejects(readFile(join(home, 'lite.json')), 'nothing claims to be running');
    await assert.rejects(readFile(join(home, 'lite.lock')), 'the home lock was released');
  } finally {
    await s.drop();
    await d.drop();
    await rm(home, { recursive: true, force: true });
  }
});
