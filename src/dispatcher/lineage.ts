/**
 * DAG and dataset listings for the user API and the console: `GET /v1/dags` (every DAG with its
 * versions and the active one) and `GET /v1/datasets/{name}/versions` (a dataset's versions with
 * their partitions and, per partition, the task that produced it and that task's inputs).
 *
 * Lineage is read from state the Dispatcher already keeps: a task publication lies in its
 * attempt's own write prefix (`scratch/{task_id}/{attempt}/`, publication.ts), so a partition's
 * location names the producing task; a chain sync range records its task directly. The producing
 * task must belong to the caller's org or it is not shown.
 */
import type { Queryable } from '../db/db.js';
import type { Principal } from './identity.js';
import { canRead } from './registry.js';

export interface DagVersionView { dag_version_id: string; yaml_hash: string; created_at: Date; active: boolean; jobs: number }
export interface DagView { dag_name: string; active_version: string | null; versions: DagVersionView[] }

// Hidden DAGs (`chain_sync:<name>`) are not user DAGs: their names are not DAG names.
const LIST_DAGS = `
SELECT v.dag_name, v.id AS dag_version_id, v.yaml_hash, v.created_at, (c.dag_version_id IS NOT NULL) AS active,
       (SELECT count(*)::int FROM jobs j WHERE j.dag_version_id = v.id) AS jobs
FROM dag_versions v LEFT JOIN dag_current_versions c ON c.dag_version_id = v.id AND c.org_id = v.org_id
WHERE v.org_id = $1 AND v.dag_name ~ '^[a-z][a-z0-9_]*$'
ORDER BY v.dag_name, v.created_at, v.id`;

export async function listDags(q: Queryable, orgId: string): Promise<DagView[]> {
  const r = await q.query<DagVersionView & { dag_name: string }>(LIST_DAGS, [orgId]);
  const out = new Map<string, DagView>();
  for (const { dag_name, ...v } of r.rows) {
    let d = out.get(dag_name);
    if (!d) out.set(dag_name, d = { dag_name, active_version: null, versions: [] });
    d.versions.push(v);
    if (v.active) d.active_version = v.dag_version_id;
  }
  return [...out.values()];
}

export interface LineageInput { dataset_uuid: string; dataset_name: string | null; dataset_version: string | null; partition_key: string | null }
export interface ProducerView { task_id: string; attempt: number | null; dag_name: string; job_name: string; status: string; inputs: LineageInput[] }
export interface PartitionView { partition_key: string; materialized_at: Date; row_count: number | null; bytes: number | null; location: string | null; producer: ProducerView | null }
export interface DatasetVersionView {
  dataset_version: string; current: boolean; created_at: Date; config_hash: string | null; storage_location: string | null;
  range_start: number | null; range_end: number | null; partitions: PartitionView[];
}

const DATASET = `SELECT id, read_roles, current_version FROM datasets WHERE org_id = $1 AND name = $2`;

const VERSIONS = `
SELECT v.id AS dataset_version, v.created_at, v.config_hash, v.storage_location, v.range_start::float8 AS range_start, v.range_end::float8 AS range_end
FROM dataset_versions v WHERE v.dataset_uuid = $1
ORDER BY v.created_at DESC, v.id LIMIT $2`;

// The producing task of each partition: the task named by the attempt prefix in its location,
// else the chain sync range that committed it; only tasks of the caller's org.
const PARTITIONS = `
SELECT p.dataset_version, p.partition_key, p.materialized_at, p.row_count::float8 AS row_count, p.bytes::float8 AS bytes, p.location,
       t.id AS task_id, src.attempt, j.dag_name, j.name AS job_name, t.status
FROM partition_versions p
LEFT JOIN LATERAL (
  SELECT m[1]::uuid AS task_id, m[2]::int AS attempt
  FROM regexp_match(coalesce(p.location, ''), 'scratch/([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})/([0-9]{1,9})/') AS m
  WHERE m IS NOT NULL
  UNION ALL
  SELECT r.task_id, NULL::int FROM chain_sync_scheduled_ranges r
  WHERE r.dataset_version = p.dataset_version AND p.partition_key = r.range_start || '-' || r.range_end
  LIMIT 1
) src ON true
LEFT JOIN tasks t ON t.id = src.task_id AND t.org_id = $2
LEFT JOIN jobs j ON j.id = t.job_id
WHERE p.dataset_uuid = $1 AND p.dataset_version = ANY ($3::uuid[])
ORDER BY p.dataset_version, p.materialized_at DESC, p.partition_key
`;

const INPUTS = `
SELECT i.task_id, i.input_dataset_uuid AS dataset_uuid, d.name AS dataset_name, i.input_dataset_version AS dataset_version,
       nullif(i.input_partition_key, '') AS partition_key
FROM task_inputs i LEFT JOIN datasets d ON d.id = i.input_dataset_uuid AND d.org_id = $2
WHERE i.task_id = ANY ($1::uuid[])
ORDER BY i.task_id, d.name, i.input_partition_key`;

// A task's event inputs (what routing gave it), for tasks without task_inputs rows.
const EVENT_INPUTS = `
SELECT t.id AS task_id, (e->>'dataset_uuid')::uuid AS dataset_uuid, d.name AS dataset_name,
       (e->>'dataset_version')::uuid AS dataset_version, e->>'partition_key' AS partition_key
FROM tasks t CROSS JOIN LATERAL jsonb_array_elements(t.inputs) e
LEFT JOIN datasets d ON d.id = (e->>'dataset_uuid')::uuid AND d.org_id = t.org_id
WHERE t.id = ANY ($1::uuid[]) AND t.org_id = $2 AND jsonb_typeof(e) = 'object'
  AND e->>'dataset_uuid' ~ '^[0-9a-f-]{36}$' AND (e->>'dataset_version' IS NULL OR e->>'dataset_version' ~ '^[0-9a-f-]{36}$')`;

interface PartitionRow {
  dataset_version: string; partition_key: string; materialized_at: Date; row_count: number | null; bytes: number | null; location: string | null;
  task_id: string | null; attempt: number | null; dag_name: string | null; job_name: string | null; status: string | null;
}

/**
 * The dataset's versions (newest first, at most `limit`) with their partitions and lineage, or
 * undefined when the caller may not see a dataset of that name (as GET /v1/datasets/{name}).
 */
export async function datasetVersions(q: Queryable, p: Principal, name: string, limit: number): Promise<{ dataset_uuid: string; current_version: string | null; versions: DatasetVersionView[] } | undefined> {
  const d = (await q.query<{ id: string; read_roles: string[]; current_version: string | null }>(DATASET, [p.org_id, name])).rows[0];
  if (!d || !canRead(p, d.read_roles)) return undefined;
  const versions = (await q.query<Omit<DatasetVersionView, 'current' | 'partitions'>>(VERSIONS, [d.id, limit])).rows;
  const parts = versions.length === 0 ? [] : (await q.query<PartitionRow>(PARTITIONS, [d.id, p.org_id, versions.map((v) => v.dataset_version)])).rows;
  const taskIds = [...new Set(parts.flatMap((r) => (r.task_id && r.dag_name ? [r.task_id] : [])))];
  const inputs = new Map<string, LineageInput[]>();
  if (taskIds.length > 0) {
    const recorded = (await q.query<LineageInput & { task_id: string }>(INPUTS, [taskIds, p.org_id])).rows;
    const routed = (await q.query<LineageInput & { task_id: string }>(EVENT_INPUTS, [taskIds, p.org_id])).rows;
    const have = new Set(recorded.map((r) => r.task_id));
    for (const { task_id, ...i } of [...recorded, ...routed.filter((r) => !have.has(r.task_id))]) {
      const list = inputs.get(task_id) ?? [];
      list.push(i);
      inputs.set(task_id, list);
    }
  }
  const byVersion = new Map<string, PartitionView[]>();
  for (const r of parts) {
    const list = byVersion.get(r.dataset_version) ?? [];
    list.push({
      partition_key: r.partition_key, materialized_at: r.materialized_at, row_count: r.row_count, bytes: r.bytes, location: r.location,
      producer: r.task_id && r.dag_name
        ? { task_id: r.task_id, attempt: r.attempt, dag_name: r.dag_name, job_name: r.job_name!, status: r.status!, inputs: inputs.get(r.task_id) ?? [] }
        : null,
    });
    byVersion.set(r.dataset_version, list);
  }
  return {
    dataset_uuid: d.id,
    current_version: d.current_version,
    versions: versions.map((v) => ({ ...v, current: v.dataset_version === d.current_version, partitions: byVersion.get(v.dataset_version) ?? [] })),
  };
}
