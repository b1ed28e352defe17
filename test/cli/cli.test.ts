/**
 * The `trace` binary without a platform: help on every command and group, --version, failures
 * as one line or as `{"error","code"}` under --json with a non-zero exit, did-you-mean for
 * commands and options, and old option spellings kept as aliases.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { COMMANDS } from '../../src/cli/cli.js';
import { parseCommandArgs, UsageError } from '../../src/cli/args.js';
import { chainSyncStatus } from '../../src/cli/commands/chain-sync.js';
import { dagDeploy } from '../../src/cli/commands/dag.js';
import { ROOT, inBatches, trace } from './support.js';

const GROUPS = [...new Set(COMMANDS.filter((c) => c.name.includes(' ')).map((c) => c.name.split(' ')[0]!))];

test('--version and -V print the package version; --help lists every command', async () => {
  const pkg = JSON.parse(await readFile(join(ROOT, 'package.json'), 'utf8')) as { version: string };
  const [v, short, json, help] = await Promise.all([trace(['--version']), trace(['-V']), trace(['--version', '--json']), trace(['--help'])]);
  assert.deepEqual([v.code, v.stdout], [0, `trace ${pkg.version}\n`]);
  assert.equal(short.stdout, v.stdout);
  assert.deepEqual(JSON.parse(json.stdout), { version: pkg.version });
  assert.equal(help.code, 0);
  for (const c of COMMANDS) assert.ok(help.stdout.includes(`  ${c.name} `), `trace --help lists ${c.name}`);
});

test('every group and every command answers --help with exit 0', async () => {
  assert.ok(['dag', 'lite', 'chain-sync', 'tasks', 'alerts', 'sink', 'udf', 'token', 'datasets'].every((g) => GROUPS.includes(g)), GROUPS.join(','));
  const groups = await inBatches(GROUPS, 4, async (g) => ({ g, r: await trace([g, '--help']) }));
  for (const { g, r } of groups) {
    assert.equal(r.code, 0, `trace ${g} --help: ${r.stderr}`);
    for (const c of COMMANDS.filter((x) => x.name.startsWith(`${g} `))) assert.ok(r.stdout.includes(c.name), `trace ${g} --help lists ${c.name}`);
  }
  const cmds = await inBatches(COMMANDS, 4, async (c) => ({ c, r: await trace([...c.name.split(' '), '--help']) }));
  for (const { c, r } of cmds) {
    assert.equal(r.code, 0, `trace ${c.name} --help: ${r.stderr}`);
    assert.ok(r.stdout.includes(`Usage: ${c.usage.split('\n')[0]}`), `trace ${c.name} --help shows its usage`);
  }
  // A bare group is a usage error that still shows the subcommands.
  const bare = await trace(['dag']);
  assert.equal(bare.code, 2);
  assert.match(bare.stderr, /dag deploy/);
});

test('under --json every failure is {"error","code"} on stderr with a non-zero exit; without it, one line', async () => {
  const home = await mkdtemp(join(tmpdir(), 'trace-cli-'));
  try {
    const env = { TRACE_HOME: home };
    const cases: Array<[string[], number, string]> = [
      [['nosuch', '--json'], 2, 'UNKNOWN_COMMAND'],
      [['dag', 'deplyo', '--json'], 2, 'UNKNOWN_COMMAND'],
      [['dag', 'deploy', '--json'], 2, 'USAGE'],
      [['dag', 'deploy', join(home, 'missing.yaml'), '--json'], 2, 'USAGE'],
      [['tasks', '--limit', 'x', '--json'], 2, 'USAGE'],
      [['tasks', '--json'], 1, 'NO_TARGET'],
      [['lite', 'down', '--json'], 1, 'NOT_RUNNING'],
    ];
    const results = await inBatches(cases, 4, async ([args, code, errCode]) => ({ args, code, errCode, r: await trace(args, env) }));
    for (const { args, code, errCode, r } of results) {
      assert.equal(r.code, code, `${args.join(' ')}: ${r.stderr}`);
      assert.equal(r.stdout, '', `${args.join(' ')} writes nothing to stdout`);
      const lines = r.stderr.trim().split('\n');
      assert.equal(lines.length, 1, `${args.join(' ')}: one line of JSON`);
      const body = JSON.parse(lines[0]!) as { error: string; code: string };
      assert.equal(body.code, errCode, r.stderr);
      assert.equal(typeof body.error, 'string');
    }
    const unreachable = await trace(['tasks', '--json'], { ...env, TRACE_DISPATCHER_URL: 'http://127.0.0.1:9' });
    assert.equal(unreachable.code, 1);
    assert.equal(JSON.parse(unreachable.stderr).code, 'UNREACHABLE');

    const plain = await trace(['nosuch'], env);
    assert.equal(plain.code, 2);
    assert.equal(plain.stderr, 'trace: unknown command "nosuch" (see trace --help)\n');
    const usage = await trace(['tasks', '--limit', 'x'], env);
    assert.match(usage.stderr, /^trace tasks: --limit must be an integer >= 1\nUsage: trace tasks /);
  } finally {
    await rm(home, { recursive: true, force: true });
  }
});

test('did you mean: misspelt commands, subcommands and options', async () => {
  const [cmd, sub, opt] = await Promise.all([trace(['taks']), trace(['dag', 'deplyo']), trace(['tasks', '--stauts', 'Failed'])]);
  assert.match(cmd.stderr, /unknown command "taks"; did you mean "trace tasks"\?/);
  assert.match(sub.stderr, /unknown subcommand "deplyo"; did you mean "trace dag deploy"\?/);
  assert.match(opt.stderr, /unknown option --stauts; did you mean '--status'\?/);
  assert.equal(opt.code, 2);
});

test('sibling commands share one spelling and keep the old ones as aliases', () => {
  // FILE as an argument or --file, on both deploy commands
  const apply = COMMANDS.find((c) => c.name === 'chain-sync apply')!;
  assert.deepEqual(parseCommandArgs(apply, ['x.yaml']).positionals, ['x.yaml']);
  assert.equal(parseCommandArgs(apply, ['--file', 'x.yaml']).values.file, 'x.yaml');
  assert.equal(parseCommandArgs(dagDeploy, ['--file', 'x.yaml']).values.file, 'x.yaml');
  // chain-sync status|pause|resume: --name, with --job accepted for it
  assert.equal(parseCommandArgs(chainSyncStatus, ['--job', 'j']).values.name, 'j');
  for (const verb of ['pause', 'resume']) {
    const c = COMMANDS.find((x) => x.name === `chain-sync ${verb}`)!;
    assert.equal(parseCommandArgs(c, ['--job', 'j']).values.name, 'j');
    assert.equal(parseCommandArgs(c, ['--name', 'j']).values.name, 'j');
  }
  assert.throws(() => parseCommandArgs(chainSyncStatus, ['--job', 'a', '--name', 'b']), UsageError);
});
