/**
 * `trace sink`: the buffer sink as its own process.
 *
 * Environment: TRACE_DATA_DATABASE_URL (required), TRACE_QUEUE_DATABASE_URL (pgqueue; defaults to
 * TRACE_STATE_DATABASE_URL, where the queue tables live), TRACE_OBJECT_STORE_URL (default
 * `$TRACE_HOME/objects`), TRACE_DISPATCHER_URL (default http://127.0.0.1:8081),
 * TRACE_WORKER_TOKEN (required: the sink reports dataset events on a worker-only route),
 * TRACE_SINK_MAX_RECEIVES (default 10), TRACE_SINK_LISTEN or `--listen` (host:port of the ops
 * listener: /healthz, /readyz, /metrics; off unless set). It applies pending data migrations at start.
 */
import { DEFAULT_PORTS, DEFAULTS, readEnv } from '../core/config.js';
import { createLogger, type Logger } from '../core/log.js';
import { openDb } from '../db/open.js';
import { migrate } from '../db/migrate.js';
import { PgQueue } from '../queue/pgqueue.js';
import { openObjectStore } from '../objectstore/open.js';
import { httpDatasetEvents } from './events.js';
import { startSink, type SinkHandle } from './sink.js';
import type { Registry } from 'prom-client';
import { resolveListen, serviceRegistry, startOpsListener } from '../core/ops.js';
import { pingDb, type Queryable } from '../db/db.js';
import type { Queue } from '../queue/queue.js';
import { sinkMetrics } from './metrics.js';

export { startSink, type SinkHandle, type SinkOptions } from './sink.js';

/** The sink's metrics registry (`trace sink --listen`, and the sink of `trace lite up`). */
export function sinkRegistry(sink: SinkHandle, queue: Queue, queueDb?: Queryable): Registry {
  const registry = serviceRegistry('sink');
  sinkMetrics(registry, { stats: sink.stats, queue, ...(queueDb ? { queueDb } : {}) });
  return registry;
}

export async function runSinkProcess(penv: NodeJS.ProcessEnv, opts: { log?: Logger; listen?: string } = {}): Promise<{ sink: SinkHandle; opsUrl?: string; stop(): Promise<void> }> {
  const env = readEnv(penv);
  const address = resolveListen('sink', penv, opts.listen !== undefined ? { listen: opts.listen } : {}, undefined);
  const queueUrl = env.queueDatabaseUrl ?? env.stateDatabaseUrl;
  const missing: string[] = [];
  if (!env.dataDatabaseUrl) missing.push('TRACE_DATA_DATABASE_URL');
  if (!queueUrl) missing.push('TRACE_QUEUE_DATABASE_URL (or TRACE_STATE_DATABASE_URL)');
  if (!env.workerToken) missing.push('TRACE_WORKER_TOKEN');
  if (missing.length > 0) throw new Error(`missing configuration: ${missing.join(', ')}`);
  for (const [name, url] of [['TRACE_DATA_DATABASE_URL', env.dataDatabaseUrl!], ['TRACE_QUEUE_DATABASE_URL', queueUrl!]] as const) {
    if (!/^postgres(ql)?:\/\//.test(url)) throw new Error(`${name} must be a postgres:// URL: the embedded database belongs to the trace lite process (use startSink there)`);
  }
  const maxReceivesRaw = penv.TRACE_SINK_MAX_RECEIVES?.trim();
  const maxReceives = maxReceivesRaw ? Number(maxReceivesRaw) : DEFAULTS.bufferDlqMaxReceives;
  if (!Number.isSafeInteger(maxReceives) || maxReceives < 1) throw new Error('TRACE_SINK_MAX_RECEIVES must be a positive integer');
  const log = opts.log ?? createLogger('sink');
  const data = await openDb(env.dataDatabaseUrl!, { max: 5, applicationName: 'trace-sink', role: 'data' });
  const queueDb = await openDb(queueUrl!, { max: 3, applicationName: 'trace-sink-queue', role: 'queue' });
  try {
    await migrate(data, 'data');
    const store = openObjectStore(env.objectStoreUrl, env.home);
    const queue = new PgQueue(queueDb);
    const sink = startSink({
      data,
      queue,
      store,
      events: httpDatasetEvents({ dispatcherUrl: env.dispatcherUrl ?? `http://127.0.0.1:${DEFAULT_PORTS.dispatcher}`, workerToken: env.workerToken! }),
      log,
      maxReceives,
    });
    const ops = address ? await startOpsListener({
      service: 'sink', address, log, registry: sinkRegistry(sink, queue, queueDb),
      checks: { data_database: (ms) => pingDb(data, ms), queue: (ms) => pingDb(queueDb, ms) },
    }).catch(async (e: unknown) => { await sink.stop(); throw e; }) : undefined;
    log.info({ store: store.rootUrl.startsWith('s3://') ? 's3' : 'file', max_receives: maxReceives, ...(ops ? { ops_url: ops.url } : {}) }, 'sink started');
    return {
      sink,
      ...(ops ? { opsUrl: ops.url } : {}),
      async stop() {
        await ops?.stop();
        await sink.stop();
        await queue.close();
        await queueDb.close();
        await data.close();
      },
    };
  } catch (e) {
    await queueDb.close().catch(() => undefined);
    await data.close().catch(() => undefined);
    throw e;
  }
}
