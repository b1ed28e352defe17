import type { FastifyInstance } from 'fastify';
import { z } from 'zod';
import { notFound } from '../../core/errors.js';
import { parseInput } from '../../core/http.js';
import type { DispatcherContext } from '../service.js';
import { requireAdmin } from '../identity.js';
import { addUser, getOrg, getUser, grantRole, listRoles, listUsers, removeUser, revokeRole, setRole } from '../members.js';
import { uuid } from './schemas.js';
import { userAuth } from './user-routes.js';

/**
 * Admin routes for the deployment org, its users, roles and memberships (src/dispatcher/members.ts
 * owns the SQL). v1 is single-org: the org is the deployment's (`ctx.deps.orgId`), never the
 * request's; another org's rows are not found.
 */

const roleSlug = z.string().regex(/^[a-z][a-z0-9_-]{0,63}$/, 'must be a role name such as admin or member');
/** An IdP subject as tokens carry it (`users.external_id`); `task:` is reserved for capability tokens. */
const subject = z.string().min(1).max(256)
  .refine((s) => !/\p{Cc}/u.test(s), 'must not contain control characters')
  .refine((s) => !s.startsWith('task:'), 'must not start with task:');

export const addUserBody = z.strictObject({
  sub: subject,
  email: z.email().max(320).optional(),
  role: roleSlug.default('member'),
});
export const usersQuery = z.strictObject({
  sub: subject.optional(),
  role: roleSlug.optional(),
  members: z.enum(['true', 'false']).optional(),
  limit: z.coerce.number().int().min(1).max(1000).default(1000),
});
export const membersQuery = z.strictObject({ role: roleSlug.optional() });
export const grantBody = z.strictObject({ user_id: uuid, role: roleSlug });
export const setRoleBody = z.strictObject({ role: roleSlug });
const orgParam = z.strictObject({ org: z.string().min(1).max(256) });
const userParam = z.strictObject({ id: uuid });
const memberRoleParam = z.strictObject({ id: uuid, role: roleSlug });

export function orgRoutes(app: FastifyInstance, ctx: DispatcherContext): void {
  const { deps } = ctx;
  const auth = userAuth(ctx);
  const admin = async (req: Parameters<typeof auth>[0]) => {
    const p = await auth(req);
    requireAdmin(p);
    return p;
  };

  app.get('/v1/admin/orgs', async (req) => {
    const p = await admin(req);
    parseInput(z.strictObject({}), req.query ?? {}, 'query string');
    return { orgs: [await getOrg(deps.state, p.org_id)] };
  });

  app.get('/v1/admin/orgs/:org', async (req) => {
    const p = await admin(req);
    const { org } = parseInput(orgParam, req.params, 'route');
    const o = await getOrg(deps.state, p.org_id);
    if (org !== o.slug && org !== o.org_id) throw notFound(`no org ${org} in this deployment`, 'ORG_NOT_FOUND');
    return { ...o, roles: await listRoles(deps.state, p.org_id) };
  });

  app.get('/v1/admin/roles', async (req) => {
    const p = await admin(req);
    parseInput(z.strictObject({}), req.query ?? {}, 'query string');
    return { roles: await listRoles(deps.state, p.org_id) };
  });

  app.get('/v1/admin/users', async (req) => {
    const p = await admin(req);
    const f = parseInput(usersQuery, req.query ?? {}, 'query string');
    const users = await listUsers(deps.state, p.org_id, {
      limit: f.limit,
      ...(f.sub !== undefined ? { sub: f.sub } : {}),
      ...(f.role !== undefined ? { role: f.role } : {}),
      ...(f.members === 'true' ? { membersOnly: true } : {}),
    });
    return { users };
  });

  app.post('/v1/admin/users', async (req, reply) => {
    const p = await admin(req);
    const body = parseInput(addUserBody, req.body);
    const r = await addUser(deps.state, p.org_id, body);
    req.log.info({ org_id: p.org_id, by: p.sub, user_id: r.user.user_id, role: body.role, created: r.created }, 'user added');
    return reply.status(201).send(r);
  });

  app.get('/v1/admin/users/:id', async (req) => {
    const p = await admin(req);
    const { id } = parseInput(userParam, req.params, 'route');
    const u = await getUser(deps.state, p.org_id, id);
    if (!u) throw notFound('no user with this id in this org', 'USER_NOT_FOUND');
    return u;
  });

  app.delete('/v1/admin/users/:id', async (req) => {
    const p = await admin(req);
    const { id } = parseInput(userParam, req.params, 'route');
    const r = await removeUser(deps.state, p.org_id, id);
    req.log.info({ org_id: p.org_id, by: p.sub, user_id: id, removed: r.removed }, 'user removed from org');
    return r;
  });

  app.get('/v1/admin/members', async (req) => {
    const p = await admin(req);
    const f = parseInput(membersQuery, req.query ?? {}, 'query string');
    return { members: await listUsers(deps.state, p.org_id, f.role !== undefined ? { role: f.role } : { membersOnly: true }) };
  });

  app.post('/v1/admin/members', async (req, reply) => {
    const p = await admin(req);
    const body = parseInput(grantBody, req.body);
    const r = await grantRole(deps.state, p.org_id, body.user_id, body.role);
    req.log.info({ org_id: p.org_id, by: p.sub, user_id: body.user_id, role: body.role, granted: r.granted }, 'role granted');
    return reply.status(r.granted ? 201 : 200).send(r);
  });

  app.put('/v1/admin/members/:id', async (req) => {
    const p = await admin(req);
    const { id } = parseInput(userParam, req.params, 'route');
    const body = parseInput(setRoleBody, req.body);
    const r = await setRole(deps.state, p.org_id, id, body.role);
    req.log.info({ org_id: p.org_id, by: p.sub, user_id: id, role: body.role, changed: r.changed }, 'role set');
    return r;
  });

  app.delete('/v1/admin/members/:id/:role', async (req) => {
    const p = await admin(req);
    const { id, role } = parseInput(memberRoleParam, req.params, 'route');
    const r = await revokeRole(deps.state, p.org_id, id, role);
    req.log.info({ org_id: p.org_id, by: p.sub, user_id: id, role, revoked: r.revoked }, 'role revoked');
    return r;
  });
}
