import type { Queryable } from '../db/db.js';
import type { CapabilityIssuer } from '../auth/capability.js';
import { capabilityTtlSeconds } from '../auth/capability.js';
import type { DatasetGrant, StorageRef } from '../auth/capability-claims.js';
import type { InputFilter } from '../core/input-filter.js';
import type { ClaimedTask, TaskPayload } from '../worker/payload.js';
import type { JobRow } from './jobs.js';
import type { ClaimedRow, InputCursor } from './tasks/claim.js';

export interface TaskCore {
  id: string;
  org_id: string;
  attempt: number;
  inputs: unknown[];
  trigger: Record<string, unknown>;
  timeout_seconds: number;
  operator_state: TaskPayload['operator_state'];
  /** The job's committed cursors on the pinned input versions (INPUT_CURSORS in tasks/claim.ts). */
  cursors: InputCursor[];
}

/**
 * Each pinned input with the job's last committed cursor on that dataset version (`last_cursor`,
 * null before the first completion) and the cursor column of the job's config (`cursor_column`,
 * null when it names none): an incremental operator reads only rows past `last_cursor`.
 */
export function inputsWithCursors(inputs: unknown[], cursors: InputCursor[], job: JobRow): TaskPayload['inputs'] {
  const column = typeof job.config.cursor_column === 'string' ? job.config.cursor_column : null;
  const byVersion = new Map(cursors.map((c) => [`${c.dataset_uuid}/${c.dataset_version}`, c.cursor_value]));
  return (inputs as TaskPayload['inputs']).map((i) => (i.dataset_uuid && i.dataset_version
    ? { ...i, last_cursor: byVersion.get(`${i.dataset_uuid}/${i.dataset_version}`) ?? null, cursor_column: column }
    : i));
}

/** The full task description handed to whoever runs the attempt (claim, fetch, invoke). */
export function taskPayload(t: TaskCore, job: JobRow): TaskPayload {
  const p: TaskPayload = {
    task_id: t.id,
    attempt: t.attempt,
    org_id: t.org_id,
    job: { id: job.id, dag_name: job.dag_name, name: job.name },
    operator: job.operator,
    runtime: job.runtime,
    config: job.config,
    timeout_seconds: t.timeout_seconds,
    heartbeat_timeout_seconds: job.heartbeat_timeout_seconds,
    trigger: t.trigger as TaskPayload['trigger'],
    inputs: inputsWithCursors(t.inputs, t.cursors, job),
    outputs: job.outputs,
    operator_state: t.operator_state,
  };
  if (job.udf) p.udf = job.udf;
  return p;
}

const GRANT_STORAGE = `SELECT id, dataset_uuid, storage_ref FROM dataset_versions WHERE id = ANY ($1::uuid[])`;

/** Dataset grants of an attempt: the pinned input versions, with their storage when it is known. */
export async function datasetGrants(q: Queryable, inputs: TaskPayload['inputs']): Promise<DatasetGrant[]> {
  const pinned = inputs.filter((i) => i.dataset_uuid && i.dataset_version);
  if (pinned.length === 0) return [];
  const r = await q.query<{ id: string; dataset_uuid: string; storage_ref: StorageRef | null }>(GRANT_STORAGE, [[...new Set(pinned.map((i) => i.dataset_version))]]);
  const byVersion = new Map(r.rows.map((x) => [x.id, x.storage_ref]));
  const seen = new Set<string>();
  const grants: DatasetGrant[] = [];
  for (const i of pinned) {
    if (seen.has(i.dataset_version)) continue;
    seen.add(i.dataset_version);
    const ref = byVersion.get(i.dataset_version);
    // The edge's filter travels with the grant: the Query Service applies it to every read.
    const where = (i as { where?: InputFilter }).where;
    grants.push({ dataset_uuid: i.dataset_uuid, dataset_version: i.dataset_version, ...(ref ? { storage_ref: ref } : {}), ...(where ? { where } : {}) });
  }
  return grants;
}


/** Turns a fresh lease into the claim response: payload plus a capability token for this attempt. */
export async function claimedTask(q: Queryable, c: ClaimedRow, job: JobRow, issuer: CapabilityIssuer): Promise<ClaimedTask> {
  const task = taskPayload(c, job);
  const datasets = await datasetGrants(q, task.inputs);
  const capability_token = await issuer.sign(
    { org_id: c.org_id, task_id: c.id, attempt: c.attempt, datasets, s3: { read_prefixes: [], write_prefixes: [] } },
    capabilityTtlSeconds(c.timeout_seconds),
  );
  return {
    attempt: c.attempt,
    lease_token: c.lease_token,
    lease_expires_at: new Date(c.lease_expires_at).toISOString(),
    capability_token,
    task,
  };
}
