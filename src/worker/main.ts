/**
 * `trace worker`: the queue-woken worker process.
 *
 * Process wiring only. This is the one file under src/worker/ allowed to import src/db (to open
 * the pgqueue database); the import-boundary test skips it. The database it opens is the QUEUE
 * database (TRACE_QUEUE_DATABASE_URL), never the state database: a worker must not hold
 * state-database credentials, so this command does not fall back to TRACE_STATE_DATABASE_URL.
 * (When pgqueue lives in the state database server, give workers a role limited to the queue
 * tables.) SQS-backed workers are wired here once the SQS profile has its environment variables.
 *
 * Environment: TRACE_DISPATCHER_URL (default http://127.0.0.1:8081), TRACE_WORKER_TOKEN
 * (required), TRACE_QUEUE_DATABASE_URL (required, postgres://). Flags: --concurrency N
 * (default 4), --worker-id ID (default `${hostname}:${pid}`), --batch-max N (default 100: most
 * tasks per claim, complete or heartbeat request; 1 uses the per-task routes only),
 * --include-test-operators, --listen HOST:PORT or TRACE_WORKER_LISTEN (the ops listener:
 * /healthz, /readyz, /metrics; off unless set, so several workers on one machine never compete
 * for a port).
 */
import { hostname } from 'node:os';
import { TraceError } from '../core/errors.js';
import { DEFAULT_PORTS, readEnv, shutdownGraceMsFromEnv } from '../core/config.js';
import { createLogger } from '../core/log.js';
import { openDb } from '../db/open.js';
import { createAlertRouteStore } from '../alerting/route-store.js';
import { openQueue } from '../queue/open.js';
import { TASK_QUEUE } from '../queue/queue.js';
import { operatorRegistry } from '../operators/registry.js';
import { startWorker } from './worker.js';
import { BATCH_MAX, workerTaskClient } from './batching.js';
import { resolveListen, serviceRegistry, startOpsListener } from '../core/ops.js';
import { pingDb } from '../db/db.js';
import { workerMetrics } from './metrics.js';

export interface WorkerArgs {
  concurrency: number;
  workerId?: string;
  /** Most tasks per batch request (default BATCH_MAX); 1 = the per-task routes only. */
  batchMax?: number;
  includeTestOperators: boolean;
  /** `--listen host:port` of the ops listener. */
  listen?: string;
}

const usage = (msg: string) => new TraceError(400, 'USAGE', msg);

/** Parses `trace worker` flags; throws a one-line USAGE error on bad input. */
export function parseWorkerArgs(argv: readonly string[]): WorkerArgs {
  const out: WorkerArgs = { concurrency: 4, includeTestOperators: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const [flag, inline] = a.startsWith('--') && a.includes('=') ? [a.slice(0, a.indexOf('=')), a.slice(a.indexOf('=') + 1)] : [a, undefined];
    const value = () => {
      const v = inline ?? argv[++i];
      if (v === undefined || v === '') throw usage(`${flag} needs a value`);
      return v;
    };
    switch (flag) {
      case '--concurrency': {
        const v = value();
        const n = Number(v);
        if (!/^\d+$/.test(v) || n < 1 || n > 256) throw usage('--concurrency must be an integer from 1 to 256');
        out.concurrency = n;
        break;
      }
      case '--batch-max': {
        const v = value();
        const n = Number(v);
        if (!/^\d+$/.test(v) || n < 1 || n > BATCH_MAX) throw usage(`--batch-max must be an integer from 1 to ${BATCH_MAX}`);
        out.batchMax = n;
        break;
      }
      case '--worker-id':
        out.workerId = value();
        break;
      case '--listen':
        out.listen = value();
        break;
      case '--include-test-operators':
        out.includeTestOperators = true;
        break;
      default:
        throw usage(`unknown argument "${a.slice(0, 60)}" (trace worker [--concurrency N] [--worker-id ID] [--batch-max N] [--listen HOST:PORT])`);
    }
  }
  return out;
}

/**
 * Runs the worker until SIGINT/SIGTERM (or `opts.signal`), then stops gracefully: no new
 * claims, running tasks get the grace period, the rest are abandoned to their leases.
 */
export async function runWorkerProcess(
  env: NodeJS.ProcessEnv = process.env,
  argv: readonly string[] = [],
  opts: { signal?: AbortSignal; stopGraceMs?: number; onOpsListening?: (url: string) => void } = {},
): Promise<void> {
  const args = parseWorkerArgs(argv);
  const cfg = readEnv(env);
  const dispatcherUrl = cfg.dispatcherUrl ?? `http://127.0.0.1:${DEFAULT_PORTS.dispatcher}`;
  if (!cfg.workerToken) throw usage('TRACE_WORKER_TOKEN is required (the worker token the Dispatcher was started with)');
  const queueUrl = cfg.queueDatabaseUrl;
  if (!queueUrl) {
    throw usage('TRACE_QUEUE_DATABASE_URL is required (a postgres:// URL of the pgqueue database; workers never use the state database URL)');
  }
  if (!queueUrl.startsWith('postgres://') && !queueUrl.startsWith('postgresql://')) {
    throw usage('TRACE_QUEUE_DATABASE_URL must be a postgres:// URL; the embedded database belongs to one process (use `trace lite up --workers N`)');
  }

  const workerId = args.workerId ?? `${hostname()}:${process.pid}`;
  const log = createLogger('worker');
  // The worker's connection only receives and acks wake-ups: losing one in a crash is harmless.
  const closers: Array<() => Promise<void>> = [];
  const db = await openDb(queueUrl, { max: Math.min(10, args.concurrency + 2), applicationName: 'trace-worker', synchronousCommit: 'off', role: 'queue' });
  try {
    const queue = openQueue({ kind: 'pgqueue', db });
    // Batch requests by default; `--batch-max 1` keeps to the per-task routes.
    const batchMax = args.batchMax ?? BATCH_MAX;
    const client = workerTaskClient({ baseUrl: dispatcherUrl, workerToken: cfg.workerToken, batchMax, log });
    // Platform operators that write Postgres data (alert_route) run only on workers given it.
    const dataDb = cfg.dataDatabaseUrl ? await openDb(cfg.dataDatabaseUrl, { max: 4, applicationName: 'trace-worker', role: 'data' }) : undefined;
    if (dataDb) closers.push(() => dataDb.close());
    const registry = operatorRegistry({
      includeTestOperators: args.includeTestOperators,
      ...(dataDb ? { alertRouteStore: createAlertRouteStore(dataDb) } : {}),
    });
    const worker = startWorker({
      queue,
      client,
      workerId,
      concurrency: args.concurrency,
      registry,
      log,
      queueName: TASK_QUEUE,
      stopGraceMs: opts.stopGraceMs ?? shutdownGraceMsFromEnv(env),
    });
    const address = resolveListen('worker', env, args.listen !== undefined ? { listen: args.listen } : {}, undefined);
    if (address) {
      const opsRegistry = serviceRegistry('worker');
      workerMetrics(opsRegistry, [worker], queue);
      const ops = await startOpsListener({
        service: 'worker', address, log, registry: opsRegistry,
        checks: { queue: (ms) => pingDb(db, ms), ...(dataDb ? { data_database: (ms: number) => pingDb(dataDb, ms) } : {}) },
      }).catch(async (e: unknown) => { await worker.stop({ graceMs: 0 }); throw e; });
      closers.unshift(() => ops.stop());
      log.info({ ops_url: ops.url }, 'worker ops listener');
      opts.onOpsListening?.(ops.url);
    }
    log.info({ dispatcher: dispatcherUrl, worker_id: workerId, batch_max: batchMax, operators: [...registry.keys()] }, 'trace worker running');

    await new Promise<void>((resolve) => {
      const done = () => {
        process.off('SIGINT', done);
        process.off('SIGTERM', done);
        opts.signal?.removeEventListener('abort', done);
        resolve();
      };
      process.on('SIGINT', done);
      process.on('SIGTERM', done);
      if (opts.signal?.aborted) done();
      else opts.signal?.addEventListener('abort', done, { once: true });
    });
    log.info('stopping: no new claims; waiting for running tasks');
    await worker.stop();
    await queue.close();
  } finally {
    for (const close of closers) await close().catch(() => undefined);
    await db.close();
  }
}
