import type { LiteInfo } from './lite.js';

/** What `trace lite up` prints on stdout once everything listens (lite.json holds the same). */
export function liteSummary(i: LiteInfo, workers?: number): string {
  const lines = [
    `Trace is up (${i.profile} profile, home ${i.home}, pid ${i.pid})`,
    `  gateway      ${i.gateway_url}`,
    `  console      ${i.gateway_url}/console (sign in with the admin token)`,
    `  dispatcher   ${i.dispatcher_url}`,
    `  query        ${i.query_url}`,
    ...(workers === undefined ? [] : [`  workers      ${workers} in process`]),
    `  udf sandbox  ${i.udf_sandbox === 'unsafe-none' ? 'UNSAFE-NONE: UDFs run without any isolation (TRACE_UDF_SANDBOX=unsafe-none)' : i.udf_sandbox === 'unavailable' ? `unavailable, UDF tasks will fail: ${i.udf_sandbox_reason ?? ''}` : i.udf_sandbox}`,
    `  worker token ${i.worker_token}`,
    `  admin token  ${i.admin_token}`,
    `  written to   ${i.home}/lite.json`,
  ];
  if (i.demo) {
    const d = i.demo;
    lines.push(
      `Demo:`,
      `  dev chain    ${d.chain_url} (chain ${d.chain_id}, token ${d.token})`,
      `  RPC gateway  ${d.rpc_gateway_url} (pool ${d.rpc_pool})`,
      `  chain sync   ${d.chain_sync} follows the head into ${d.datasets.join(', ')}`,
      `  alert        ${d.alert_id} (DAG ${d.alert_dag}) delivers to ${d.webhook_url}`,
      `               (plain-http loopback webhooks are allowed in this process for the demo receiver)`,
      `Try:`,
      `  trace chain-sync status --watch`,
      `  trace query --dataset ${d.datasets[2] ?? 'demo_logs'} "SELECT count(*) AS transfers FROM dataset"`,
      `  trace alerts deliveries ${d.alert_id}`,
    );
  } else {
    lines.push('Try: trace dag deploy examples/dags/hello_ranges.yaml --activate');
  }
  lines.push('Stop: Ctrl-C, or trace lite down');
  return `${lines.join('\n')}\n`;
}
