import { readFile, rm } from 'node:fs/promises';
import { DEFAULT_PORTS, liteJsonPath, readEnv } from '../../core/config.js';
import type { LiteInfo } from '../../lite/lite.js';
import { pidAlive } from '../../lite/lock.js';
import type { Command } from '../args.js';
import { CliError, UsageError, intOption, listenOption } from '../args.js';

// Services are imported inside the command that runs them, so `trace --help` or an admin
// command never loads databases, DuckDB, Fastify or the AWS SDK.

import { drainingExit, exitSoon, serveUntilSignal, untilSignal } from '../serve.js';

export const liteUp: Command = {
  name: 'lite up',
  summary: 'Run the whole platform in one process on embedded Postgres under TRACE_HOME (or on real Postgres when TRACE_STATE_DATABASE_URL and TRACE_DATA_DATABASE_URL are set). One instance per home; stop it with Ctrl-C or trace lite down.',
  usage: 'trace lite up [--home DIR] [--workers N] [--demo] [--port-base N]   (--port-base: gateway N, dispatcher N+1, query N+2, RPC gateway N+3, worker/sink/delivery ops N+4..N+6; 0 = any free ports; without it each listener follows TRACE_<SERVICE>_LISTEN)',
  options: { home: { type: 'string' }, workers: { type: 'string' }, demo: { type: 'boolean' }, 'port-base': { type: 'string' } },
  async run({ values, positionals }) {
    if (positionals.length > 0) throw new UsageError(`unexpected "${positionals[0]!.slice(0, 40)}"`);
    const workers = intOption(values.workers, 'workers', 0) ?? 2;
    const base = intOption(values['port-base'], 'port-base', 0);
    if (base !== undefined && base > 65529) throw new UsageError('--port-base must be at most 65529');
    if (values.home) process.env.TRACE_HOME = String(values.home);
    const [{ createLogger }, { startLite, liteSummary }, { portsFromBase }] = await Promise.all([import('../../core/log.js'), import('../../lite/lite.js'), import('../../lite/listeners.js')]);
    const ports = base === undefined ? undefined : portsFromBase(base);
    const log = createLogger('trace-lite');
    const lite = await startLite({ workers, log, demo: values.demo === true, ...(ports ? { ports } : {}), ...(values.home ? { home: String(values.home) } : {}) });
    process.stdout.write(liteSummary(lite.info, workers));
    const sig = await untilSignal();
    log.info({ signal: sig }, 'shutting down: no new claims; waiting for running tasks');
    drainingExit('lite up');
    await lite.stop();
    exitSoon(0);
  },
};

async function readLiteJson(values: Record<string, unknown>): Promise<{ home: string; path: string; info: LiteInfo }> {
  const home = values.home ? readEnv({ TRACE_HOME: String(values.home) }).home : readEnv().home;
  const path = liteJsonPath(home);
  try {
    return { home, path, info: JSON.parse(await readFile(path, 'utf8')) as LiteInfo };
  } catch {
    throw new CliError('NOT_RUNNING', `no trace lite up is running on ${home} (no ${path})`);
  }
}

export const liteInfo: Command = {
  name: 'lite info',
  summary: 'Show what the running trace lite up wrote to lite.json: URLs, tokens, and the demo\'s chain, receiver and alert. --get KEY prints one value (e.g. demo.webhook_url).',
  usage: 'trace lite info [--home DIR] [--get KEY] [--json]',
  options: { home: { type: 'string' }, get: { type: 'string' }, json: { type: 'boolean' } },
  async run({ values, positionals }) {
    if (positionals.length > 0) throw new UsageError(`unexpected "${positionals[0]!.slice(0, 40)}"`);
    const { info } = await readLiteJson(values);
    if (values.get !== undefined) {
      let v: unknown = info;
      for (const k of String(values.get).split('.')) v = v !== null && typeof v === 'object' ? (v as Record<string, unknown>)[k] : undefined;
      if (v === undefined) throw new CliError('NOT_FOUND', `lite.json has no ${String(values.get)}`);
      process.stdout.write(typeof v === 'string' || values.json !== true ? `${typeof v === 'string' ? v : JSON.stringify(v)}\n` : `${JSON.stringify(v)}\n`);
      return;
    }
    if (values.json) { process.stdout.write(`${JSON.stringify(info, null, 2)}\n`); return; }
    const { liteSummary } = await import('../../lite/summary.js');
    process.stdout.write(liteSummary(info));
  },
};

export const liteDown: Command = {
  name: 'lite down',
  summary: 'Stop the trace lite up running on TRACE_HOME (the pid in its lite.json): sends SIGTERM and waits until it has exited.',
  usage: 'trace lite down [--home DIR] [--timeout SECONDS] [--json]',
  options: { home: { type: 'string' }, timeout: { type: 'string' }, json: { type: 'boolean' } },
  async run({ values, positionals }) {
    if (positionals.length > 0) throw new UsageError(`unexpected "${positionals[0]!.slice(0, 40)}"`);
    const timeoutS = intOption(values.timeout, 'timeout', 1) ?? 60;
    const { home, path, info } = await readLiteJson(values);
    const say = (state: string, text: string) => process.stdout.write(values.json ? `${JSON.stringify({ home, pid: info.pid, state })}\n` : `${text}\n`);
    if (!Number.isSafeInteger(info.pid) || info.pid <= 0 || !pidAlive(info.pid)) {
      await rm(path, { force: true });
      say('not_running', `trace lite up on ${home} is not running (pid ${info.pid} has exited); removed its stale lite.json`);
      return;
    }
    process.kill(info.pid, 'SIGTERM');
    const deadline = Date.now() + timeoutS * 1000;
    while (pidAlive(info.pid)) {
      if (Date.now() > deadline) throw new CliError('STILL_RUNNING', `pid ${info.pid} is still running ${timeoutS} s after SIGTERM; it may be finishing in-flight work (try again, or kill ${info.pid})`);
      await new Promise((r) => setTimeout(r, 100));
    }
    say('stopped', `stopped trace lite up on ${home} (pid ${info.pid})`);
  },
};

export const migrateCmd: Command = {
  name: 'migrate',
  summary: 'Apply pending migrations to the state and data databases, and to TRACE_QUEUE_DATABASE_URL when it is a database of its own (idempotent; records what it applied).',
  usage: 'trace migrate [--json]',
  options: { json: { type: 'boolean' } },
  async run({ values }) {
    const env = readEnv();
    const [{ openDatabases }, { migrate }] = await Promise.all([import('../../db/open.js'), import('../../db/migrate.js')]);
    const dbs = await openDatabases({
      home: env.home,
      ...(env.stateDatabaseUrl ? { stateUrl: env.stateDatabaseUrl } : {}),
      ...(env.dataDatabaseUrl ? { dataUrl: env.dataDatabaseUrl } : {}),
      ...(env.queueDatabaseUrl ? { queueUrl: env.queueDatabaseUrl } : {}),
    });
    try {
      const reports = [await migrate(dbs.state, 'state'), await migrate(dbs.data, 'data')];
      // A queue database of its own gets the pgqueue tables (the state database has them already).
      if (dbs.queue !== dbs.state) reports.push(await migrate(dbs.queue, 'queue'));
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
  summary: 'Run the Dispatcher service (needs TRACE_STATE_DATABASE_URL, TRACE_WORKER_TOKEN, TRACE_TASK_CAPABILITY_SECRET and a user-token setting). SIGTERM drains it: no new leases, running tasks get TRACE_SHUTDOWN_GRACE_SECONDS, the rest are released.',
  usage: 'trace dispatcher [--listen HOST:PORT | --host H --port P]   (default TRACE_DISPATCHER_LISTEN, else 127.0.0.1:8081; port 0 = a free port)',
  options: { listen: { type: 'string' }, host: { type: 'string' }, port: { type: 'string' }, 'include-test-operators': { type: 'boolean' } },
  async run({ values }) {
    const at = (await listenOption('dispatcher', values, { host: '127.0.0.1', port: DEFAULT_PORTS.dispatcher }))!;
    const { runDispatcherProcess } = await import('../../dispatcher/main.js');
    const handle = await runDispatcherProcess(process.env, {
      ...at,
      ...(values['include-test-operators'] ? { includeTestOperators: true } : {}),
    });
    return serveUntilSignal('dispatcher', () => handle.stop());
  },
};

export const workerCmd: Command = {
  name: 'worker',
  summary: 'Run a worker: receives task wake-ups, claims from the Dispatcher, runs platform operators. Needs only the queue, TRACE_DISPATCHER_URL and TRACE_WORKER_TOKEN. SIGTERM stops claiming, lets running tasks finish within TRACE_SHUTDOWN_GRACE_SECONDS and releases the rest.',
  usage: 'trace worker [--concurrency N] [--worker-id ID] [--batch-max N] [--listen HOST:PORT]   (--batch-max: most tasks per claim, complete or heartbeat request to the Dispatcher, 1 to 100, default 100; batches form only under load; 1 uses the per-task routes. --listen or TRACE_WORKER_LISTEN: the ops listener, /healthz /readyz /metrics; off by default)',
  options: { concurrency: { type: 'string' }, 'worker-id': { type: 'string' }, 'batch-max': { type: 'string' }, listen: { type: 'string' }, 'include-test-operators': { type: 'boolean' } },
  async run({ values }) {
    const argv: string[] = [];
    if (values.listen !== undefined) argv.push('--listen', String(values.listen));
    if (values.concurrency !== undefined) argv.push('--concurrency', String(values.concurrency));
    if (values['worker-id'] !== undefined) argv.push('--worker-id', String(values['worker-id']));
    if (values['batch-max'] !== undefined) argv.push('--batch-max', String(values['batch-max']));
    if (values['include-test-operators']) argv.push('--include-test-operators');
    const { runWorkerProcess } = await import('../../worker/main.js');
    await runWorkerProcess(process.env, argv);
    exitSoon(0);
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
    const { mintDevUserToken } = await import('../../auth/user.js');
    process.stdout.write(`${await mintDevUserToken(secret, String(values.sub), ttl ? { ttlSeconds: ttl } : {})}\n`);
  },
};

export const gatewayCmd: Command = {
  name: 'gateway',
  summary: 'Run the Gateway, the public entry point: user JWT auth, route allowlist, rate limits and CORS in front of the Dispatcher and the Query Service (needs TRACE_USER_JWT_SECRET or TRACE_OIDC_*).',
  usage: 'trace gateway [--listen HOST:PORT | --host H --port P]   (default TRACE_GATEWAY_LISTEN, else 127.0.0.1:8080; port 0 = a free port)',
  options: { listen: { type: 'string' }, host: { type: 'string' }, port: { type: 'string' } },
  async run({ values }) {
    const at = (await listenOption('gateway', values, { host: '127.0.0.1', port: DEFAULT_PORTS.gateway }))!;
    const { runGatewayProcess } = await import('../../gateway/main.js');
    const handle = await runGatewayProcess(process.env, at);
    process.stderr.write(`gateway listening on ${handle.url}\n`);
    return serveUntilSignal('gateway', () => handle.stop());
  },
};

export const deliveryCmd: Command = {
  name: 'delivery',
  summary: 'Run the Delivery Service: leases due alert deliveries and sends webhooks safely (needs TRACE_DATA_DATABASE_URL).',
  usage: 'trace delivery [--listen HOST:PORT]   (--listen or TRACE_DELIVERY_LISTEN: the ops listener, /healthz /readyz /metrics; off by default)',
  options: { listen: { type: 'string' } },
  async run({ values }) {
    const { runDeliveryProcess } = await import('../../delivery/service/main.js');
    const h = await runDeliveryProcess(process.env, values.listen !== undefined ? { listen: String(values.listen) } : {});
    if (h.opsUrl) process.stderr.write(`delivery ops listening on ${h.opsUrl}\n`);
    return serveUntilSignal('delivery', () => h.stop());
  },
};

export const rpcGatewayCmd: Command = {
  name: 'rpc-gateway',
  summary: 'Run the RPC egress gateway: the only path from workers to chain RPC providers, one pool per TRACE_RPC_POOL_<NAME>_URL.',
  usage: 'trace rpc-gateway [--listen HOST:PORT | --host H --port P]   (default TRACE_RPC_GATEWAY_LISTEN, else 127.0.0.1:8083; port 0 = a free port)',
  options: { listen: { type: 'string' }, host: { type: 'string' }, port: { type: 'string' } },
  async run({ values }) {
    const pools = readEnv().rpcPools;
    if (Object.keys(pools).length === 0) throw new UsageError('no RPC pools: set TRACE_RPC_POOL_<NAME>_URL (comma-separated provider URLs)');
    const at = (await listenOption('rpcGateway', values, { host: '127.0.0.1', port: DEFAULT_PORTS.rpcGateway }))!;
    const [{ startRpcGateway }, { createLogger }] = await Promise.all([import('../../rpc-gateway/gateway.js'), import('../../core/log.js')]);
    const gw = await startRpcGateway({ pools, log: createLogger('rpc-gateway'), ...at });
    process.stderr.write(`rpc gateway listening on ${gw.url} with pools ${Object.keys(pools).join(', ')}\n`);
    return serveUntilSignal('rpc-gateway', () => gw.close());
  },
};
