import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { mintDevUserToken } from '../../src/auth/user.js';
import { ensureUser } from '../../src/dispatcher/identity.js';
import { startPlatform } from '../support/platform.js';
import { twoJobDag } from '../support/drive.js';

test('user and admin routes: authentication, roles, hostile DAG YAML and malformed input change nothing', async (t) => {
  const p = await startPlatform('pglite', { workers: 0 });
  try {
    const secrets = JSON.parse(await readFile(`${p.info.home}/secrets.json`, 'utf8'));
    await p.dbs.state.tx((q) => ensureUser(q, p.info.org_id, 'member-bob', ['member']));
    const bob = await mintDevUserToken(secrets.user_jwt_secret, 'member-bob');
    const stranger = await mintDevUserToken(secrets.user_jwt_secret, 'stranger');
    const versions = async () => (await p.dbs.state.query<{ n: number }>(`SELECT count(*)::int AS n FROM dag_versions`)).rows[0]!.n;

    await t.test('no token, bad token, non-member, capability token as user token', async () => {
      for (const h of [{}, { authorization: 'Bearer nope' }, { authorization: `Bearer ${stranger}` }, { authorization: 'Basic abc' }] as Array<Record<string, string>>) {
        const r = await fetch(`${p.url}/v1/datasets`, { headers: h });
        assert.ok(r.status === 401 || r.status === 403, `${JSON.stringify(h)} -> ${r.status}`);
        const b = await r.json() as { error: string; code: string };
        assert.equal(typeof b.code, 'string');
      }
      const r = await fetch(`${p.url}/v1/datasets`, { headers: { authorization: `Bearer ${stranger}` } });
      assert.equal(r.status, 403);
    });

    await t.test('members deploy; admin routes need the admin role', async () => {
      const dep = await p.api('POST', '/v1/dags/life/versions?activate=true', twoJobDag(), { authorization: `Bearer ${bob}` });
      assert.equal(dep.status, 201);
      const trig = await p.api('POST', '/v1/dags/life/jobs/src/trigger', {}, { authorization: `Bearer ${bob}` });
      assert.equal(trig.status, 403);
      assert.equal(trig.body.code, 'ADMIN_REQUIRED');
      assert.equal((await p.api('GET', '/v1/tasks', undefined, { authorization: `Bearer ${bob}` })).status, 403);
      assert.equal((await p.api('POST', '/v1/dags/life/jobs/src/trigger', {})).status, 201);
    });

    await t.test('hostile and invalid YAML is refused with every problem and nothing stored', async () => {
      const before = await versions();
      const bomb = `name: life\na: &a ["x","x","x","x","x","x","x","x","x","x"]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]\n`;
      const cases: Array<[string, number]> = [
        [bomb, 400],
        ['name: life\njobs: [\n', 400],
        [`name: life\n__proto__: { polluted: true }\njobs: []\n`, 422],
        [`name: life\njobs:\n  - name: a\n    activation: source\n    runtime: ecs_platform\n    operator: noop\n    outputs: 1\n    source: { kind: manual }\n    max_queue_depth: 5\n`, 422],
        [`name: life\njobs:\n  - name: a\n    activation: reactive\n    runtime: ecs_udf\n    operator: nope\n    outputs: 1\n    update_strategy: append\n    inputs: [{ from: { job: ghost, output: 0 } }]\n`, 422],
        [`!!binary name: life\n`, 422],
        ['%YAML 1.2\n---\nname: life\njobs: []\n', 422],
        ['name: life\njobs: []\n---\nname: other\n', 422],
      ];
      for (const [yaml, status] of cases) {
        const r = await p.api('POST', '/v1/dags/life/versions', yaml);
        assert.equal(r.status, status, `${yaml.slice(0, 40)} -> ${r.status} ${JSON.stringify(r.body).slice(0, 200)}`);
        assert.equal(typeof r.body.error, 'string');
        assert.equal(typeof r.body.code, 'string');
      }
      const many = await p.api('POST', '/v1/dags/life/versions', cases[4]![0]);
      const paths = (many.body.problems as Array<{ path: string }>).map((x) => x.path);
      assert.ok(paths.length >= 3, `every problem listed: ${paths.join(', ')}`);
      assert.ok(paths.some((x) => x.includes('runtime')));
      assert.ok(paths.some((x) => x.includes('unique_key')));
      assert.equal(({} as Record<string, unknown>).polluted, undefined);
      const mismatch = await p.api('POST', '/v1/dags/other/versions', twoJobDag());
      assert.equal(mismatch.status, 422);
      const huge = await p.api('POST', '/v1/dags/life/versions', `name: life\n# ${'x'.repeat(300 * 1024)}\njobs: []\n`);
      assert.equal(huge.status, 413);
      assert.equal(await versions(), before, 'nothing stored');
    });

    await t.test('malformed route input is 400 with the stable shape', async () => {
      for (const [method, path, body] of [
        ['PUT', '/v1/dags/life/active', { dag_version_id: 'not-a-uuid' }],
        ['PUT', '/v1/dags/life/active', '{oops'],
        ['POST', '/v1/dags/life/jobs/src/trigger', { cursor: -1 }],
        ['POST', '/v1/dags/life/jobs/src/trigger', { start: 10, end: 5 }],
        ['GET', '/v1/tasks?status=Bogus', undefined],
        ['GET', '/v1/tasks?limit=0', undefined],
        ['POST', '/v1/dags/Bad-Name/versions', 'name: x'],
      ] as const) {
        const r = await p.api(method, path, body, typeof body === 'string' && body.startsWith('{') ? { 'content-type': 'application/json' } : {});
        assert.equal(r.status, 400, `${method} ${path} -> ${r.status} ${JSON.stringify(r.body)}`);
        assert.equal(typeof r.body.code, 'string');
      }
      assert.equal((await p.api('PUT', '/v1/dags/life/active', { dag_version_id: '00000000-0000-4000-8000-000000000000' })).status, 404);
      assert.equal((await p.api('GET', '/v1/dags/ghost/versions')).status, 404);
      assert.equal((await p.api('GET', '/v1/datasets/ghost')).status, 404);
    });
  } finally {
    await p.close();
  }
});
