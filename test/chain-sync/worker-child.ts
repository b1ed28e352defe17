/**
 * A `trace worker`-like child process that also runs cryo_ingest (the registry in this build
 * does not list it yet): pgqueue wake-ups, claims over HTTP, Parquet into OBJECT_ROOT through
 * the RPC gateway. Environment: TRACE_DISPATCHER_URL, TRACE_WORKER_TOKEN,
 * TRACE_QUEUE_DATABASE_URL, OBJECT_ROOT, TRACE_RPC_GATEWAY_URL, WORKER_ID, WORKER_CONCURRENCY
 * (default 2), HEARTBEAT_MS (default 300).
 */
import { openDb } from '../../src/db/open.js';
import { PgQueue } from '../../src/queue/pgqueue.js';
import { operatorRegistry } from '../../src/operators/registry.js';
import { createCryoIngestOperator } from '../../src/operators/cryo_ingest/operator.js';
import { FileObjectStore } from '../../src/objectstore/file.js';
import { startWorker } from '../../src/worker/worker.js';
import { TaskClient } from '../../src/worker/task-client.js';
import { silentLogger } from '../../src/core/log.js';
import type { Operator } from '../../src/operators/types.js';

const env = process.env;
const db = await openDb(env.TRACE_QUEUE_DATABASE_URL!, { max: 4 });
const queue = new PgQueue(db);
const registry = operatorRegistry() as Map<string, Operator>;
registry.set('cryo_ingest', createCryoIngestOperator({ objectStore: new FileObjectStore(env.OBJECT_ROOT!), rpcGatewayUrl: env.TRACE_RPC_GATEWAY_URL!, mode: 'native' }));
const worker = startWorker({
  queue, registry, workerId: env.WORKER_ID ?? 'child', concurrency: Number(env.WORKER_CONCURRENCY ?? 2), log: silentLogger,
  heartbeatMs: Number(env.HEARTBEAT_MS ?? 300), pollWaitMs: 200,
  client: new TaskClient({ baseUrl: env.TRACE_DISPATCHER_URL!, workerToken: env.TRACE_WORKER_TOKEN! }),
});
process.stdout.write('ready\n');
process.on('SIGTERM', () => {
  void worker.stop({ graceMs: 0 }).then(() => queue.close()).then(() => db.close()).then(() => process.exit(0));
});
