// Large-transfer alert, evaluated over one granted Parquet dataset (Node UDF).
//
// For each alert definition handed in by the platform (`alert_definitions`), reads the rows whose
// `value` reaches the definition's `condition.min_value` through the Query Service, writes one
// alert event per row as a JSONL batch into this attempt's buffer prefix (`upload`: a signed
// upload from /v1/task/credentials), and publishes the batch pointer with /v1/task/buffer-publish.
//
// Idempotency: dedupe_key = "<definition id>:<tx_hash>", derived from the data only, so retries
// and re-runs of the same input produce the same keys and the sink writes each event once.
import { publishBuffer, query, upload } from './trace-udf.mjs';

export async function evaluate(inv) {
  const input = inv.inputs[0];
  if (!input) throw new Error('this job needs an input dataset');
  const events = [];
  for (const def of inv.alert_definitions ?? []) {
    const min = Number(def.condition?.min_value ?? inv.config?.params?.min_value ?? 1000);
    if (!Number.isFinite(min)) throw new Error(`definition ${def.id}: condition.min_value must be a number`);
    const { rows } = await query(
      `SELECT block_number, tx_hash, value, block_time FROM dataset WHERE value >= ${min} ORDER BY block_number, tx_hash`,
      { dataset_uuid: input.dataset_uuid, limit: 10000 },
    );
    for (const [blockNumber, txHash, value, blockTime] of rows) {
      events.push({
        alert_definition_id: def.id,
        dedupe_key: `${def.id}:${txHash}`,
        event_time: blockTime,
        severity: value >= min * 10 ? 'critical' : 'warning',
        payload: { chain_id: Number(inv.config?.params?.chain_id ?? 143), block_number: Number(blockNumber), tx_hash: txHash, value, rule: def.name },
      });
    }
  }
  if (events.length === 0) return { outputs: [{ alerts: 0 }] };
  const body = `${events.map((e) => JSON.stringify(e)).join('\n')}\n`;
  const batch = await upload('alerts.jsonl', body);
  await publishBuffer({ batch_uri: batch.uri, batch_size_bytes: batch.bytes, dedupe_scope: 'alert_events' });
  console.log(`published ${events.length} alert events`); // stderr (run() redirects console.log)
  return { outputs: [{ alerts: events.length }] };
}
