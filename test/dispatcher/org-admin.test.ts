/**
 * The admin routes for the deployment org's users and roles (src/dispatcher/http/org-routes.ts):
 * adding, removing, promoting and demoting users takes effect on their next request; the org
 * never loses its last admin, even to two concurrent demotions; bad input is refused with the
 * stable error shape and the field's path, and no refusal changes any row.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { mintDevUserToken } from '../../src/auth/user.js';
import pg from 'pg';
import { silentLogger } from '../../src/core/log.js';
import { BACKENDS } from '../support/db.js';
import { startPlatform, waitFor, type TestPlatform } from '../support/platform.js';

for (const backend of BACKENDS) {
  describe(`org users and roles (${backend})`, () => {
    let p: TestPlatform;
    let secret: string;
    const token = (sub: string) => mintDevUserToken(secret, sub);
    const as = async (sub: string | null, method: string, path: string, body?: unknown) =>
      p.api(method, path, body, sub === null ? {} : { authorization: `Bearer ${await token(sub)}` });
    /** Every user of every org with its roles: what a refused request must leave as it was. */
    const snapshot = async () => JSON.stringify((await p.dbs.state.query(
      `SELECT u.org_id, u.external_id, u.email, r.slug FROM users u
       LEFT JOIN org_role_memberships m ON m.user_id = u.id LEFT JOIN org_roles r ON r.id = m.role_id
       ORDER BY u.external_id, r.slug`)).rows);
    const idOf = async (sub: string, by: string | null = null) => ((await as(by, 'GET', `/v1/admin/users?sub=${encodeURIComponent(sub)}`)).body.users[0]?.user_id) as string;

    before(async () => {
      p = await startPlatform(backend, { workers: 0, log: silentLogger });
      secret = (JSON.parse(await readFile(`${p.info.home}/secrets.json`, 'utf8')) as { user_jwt_secret: string }).user_jwt_secret;
    });
    after(async () => { await p?.close(); });

    it('add, remove, let back in, grant, revoke and set-role, each effective on the next request', async () => {
      assert.equal((await as('carol', 'GET', '/v1/dags')).status, 403, 'not yet a member');
      const added = await as(null, 'POST', '/v1/admin/users', { sub: 'carol', email: 'carol@example.com' });
      assert.equal(added.status, 201);
      assert.equal(added.body.created, true);
      assert.deepEqual(added.body.user.roles, ['member']);
      assert.equal(added.body.user.email, 'carol@example.com');
      const id = added.body.user.user_id as string;
      assert.equal((await as('carol', 'GET', '/v1/dags')).status, 200);
      assert.equal((await as('carol', 'GET', '/v1/tasks')).body.code, 'ADMIN_REQUIRED');

      const again = await as(null, 'POST', '/v1/admin/users', { sub: 'carol', role: 'admin' });
      assert.equal(again.status, 409);
      assert.equal(again.body.code, 'USER_EXISTS');

      const promoted = await as(null, 'POST', '/v1/admin/members', { user_id: id, role: 'admin' });
      assert.equal(promoted.status, 201);
      assert.deepEqual(promoted.body.user.roles, ['admin', 'member']);
      assert.equal((await as(null, 'POST', '/v1/admin/members', { user_id: id, role: 'admin' })).status, 200, 'granting twice is a no-op');
      assert.equal((await as('carol', 'GET', '/v1/tasks')).status, 200);

      const demoted = await as(null, 'PUT', `/v1/admin/members/${id}`, { role: 'member' });
      assert.equal(demoted.status, 200);
      assert.equal(demoted.body.changed, true);
      assert.deepEqual(demoted.body.user.roles, ['member']);
      assert.equal((await as('carol', 'GET', '/v1/tasks')).status, 403);

      const revoked = await as(null, 'DELETE', `/v1/admin/members/${id}/member`);
      assert.equal(revoked.status, 200);
      assert.equal(revoked.body.revoked, true);
      assert.equal(revoked.body.user.member, false);
      const gone = await as('carol', 'GET', '/v1/dags');
      assert.equal(gone.status, 403);
      assert.equal(gone.body.code, 'NOT_A_MEMBER');

      const back = await as(null, 'POST', '/v1/admin/users', { sub: 'carol', role: 'member' });
      assert.equal(back.status, 201);
      assert.equal(back.body.created, false, 'the same user row, let back in');
      assert.equal(back.body.user.user_id, id);
      assert.equal((await as('carol', 'GET', '/v1/dags')).status, 200);

      const removed = await as(null, 'DELETE', `/v1/admin/users/${id}`);
      assert.equal(removed.status, 200);
      assert.equal(removed.body.removed, true);
      assert.equal((await as('carol', 'GET', '/v1/dags')).status, 403);
      assert.equal((await as(null, 'DELETE', `/v1/admin/users/${id}`)).body.removed, false, 'removing twice is a no-op');
      const listed = (await as(null, 'GET', '/v1/admin/users')).body.users as Array<{ sub: string; member: boolean }>;
      assert.equal(listed.find((u) => u.sub === 'carol')?.member, false, 'a removed user stays listed');
      const members = (await as(null, 'GET', '/v1/admin/members')).body.members as Array<{ sub: string }>;
      assert.ok(!members.some((u) => u.sub === 'carol'));
      assert.deepEqual((await as(null, 'GET', '/v1/admin/members?role=admin')).body.members.map((u: { sub: string }) => u.sub), ['admin']);
    });

    it('the last admin cannot be removed, demoted or stripped of admin, and nothing changes', async () => {
      const adminId = await idOf('admin');
      const before = await snapshot();
      for (const [method, path, body] of [
        ['PUT', `/v1/admin/members/${adminId}`, { role: 'member' }],
        ['DELETE', `/v1/admin/users/${adminId}`],
        ['DELETE', `/v1/admin/members/${adminId}/admin`],
      ] as Array<[string, string, unknown?]>) {
        const r = await as(null, method, path, body);
        assert.equal(r.status, 409, `${method} ${path}`);
        assert.equal(r.body.code, 'LAST_ADMIN');
        assert.equal(typeof r.body.error, 'string');
      }
      assert.equal(await snapshot(), before);
      // With a second admin the first may step down; then the second is the last one.
      const dave = (await as(null, 'POST', '/v1/admin/users', { sub: 'dave', role: 'admin' })).body.user.user_id as string;
      assert.equal((await as('dave', 'PUT', `/v1/admin/members/${adminId}`, { role: 'member' })).status, 200);
      assert.equal((await as(null, 'GET', '/v1/tasks')).status, 403, 'the old admin lost admin on its next request');
      const last = await as('dave', 'PUT', `/v1/admin/members/${dave}`, { role: 'member' });
      assert.equal(last.body.code, 'LAST_ADMIN');
      assert.equal((await as('dave', 'PUT', `/v1/admin/members/${adminId}`, { role: 'admin' })).status, 200);
    });

    it('two admins demoting each other and themselves at once: exactly one admin is left', async () => {
      // admin and dave are the admins now; erin makes three, then the bootstrap admin steps down.
      await as(null, 'POST', '/v1/admin/users', { sub: 'erin', role: 'admin' });
      const [admin, dave, erin] = [await idOf('admin'), await idOf('dave'), await idOf('erin')];
      assert.equal((await as(null, 'PUT', `/v1/admin/members/${admin}`, { role: 'member' })).status, 200);
      const results = await Promise.all([
        as('dave', 'PUT', `/v1/admin/members/${erin}`, { role: 'member' }),
        as('erin', 'PUT', `/v1/admin/members/${dave}`, { role: 'member' }),
        as('dave', 'DELETE', `/v1/admin/members/${dave}/admin`),
        as('erin', 'DELETE', `/v1/admin/members/${erin}/admin`),
      ]);
      const ok = results.filter((r) => r.status === 200).length;
      assert.ok(ok >= 1, results.map((r) => r.status).join(' '));
      assert.ok(results.every((r) => r.status === 200 || r.body.code === 'LAST_ADMIN' || r.body.code === 'ADMIN_REQUIRED'), JSON.stringify(results.map((r) => r.body)));
      const left = (await p.dbs.state.query<{ sub: string }>(
        `SELECT u.external_id AS sub FROM org_role_memberships m JOIN org_roles r ON r.id = m.role_id JOIN users u ON u.id = m.user_id
         WHERE r.slug = 'admin' AND r.org_id = $1`, [p.info.org_id])).rows;
      assert.equal(left.length, 1, `exactly one admin left: ${JSON.stringify(left)}`);
      // Restore the bootstrap admin for the tests below.
      assert.equal((await as(left[0]!.sub, 'PUT', `/v1/admin/members/${admin}`, { role: 'admin' })).status, 200);
    });

    it('a demotion waits for a membership change in flight and then sees it (Postgres)', { skip: backend !== 'postgres' }, async () => {
      const [dave, erin] = [await idOf('dave'), await idOf('erin')];
      await as(null, 'POST', '/v1/admin/members', { user_id: dave, role: 'admin' });
      await as(null, 'POST', '/v1/admin/members', { user_id: erin, role: 'admin' });
      await as(null, 'PUT', `/v1/admin/members/${await idOf('admin')}`, { role: 'member' });
      // dave and erin are the only admins. Another transaction, holding the admin-role lock as
      // every membership change does, revokes dave's admin; while it is open, erin demotes itself.
      const c = new pg.Client({ connectionString: p.stateUrl });
      await c.connect();
      try {
        await c.query('BEGIN');
        await c.query(`SELECT id FROM org_roles WHERE org_id = $1 AND slug = 'admin' FOR UPDATE`, [p.info.org_id]);
        await c.query(`DELETE FROM org_role_memberships m USING org_roles r WHERE m.role_id = r.id AND r.slug = 'admin' AND m.user_id = $1`, [dave]);
        let done = false;
        const demote = as('erin', 'PUT', `/v1/admin/members/${erin}`, { role: 'member' }).finally(() => { done = true; });
        // The request must be waiting on the lock (a request that does not take it finishes instead).
        await waitFor('the demotion to finish or wait on the lock', async () => done || (await p.dbs.state.query(
          `SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()`)).rowCount > 0, 120_000);
        assert.equal(done, false, 'the demotion did not wait for the change in flight');
        await c.query('COMMIT');
        const r = await demote;
        assert.equal(r.status, 409, JSON.stringify(r.body));
        assert.equal(r.body.code, 'LAST_ADMIN');
      } finally {
        await c.end();
      }
      const admins = await p.dbs.state.query(`SELECT 1 FROM org_role_memberships m JOIN org_roles r ON r.id = m.role_id WHERE r.slug = 'admin' AND r.org_id = $1`, [p.info.org_id]);
      assert.equal(admins.rowCount, 1, 'erin is still admin');
      assert.equal((await as('erin', 'PUT', `/v1/admin/members/${await idOf('admin', 'erin')}`, { role: 'admin' })).status, 200);
    });

    it('bad input is refused with the stable shape and the field path; nothing changes', async () => {
      const before = await snapshot();
      const cases: Array<[string, string, unknown, number, string, string]> = [
        ['POST', '/v1/admin/users', { sub: '' }, 400, 'INVALID_REQUEST', 'sub'],
        ['POST', '/v1/admin/users', { sub: 'task:abc' }, 400, 'INVALID_REQUEST', 'sub'],
        ['POST', '/v1/admin/users', { sub: 'x'.repeat(257) }, 400, 'INVALID_REQUEST', 'sub'],
        ['POST', '/v1/admin/users', { sub: 'a\nb' }, 400, 'INVALID_REQUEST', 'sub'],
        ['POST', '/v1/admin/users', { sub: 'frank', email: 'not-an-email' }, 400, 'INVALID_REQUEST', 'email'],
        ['POST', '/v1/admin/users', { sub: 'frank', role: 'Owner!' }, 400, 'INVALID_REQUEST', 'role'],
        ['POST', '/v1/admin/users', { sub: 'frank', role: 'owner' }, 422, 'UNKNOWN_ROLE', 'role'],
        ['POST', '/v1/admin/users', { sub: 'frank', org_id: '00000000-0000-4000-8000-000000000000' }, 400, 'INVALID_REQUEST', '$'],
        ['POST', '/v1/admin/members', { user_id: 'nope', role: 'member' }, 400, 'INVALID_REQUEST', 'user_id'],
        ['POST', '/v1/admin/members', { user_id: '00000000-0000-4000-8000-000000000000' }, 400, 'INVALID_REQUEST', 'role'],
        ['PUT', '/v1/admin/members/not-a-uuid', { role: 'member' }, 400, 'INVALID_REQUEST', 'id'],
        ['DELETE', '/v1/admin/users/not-a-uuid', undefined, 400, 'INVALID_REQUEST', 'id'],
        ['GET', '/v1/admin/users?limit=0', undefined, 400, 'INVALID_REQUEST', 'limit'],
        ['GET', '/v1/admin/members?org=elsewhere', undefined, 400, 'INVALID_REQUEST', '$'],
      ];
      for (const [method, path, body, status, code, field] of cases) {
        const r = await as(null, method, path, body);
        assert.equal(r.status, status, `${method} ${path} ${JSON.stringify(body)} -> ${r.status} ${JSON.stringify(r.body)}`);
        assert.equal(r.body.code, code);
        assert.equal(typeof r.body.error, 'string');
        assert.ok(r.body.problems.some((x: { path: string }) => x.path === field), `${JSON.stringify(r.body.problems)} names ${field}`);
      }
      const dave = await idOf('dave');
      const unknownRole = await as(null, 'PUT', `/v1/admin/members/${dave}`, { role: 'owner' });
      assert.equal(unknownRole.status, 422);
      assert.deepEqual(unknownRole.body.problems.map((x: { path: string }) => x.path), ['role']);
      assert.equal((await as(null, 'DELETE', `/v1/admin/members/${dave}/owner`)).body.code, 'UNKNOWN_ROLE');
      assert.equal(await snapshot(), before);
    });

    it('the org comes from the deployment: org show by slug or id, roles with counts', async () => {
      const orgs = (await as(null, 'GET', '/v1/admin/orgs')).body.orgs as Array<{ org_id: string; slug: string; admins: number }>;
      assert.equal(orgs.length, 1);
      assert.equal(orgs[0]!.org_id, p.info.org_id);
      const byId = await as(null, 'GET', `/v1/admin/orgs/${p.info.org_id}`);
      assert.equal(byId.status, 200);
      assert.deepEqual(byId.body.roles.map((r: { slug: string }) => r.slug), ['admin', 'member']);
      assert.equal((await as(null, 'GET', '/v1/admin/orgs/nope')).body.code, 'ORG_NOT_FOUND');
      const roles = (await as(null, 'GET', '/v1/admin/roles')).body.roles as Array<{ slug: string; members: number }>;
      assert.equal(roles.find((r) => r.slug === 'admin')!.members, orgs[0]!.admins);
    });
  });
}
