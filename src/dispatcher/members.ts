/**
 * Users, roles and memberships of the deployment org: every read and state transition, in SQL.
 *
 * - A user row (`users`) is an IdP subject (`external_id`) bound to one org for good; it is never
 *   deleted (DAG versions name their author), so "removing" a user drops its memberships.
 * - A user is a member of the org while it holds at least one role (`org_role_memberships`);
 *   `authenticate` (identity.ts) reads exactly these rows on every request, so a removed or
 *   demoted user loses access on its next request, whatever its token says.
 * - The org always keeps at least one admin: every membership change takes a row lock on the
 *   org's `admin` role (so two changes cannot each see the other admin remaining), makes the
 *   change, counts the admins left and rolls back with 409 `LAST_ADMIN` when none is.
 * - Every lookup is scoped to the deployment org: rows of another org are never found (404).
 */
import type { Db, Queryable } from '../db/db.js';
import { TraceError, conflict, notFound, unprocessable } from '../core/errors.js';
import { newId } from '../core/ids.js';
import { ADMIN_ROLE } from './identity.js';

export interface OrgView {
  org_id: string;
  slug: string;
  name: string;
  created_at: Date;
  /** Users holding at least one role. */
  members: number;
  admins: number;
}

export interface RoleView {
  slug: string;
  name: string;
  members: number;
}

export interface UserView {
  user_id: string;
  sub: string;
  email: string | null;
  /** Role slugs, sorted; empty once the user was removed from the org. */
  roles: string[];
  member: boolean;
  created_at: Date;
}

const ORG_SQL = `
SELECT o.id AS org_id, o.slug, o.name, o.created_at,
  (SELECT count(DISTINCT m.user_id)::int FROM org_role_memberships m JOIN org_roles r ON r.id = m.role_id WHERE r.org_id = o.id) AS members,
  (SELECT count(*)::int FROM org_role_memberships m JOIN org_roles r ON r.id = m.role_id WHERE r.org_id = o.id AND r.slug = '${ADMIN_ROLE}') AS admins
FROM orgs o WHERE o.id = $1`;

/** The deployment org (v1 is single-org: the only org a caller ever sees). */
export async function getOrg(q: Queryable, orgId: string): Promise<OrgView> {
  const r = await q.query<OrgView>(ORG_SQL, [orgId]);
  return r.rows[0]!;
}

export async function listRoles(q: Queryable, orgId: string): Promise<RoleView[]> {
  const r = await q.query<RoleView>(
    `SELECT r.slug, r.name, count(m.user_id)::int AS members
     FROM org_roles r LEFT JOIN org_role_memberships m ON m.role_id = r.id
     WHERE r.org_id = $1 GROUP BY r.id, r.slug, r.name ORDER BY r.slug`,
    [orgId],
  );
  return r.rows;
}

const USERS_SQL = `
SELECT u.id AS user_id, u.external_id AS sub, u.email, u.created_at,
  coalesce(array_agg(r.slug ORDER BY r.slug) FILTER (WHERE r.slug IS NOT NULL), '{}') AS roles
FROM users u
LEFT JOIN org_role_memberships m ON m.user_id = u.id
LEFT JOIN org_roles r ON r.id = m.role_id AND r.org_id = u.org_id
WHERE u.org_id = $1`;

function view(row: Omit<UserView, 'member'>): UserView {
  return { ...row, member: row.roles.length > 0 };
}

export interface UserFilter {
  sub?: string;
  /** Only users holding this role. */
  role?: string;
  /** Only current members (at least one role). */
  membersOnly?: boolean;
  limit?: number;
}

export async function listUsers(q: Queryable, orgId: string, f: UserFilter = {}): Promise<UserView[]> {
  const params: unknown[] = [orgId];
  let where = '';
  if (f.sub !== undefined) { params.push(f.sub); where += ` AND u.external_id = $${params.length}`; }
  let having = '';
  if (f.role !== undefined) { params.push(f.role); having = ` HAVING $${params.length} = ANY(array_agg(r.slug))`; } else if (f.membersOnly) having = ' HAVING count(r.slug) > 0';
  params.push(f.limit ?? 1000);
  const r = await q.query<Omit<UserView, 'member'>>(
    `${USERS_SQL}${where} GROUP BY u.id, u.external_id, u.email, u.created_at${having} ORDER BY u.created_at, u.external_id LIMIT $${params.length}`,
    params,
  );
  return r.rows.map(view);
}

export async function getUser(q: Queryable, orgId: string, userId: string): Promise<UserView | undefined> {
  const r = await q.query<Omit<UserView, 'member'>>(`${USERS_SQL} AND u.id = $2 GROUP BY u.id, u.external_id, u.email, u.created_at`, [orgId, userId]);
  return r.rows[0] ? view(r.rows[0]) : undefined;
}

async function mustGetUser(q: Queryable, orgId: string, userId: string): Promise<UserView> {
  const u = await getUser(q, orgId, userId);
  if (!u) throw notFound('no user with this id in this org', 'USER_NOT_FOUND');
  return u;
}

/** The org's role id for a slug; an unknown role is a 422 on `field`. */
async function roleId(q: Queryable, orgId: string, slug: string, field: string): Promise<string> {
  const r = await q.query<{ id: string }>(`SELECT id FROM org_roles WHERE org_id = $1 AND slug = $2`, [orgId, slug]);
  if (r.rows[0]) return r.rows[0].id;
  const all = (await listRoles(q, orgId)).map((x) => x.slug);
  throw unprocessable(`unknown role "${slug}"`, [{ path: field, message: `unknown role; expected one of ${all.join(', ')}` }], 'UNKNOWN_ROLE');
}

/**
 * Runs a membership change under the lock on the org's admin role, and refuses it (rolling back)
 * when it would leave the org without an admin.
 */
async function changeMemberships<T>(db: Db, orgId: string, fn: (q: Queryable) => Promise<T>): Promise<T> {
  return db.tx(async (q) => {
    await q.query(`SELECT id FROM org_roles WHERE org_id = $1 AND slug = $2 FOR UPDATE`, [orgId, ADMIN_ROLE]);
    const out = await fn(q);
    const left = await q.query<{ n: number }>(
      `SELECT count(*)::int AS n FROM org_role_memberships m JOIN org_roles r ON r.id = m.role_id WHERE r.org_id = $1 AND r.slug = $2`,
      [orgId, ADMIN_ROLE],
    );
    if (left.rows[0]!.n === 0) {
      throw new TraceError(409, 'LAST_ADMIN', 'this would leave the org without an admin; make another user admin first');
    }
    return out;
  });
}

/**
 * Adds a user to the org with one role. A new subject gets a user row; a user of this org that was
 * removed is let back in (`created: false`); a current member is a 409 `USER_EXISTS`; a subject
 * bound to another org is a 409 `SUBJECT_UNAVAILABLE` (nothing about that org is told).
 */
export async function addUser(db: Db, orgId: string, input: { sub: string; email?: string | undefined; role: string }): Promise<{ user: UserView; created: boolean }> {
  return changeMemberships(db, orgId, async (q) => {
    const rid = await roleId(q, orgId, input.role, 'role');
    const ins = await q.query<{ id: string }>(
      `INSERT INTO users (id, org_id, external_id, email) VALUES ($1, $2, $3, $4) ON CONFLICT (external_id) DO NOTHING RETURNING id`,
      [newId(), orgId, input.sub, input.email ?? null],
    );
    let userId = ins.rows[0]?.id;
    const created = userId !== undefined;
    if (!userId) {
      const u = (await q.query<{ id: string; org_id: string }>(`SELECT id, org_id FROM users WHERE external_id = $1`, [input.sub])).rows[0]!;
      if (u.org_id !== orgId) throw conflict('this subject cannot be added to this org', 'SUBJECT_UNAVAILABLE');
      const existing = await mustGetUser(q, orgId, u.id);
      if (existing.member) throw conflict(`user ${input.sub} is already a member (roles: ${existing.roles.join(', ')}); use members set-role to change roles`, 'USER_EXISTS');
      userId = u.id;
      if (input.email !== undefined) await q.query(`UPDATE users SET email = $2 WHERE id = $1`, [userId, input.email]);
    }
    await q.query(`INSERT INTO org_role_memberships (role_id, user_id) VALUES ($1, $2)`, [rid, userId]);
    return { user: await mustGetUser(q, orgId, userId), created };
  });
}

/** Removes a user from the org: every membership goes; the user row stays. Idempotent. */
export async function removeUser(db: Db, orgId: string, userId: string): Promise<{ user: UserView; removed: boolean }> {
  return changeMemberships(db, orgId, async (q) => {
    await mustGetUser(q, orgId, userId);
    const d = await q.query(
      `DELETE FROM org_role_memberships m USING org_roles r WHERE m.role_id = r.id AND r.org_id = $1 AND m.user_id = $2`,
      [orgId, userId],
    );
    return { user: await mustGetUser(q, orgId, userId), removed: d.rowCount > 0 };
  });
}

/** Grants one more role (additive, idempotent); also lets a removed user back in. */
export async function grantRole(db: Db, orgId: string, userId: string, role: string): Promise<{ user: UserView; granted: boolean }> {
  return changeMemberships(db, orgId, async (q) => {
    await mustGetUser(q, orgId, userId);
    const rid = await roleId(q, orgId, role, 'role');
    const r = await q.query(`INSERT INTO org_role_memberships (role_id, user_id) VALUES ($1, $2) ON CONFLICT DO NOTHING`, [rid, userId]);
    return { user: await mustGetUser(q, orgId, userId), granted: r.rowCount > 0 };
  });
}

/** Revokes one role (idempotent). Revoking the last role removes the user from the org. */
export async function revokeRole(db: Db, orgId: string, userId: string, role: string): Promise<{ user: UserView; revoked: boolean }> {
  return changeMemberships(db, orgId, async (q) => {
    await mustGetUser(q, orgId, userId);
    const rid = await roleId(q, orgId, role, 'role');
    const r = await q.query(`DELETE FROM org_role_memberships WHERE role_id = $1 AND user_id = $2`, [rid, userId]);
    return { user: await mustGetUser(q, orgId, userId), revoked: r.rowCount > 0 };
  });
}

/** Makes `role` the user's only role (a demotion from admin to member, or the reverse). */
export async function setRole(db: Db, orgId: string, userId: string, role: string): Promise<{ user: UserView; changed: boolean }> {
  return changeMemberships(db, orgId, async (q) => {
    const before = await mustGetUser(q, orgId, userId);
    const rid = await roleId(q, orgId, role, 'role');
    await q.query(
      `DELETE FROM org_role_memberships m USING org_roles r WHERE m.role_id = r.id AND r.org_id = $1 AND m.user_id = $2 AND m.role_id <> $3`,
      [orgId, userId, rid],
    );
    await q.query(`INSERT INTO org_role_memberships (role_id, user_id) VALUES ($1, $2) ON CONFLICT DO NOTHING`, [rid, userId]);
    const user = await mustGetUser(q, orgId, userId);
    return { user, changed: before.roles.join(',') !== user.roles.join(',') };
  });
}
