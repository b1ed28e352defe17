import type { Queryable } from '../db/db.js';
import type { Principal } from './identity.js';

/** The dataset registry as users see it: published names only, filtered by read roles. */
export interface DatasetView {
  name: string;
  dataset_uuid: string;
  kind: string;
  producer: { dag_name: string; job_name: string; output_index: number } | null;
  read_roles: string[];
  current_version: string | null;
  storage_ref: Record<string, unknown> | null;
  created_at: Date;
  updated_at: Date;
}

const SELECT = `
SELECT d.name, d.id AS dataset_uuid, d.kind, d.producer_dag_name, d.producer_job_name, d.producer_output_index,
       d.read_roles, d.current_version, v.storage_ref, d.created_at, d.updated_at
FROM datasets d LEFT JOIN dataset_versions v ON v.id = d.current_version
WHERE d.org_id = $1 AND d.name IS NOT NULL`;

interface Row {
  name: string; dataset_uuid: string; kind: string; producer_dag_name: string | null; producer_job_name: string | null;
  producer_output_index: number | null; read_roles: string[]; current_version: string | null; storage_ref: Record<string, unknown> | null;
  created_at: Date; updated_at: Date;
}

function view(r: Row): DatasetView {
  return {
    name: r.name,
    dataset_uuid: r.dataset_uuid,
    kind: r.kind,
    producer: r.producer_dag_name ? { dag_name: r.producer_dag_name, job_name: r.producer_job_name!, output_index: r.producer_output_index! } : null,
    read_roles: r.read_roles,
    current_version: r.current_version,
    storage_ref: r.storage_ref,
    created_at: r.created_at,
    updated_at: r.updated_at,
  };
}

/** May this principal read the dataset? Empty read_roles means every member may. */
export function canRead(p: Pick<Principal, 'roles'>, readRoles: string[]): boolean {
  return readRoles.length === 0 || readRoles.some((r) => p.roles.includes(r)) || p.roles.includes('admin');
}

export async function listDatasets(q: Queryable, p: Principal): Promise<DatasetView[]> {
  const r = await q.query<Row>(`${SELECT} ORDER BY d.name`, [p.org_id]);
  return r.rows.filter((x) => canRead(p, x.read_roles)).map(view);
}

export async function getDataset(q: Queryable, p: Principal, name: string): Promise<DatasetView | undefined> {
  const r = await q.query<Row>(`${SELECT} AND d.name = $2`, [p.org_id, name]);
  const row = r.rows[0];
  if (!row || !canRead(p, row.read_roles)) return undefined;
  return view(row);
}
