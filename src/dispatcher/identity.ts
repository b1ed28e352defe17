import type { Db, Queryable } from '../db/db.js';
import { forbidden } from '../core/errors.js';
import { newId } from '../core/ids.js';
import type { UserVerifier } from '../auth/user.js';

/** The identity context every user route works in. `org_id` never comes from the request. */
export interface Principal {
  org_id: string;
  user_id: string;
  sub: string;
  roles: string[];
}

export const ADMIN_ROLE = 'admin';
export const MEMBER_ROLE = 'member';

/**
 * v1 is single-org: makes sure the deployment org, its `admin` and `member` roles and the
 * bootstrap admin user exist. Idempotent.
 */
export async function bootstrapDeployment(db: Db, opts: { orgSlug?: string; adminSub?: string } = {}): Promise<{ org_id: string; admin_user_id: string | null }> {
  const slug = opts.orgSlug ?? 'default';
  return db.tx(async (q) => {
    await q.query(`INSERT INTO orgs (id, name, slug) VALUES ($1, $2, $2) ON CONFLICT (slug) DO NOTHING`, [newId(), slug]);
    const org = (await q.query<{ id: string }>(`SELECT id FROM orgs WHERE slug = $1`, [slug])).rows[0]!;
    for (const role of [ADMIN_ROLE, MEMBER_ROLE]) {
      await q.query(`INSERT INTO org_roles (id, org_id, slug, name) VALUES ($1, $2, $3, $3) ON CONFLICT (org_id, slug) DO NOTHING`, [newId(), org.id, role]);
    }
    let adminId: string | null = null;
    if (opts.adminSub) adminId = await ensureUser(q, org.id, opts.adminSub, [ADMIN_ROLE, MEMBER_ROLE]);
    return { org_id: org.id, admin_user_id: adminId };
  });
}

/** Creates the user if needed and grants the roles (additive). */
export async function ensureUser(q: Queryable, orgId: string, sub: string, roles: string[], email?: string): Promise<string> {
  await q.query(`INSERT INTO users (id, org_id, external_id, email) VALUES ($1, $2, $3, $4) ON CONFLICT (external_id) DO NOTHING`, [newId(), orgId, sub, email ?? null]);
  const u = (await q.query<{ id: string; org_id: string }>(`SELECT id, org_id FROM users WHERE external_id = $1`, [sub])).rows[0]!;
  if (u.org_id !== orgId) throw forbidden('user belongs to another org');
  for (const role of roles) {
    await q.query(
      `INSERT INTO org_role_memberships (role_id, user_id)
       SELECT r.id, $3 FROM org_roles r WHERE r.org_id = $1 AND r.slug = $2
       ON CONFLICT DO NOTHING`,
      [orgId, role, u.id],
    );
  }
  return u.id;
}

const RESOLVE = `
SELECT u.id AS user_id, u.org_id, coalesce(array_agg(r.slug) FILTER (WHERE r.slug IS NOT NULL), '{}') AS roles
FROM users u
LEFT JOIN org_role_memberships m ON m.user_id = u.id
LEFT JOIN org_roles r ON r.id = m.role_id AND r.org_id = u.org_id
WHERE u.external_id = $1 AND u.org_id = $2
GROUP BY u.id, u.org_id`;

/** Verifies the Bearer token, then derives org and roles from Postgres state (never from claims). */
export async function authenticate(db: Queryable, verifier: UserVerifier, orgId: string, authorization: string | undefined): Promise<Principal> {
  const ident = await verifier.verify(authorization);
  const r = await db.query<{ user_id: string; org_id: string; roles: string[] }>(RESOLVE, [ident.sub, orgId]);
  const row = r.rows[0];
  if (!row || row.roles.length === 0) throw forbidden('you are not a member of this deployment', 'NOT_A_MEMBER');
  return { org_id: row.org_id, user_id: row.user_id, sub: ident.sub, roles: row.roles };
}

export function requireAdmin(p: Principal): void {
  if (!p.roles.includes(ADMIN_ROLE)) throw forbidden('this route needs the admin role', 'ADMIN_REQUIRED');
}
