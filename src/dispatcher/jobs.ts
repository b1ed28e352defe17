import type { Queryable } from '../db/db.js';

/** A job row as the Dispatcher uses it. Jobs are immutable once deployed. */
export interface JobRow {
  id: string;
  org_id: string;
  name: string;
  dag_name: string;
  dag_version_id: string;
  activation: 'source' | 'reactive';
  runtime: 'lambda' | 'ecs_platform' | 'dispatcher';
  operator: string;
  source: Record<string, unknown> | null;
  execution_strategy: string | null;
  config: Record<string, unknown>;
  config_hash: string;
  lineage_hash: string;
  inputs: Array<{ dataset_uuid: string; where?: Record<string, unknown> }>;
  input_datasets: string[];
  outputs: Array<{ output_index: number; dataset_uuid: string; dataset_version: string }>;
  update_strategy: string | null;
  unique_key: string[] | null;
  scaling: { max_concurrency?: number } | null;
  udf: { bundle_id: string; entrypoint: string } | null;
  timeout_seconds: number;
  heartbeat_timeout_seconds: number;
  max_attempts: number;
}

const JOB_COLUMNS = `id, org_id, name, dag_name, dag_version_id, activation, runtime, operator, source, execution_strategy,
  config, config_hash, lineage_hash, inputs, input_datasets, outputs, update_strategy, unique_key, scaling, udf,
  timeout_seconds, heartbeat_timeout_seconds, max_attempts`;

/** Immutable job rows cached by id: claims and completions never re-read them. */
export class JobCache {
  private readonly byId = new Map<string, Promise<JobRow | undefined>>();

  constructor(private readonly db: Queryable) {}

  get(id: string): Promise<JobRow | undefined> {
    let p = this.byId.get(id);
    if (!p) {
      p = this.db.query<JobRow>(`SELECT ${JOB_COLUMNS} FROM jobs WHERE id = $1`, [id]).then((r) => r.rows[0]);
      p.then((row) => { if (!row) this.byId.delete(id); }, () => this.byId.delete(id));
      this.byId.set(id, p);
    }
    return p;
  }

  async require(id: string): Promise<JobRow> {
    const j = await this.get(id);
    if (!j) throw new Error(`job ${id} vanished`);
    return j;
  }
}

export async function activeJobByName(q: Queryable, orgId: string, dagName: string, jobName: string): Promise<JobRow | undefined> {
  const r = await q.query<JobRow>(
    `SELECT ${JOB_COLUMNS.split(',').map((c) => `j.${c.trim()}`).join(', ')}
     FROM jobs j JOIN dag_current_versions d ON d.dag_version_id = j.dag_version_id
     WHERE d.org_id = $1 AND d.dag_name = $2 AND j.name = $3`,
    [orgId, dagName, jobName],
  );
  return r.rows[0];
}

/** Reactive jobs of active DAG versions whose inputs name the dataset. */
export async function dependentJobs(q: Queryable, orgId: string, datasetUuid: string): Promise<JobRow[]> {
  const r = await q.query<JobRow>(
    `SELECT ${JOB_COLUMNS.split(',').map((c) => `j.${c.trim()}`).join(', ')}
     FROM jobs j JOIN dag_current_versions d ON d.dag_version_id = j.dag_version_id
     WHERE j.org_id = $1 AND j.activation = 'reactive' AND $2 = ANY (j.input_datasets)`,
    [orgId, datasetUuid],
  );
  return r.rows;
}
