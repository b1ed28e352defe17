/**
 * Wires the Query Service to the platform: who the caller is and which dataset version a name
 * means come from Postgres state (the registry and org memberships the Dispatcher owns); task
 * tokens are verified with the Dispatcher's capability keys; audit rows go to Postgres data.
 *
 * The user path's registry lookup sits behind `resolveDataset` alone, so a deployment whose
 * Query Service holds no state-database credentials can replace it with an HTTP call to the
 * Dispatcher (`GET /v1/datasets/{name}` with the caller's token) without touching the service.
 * The task path needs no registry at all: the capability token carries the pinned grants, and
 * whether the token's attempt still holds its lease is asked of the Dispatcher (lease.ts).
 */
import type { Db, Queryable } from '../db/db.js';
import type { UserVerifier } from '../auth/user.js';
import type { CapabilityVerifier } from '../auth/capability.js';
import { authenticate } from '../dispatcher/identity.js';
import type { QueryServiceDeps, ResolvedDataset, UserPrincipal } from './service.js';
import { dispatcherLeaseCheck } from './lease.js';

export interface QueryWiringInput {
  /** Postgres state: users, roles, the dataset registry (read only). */
  state: Db;
  /** Postgres data: audit tables. */
  data: Db;
  /** The deployment org; every user is resolved inside it (never from token claims). */
  orgId: string;
  userVerifier: UserVerifier;
  capabilityVerifier: CapabilityVerifier;
  /** The Dispatcher, asked whether a task's attempt still holds its lease. */
  dispatcherUrl: string | (() => string);
  /** How long a live answer is kept (at most 1 s). */
  leaseCacheMs?: number;
}

export type WiredQueryDeps = Pick<QueryServiceDeps, 'dataDb' | 'authenticateUser' | 'resolveDataset' | 'verifyTaskToken' | 'checkTaskLease'>;

/**
 * One statement, so the name, its current version pointer and that version's storage ref are
 * read from one snapshot: the version is resolved once, at query start (ADR 0009), and the
 * storage ref used is the one of exactly that version.
 */
const RESOLVE_DATASET = `
SELECT d.id AS dataset_uuid, d.current_version, d.read_roles, d.storage -> 'pii_columns' AS pii_columns, v.storage_ref
FROM datasets d
LEFT JOIN dataset_versions v ON v.id = d.current_version AND v.dataset_uuid = d.id
WHERE d.org_id = $1 AND d.name = $2`;

/** The same, pinned to a given version: it must be a version of this dataset (else no storage ref and a null version). */
const RESOLVE_DATASET_VERSION = `
SELECT d.id AS dataset_uuid, v.id AS current_version, d.read_roles, d.storage -> 'pii_columns' AS pii_columns, v.storage_ref
FROM datasets d
LEFT JOIN dataset_versions v ON v.id = $3 AND v.dataset_uuid = d.id
WHERE d.org_id = $1 AND d.name = $2`;

interface DatasetRow {
  dataset_uuid: string;
  current_version: string | null;
  read_roles: string[] | null;
  pii_columns: unknown;
  storage_ref: unknown;
}

const stringList = (v: unknown): string[] => (Array.isArray(v) ? v.filter((x): x is string => typeof x === 'string' && x.length > 0) : []);

/**
 * Registry lookup by name inside one org, pinned to the current version (or to `version`, when
 * it is one of this dataset's versions; another dataset's or an unknown one resolves with a null
 * version and storage ref, which the service refuses). `null` when the org
 * has no dataset of that name. A dataset without a published version comes back with a null
 * storage ref (the service then refuses it, fail closed). Restricted datasets also admit the
 * `admin` role, the same rule the Dispatcher's registry routes apply (`canRead`).
 */
export async function resolveRegistryDataset(q: Queryable, orgId: string, name: string, version?: string): Promise<ResolvedDataset | null> {
  const r = version === undefined
    ? await q.query<DatasetRow>(RESOLVE_DATASET, [orgId, name])
    : await q.query<DatasetRow>(RESOLVE_DATASET_VERSION, [orgId, name, version]);
  const row = r.rows[0];
  if (!row) return null;
  const readRoles = stringList(row.read_roles);
  const pii = stringList(row.pii_columns);
  return {
    dataset_uuid: row.dataset_uuid,
    dataset_version: row.current_version,
    storage_ref: row.current_version === null ? null : row.storage_ref,
    read_roles: readRoles.length > 0 ? [...readRoles, 'admin'] : [],
    ...(pii.length > 0 ? { pii_columns: pii } : {}),
  };
}

/** The `buildQueryApp` dependencies for a Query Service that reads Postgres state directly. */
export function queryDepsFromState(input: QueryWiringInput): WiredQueryDeps {
  const { state, data, orgId, userVerifier, capabilityVerifier, dispatcherUrl } = input;
  return {
    dataDb: data,
    async authenticateUser(authorization: string): Promise<UserPrincipal> {
      const p = await authenticate(state, userVerifier, orgId, authorization);
      return { org_id: p.org_id, user_id: p.user_id, roles: p.roles, sub: p.sub };
    },
    resolveDataset: (org, name, version) => resolveRegistryDataset(state, org, name, version),
    verifyTaskToken: (token) => capabilityVerifier.verify(token),
    checkTaskLease: dispatcherLeaseCheck({ dispatcherUrl, ...(input.leaseCacheMs !== undefined ? { cacheMs: input.leaseCacheMs } : {}) }),
  };
}
