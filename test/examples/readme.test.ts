/**
 * The READMEs run as written: on a fresh `trace lite up --demo` (a real child process), the
 * shell blocks of examples/udf/README.md and the quick start of README.md are executed by bash
 * with `trace` on PATH, and the alert the example creates reaches the demo's webhook receiver.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { chmod, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createPgDatabase } from '../support/db.js';
import { ROOT } from '../cli/support.js';

/** The ```sh blocks of a Markdown file, in order. */
export function shellBlocks(markdown: string): string[] {
  return [...markdown.matchAll(/^```sh\n([\s\S]*?)^```$/gm)].map((m) => m[1]!);
}

let work: string;
let env: NodeJS.ProcessEnv;
let lite: ChildProcess | undefined;
let liteOut = '';
let liteErr = '';
const drops: Array<() => Promise<void>> = [];

async function sleep(ms: number) { await new Promise((r) => setTimeout(r, ms)); }

before(async () => {
  work = await mkdtemp(join(tmpdir(), 'trace-readme-'));
  const bin = join(work, 'bin');
  await mkdir(bin);
  // `trace` on PATH, as after `npm install -g .`, running this checkout's sources.
  await writeFile(join(bin, 'trace'), `#!/bin/sh\nexec "${process.execPath}" "${join(ROOT, 'bin/trace.mjs')}" "$@"\n`);
  await chmod(join(bin, 'trace'), 0o755);
  const s = await createPgDatabase('trace_readme_s');
  const d = await createPgDatabase('trace_readme_d');
  drops.push(s.drop, d.drop);
  env = {
    PATH: `${bin}:${process.env.PATH ?? ''}`, HOME: process.env.HOME, TMPDIR: work, NODE_ENV: 'test', TRACE_FROM_SOURCE: '1',
    TRACE_HOME: join(work, 'home'), TRACE_STATE_DATABASE_URL: s.url, TRACE_DATA_DATABASE_URL: d.url, TRACE_LOG_LEVEL: 'warn',
  };
});

after(async () => {
  if (lite && lite.exitCode === null) {
    lite.kill('SIGTERM');
    await new Promise((r) => lite!.once('exit', r));
  }
  for (const d of drops) await d();
  await rm(work, { recursive: true, force: true });
});

function bash(script: string): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const c = spawn('bash', ['-c', `set -euo pipefail\n${script}`], { cwd: ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    c.stdout.setEncoding('utf8').on('data', (x: string) => { stdout += x; });
    c.stderr.setEncoding('utf8').on('data', (x: string) => { stderr += x; });
    c.once('exit', (code) => resolve({ code: code ?? 1, stdout, stderr }));
  });
}

test('examples/udf/README.md and the README quick start run literally on a fresh trace lite up --demo', { timeout: 600_000 }, async () => {
  const readme = await readFile(join(ROOT, 'examples/udf/README.md'), 'utf8');
  const blocks = shellBlocks(readme);
  const [upBlock, ...steps] = blocks;
  assert.equal(upBlock!.trim(), 'trace lite up --demo', 'the first block starts the demo');
  assert.ok(steps.length >= 2);

  // The first block, as written, plus what a test needs: free ports (the defaults may be taken).
  lite = spawn(join(env.PATH!.split(':')[0]!, 'trace'), [...upBlock!.trim().split(' ').slice(1), '--port-base', '0'], { cwd: ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] });
  lite.stdout!.setEncoding('utf8').on('data', (x: string) => { liteOut += x; });
  lite.stderr!.setEncoding('utf8').on('data', (x: string) => { liteErr = (liteErr + x).slice(-4000); });
  for (;;) {
    if (liteOut.includes('Stop: Ctrl-C, or trace lite down')) break;
    if (lite.exitCode !== null) assert.fail(`lite up --demo exited ${lite.exitCode}: ${liteErr}`);
    await sleep(100);
  }
  const info = JSON.parse(await readFile(join(env.TRACE_HOME!, 'lite.json'), 'utf8')) as { dispatcher_url: string; admin_token: string; demo: { webhook_url: string; chain_url: string; rpc_gateway_url: string } };
  for (const url of [info.demo.chain_url, info.demo.rpc_gateway_url, info.demo.webhook_url]) assert.ok(liteOut.includes(url), `lite up prints ${url} on stdout`);

  const run = await bash(`${steps.join('\n')}\nprintf '\\nALERT=%s\\n' "$ALERT"\n`);
  assert.equal(run.code, 0, `the README steps failed:\n${run.stderr}\n${run.stdout}`);
  const alert = /^ALERT=([0-9a-f-]{36})$/m.exec(run.stdout)?.[1];
  assert.ok(alert, run.stdout);

  // The alert the README created reaches the demo's receiver (the pipeline runs on its own).
  const deliveries = async () => (await (await fetch(`${info.dispatcher_url}/v1/alerts/${alert}/deliveries`, { headers: { authorization: `Bearer ${info.admin_token}` } })).json()) as { deliveries: Array<{ status: string }> };
  const deadline = Date.now() + 240_000;
  for (;;) {
    if ((await deliveries()).deliveries.some((x) => x.status === 'Delivered')) break;
    if (Date.now() > deadline) {
      const tasks = await bash('trace tasks --dag transfer_alerts || true');
      assert.fail(`no delivery of the README alert within 240 s; deliveries: ${JSON.stringify(await deliveries())}\ntasks: ${tasks.stdout.slice(0, 6000)}\nlite: ${liteOut.slice(-2000)}\nlite stderr: ${liteErr}`);
    }
    await sleep(250);
  }
  const received = (await (await fetch(info.demo.webhook_url)).json()) as { received: Array<{ body: { alert_definition_id?: string } }> };
  assert.ok(received.received.some((r) => r.body.alert_definition_id === alert), 'the receiver got the README alert');

  // The top README's quick start against the same instance.
  const top = shellBlocks(await readFile(join(ROOT, 'README.md'), 'utf8')).find((b) => b.includes('examples/dags/hello_ranges.yaml'));
  assert.ok(top, 'README.md has the hello_ranges quick start');
  const quick = await bash(top!.replace(/\bnpx trace\b/g, 'trace'));
  assert.equal(quick.code, 0, `${quick.stderr}\n${quick.stdout}`);
  assert.match(quick.stdout, /created task [0-9a-f-]{36}/);
});
