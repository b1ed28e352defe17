/**
 * Every route the Gateway forwards, through the Gateway, as each kind of principal: the admin, a
 * member, an admin demoted to member, a member promoted to admin, a user removed from the org,
 * and the admin of another org (created directly in the database). Authorization comes from
 * the membership rows, read on every request: the tokens of the demoted, promoted and removed
 * users are the very tokens they used before the change.
 *
 * The cases are keyed by the route table (ROUTES): a route added without a case here fails the
 * test, and so does a case for a route that is gone.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { mintDevUserToken } from '../../src/auth/user.js';
import { newId } from '../../src/core/ids.js';
import { silentLogger } from '../../src/core/log.js';
import { ROUTES } from '../../src/gateway/routes.js';
import { BACKENDS } from '../support/db.js';
import { startPlatform, type TestPlatform } from '../support/platform.js';

const NONE = '00000000-0000-4000-8000-000000000000';

interface Case {
  path: string;
  body?: unknown;
  /** What the admin gets (and a member, on a user route): never 401 or 403. */
  status: number;
}

/**
 * One request per route and method that changes nothing: unknown ids, invalid bodies or reads.
 * `status` is what an authorized caller gets.
 */
const CASES: Record<string, Case> = {
  'POST /v1/query': { path: '/v1/query', body: { dataset: 'no_such_dataset', sql: 'SELECT 1 AS x FROM dataset' }, status: 404 },
  'GET /v1/datasets': { path: '/v1/datasets', status: 200 },
  'GET /v1/datasets/{name}': { path: '/v1/datasets/no_such_dataset', status: 404 },
  'GET /v1/datasets/{name}/export': { path: '/v1/datasets/no_such_dataset/export', status: 404 },
  'GET /v1/datasets/{name}/export/files/{file}': { path: `/v1/datasets/no_such_dataset/export/files/x.parquet?version=${NONE}`, status: 404 },
  'GET /v1/datasets/{name}/versions': { path: '/v1/datasets/no_such_dataset/versions', status: 404 },
  'GET /v1/dags': { path: '/v1/dags', status: 200 },
  'POST /v1/dags/{dag}/versions': { path: '/v1/dags/authz/versions', body: { yaml: ' ' }, status: 400 },
  'GET /v1/dags/{dag}/versions': { path: '/v1/dags/authz/versions', status: 404 },
  'PUT /v1/dags/{dag}/active': { path: '/v1/dags/authz/active', body: { dag_version_id: NONE }, status: 404 },
  'POST /v1/udf/bundles': { path: '/v1/udf/bundles', body: {}, status: 400 },
  'POST /v1/udf/bundles/{id}/finalize': { path: `/v1/udf/bundles/${NONE}/finalize`, body: {}, status: 404 },
  'POST /v1/alerts': { path: '/v1/alerts', body: {}, status: 400 },
  'GET /v1/alerts': { path: '/v1/alerts', status: 200 },
  'GET /v1/alerts/{id}': { path: `/v1/alerts/${NONE}`, status: 404 },
  'PUT /v1/alerts/{id}': { path: `/v1/alerts/${NONE}`, body: {}, status: 404 },
  'DELETE /v1/alerts/{id}': { path: `/v1/alerts/${NONE}`, status: 404 },
  'GET /v1/alerts/{id}/deliveries': { path: `/v1/alerts/${NONE}/deliveries`, status: 404 },
  'POST /v1/dags/{dag}/jobs/{job}/trigger': { path: '/v1/dags/authz/jobs/src/trigger', body: {}, status: 404 },
  'GET /v1/tasks': { path: '/v1/tasks', status: 200 },
  'GET /v1/tasks/{id}': { path: `/v1/tasks/${NONE}`, status: 404 },
  'POST /v1/tasks/{id}/cancel': { path: `/v1/tasks/${NONE}/cancel`, status: 404 },
  'POST /v1/datasets/{name}/register': { path: '/v1/datasets/authz_ext/register', body: {}, status: 400 },
  'POST /v1/gc': { path: '/v1/gc', body: { dry_run: true }, status: 200 },
  'POST /v1/chain-sync': { path: '/v1/chain-sync', body: {}, status: 400 },
  'GET /v1/chain-sync': { path: '/v1/chain-sync', status: 200 },
  'GET /v1/chain-sync/{name}': { path: '/v1/chain-sync/no_such_sync', status: 404 },
  'POST /v1/chain-sync/{name}/pause': { path: '/v1/chain-sync/no_such_sync/pause', status: 404 },
  'POST /v1/chain-sync/{name}/resume': { path: '/v1/chain-sync/no_such_sync/resume', status: 404 },
  'GET /v1/admin/orgs': { path: '/v1/admin/orgs', status: 200 },
  'GET /v1/admin/orgs/{org}': { path: '/v1/admin/orgs/default', status: 200 },
  'GET /v1/admin/roles': { path: '/v1/admin/roles', status: 200 },
  'GET /v1/admin/users': { path: '/v1/admin/users', status: 200 },
  'POST /v1/admin/users': { path: '/v1/admin/users', body: {}, status: 400 },
  'GET /v1/admin/users/{id}': { path: `/v1/admin/users/${NONE}`, status: 404 },
  'DELETE /v1/admin/users/{id}': { path: `/v1/admin/users/${NONE}`, status: 404 },
  'GET /v1/admin/members': { path: '/v1/admin/members', status: 200 },
  'POST /v1/admin/members': { path: '/v1/admin/members', body: { user_id: NONE, role: 'member' }, status: 404 },
  'PUT /v1/admin/members/{id}': { path: `/v1/admin/members/${NONE}`, body: { role: 'member' }, status: 404 },
  'DELETE /v1/admin/members/{id}/{role}': { path: `/v1/admin/members/${NONE}/member`, status: 404 },
  'GET /v1/datasets/{name}/invalidations': { path: '/v1/datasets/no_such_dataset/invalidations', status: 404 },
  'POST /v1/datasets/{name}/invalidations': { path: '/v1/datasets/no_such_dataset/invalidations', body: {}, status: 400 },
  'GET /v1/query-results/{id}': { path: `/v1/query-results/${NONE}`, status: 404 },
  'GET /v1/query-results/{id}/export': { path: `/v1/query-results/${NONE}/export`, status: 404 },
  'GET /v1/dags/{dag}/webhooks': { path: '/v1/dags/authz/webhooks', status: 404 },
  'POST /v1/dags/{dag}/webhooks/{job}/rotate': { path: '/v1/dags/authz/webhooks/src/rotate', status: 404 },
  // Webhook ingress takes no user token: every caller gets the same answer (no such source).
  'POST /v1/webhooks/{path+}': { path: '/v1/webhooks/no_such_hook', body: {}, status: 404 },
};

type Who = 'admin' | 'member' | 'demoted' | 'promoted' | 'removed' | 'other_org';
const PRINCIPALS: Who[] = ['admin', 'member', 'demoted', 'promoted', 'removed', 'other_org'];

/** What `who` must get on `route`: the authorized status, or the refusal code. */
function expected(who: Who, audience: 'user' | 'admin' | 'webhook', c: Case): { status: number; code?: string } {
  if (audience === 'webhook') return { status: c.status };
  if (who === 'removed' || who === 'other_org') return { status: 403, code: 'NOT_A_MEMBER' };
  const isAdmin = who === 'admin' || who === 'promoted';
  if (audience === 'admin' && !isAdmin) return { status: 403, code: 'ADMIN_REQUIRED' };
  return { status: c.status };
}

const routeKeys = () => ROUTES.flatMap((r) => r.methods.map((m) => ({ key: `${m} ${r.pattern}`, method: m, audience: r.audience })));

describe('every Gateway route has an authorization case', () => {
  it('the cases and the route table name the same routes', () => {
    const keys = routeKeys().map((k) => k.key).sort();
    const missing = keys.filter((k) => !(k in CASES));
    const extra = Object.keys(CASES).filter((k) => !keys.includes(k));
    assert.deepEqual(missing, [], `routes without an authorization case in test/gateway/authz.test.ts: ${missing.join(', ')}`);
    assert.deepEqual(extra, [], `cases for routes the Gateway no longer has: ${extra.join(', ')}`);
  });
});

for (const backend of BACKENDS) {
  describe(`authorization on every Gateway route (${backend})`, () => {
    let p: TestPlatform;
    const tokens = {} as Record<Who, string>;
    let gw: string;

    const call = async (token: string, method: string, path: string, body?: unknown) => {
      const headers: Record<string, string> = { authorization: `Bearer ${token}` };
      if (body !== undefined) headers['content-type'] = 'application/json';
      const res = await fetch(`${gw}${path}`, { method, headers, ...(body !== undefined ? { body: JSON.stringify(body) } : {}) });
      const text = await res.text();
      let parsed: any = text;
      try { parsed = JSON.parse(text); } catch { /* not JSON */ }
      return { status: res.status, body: parsed };
    };

    before(async () => {
      p = await startPlatform(backend, { workers: 0, log: silentLogger });
      gw = p.info.gateway_url;
      const secret = (JSON.parse(await readFile(`${p.info.home}/secrets.json`, 'utf8')) as { user_jwt_secret: string }).user_jwt_secret;
      for (const who of PRINCIPALS) tokens[who] = who === 'admin' ? p.admin : await mintDevUserToken(secret, `authz-${who}`);
      const add = async (who: Who, role: string) => {
        const r = await call(p.admin, 'POST', '/v1/admin/users', { sub: `authz-${who}`, role });
        assert.equal(r.status, 201, JSON.stringify(r.body));
        return r.body.user.user_id as string;
      };
      await add('member', 'member');
      const demoted = await add('demoted', 'admin');
      const promoted = await add('promoted', 'member');
      const removed = await add('removed', 'admin');
      // Each of them works with its token first, so the change below meets a token already in use.
      assert.equal((await call(tokens.demoted, 'GET', '/v1/admin/users')).status, 200);
      assert.equal((await call(tokens.removed, 'GET', '/v1/admin/users')).status, 200);
      assert.equal((await call(tokens.promoted, 'GET', '/v1/admin/users')).status, 403);
      assert.equal((await call(p.admin, 'PUT', `/v1/admin/members/${demoted}`, { role: 'member' })).status, 200);
      assert.equal((await call(p.admin, 'POST', '/v1/admin/members', { user_id: promoted, role: 'admin' })).status, 201);
      assert.equal((await call(p.admin, 'DELETE', `/v1/admin/users/${removed}`)).status, 200);
      // Another org in the same database, whose admin holds both roles there.
      await p.dbs.state.tx(async (q) => {
        const org = newId();
        await q.query(`INSERT INTO orgs (id, name, slug) VALUES ($1, 'Elsewhere', 'elsewhere')`, [org]);
        const user = newId();
        await q.query(`INSERT INTO users (id, org_id, external_id, role) VALUES ($1, $2, 'authz-other_org', 'admin')`, [user, org]);
        for (const slug of ['admin', 'member']) {
          const role = newId();
          await q.query(`INSERT INTO org_roles (id, org_id, slug, name) VALUES ($1, $2, $3, $3)`, [role, org, slug]);
          await q.query(`INSERT INTO org_role_memberships (role_id, user_id) VALUES ($1, $2)`, [role, user]);
        }
      });
    });
    after(async () => { await p?.close(); });

    for (const who of PRINCIPALS) {
      it(`${who}: the expected status on every route`, async () => {
        const wrong: string[] = [];
        for (const { key, method, audience } of routeKeys()) {
          const c = CASES[key]!;
          const want = expected(who, audience, c);
          const r = await call(tokens[who], method, c.path, c.body);
          const ok = r.status === want.status && (want.code === undefined || r.body?.code === want.code)
            && (r.status < 400 || (typeof r.body?.error === 'string' && typeof r.body?.code === 'string'));
          if (!ok) wrong.push(`${key}: want ${want.status}${want.code ? ` ${want.code}` : ''}, got ${r.status} ${JSON.stringify(r.body).slice(0, 160)}`);
        }
        assert.deepEqual(wrong, []);
      });
    }

    it('the other org and its users stay invisible to this org\'s admin', async () => {
      assert.equal((await call(p.admin, 'GET', '/v1/admin/orgs/elsewhere')).status, 404);
      const orgs = await call(p.admin, 'GET', '/v1/admin/orgs');
      assert.deepEqual(orgs.body.orgs.map((o: { slug: string }) => o.slug), ['default']);
      const users = await call(p.admin, 'GET', '/v1/admin/users');
      assert.ok(!users.body.users.some((u: { sub: string }) => u.sub === 'authz-other_org'));
      const other = (await p.dbs.state.query<{ id: string }>(`SELECT id FROM users WHERE external_id = 'authz-other_org'`)).rows[0]!.id;
      for (const [method, path, body] of [
        ['GET', `/v1/admin/users/${other}`], ['DELETE', `/v1/admin/users/${other}`],
        ['POST', '/v1/admin/members', { user_id: other, role: 'member' }], ['PUT', `/v1/admin/members/${other}`, { role: 'member' }],
        ['DELETE', `/v1/admin/members/${other}/admin`],
      ] as Array<[string, string, unknown?]>) {
        const r = await call(p.admin, method, path, body);
        assert.equal(r.status, 404, `${method} ${path}`);
        assert.equal(r.body.code, 'USER_NOT_FOUND');
      }
      const taken = await call(p.admin, 'POST', '/v1/admin/users', { sub: 'authz-other_org' });
      assert.equal(taken.status, 409);
      assert.equal(taken.body.code, 'SUBJECT_UNAVAILABLE');
      const rows = await p.dbs.state.query<{ n: number }>(
        `SELECT count(*)::int AS n FROM org_role_memberships m JOIN users u ON u.id = m.user_id WHERE u.external_id = 'authz-other_org'`);
      assert.equal(rows.rows[0]!.n, 2, 'the other org\'s memberships are untouched');
    });
  });
}
