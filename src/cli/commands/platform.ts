import { readEnv } from '../../core/config.js';
import { createLogger } from '../../core/log.js';
import { openDatabases } from '../../db/open.js';
import { migrate } from '../../db/migrate.js';
import { startLite } from '../../lite/lite.js';
import { mintDevUserToken } from '../../auth/user.js';
import { runWorkerProcess } from '../../worker/main.js';
import { runDispatcherProcess } from '../../dispatcher/main.js';
import { runGatewayProcess } from '../../gateway/main.js';
import type { Command } from '../args.js';
import { UsageError, intOption } from '../args.js';

/** Resolves when SIGINT or SIGTERM arrives. */
function untilSignal(): Promise<string> {
  return new Promise((resolve) => {
    const on = (s: string) => () => resolve(s);
    process.once('SIGINT', on('SIGINT'));
    process.once('SIGTERM', on('SIGTERM'));
  });
}

export const liteUp: Command = {
  name: 'lite up',
  summary: 'Run the whole platform in one process on embedded Postgres under TRACE_HOME (or on real Postgres when TRACE_STATE_DATABASE_URL and TRACE_DATA_DATABASE_URL are set).',
  usage: 'trace lite up [--home DIR] [--workers N] [--demo]',
  options: { home: { type: 'string' }, workers: { type: 'string' }, demo: { type: 'boolean' } },
  async run({ values }) {
    const workers = intOption(values.workers, 'workers', 0) ?? 2;
    if (values.home) process.env.TRACE_HOME = String(values.home);
    const log = createLogger('trace-lite');
    const lite = await startLite({ workers, log, demo: values.demo === true, ...(values.home ? { home: String(values.home) } : {}) });
    const i = lite.info;
    process.stderr.write(
      `Trace is up (${i.profile} profile, home ${i.home})\n` +
      `  gateway      ${i.gateway_url}\n` +
      `  dispatcher   ${i.dispatcher_url}\n` +
      `  query        ${i.query_url}\n` +
      `  workers      ${workers} in process\n` +
      `  worker token ${i.worker_token}\n` +
      `  admin token  ${i.admin_token}\n` +
      `  written to   ${i.home}/lite.json\n` +
      `Try: trace dag deploy examples/dags/hello_ranges.yaml --activate\n`,
    );
    const sig = await untilSignal();
    log.info({ signal: sig }, 'shutting down');
    await lite.stop();
  },
};

export const migrateCmd: Command = {
  name: 'migrate',
  summary: 'Apply pending migrations to the state and data databases (idempotent; records what it applied).',
  usage: 'trace migrate [--json]',
  options: { json: { type: 'boolean' } },
  async run({ values }) {
    const env = readEnv();
    const dbs = await openDatabases({
      home: env.home,
      ...(env.stateDatabaseUrl ? { stateUrl: env.stateDatabaseUrl } : {}),
      ...(env.dataDatabaseUrl ? { dataUrl: env.dataDatabaseUrl } : {}),
    });
    try {
      const reports = [await migrate(dbs.state, 'state'), await migrate(dbs.data, 'data')];
      if (values.json) process.stdout.write(`${JSON.stringify(reports, null, 2)}\n`);
      else for (const r of reports) {
        process.stdout.write(`${r.database}: at version ${r.current}${r.applied.length ? `, applied ${r.applied.map((a) => `${a.version} (${a.name})`).join(', ')}` : ', nothing to apply'}\n`);
      }
    } finally {
      await dbs.close();
    }
  },
};

export const dispatcherCmd: Command = {
  name: 'dispatcher',
  summary: 'Run the Dispatcher service (needs TRACE_STATE_DATABASE_URL, TRACE_WORKER_TOKEN, TRACE_TASK_CAPABILITY_SECRET and a user-token setting).',
  usage: 'trace dispatcher [--host H] [--port P]',
  options: { host: { type: 'string' }, port: { type: 'string' } },
  async run({ values }) {
    const port = intOption(values.port, 'port', 0);
    const handle = await runDispatcherProcess(process.env, { ...(values.host ? { host: String(values.host) } : {}), ...(port !== undefined ? { port } : {}) });
    await untilSignal();
    await handle.stop();
  },
};

export const workerCmd: Command = {
  name: 'worker',
  summary: 'Run a worker: receives task wake-ups, claims from the Dispatcher, runs platform operators. Needs only the queue, TRACE_DISPATCHER_URL and TRACE_WORKER_TOKEN.',
  usage: 'trace worker [--concurrency N] [--worker-id ID]',
  options: { concurrency: { type: 'string' }, 'worker-id': { type: 'string' }, 'include-test-operators': { type: 'boolean' } },
  async run({ values }) {
    const argv: string[] = [];
    if (values.concurrency !== undefined) argv.push('--concurrency', String(values.concurrency));
    if (values['worker-id'] !== undefined) argv.push('--worker-id', String(values['worker-id']));
    if (values['include-test-operators']) argv.push('--include-test-operators');
    await runWorkerProcess(process.env, argv);
  },
};

export const tokenDevUser: Command = {
  name: 'token dev-user',
  summary: 'Mint a development user token (HS256, TRACE_USER_JWT_SECRET or the secret of the local TRACE_HOME).',
  usage: 'trace token dev-user --sub SUB [--ttl SECONDS]',
  options: { sub: { type: 'string' }, ttl: { type: 'string' } },
  async run({ values }) {
    if (!values.sub) throw new UsageError('--sub is required');
    const env = readEnv();
    let secret = env.userJwtSecret;
    if (!secret) {
      const { loadOrCreateSecrets } = await import('../../lite/secrets.js');
      secret = (await loadOrCreateSecrets(env.home)).user_jwt_secret;
    }
    const ttl = intOption(values.ttl, 'ttl', 1);
    process.stdout.write(`${await mintDevUserToken(secret, String(values.sub), ttl ? { ttlSeconds: ttl } : {})}\n`);
  },
};

export const gatewayCmd: Command = {
  name: 'gateway',
  summary: 'Run the Gateway, the public entry point: user JWT auth, route allowlist, rate limits and CORS in front of the Dispatcher and the Query Service (needs TRACE_USER_JWT_SECRET or TRACE_OIDC_*).',
  usage: 'trace gateway [--host H] [--port P]',
  options: { host: { type: 'string' }, port: { type: 'string' } },
  async run({ values }) {
    const port = intOption(values.port, 'port', 0);
    const handle = await runGatewayProcess(process.env, { ...(values.host ? { host: String(values.host) } : {}), ...(port !== undefined ? { port } : {}) });
    process.stderr.write(`gateway listening on ${handle.url}\n`);
    await untilSignal();
    await handle.stop();
  },
};

export const deliveryCmd: Command = {
  name: 'delivery',
  summary: 'Run the Delivery Service: leases due alert deliveries and sends webhooks safely (needs TRACE_DATA_DATABASE_URL).',
  usage: 'trace delivery',
  async run() {
    const { runDeliveryProcess } = await import('../../delivery/service/main.js');
    const h = await runDeliveryProcess(process.env);
    await untilSignal();
    await h.stop();
  },
};

export const rpcGatewayCmd: Command = {
  name: 'rpc-gateway',
  summary: 'Run the RPC egress gateway: the only path from workers to chain RPC providers, one pool per TRACE_RPC_POOL_<NAME>_URL.',
  usage: 'trace rpc-gateway [--host H] [--port P]',
  options: { host: { type: 'string' }, port: { type: 'string' } },
  async run({ values }) {
    const { startRpcGateway } = await import('../../rpc-gateway/gateway.js');
    const pools = readEnv().rpcPools;
    if (Object.keys(pools).length === 0) throw new UsageError('no RPC pools: set TRACE_RPC_POOL_<NAME>_URL (comma-separated provider URLs)');
    const port = intOption(values.port, 'port', 0);
    const gw = await startRpcGateway({ pools, log: createLogger('rpc-gateway'), ...(values.host ? { host: String(values.host) } : {}), ...(port !== undefined ? { port } : {}) });
    process.stderr.write(`rpc gateway listening on ${gw.url} with pools ${Object.keys(pools).join(', ')}\n`);
    await untilSignal();
    await gw.close();
  },
};
