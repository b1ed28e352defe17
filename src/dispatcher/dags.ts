import type { Db, Queryable } from '../db/db.js';
import { TraceError, notFound, unprocessable, type Problem } from '../core/errors.js';
import { newId, uuidV5 } from '../core/ids.js';
import type { DagParser, ParsedDag } from './dag-parser.js';
import type { JobSpec } from '../dag/types.js';
import { nextTick } from './schedule.js';
import { cancelTasks } from './tasks/cancel.js';
import { whereSchemaProblems } from './input-filters.js';
import { lineFor, parseYamlWithLines } from '../dag/safe-yaml.js';
import { assertWebhookPathsFree, ensureWebhookSecrets, lockWebhookPaths, webhookPathProblems } from './webhooks.js';

/** Stable identity of a job output: the same `(org, dag, job, output)` is the same dataset forever. */
export const outputDatasetUuid = (orgId: string, dag: string, job: string, output: number) =>
  uuidV5('dataset', orgId, dag, job, output);

/** A generation of that output: changes exactly when the job or anything upstream of it changes. */
export const outputDatasetVersion = (datasetUuid: string, lineageHash: string) => uuidV5('dataset_version', datasetUuid, lineageHash);

export interface DeployResult {
  dag_name: string;
  dag_version_id: string;
  yaml_hash: string;
  created: boolean;
  active: boolean;
  datasets: Array<{ name: string | null; job: string; output: number; dataset_uuid: string; dataset_version: string }>;
}

const FIND_VERSION = `SELECT id FROM dag_versions WHERE org_id = $1 AND dag_name = $2 AND yaml_hash = $3`;
const INSERT_VERSION = `INSERT INTO dag_versions (id, org_id, dag_name, yaml_hash, yaml, spec, created_by) VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7)`;
const DATASETS_BY_NAME = `SELECT id, name, kind, producer_dag_name, producer_job_name, producer_output_index, storage FROM datasets WHERE org_id = $1 AND name = ANY ($2::text[])`;
// Batched writes: one statement per table per chunk of rows, each chunk a JSON document, so a
// 2,000-job DAG is a handful of statements (and the event loop gets a turn between chunks).
const UPSERT_OUTPUT_DATASETS = `
INSERT INTO datasets (id, org_id, name, kind, producer_dag_name, producer_job_name, producer_output_index, read_roles)
SELECT x.id, $1, x.name, 'job_output', $2, x.job, x.output, ARRAY(SELECT jsonb_array_elements_text(x.read_roles))
FROM jsonb_to_recordset($3::jsonb) AS x(id uuid, name text, job text, output int, read_roles jsonb)
ON CONFLICT (id) DO UPDATE SET name = coalesce(datasets.name, EXCLUDED.name),
  read_roles = CASE WHEN EXCLUDED.name IS NOT NULL THEN EXCLUDED.read_roles ELSE datasets.read_roles END, updated_at = now()`;
const INSERT_DATASET_VERSIONS = `
INSERT INTO dataset_versions (id, dataset_uuid, config_hash)
SELECT x.version, x.id, x.lineage_hash FROM jsonb_to_recordset($1::jsonb) AS x(id uuid, version uuid, lineage_hash text)
ON CONFLICT DO NOTHING`;
const INSERT_DVDS = `
INSERT INTO dag_version_datasets (dag_version_id, dataset_uuid, dataset_version)
SELECT $1, x.id, x.version FROM jsonb_to_recordset($2::jsonb) AS x(id uuid, version uuid)
ON CONFLICT DO NOTHING`;
const texts = (col: string) => `ARRAY(SELECT jsonb_array_elements_text(x.${col}))`;
const INSERT_JOBS = `
INSERT INTO jobs (id, org_id, name, dag_name, dag_version_id, activation, runtime, operator, source, bootstrap, execution_strategy,
  idle_timeout, config, config_hash, lineage_hash, inputs, input_datasets, output_datasets, outputs, update_strategy, unique_key,
  scaling, udf, secrets, timeout_seconds, heartbeat_timeout_seconds, max_attempts)
SELECT x.id, $1, x.name, $2, $3, x.activation, x.runtime, x.operator, x.source, x.bootstrap, x.execution_strategy,
  x.idle_timeout, x.config, x.config_hash, x.lineage_hash, x.inputs, ${texts('input_datasets')}, ${texts('output_datasets')}, x.outputs,
  x.update_strategy, CASE WHEN x.unique_key IS NOT NULL THEN ${texts('unique_key')} END,
  x.scaling, x.udf, CASE WHEN x.secrets IS NOT NULL THEN ${texts('secrets')} END,
  x.timeout_seconds, x.heartbeat_timeout_seconds, x.max_attempts
FROM jsonb_to_recordset($4::jsonb) AS x(id uuid, name text, activation text, runtime text, operator text, source jsonb, bootstrap jsonb,
  execution_strategy text, idle_timeout text, config jsonb, config_hash text, lineage_hash text, inputs jsonb, input_datasets jsonb,
  output_datasets jsonb, outputs jsonb, update_strategy text, unique_key jsonb, scaling jsonb, udf jsonb, secrets jsonb,
  timeout_seconds int, heartbeat_timeout_seconds int, max_attempts int)`;

/** Rows per batched statement. */
const DEPLOY_CHUNK = 50;

/**
 * Lets the event loop handle timers and I/O before the next statement: on PGlite a chain of
 * queries never leaves the microtask queue on its own. Two hops, so a poll phase lies in between
 * whichever phase the deploy is running in.
 */
const turn = () => new Promise<void>((resolve) => setImmediate(() => setImmediate(resolve)));

async function inChunks<T>(rows: T[], write: (chunk: T[]) => Promise<unknown>): Promise<void> {
  for (let i = 0; i < rows.length; i += DEPLOY_CHUNK) {
    await write(rows.slice(i, i + DEPLOY_CHUNK));
    await turn();
  }
}

/**
 * Deploys a DAG YAML: validate, then create (or find, by yaml hash) an immutable version with
 * its jobs, resolved input edges and dataset registry entries. Optionally activates it.
 */
export async function deployDag(
  db: Db,
  parser: DagParser,
  orgId: string,
  userId: string | null,
  yaml: string,
  opts: { activate?: boolean; expectName?: string; allowHidden?: boolean } = {},
): Promise<DeployResult> {
  const parsed = await parser.parse(yaml, { allowHidden: opts.allowHidden ?? false });
  const { spec, yamlHash } = parsed;
  if (opts.expectName !== undefined && spec.name !== opts.expectName) {
    throw unprocessable('DAG name does not match the route', [{ path: 'name', message: `is ${JSON.stringify(spec.name)} but the route names ${JSON.stringify(opts.expectName)}` }]);
  }
  return db.tx(async (q) => {
    await q.query('SELECT pg_advisory_xact_lock(hashtext($1))', [`dag:${orgId}:${spec.name}`]);
    const existing = (await q.query<{ id: string }>(FIND_VERSION, [orgId, spec.name, yamlHash])).rows[0];
    let versionId: string;
    let created = false;
    if (existing) {
      versionId = existing.id;
    } else {
      versionId = newId();
      created = true;
      await insertVersion(q, orgId, userId, parsed, yaml, versionId);
    }
    if (opts.activate) await activate(q, orgId, spec.name, versionId);
    const datasets = await versionDatasets(q, versionId);
    const active = await isActive(q, orgId, spec.name, versionId);
    return { dag_name: spec.name, dag_version_id: versionId, yaml_hash: yamlHash, created, active, datasets };
  });
}

async function insertVersion(q: Queryable, orgId: string, userId: string | null, parsed: ParsedDag, yaml: string, versionId: string): Promise<void> {
  const { spec, yamlHash } = parsed;
  const hashes = parsed;
  const problems: Problem[] = [];
  // Inputs that name datasets resolve through the registry (published anywhere in the org, or in this DAG).
  const publishedHere = new Map(spec.publish.map((p) => [p.name, p]));
  const externalNames = new Set<string>();
  for (const j of spec.jobs) for (const e of j.inputs) if ('dataset' in e.from && !publishedHere.has(e.from.dataset)) externalNames.add(e.from.dataset);
  const names = [...new Set([...externalNames, ...publishedHere.keys()])];
  const rows = (await q.query<{ id: string; name: string; kind: string; producer_dag_name: string | null; producer_job_name: string | null; producer_output_index: number | null; storage: Record<string, unknown> | null }>(DATASETS_BY_NAME, [orgId, names])).rows;
  const byName = new Map(rows.map((r) => [r.name, r]));
  spec.jobs.forEach((j, ji) => j.inputs.forEach((e, ei) => {
    if ('dataset' in e.from && !publishedHere.has(e.from.dataset) && !byName.has(e.from.dataset)) {
      problems.push({ path: `jobs[${ji}].inputs[${ei}].from.dataset`, message: `unknown dataset ${JSON.stringify(e.from.dataset)} (not in the registry and not published by this DAG)` });
    }
  }));
  // Input filters on datasets whose schema the registry knows name its columns, with values of their types.
  problems.push(...whereSchemaProblems(spec, byName));
  // A webhook_path is unique in the org among active DAGs (the lock serializes deploys of different DAGs).
  if (spec.jobs.some((j) => j.source?.kind === 'webhook')) {
    await lockWebhookPaths(q, orgId);
    problems.push(...await webhookPathProblems(q, orgId, spec.name, spec.jobs));
  }
  spec.publish.forEach((p) => {
    const prev = byName.get(p.name);
    if (prev && (prev.kind !== 'job_output' || prev.producer_dag_name !== spec.name || prev.producer_job_name !== p.from.job || prev.producer_output_index !== p.from.output)) {
      const owner = prev.kind === 'job_output' ? `${prev.producer_dag_name}.${prev.producer_job_name}[${prev.producer_output_index}]` : `a ${prev.kind} dataset`;
      problems.push({ path: `publish.${p.name}`, message: `dataset ${JSON.stringify(p.name)} is already produced by ${owner}; a dataset has one producer` });
    }
  });
  if (problems.length > 0) throw unprocessable(`DAG ${spec.name} is invalid: ${problems.length} problem(s)`, withLines(yaml, problems), 'DAG_INVALID');
  await turn();

  await q.query(INSERT_VERSION, [versionId, orgId, spec.name, yamlHash, yaml, parsed.specJson ?? JSON.stringify(spec), userId]);
  await turn();
  const outputsOf = new Map<string, Array<{ output_index: number; dataset_uuid: string; dataset_version: string }>>();
  const publishByOutput = new Map(spec.publish.map((p) => [`${p.from.job}#${p.from.output}`, p]));
  const outputRows: Array<{ id: string; version: string; name?: string; job: string; output: number; read_roles: string[]; lineage_hash: string }> = [];
  for (const j of spec.jobs) {
    const outs = [];
    const lineage = hashes.lineageHashes[j.name]!;
    for (let i = 0; i < j.outputs; i++) {
      const uuid = outputDatasetUuid(orgId, spec.name, j.name, i);
      const version = outputDatasetVersion(uuid, lineage);
      const pub = publishByOutput.get(`${j.name}#${i}`);
      outputRows.push({ id: uuid, version, ...(pub ? { name: pub.name } : {}), job: j.name, output: i, read_roles: pub?.read_roles ?? [], lineage_hash: lineage });
      outs.push({ output_index: i, dataset_uuid: uuid, dataset_version: version });
    }
    outputsOf.set(j.name, outs);
  }
  await inChunks(outputRows, (rows) => q.query(UPSERT_OUTPUT_DATASETS, [orgId, spec.name, JSON.stringify(rows)]));
  await inChunks(outputRows, (rows) => q.query(INSERT_DATASET_VERSIONS, [JSON.stringify(rows)]));
  await inChunks(outputRows, (rows) => q.query(INSERT_DVDS, [versionId, JSON.stringify(rows)]));
  const jobRows = spec.jobs.map((j) => {
    const inputs = j.inputs.map((e) => {
      let datasetUuid: string;
      if ('job' in e.from) datasetUuid = outputsOf.get(e.from.job)![e.from.output]!.dataset_uuid;
      else {
        const pub = publishedHere.get(e.from.dataset);
        datasetUuid = pub ? outputsOf.get(pub.from.job)![pub.from.output]!.dataset_uuid : byName.get(e.from.dataset)!.id;
      }
      return { dataset_uuid: datasetUuid, from: e.from, ...(e.where ? { where: e.where } : {}) };
    });
    return jobRow(j, hashes.configHashes[j.name]!, hashes.lineageHashes[j.name]!, inputs, outputsOf.get(j.name)!);
  });
  await inChunks(jobRows, (rows) => q.query(INSERT_JOBS, [orgId, spec.name, versionId, JSON.stringify(rows)]));
  await ensureWebhookSecrets(q, orgId, spec.name, spec.jobs.filter((j) => j.source?.kind === 'webhook').map((j) => j.name));
}

/** The problems with the YAML line of each field (or of its nearest enclosing field), as the validator gives them. */
function withLines(yaml: string, problems: Problem[]): Problem[] {
  let lines: ReadonlyMap<string, number>;
  try {
    lines = parseYamlWithLines(yaml).lines;
  } catch {
    return problems;
  }
  return problems.map((p) => {
    const line = lineFor(lines, p.path);
    return line === undefined ? p : { ...p, line };
  });
}

/** One `jobs` row as a JSON record; absent keys become NULL (or the column default). */
function jobRow(j: JobSpec, configHash: string, lineageHash: string, inputs: Array<{ dataset_uuid: string }>, outputs: Array<{ dataset_uuid: string }>): Record<string, unknown> {
  return {
    id: newId(), name: j.name, activation: j.activation, runtime: j.runtime, operator: j.operator,
    source: j.source, bootstrap: j.bootstrap, execution_strategy: j.execution_strategy, idle_timeout: j.idle_timeout,
    config: j.config, config_hash: configHash, lineage_hash: lineageHash, inputs,
    input_datasets: inputs.map((i) => i.dataset_uuid), output_datasets: outputs.map((o) => o.dataset_uuid), outputs,
    update_strategy: j.update_strategy, unique_key: j.unique_key, scaling: j.scaling, udf: j.udf, secrets: j.secrets,
    timeout_seconds: j.timeout_seconds, heartbeat_timeout_seconds: j.heartbeat_timeout_seconds, max_attempts: j.max_attempts,
  };
}

async function versionDatasets(q: Queryable, versionId: string): Promise<DeployResult['datasets']> {
  const r = await q.query<{ name: string | null; job: string; output: number; dataset_uuid: string; dataset_version: string }>(
    `SELECT d.name, d.producer_job_name AS job, d.producer_output_index AS output, v.dataset_uuid, v.dataset_version
     FROM dag_version_datasets v JOIN datasets d ON d.id = v.dataset_uuid
     WHERE v.dag_version_id = $1 ORDER BY d.producer_job_name, d.producer_output_index`, [versionId]);
  return r.rows;
}

async function isActive(q: Queryable, orgId: string, dag: string, versionId: string): Promise<boolean> {
  const r = await q.query<{ dag_version_id: string }>(`SELECT dag_version_id FROM dag_current_versions WHERE org_id = $1 AND dag_name = $2`, [orgId, dag]);
  return r.rows[0]?.dag_version_id === versionId;
}

/**
 * Atomic cutover: in one transaction, move the DAG's active pointer and every output dataset's
 * current version, swap cron schedules to the new version's jobs, and cancel unfinished tasks
 * of jobs whose outputs can no longer become current (their lineage changed).
 */
async function activate(q: Queryable, orgId: string, dag: string, versionId: string): Promise<void> {
  await assertWebhookPathsFree(q, orgId, dag, versionId);
  await q.query(
    `INSERT INTO dag_current_versions (org_id, dag_name, dag_version_id) VALUES ($1, $2, $3)
     ON CONFLICT (org_id, dag_name) DO UPDATE SET dag_version_id = EXCLUDED.dag_version_id, updated_at = now()`,
    [orgId, dag, versionId]);
  await turn();
  const outputs = (await q.query<{ dataset_uuid: string }>(`SELECT dataset_uuid FROM dag_version_datasets WHERE dag_version_id = $1`, [versionId])).rows.map((r) => r.dataset_uuid);
  await inChunks(outputs, (ids) => q.query(
    `UPDATE datasets d SET current_version = v.dataset_version, updated_at = now()
     FROM dag_version_datasets v WHERE v.dag_version_id = $1 AND d.id = v.dataset_uuid AND v.dataset_uuid = ANY ($2::uuid[])`, [versionId, ids]));
  await q.query(
    `DELETE FROM source_schedules s USING jobs j WHERE s.job_id = j.id AND j.org_id = $1 AND j.dag_name = $2 AND j.dag_version_id <> $3`,
    [orgId, dag, versionId]);
  await turn();
  const crons = await q.query<{ id: string; schedule: string }>(
    `SELECT id, source->>'schedule' AS schedule FROM jobs WHERE dag_version_id = $1 AND activation = 'source' AND source->>'kind' = 'cron'`, [versionId]);
  for (const c of crons.rows) {
    await q.query(
      `INSERT INTO source_schedules (job_id, org_id, schedule, next_fire_at) VALUES ($1, $2, $3, $4) ON CONFLICT (job_id) DO NOTHING`,
      [c.id, orgId, c.schedule, nextTick(c.schedule, new Date())]);
  }
  await turn();
  const stale = await q.query<{ id: string }>(
    `SELECT t.id FROM tasks t JOIN jobs j ON j.id = t.job_id
     WHERE j.org_id = $1 AND j.dag_name = $2 AND j.dag_version_id <> $3
       AND t.status IN ('Queued', 'Running', 'Failed')
       AND j.lineage_hash NOT IN (SELECT lineage_hash FROM jobs WHERE dag_version_id = $3)`, [orgId, dag, versionId]);
  await cancelTasks(q, stale.rows.map((r) => r.id), 'canceled: the DAG version was replaced');
}

export async function activateDag(db: Db, orgId: string, dag: string, versionId: string): Promise<{ dag_name: string; dag_version_id: string }> {
  return db.tx(async (q) => {
    await q.query('SELECT pg_advisory_xact_lock(hashtext($1))', [`dag:${orgId}:${dag}`]);
    const v = await q.query<{ id: string }>(`SELECT id FROM dag_versions WHERE id = $1 AND org_id = $2 AND dag_name = $3`, [versionId, orgId, dag]);
    if (!v.rows[0]) throw notFound(`DAG ${dag} has no version ${versionId}`, 'DAG_VERSION_NOT_FOUND');
    await activate(q, orgId, dag, versionId);
    return { dag_name: dag, dag_version_id: versionId };
  });
}

export async function listVersions(db: Queryable, orgId: string, dag: string): Promise<Array<{ dag_version_id: string; yaml_hash: string; created_at: Date; active: boolean; jobs: number }>> {
  const r = await db.query<{ dag_version_id: string; yaml_hash: string; created_at: Date; active: boolean; jobs: number }>(
    `SELECT v.id AS dag_version_id, v.yaml_hash, v.created_at, (c.dag_version_id IS NOT NULL) AS active,
            (SELECT count(*)::int FROM jobs j WHERE j.dag_version_id = v.id) AS jobs
     FROM dag_versions v LEFT JOIN dag_current_versions c ON c.dag_version_id = v.id
     WHERE v.org_id = $1 AND v.dag_name = $2 ORDER BY v.created_at, v.id`, [orgId, dag]);
  if (r.rows.length === 0) throw notFound(`no DAG named ${dag}`, 'DAG_NOT_FOUND');
  return r.rows;
}

export { TraceError };
