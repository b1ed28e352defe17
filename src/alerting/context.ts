/**
 * Trusted evaluation context for `alert_evaluate` runs (specs/operators/alert_evaluate.md: "the
 * task payload MUST include enough information to evaluate without direct database
 * credentials"). The UDF executor merges it into the invocation as `alert_definitions`:
 * `[{id, name, condition}]` of the enabled, not deleted definitions of the task's org named by
 * `config.alert_definition_id` / `config.alert_definition_ids` (all of the org's when neither is
 * set, at most 1000). Channels (destinations, PII) are never handed to user code.
 */
import type { Db } from '../db/db.js';
import { UUID_RE } from '../core/ids.js';
import type { TaskPayload } from '../worker/payload.js';

export function configuredDefinitionIds(config: Record<string, unknown>): string[] {
  const ids: string[] = [];
  if (typeof config.alert_definition_id === 'string') ids.push(config.alert_definition_id);
  if (Array.isArray(config.alert_definition_ids)) for (const x of config.alert_definition_ids) if (typeof x === 'string') ids.push(x);
  return [...new Set(ids.filter((x) => UUID_RE.test(x)))];
}

export function alertEvaluateContext(data: Db, operators: readonly string[] = ['alert_evaluate']): (task: TaskPayload) => Promise<Record<string, unknown> | undefined> {
  return async (task) => {
    if (!operators.includes(task.operator)) return undefined;
    const ids = configuredDefinitionIds(task.config);
    const r = await data.query<{ id: string; name: string; condition: Record<string, unknown> }>(
      `SELECT id, name, condition FROM alert_definitions
       WHERE org_id = $1 AND enabled AND deleted_at IS NULL AND (cardinality($2::uuid[]) = 0 OR id = ANY ($2::uuid[]))
       ORDER BY created_at, id LIMIT 1000`,
      [task.org_id, ids],
    );
    return { alert_definitions: r.rows.map((d) => ({ id: d.id, name: d.name, condition: d.condition })) };
  };
}
