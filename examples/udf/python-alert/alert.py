"""Large-transfer alert, evaluated over one granted Parquet dataset (Python UDF).

Same contract as the Node example: one alert event per row whose `value` reaches the
definition's `condition.min_value`, written as a JSONL batch into this attempt's buffer prefix
with trace_udf.upload (a signed upload), then published with /v1/task/buffer-publish. dedupe_key
is "<definition id>:<tx_hash>" (data only), so retries never duplicate events.
"""

import json

import trace_udf


def evaluate(inv):
    inputs = inv.get("inputs") or []
    if not inputs:
        raise ValueError("this job needs an input dataset")
    params = (inv.get("config") or {}).get("params") or {}
    events = []
    for d in inv.get("alert_definitions") or []:
        minimum = float((d.get("condition") or {}).get("min_value", params.get("min_value", 1000)))
        res = trace_udf.query(
            "SELECT block_number, tx_hash, value, block_time FROM dataset WHERE value >= %r ORDER BY block_number, tx_hash" % minimum,
            dataset_uuid=inputs[0]["dataset_uuid"],
            limit=10000,
        )
        for block_number, tx_hash, value, block_time in res["rows"]:
            events.append({
                "alert_definition_id": d["id"],
                "dedupe_key": "%s:%s" % (d["id"], tx_hash),
                "event_time": block_time,
                "severity": "critical" if value >= minimum * 10 else "warning",
                "payload": {"chain_id": int(params.get("chain_id", 143)), "block_number": int(block_number), "tx_hash": tx_hash, "value": value, "rule": d.get("name")},
            })
    if not events:
        return {"outputs": [{"alerts": 0}]}
    data = ("\n".join(json.dumps(e, separators=(",", ":")) for e in events) + "\n").encode("utf-8")
    batch = trace_udf.upload("alerts.jsonl", data)
    trace_udf.publish_buffer(batch["uri"], batch["bytes"], "alert_events")
    print("published %d alert events" % len(events))  # stderr while run() is active
    return {"outputs": [{"alerts": len(events)}]}
