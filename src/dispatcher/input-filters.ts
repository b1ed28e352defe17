/**
 * Deploy-time check of input `where` filters (ADR 0007) against the upstream dataset's schema,
 * when the registry knows it:
 *  - a chain-sync dataset: Cryo's column set for its `cryo_dataset_name` (storage.kind chain_sync);
 *  - a buffered dataset: the columns its sink snapshot writes (`alert_events`);
 *  - a registered (external) dataset: the columns DuckDB read at registration (storage.columns).
 * Job outputs declare no schema, so a filter on one is checked only by the DAG validator here and
 * by the files' own schema at every read (the Query Service fails the read; it never shows
 * unfiltered rows).
 */
import type { Problem } from '../core/errors.js';
import { didYouMean } from '../core/suggest.js';
import { filterValueProblem } from '../core/input-filter.js';
import { CRYO_COLUMNS, CRYO_DATASETS, DUCKDB_TYPE, type CryoDataset } from '../operators/cryo_ingest/schema.js';
import { alertEventsDataset } from '../alerting/alert-events.js';
import type { DagSpec } from '../dag/types.js';

export interface RegistryDataset {
  name: string;
  kind: string;
  storage: Record<string, unknown> | null;
}

type Columns = ReadonlyArray<readonly [string, string]>;

const BUFFERED_COLUMNS: ReadonlyMap<string, Columns> = new Map([[alertEventsDataset.name, alertEventsDataset.snapshot!.columns]]);

/** `[column, DuckDB type]` of a registry dataset, or undefined when its schema is not known. */
export function upstreamColumns(d: RegistryDataset): Columns | undefined {
  const storage = d.storage ?? {};
  if (storage.kind === 'chain_sync' && typeof storage.cryo_dataset_name === 'string' && (CRYO_DATASETS as readonly string[]).includes(storage.cryo_dataset_name)) {
    return CRYO_COLUMNS[storage.cryo_dataset_name as CryoDataset].map((c) => [c.name, DUCKDB_TYPE[c.kind]] as const);
  }
  if (d.kind === 'buffered') return BUFFERED_COLUMNS.get(d.name);
  if (d.kind === 'external' && Array.isArray(storage.columns)) {
    const cols = storage.columns.filter((c): c is [string, string] => Array.isArray(c) && typeof c[0] === 'string' && typeof c[1] === 'string');
    return cols.length > 0 ? cols : undefined;
  }
  return undefined;
}

/**
 * Problems of every `where` on a `{dataset}` input whose schema is known: a column the dataset
 * does not have, or a value its column's type cannot hold. Paths as the validator's
 * (`jobs[1].inputs[0].where.sym`, `...where.sym[1]`).
 */
export function whereSchemaProblems(spec: DagSpec, registry: ReadonlyMap<string, RegistryDataset>): Problem[] {
  const problems: Problem[] = [];
  spec.jobs.forEach((j, ji) => j.inputs.forEach((e, ei) => {
    if (!e.where || !('dataset' in e.from)) return;
    const ds = registry.get(e.from.dataset);
    const columns = ds ? upstreamColumns(ds) : undefined;
    if (!columns) return;
    const types = new Map(columns.map(([n, t]) => [n, t]));
    const at = `jobs[${ji}].inputs[${ei}].where`;
    for (const [col, raw] of Object.entries(e.where)) {
      const type = types.get(col);
      if (type === undefined) {
        problems.push({ path: `${at}.${col}`, message: `dataset ${JSON.stringify(e.from.dataset)} has no column '${col}'${didYouMean(col, types.keys())}` });
        continue;
      }
      const values = Array.isArray(raw) ? raw : [raw];
      values.forEach((v, vi) => {
        const problem = filterValueProblem(type, v);
        if (problem) problems.push({ path: Array.isArray(raw) ? `${at}.${col}[${vi}]` : `${at}.${col}`, message: problem });
      });
    }
  }));
  return problems;
}
