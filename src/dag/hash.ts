/**
 * Hashes that make deploys idempotent and rematerialization scoped.
 *  - yamlHash: sha256 of the exact YAML bytes; `(org, dag_name, yaml_hash)` identifies a version.
 *  - jobConfigHash: the materialization-affecting fields of one job.
 *  - lineageHashes: a job's config hash folded with its upstream lineage, so editing a job changes
 *    its hash and every hash downstream of it, and no hash upstream of it.
 */
import { canonicalJson, sha256Hex } from '../core/ids.js';
import { topoOrder } from './graph.js';
import { isDatasetRef, type DagSpec, type JobSpec } from './types.js';

export { topoOrder } from './graph.js';

/** sha256 hex of the YAML exactly as received (a string is hashed as its UTF-8 bytes). */
export function yamlHash(text: string | Uint8Array): string {
  return sha256Hex(typeof text === 'string' ? Buffer.from(text, 'utf8') : text);
}

/**
 * sha256 over canonical JSON of the fields that change what a job writes: runtime, operator,
 * config, update_strategy, unique_key, execution_strategy, udf. Scheduling knobs (timeouts,
 * attempts, scaling, secrets, source triggers) and the job's name do not count.
 */
export function jobConfigHash(job: JobSpec): string {
  const material = {
    runtime: job.runtime,
    operator: job.operator,
    config: job.config,
    update_strategy: job.update_strategy ?? null,
    unique_key: job.unique_key ?? null,
    execution_strategy: job.execution_strategy ?? null,
    udf: job.udf ?? null,
  };
  return sha256Hex(`trace.job_config.v1\n${canonicalJson(material)}`);
}

/**
 * Lineage hash per job name. Each input contributes, in declared order (input indexes are part
 * of the wiring contract, so reordering inputs counts as a change): the upstream job's lineage
 * hash and output index, or the dataset name for `{dataset}` inputs, plus the `where` filter.
 */
export function lineageHashes(spec: DagSpec): Map<string, string> {
  const byName = new Map(spec.jobs.map((j) => [j.name, j]));
  const out = new Map<string, string>();
  for (const name of topoOrder(spec)) {
    const job = byName.get(name)!;
    const inputs = job.inputs.map((input) => {
      const where = input.where ?? null;
      if (isDatasetRef(input.from)) return { dataset: input.from.dataset, where };
      return { upstream: out.get(input.from.job) ?? null, output: input.from.output, where };
    });
    out.set(name, sha256Hex(`trace.job_lineage.v1\n${canonicalJson({ config: jobConfigHash(job), inputs })}`));
  }
  return out;
}
