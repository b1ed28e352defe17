// Shared by the console tests: the user token secret, and a second org with a user and data
// that must never show up for this deployment's users.
import type { Queryable } from '../../src/db/db.js';
import { newId } from '../../src/core/ids.js';
import { ensureUser } from '../../src/dispatcher/identity.js';

export const TEST_USER_SECRET = 'console-test-user-secret-0123456789abcdef0123';

/** Org `other` with member `outsider`, DAG `other_dag` and dataset `other_org_secret`. Idempotent. */
export async function addOtherOrg(q: Queryable): Promise<string> {
  await q.query(`INSERT INTO orgs (id, name, slug) VALUES ($1, 'other', 'other') ON CONFLICT (slug) DO NOTHING`, [newId()]);
  const org = (await q.query<{ id: string }>(`SELECT id FROM orgs WHERE slug = 'other'`)).rows[0]!.id;
  await q.query(`INSERT INTO org_roles (id, org_id, slug, name) VALUES ($1, $2, 'member', 'member') ON CONFLICT (org_id, slug) DO NOTHING`, [newId(), org]);
  await ensureUser(q, org, 'outsider', ['member']);
  await q.query(`INSERT INTO dag_versions (id, org_id, dag_name, yaml_hash, yaml, spec) VALUES ($1, $2, 'other_dag', 'h', 'name: other_dag', '{}')
                 ON CONFLICT DO NOTHING`, [newId(), org]);
  await q.query(`INSERT INTO datasets (id, org_id, name, kind) VALUES ($1, $2, 'other_org_secret', 'external') ON CONFLICT DO NOTHING`, [newId(), org]);
  return org;
}
