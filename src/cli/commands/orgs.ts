import type { Command } from '../args.js';
import { CliError, UsageError } from '../args.js';
import { api, resolveTarget, type ApiTarget } from '../client.js';
import { renderTable } from '../table.js';

/**
 * `trace orgs`, `trace users` and `trace members`: the deployment org, its users and their roles
 * (the admin routes under /v1/admin). v1 is single-org: the org is the deployment's.
 */

interface OrgView { org_id: string; slug: string; name: string; created_at: string; members: number; admins: number; roles?: RoleView[] }
interface RoleView { slug: string; name: string; members: number }
interface UserView { user_id: string; sub: string; email: string | null; roles: string[]; member: boolean; created_at: string }

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const ROLE_RE = /^[a-z][a-z0-9_-]{0,63}$/;

const print = (values: Record<string, unknown>, body: unknown, human: () => string) =>
  process.stdout.write(values.json ? `${JSON.stringify(body, null, 2)}\n` : `${human()}\n`);

function noExtra(positionals: string[], from: number, hint: string): void {
  if (positionals.length > from) throw new UsageError(`unexpected "${positionals[from]!.slice(0, 40)}" (${hint})`);
}

function roleArg(v: string | undefined, what: string): string {
  if (v === undefined) throw new UsageError(`expected ${what} (a role such as admin or member; see trace orgs show)`);
  if (!ROLE_RE.test(v)) throw new UsageError(`"${v.slice(0, 40)}" is not a role name (such as admin or member)`);
  return v;
}

/** A user by its ID (a UUID from trace users list) or its IdP subject. */
async function resolveUser(t: ApiTarget, ref: string | undefined): Promise<UserView> {
  if (ref === undefined || ref === '') throw new UsageError('expected a user: its subject (the token\'s sub) or its ID from trace users list');
  if (UUID_RE.test(ref)) return api<UserView>(t, 'GET', `/v1/admin/users/${ref.toLowerCase()}`);
  const r = await api<{ users: UserView[] }>(t, 'GET', `/v1/admin/users?${new URLSearchParams({ sub: ref })}`);
  const u = r.users[0];
  if (!u) throw new CliError('USER_NOT_FOUND', `no user ${ref.slice(0, 80)} in this org (see trace users list)`);
  return u;
}

const roles = (u: UserView) => (u.roles.length > 0 ? u.roles.join(', ') : 'none');

function renderUsers(users: UserView[], withMember: boolean): string {
  if (users.length === 0) return 'no users';
  return renderTable(
    ['user_id', 'sub', 'email', 'roles', ...(withMember ? ['member'] : []), 'created_at'],
    users.map((u) => [u.user_id, u.sub, u.email ?? '', u.roles.join(' '), ...(withMember ? [u.member ? 'yes' : 'removed'] : []), u.created_at]),
  );
}

export const orgsList: Command = {
  name: 'orgs list',
  summary: 'List the orgs you administer: in v1 the one deployment org, with its member and admin counts (admin).',
  usage: 'trace orgs list [--json]',
  options: { json: { type: 'boolean' } },
  async run({ values, positionals }) {
    noExtra(positionals, 0, 'to see one org: trace orgs show');
    const r = await api<{ orgs: OrgView[] }>(await resolveTarget(), 'GET', '/v1/admin/orgs');
    print(values, r, () => renderTable(['org_id', 'slug', 'name', 'members', 'admins', 'created_at'],
      r.orgs.map((o) => [o.org_id, o.slug, o.name, o.members, o.admins, o.created_at])));
  },
};

export const orgsShow: Command = {
  name: 'orgs show',
  summary: 'Show the deployment org (by slug or ID, default the deployment\'s) with its roles and how many hold each (admin).',
  usage: 'trace orgs show [ORG] [--json]',
  options: { json: { type: 'boolean' } },
  async run({ values, positionals }) {
    noExtra(positionals, 1, 'expected at most one org');
    const t = await resolveTarget();
    const ref = positionals[0] ?? (await api<{ orgs: OrgView[] }>(t, 'GET', '/v1/admin/orgs')).orgs[0]!.slug;
    if (!/^[A-Za-z0-9][A-Za-z0-9._~:-]{0,255}$/.test(ref)) throw new UsageError(`"${ref.slice(0, 40)}" is not an org slug or ID`);
    const o = await api<OrgView>(t, 'GET', `/v1/admin/orgs/${ref}`);
    print(values, o, () => [
      `org ${o.slug}  (${o.org_id})`,
      `  name     ${o.name}`,
      `  created  ${o.created_at}`,
      `  members  ${o.members}, of whom ${o.admins} admin${o.admins === 1 ? '' : 's'}`,
      ...(o.roles ?? []).map((r) => `  role     ${r.slug}: ${r.members} user${r.members === 1 ? '' : 's'}`),
    ].join('\n'));
  },
};

export const usersList: Command = {
  name: 'users list',
  summary: 'List the users of the org with their roles; removed users stay listed (they authored DAG versions) with no role (admin).',
  usage: 'trace users list [--sub SUB] [--role ROLE] [--members] [--json]',
  options: { sub: { type: 'string' }, role: { type: 'string' }, members: { type: 'boolean' }, json: { type: 'boolean' } },
  async run({ values, positionals }) {
    noExtra(positionals, 0, 'filter with --sub or --role');
    const q = new URLSearchParams();
    if (values.sub !== undefined) q.set('sub', String(values.sub));
    if (values.role !== undefined) q.set('role', roleArg(String(values.role), '--role'));
    if (values.members) q.set('members', 'true');
    const r = await api<{ users: UserView[] }>(await resolveTarget(), 'GET', `/v1/admin/users${q.size > 0 ? `?${q}` : ''}`);
    print(values, r, () => renderUsers(r.users, true));
  },
};

export const usersAdd: Command = {
  name: 'users add',
  summary: 'Add a user to the org by its IdP subject (the sub of its tokens), with one role (default member); a removed user is let back in (admin).',
  usage: 'trace users add SUB [--role ROLE] [--email EMAIL] [--json]',
  options: { role: { type: 'string' }, email: { type: 'string' }, json: { type: 'boolean' } },
  async run({ values, positionals }) {
    const sub = positionals[0];
    if (sub === undefined) throw new UsageError('expected the user\'s subject (the sub claim of its tokens)');
    noExtra(positionals, 1, 'expected one subject');
    const body: Record<string, unknown> = { sub, role: roleArg(values.role === undefined ? 'member' : String(values.role), '--role') };
    if (values.email !== undefined) body.email = String(values.email);
    const r = await api<{ user: UserView; created: boolean }>(await resolveTarget(), 'POST', '/v1/admin/users', body);
    print(values, r, () => `${r.created ? 'added' : 'let back in'} ${r.user.sub} (${r.user.user_id}) with role ${roles(r.user)}`);
  },
};

export const usersRemove: Command = {
  name: 'users remove',
  summary: 'Remove a user from the org: every role goes and its next request is refused; the last admin cannot be removed (admin).',
  usage: 'trace users remove USER [--json]   (USER: a subject or a user ID)',
  options: { json: { type: 'boolean' } },
  async run({ values, positionals }) {
    noExtra(positionals, 1, 'expected one user');
    const t = await resolveTarget();
    const u = await resolveUser(t, positionals[0]);
    const r = await api<{ user: UserView; removed: boolean }>(t, 'DELETE', `/v1/admin/users/${u.user_id}`);
    print(values, r, () => r.removed ? `removed ${u.sub} from the org (roles were: ${roles(u)})` : `${u.sub} was not a member; nothing to remove`);
  },
};

export const membersList: Command = {
  name: 'members list',
  summary: 'List the current members of the org and their roles (admin).',
  usage: 'trace members list [--role ROLE] [--json]',
  options: { role: { type: 'string' }, json: { type: 'boolean' } },
  async run({ values, positionals }) {
    noExtra(positionals, 0, 'filter with --role');
    const q = values.role === undefined ? '' : `?role=${roleArg(String(values.role), '--role')}`;
    const r = await api<{ members: UserView[] }>(await resolveTarget(), 'GET', `/v1/admin/members${q}`);
    print(values, r, () => r.members.length === 0 ? 'no members' : renderUsers(r.members, false));
  },
};

export const membersAdd: Command = {
  name: 'members add',
  summary: 'Grant a user of the org one more role (a removed user is let back in with it) (admin).',
  usage: 'trace members add USER ROLE [--json]   (USER: a subject or a user ID; to add a new subject: trace users add)',
  options: { json: { type: 'boolean' } },
  async run({ values, positionals }) {
    noExtra(positionals, 2, 'expected USER ROLE');
    const role = roleArg(positionals[1], 'a ROLE after the user');
    const t = await resolveTarget();
    const u = await resolveUser(t, positionals[0]);
    const r = await api<{ user: UserView; granted: boolean }>(t, 'POST', '/v1/admin/members', { user_id: u.user_id, role });
    print(values, r, () => r.granted ? `granted ${role} to ${u.sub} (roles now: ${roles(r.user)})` : `${u.sub} already has ${role}`);
  },
};

export const membersRemove: Command = {
  name: 'members remove',
  summary: 'Revoke one role from a user, or with no ROLE remove the user from the org; the last admin is refused (admin).',
  usage: 'trace members remove USER [ROLE] [--json]',
  options: { json: { type: 'boolean' } },
  async run({ values, positionals }) {
    noExtra(positionals, 2, 'expected USER [ROLE]');
    const role = positionals[1] === undefined ? undefined : roleArg(positionals[1], 'ROLE');
    const t = await resolveTarget();
    const u = await resolveUser(t, positionals[0]);
    if (role === undefined) {
      const r = await api<{ user: UserView; removed: boolean }>(t, 'DELETE', `/v1/admin/users/${u.user_id}`);
      print(values, r, () => r.removed ? `removed ${u.sub} from the org (roles were: ${roles(u)})` : `${u.sub} was not a member; nothing to remove`);
      return;
    }
    const r = await api<{ user: UserView; revoked: boolean }>(t, 'DELETE', `/v1/admin/members/${u.user_id}/${role}`);
    print(values, r, () => !r.revoked ? `${u.sub} did not have ${role}`
      : `revoked ${role} from ${u.sub}${r.user.member ? ` (roles now: ${roles(r.user)})` : '; it has no role left and is no longer a member'}`);
  },
};

export const membersSetRole: Command = {
  name: 'members set-role',
  summary: 'Make ROLE the user\'s only role (promote to admin, or demote to member: effective on its next request); demoting the last admin is refused (admin).',
  usage: 'trace members set-role USER ROLE [--json]',
  options: { json: { type: 'boolean' } },
  async run({ values, positionals }) {
    noExtra(positionals, 2, 'expected USER ROLE');
    const role = roleArg(positionals[1], 'a ROLE after the user');
    const t = await resolveTarget();
    const u = await resolveUser(t, positionals[0]);
    const r = await api<{ user: UserView; changed: boolean }>(t, 'PUT', `/v1/admin/members/${u.user_id}`, { role });
    print(values, r, () => r.changed ? `${u.sub} now has role ${roles(r.user)} (was: ${roles(u)})` : `${u.sub} already has only ${role}`);
  },
};

export const orgCommands: Command[] = [orgsList, orgsShow, usersList, usersAdd, usersRemove, membersList, membersAdd, membersRemove, membersSetRole];
