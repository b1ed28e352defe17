/**
 * `trace orgs`, `trace users` and `trace members` through the real binary against a platform:
 * --help, text and --json output, users by subject or ID, and refusals (the last admin, an
 * unknown role, a bad argument) with their codes.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BACKENDS } from '../support/db.js';
import { startPlatform, type TestPlatform } from '../support/platform.js';
import { silentLogger } from '../../src/core/log.js';
import { trace } from './support.js';

const backend = BACKENDS.includes('postgres') ? 'postgres' : 'pglite';

describe(`trace orgs, users and members (${backend})`, () => {
  let p: TestPlatform;
  let dir: string;
  let env: Record<string, string>;
  before(async () => {
    p = await startPlatform(backend, { workers: 0, log: silentLogger });
    dir = await mkdtemp(join(tmpdir(), 'trace-cli-orgs-'));
    env = { TRACE_HOME: dir, TRACE_GATEWAY_URL: p.info.gateway_url, TRACE_TOKEN: p.admin };
  });
  after(async () => {
    await p?.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('every command has --help', async () => {
    for (const words of [['orgs', 'list'], ['orgs', 'show'], ['users', 'list'], ['users', 'add'], ['users', 'remove'],
      ['members', 'list'], ['members', 'add'], ['members', 'remove'], ['members', 'set-role']]) {
      const r = await trace([...words, '--help'], {});
      assert.equal(r.code, 0, `${words.join(' ')}: ${r.stderr}`);
      assert.match(r.stdout, new RegExp(`Usage: trace ${words.join(' ')}`));
    }
    const group = await trace(['members', '--help'], {});
    assert.match(group.stdout, /members set-role/);
  });

  it('orgs list and show: the deployment org', async () => {
    const list = JSON.parse((await trace(['orgs', 'list', '--json'], env)).stdout) as { orgs: Array<{ slug: string; org_id: string; admins: number }> };
    assert.deepEqual(list.orgs.map((o) => o.slug), ['default']);
    assert.equal(list.orgs[0]!.org_id, p.info.org_id);
    const show = await trace(['orgs', 'show'], env);
    assert.equal(show.code, 0, show.stderr);
    assert.match(show.stdout, /^org default {2}\(/);
    assert.match(show.stdout, /role {5}admin: 1 user\n/);
    const other = await trace(['orgs', 'show', 'elsewhere', '--json'], env);
    assert.equal(other.code, 1);
    assert.equal(JSON.parse(other.stderr).code, 'ORG_NOT_FOUND');
  });

  it('users add, list, remove; members add, set-role, remove, list', async () => {
    const added = await trace(['users', 'add', 'auth0|grace', '--email', 'grace@example.com'], env);
    assert.equal(added.code, 0, added.stderr);
    assert.match(added.stdout, /^added auth0\|grace \([0-9a-f-]{36}\) with role member\n$/);
    const users = JSON.parse((await trace(['users', 'list', '--json'], env)).stdout) as { users: Array<{ sub: string; user_id: string; roles: string[] }> };
    const grace = users.users.find((u) => u.sub === 'auth0|grace')!;
    assert.deepEqual(grace.roles, ['member']);
    const table = (await trace(['users', 'list'], env)).stdout;
    assert.match(table, /auth0\|grace\s+grace@example\.com\s+member\s+yes/);

    assert.equal((await trace(['members', 'add', 'auth0|grace', 'admin'], env)).stdout, 'granted admin to auth0|grace (roles now: admin, member)\n');
    assert.equal((await trace(['members', 'add', grace.user_id, 'admin'], env)).stdout, 'auth0|grace already has admin\n');
    const admins = JSON.parse((await trace(['members', 'list', '--role', 'admin', '--json'], env)).stdout) as { members: Array<{ sub: string }> };
    assert.deepEqual(admins.members.map((m) => m.sub).sort(), ['admin', 'auth0|grace']);
    assert.equal((await trace(['members', 'set-role', 'auth0|grace', 'member'], env)).stdout, 'auth0|grace now has role member (was: admin, member)\n');
    assert.equal((await trace(['members', 'remove', 'auth0|grace', 'member'], env)).stdout,
      'revoked member from auth0|grace; it has no role left and is no longer a member\n');
    assert.match((await trace(['users', 'list', '--sub', 'auth0|grace'], env)).stdout, /auth0\|grace.*removed/);
    assert.match((await trace(['users', 'add', 'auth0|grace'], env)).stdout, /^let back in auth0\|grace/);
    const removed = JSON.parse((await trace(['users', 'remove', 'auth0|grace', '--json'], env)).stdout) as { removed: boolean; user: { member: boolean } };
    assert.equal(removed.removed, true);
    assert.equal(removed.user.member, false);
    assert.equal((await trace(['members', 'remove', 'auth0|grace'], env)).stdout, 'auth0|grace was not a member; nothing to remove\n');
    const members = (await trace(['members', 'list'], env)).stdout;
    assert.ok(!members.includes('grace'));
  });

  it('refusals: the last admin, an unknown role or user, bad arguments', async () => {
    const last = await trace(['members', 'set-role', 'admin', 'member', '--json'], env);
    assert.equal(last.code, 1);
    assert.equal(JSON.parse(last.stderr).code, 'LAST_ADMIN');
    const lastText = await trace(['users', 'remove', 'admin'], env);
    assert.match(lastText.stderr, /without an admin.*\(LAST_ADMIN\)/);
    const role = await trace(['users', 'add', 'henry', '--role', 'owner', '--json'], env);
    assert.deepEqual(JSON.parse(role.stderr).problems, [{ path: 'role', message: 'unknown role; expected one of admin, member' }]);
    const nobody = await trace(['members', 'add', 'nobody', 'admin', '--json'], env);
    assert.equal(JSON.parse(nobody.stderr).code, 'USER_NOT_FOUND');
    assert.equal((await trace(['members', 'add', 'henry'], env)).code, 2, 'ROLE missing is a usage error');
    assert.equal((await trace(['members', 'set-role', 'henry', 'Bad!'], env)).code, 2);
    assert.equal((await trace(['users', 'add'], env)).code, 2);
    const sub = await trace(['users', 'add', 'task:x', '--json'], env);
    assert.equal(JSON.parse(sub.stderr).problems[0].path, 'sub');
    assert.equal((await p.dbs.state.query(`SELECT 1 FROM users WHERE external_id IN ('henry', 'task:x')`)).rowCount, 0);
  });
});
