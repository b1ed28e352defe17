/**
 * The admin and user commands against a running platform, through the real binary: DAG problems
 * keep their path and line (and did-you-mean), trigger refusals say what to do, `tasks show` and
 * `tasks cancel`, and `alerts` list/show/create/delete.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BACKENDS } from '../support/db.js';
import { startPlatform, type TestPlatform } from '../support/platform.js';
import { ROOT, trace } from './support.js';

const backend = BACKENDS.includes('postgres') ? 'postgres' : 'pglite';

describe(`trace admin commands against a platform (${backend})`, () => {
  let p: TestPlatform;
  let dir: string;
  let env: Record<string, string>;
  before(async () => {
    p = await startPlatform(backend, { workers: 0 });
    dir = await mkdtemp(join(tmpdir(), 'trace-cli-admin-'));
    env = { TRACE_HOME: dir, TRACE_DISPATCHER_URL: p.url, TRACE_TOKEN: p.admin };
  });
  after(async () => {
    await p?.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('dag deploy: problems keep path and line, with did-you-mean, as text and as JSON', async () => {
    const yaml = (await readFile(join(ROOT, 'examples/dags/hello_ranges.yaml'), 'utf8')).replace('    execution_strategy: PerUpdate', '    execution_stratgy: PerUpdate');
    const file = join(dir, 'bad.yaml');
    await writeFile(file, yaml);
    const line = yaml.split('\n').findIndex((l) => l.includes('execution_stratgy')) + 1;
    const text = await trace(['dag', 'deploy', file], env);
    assert.equal(text.code, 1);
    assert.ok(text.stderr.includes(`  jobs[1].execution_stratgy (line ${line}): unknown field 'execution_stratgy'; did you mean 'execution_strategy'?`), text.stderr);
    const json = await trace(['dag', 'deploy', file, '--json'], env);
    assert.equal(json.code, 1);
    const body = JSON.parse(json.stderr) as { code: string; problems: Array<{ path: string; line: number; message: string }> };
    assert.equal(body.code, 'DAG_INVALID');
    const pr = body.problems.find((x) => x.path === 'jobs[1].execution_stratgy')!;
    assert.equal(pr.line, line);
    assert.match(pr.message, /did you mean 'execution_strategy'/);
  });

  it('dag trigger: a missing cursor and a flood are refused with what to do; --yes goes ahead', async () => {
    assert.equal((await trace(['dag', 'deploy', join(ROOT, 'examples/dags/hello_ranges.yaml'), '--activate'], env)).code, 0);
    const none = await trace(['dag', 'trigger', 'hello_ranges', 'source'], env);
    assert.equal(none.code, 1);
    assert.match(none.stderr, /cursor is required.*\(CURSOR_REQUIRED\)\n {2}cursor: required/);
    const flood = await trace(['dag', 'trigger', 'hello_ranges', 'source', '--cursor', '1764000000'], env);
    assert.equal(flood.code, 1);
    assert.match(flood.stderr, /would create about 20,002 tasks, more than the limit of 1,000; .*add --yes to go ahead/);
    const floodJson = await trace(['dag', 'trigger', 'hello_ranges', 'source', '--cursor', '1764000000', '--json'], env);
    assert.deepEqual(JSON.parse(floodJson.stderr).code, 'TRIGGER_NEEDS_CONFIRMATION');
    assert.equal((await p.api('GET', '/v1/tasks?dag=hello_ranges')).body.tasks.length, 0, 'nothing was created');
    const ok = await trace(['dag', 'trigger', 'hello_ranges', 'source', '--cursor', '2499'], env);
    assert.equal(ok.code, 0, ok.stderr);
    assert.match(ok.stdout, /^created task [0-9a-f-]{36} \(about 12 tasks in all\)\n$/);
  });

  it('dag webhooks: shows each webhook source with its secret; --rotate replaces one', async () => {
    const file = join(dir, 'hooks.yaml');
    await writeFile(file, `name: cli_hooks
jobs:
  - name: ingest
    activation: source
    runtime: ecs_platform
    operator: test_sleep
    source: { kind: webhook, webhook_path: cli/feed }
    outputs: 1
    config: { ms: 1 }
`);
    assert.equal((await trace(['dag', 'deploy', file, '--activate'], env)).code, 0);
    const text = await trace(['dag', 'webhooks', 'cli_hooks'], env);
    assert.equal(text.code, 0, text.stderr);
    assert.match(text.stdout, /ingest +cli\/feed +\/v1\/webhooks\/cli\/feed +whsec_/);
    const json = JSON.parse((await trace(['dag', 'webhooks', 'cli_hooks', '--json'], env)).stdout) as { webhooks: Array<{ job: string; secret: string }> };
    const before = json.webhooks[0]!.secret;
    const rotated = await trace(['dag', 'webhooks', 'cli_hooks', '--rotate', 'ingest', '--json'], env);
    assert.equal(rotated.code, 0, rotated.stderr);
    const after = (JSON.parse(rotated.stdout) as { secret: string }).secret;
    assert.notEqual(after, before);
    assert.equal((await p.api('GET', '/v1/dags/cli_hooks/webhooks')).body.webhooks[0].secret, after);
    const help = await trace(['dag', 'webhooks', '--help'], env);
    assert.equal(help.code, 0);
    assert.match(help.stdout, /trace dag webhooks NAME \[--rotate JOB\] \[--json\]/);
    const missing = await trace(['dag', 'webhooks', 'cli_hooks', '--rotate', 'nope'], env);
    assert.equal(missing.code, 1);
    assert.match(missing.stderr, /WEBHOOK_SOURCE_NOT_FOUND/);
  });

  it('tasks show and tasks cancel', async () => {
    const t = await trace(['dag', 'trigger', 'hello_ranges', 'source', '--cursor', '3499', '--json'], env);
    const id = (JSON.parse(t.stdout) as { task_id: string }).task_id;
    const shown = await trace(['tasks', 'show', id], env);
    assert.equal(shown.code, 0, shown.stderr);
    assert.match(shown.stdout, new RegExp(`^task ${id}\\n {2}job {8}hello_ranges\\.source`));
    assert.match(shown.stdout, /status {5}Queued, attempt 1 of 3/);
    assert.match(shown.stdout, /no attempts yet/);
    const asJson = JSON.parse((await trace(['tasks', 'show', id, '--json'], env)).stdout) as { task_id: string; attempts: unknown[] };
    assert.equal(asJson.task_id, id);
    const cancel = await trace(['tasks', 'cancel', id], env);
    assert.equal(cancel.stdout, `canceled task ${id}\n`);
    assert.equal((await p.api('GET', `/v1/tasks/${id}`)).body.status, 'Canceled');
    assert.match((await trace(['tasks', 'cancel', id], env)).stdout, /had already finished/);
    const bad = await trace(['tasks', 'show', 'nope'], env);
    assert.equal(bad.code, 2);
    const unknown = await trace(['tasks', 'show', '00000000-0000-4000-8000-000000000000', '--json'], env);
    assert.equal(JSON.parse(unknown.stderr).code, 'TASK_NOT_FOUND');
  });

  it('alerts create, list, show, deliveries and delete', async () => {
    const created = await trace(['alerts', 'create', '--name', 'big transfers', '--webhook', 'https://hooks.example.com/trace', '--condition', '{"min_value":1000}', '--quiet'], env);
    assert.equal(created.code, 0, created.stderr);
    const id = created.stdout.trim();
    assert.match(id, /^[0-9a-f-]{36}$/);
    const list = await trace(['alerts'], env);
    assert.match(list.stdout, new RegExp(`${id}\\s+big transfers\\s+yes\\s+org\\s+https://hooks\\.example\\.com/trace\\s+\\{"min_value":1000\\}`));
    const show = JSON.parse((await trace(['alerts', 'show', id, '--json'], env)).stdout) as { condition: unknown };
    assert.deepEqual(show.condition, { min_value: 1000 });
    assert.equal((await trace(['alerts', 'deliveries', id], env)).stdout, 'no deliveries yet\n');
    const refused = await trace(['alerts', 'create', '--name', 'x', '--webhook', 'http://127.0.0.1:1/hook', '--json'], env);
    assert.equal(refused.code, 1);
    assert.equal(JSON.parse(refused.stderr).code, 'WEBHOOK_URL_REFUSED');
    assert.equal((await trace(['alerts', 'delete', id], env)).stdout, `deleted alert ${id}\n`);
    assert.equal(JSON.parse((await trace(['alerts', 'show', id, '--json'], env)).stderr).code, 'ALERT_NOT_FOUND');
  });
});
