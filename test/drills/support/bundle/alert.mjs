// Drill alert evaluation (Node UDF): one critical alert event per alert definition for the tick
// cursor that triggered the task, uploaded with the SDK and published through /v1/task/buffer-publish.
// The dedupe key comes from the data only (definition and cursor), so a retried attempt writes
// nothing twice. `config.params.poison_cursor` makes that tick's batch carry an invalid severity
// ("xnfo", four bytes like its repair "info"): the poison buffer batch of the drills.
import { publishBuffer, upload } from './trace-udf.mjs';

export async function evaluate(inv) {
  const cursor = Number(inv.inputs?.[0]?.cursor ?? inv.trigger?.cursor);
  if (!Number.isSafeInteger(cursor)) throw new Error('the tick has no integer cursor');
  const poison = inv.config?.params?.poison_cursor;
  const events = (inv.alert_definitions ?? []).map((def) => ({
    alert_definition_id: def.id,
    dedupe_key: `drill:${def.id}:${cursor}`,
    event_time: new Date().toISOString(),
    severity: cursor === poison ? 'xnfo' : 'critical',
    payload: { cursor, rule: def.name },
  }));
  if (events.length === 0) return { outputs: [{ alerts: 0 }] };
  const body = `${events.map((e) => JSON.stringify(e)).join('\n')}\n`;
  // A signed upload inside the attempt's buffer prefix (through the task channel in the sandbox).
  const batch = await upload('alerts.jsonl', body);
  await publishBuffer({ batch_uri: batch.uri, batch_size_bytes: batch.bytes, dedupe_scope: 'alert_events' });
  return { outputs: [{ alerts: events.length }] };
}
