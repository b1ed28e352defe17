/**
 * `trace delivery`: the Delivery Service as its own process (one or several instances).
 *
 * Environment: TRACE_DATA_DATABASE_URL (required, postgres://), TRACE_DELIVERY_ALLOW_HTTP_LOOPBACK
 * (development only: http:// to loopback receivers), TRACE_DELIVERY_DENY_CIDRS (comma-separated
 * extra denied ranges, e.g. the VPC CIDR when it is public space), TRACE_DELIVERY_CONCURRENCY
 * (default 8), TRACE_DELIVERY_LISTEN or `--listen` (host:port of the ops listener: /healthz,
 * /readyz, /metrics; off unless set). Applies pending data migrations at start.
 */
import { readEnv, shutdownGraceMsFromEnv } from '../../core/config.js';
import { createLogger, type Logger } from '../../core/log.js';
import { openDb } from '../../db/open.js';
import { migrate } from '../../db/migrate.js';
import { allowHttpLoopbackFromEnv, blockListFromCidrs } from '../net/index.js';
import { startDelivery, type DeliveryHandle } from './service.js';
import type { Registry } from 'prom-client';
import { resolveListen, serviceRegistry, startOpsListener } from '../../core/ops.js';
import { pingDb, type Queryable } from '../../db/db.js';
import { deliveryMetrics } from './metrics.js';

export { startDelivery, type DeliveryHandle, type DeliveryOptions, type DeliveryStats } from './service.js';

/** The Delivery Service's metrics registry (`trace delivery --listen`, and the one of `trace lite up`). */
export function deliveryRegistry(delivery: DeliveryHandle, data: Queryable): Registry {
  const registry = serviceRegistry('delivery');
  deliveryMetrics(registry, { stats: delivery.stats, data });
  return registry;
}

export async function runDeliveryProcess(penv: NodeJS.ProcessEnv, opts: { log?: Logger; listen?: string } = {}): Promise<{ delivery: DeliveryHandle; opsUrl?: string; stop(): Promise<void> }> {
  const env = readEnv(penv);
  const address = resolveListen('delivery', penv, opts.listen !== undefined ? { listen: opts.listen } : {}, undefined);
  if (!env.dataDatabaseUrl) throw new Error('missing configuration: TRACE_DATA_DATABASE_URL');
  if (!/^postgres(ql)?:\/\//.test(env.dataDatabaseUrl)) {
    throw new Error('TRACE_DATA_DATABASE_URL must be a postgres:// URL: the embedded database belongs to the trace lite process (use startDelivery there)');
  }
  const concurrencyRaw = penv.TRACE_DELIVERY_CONCURRENCY?.trim();
  const concurrency = concurrencyRaw ? Number(concurrencyRaw) : 8;
  if (!Number.isSafeInteger(concurrency) || concurrency < 1 || concurrency > 256) throw new Error('TRACE_DELIVERY_CONCURRENCY must be an integer from 1 to 256');
  const deny = penv.TRACE_DELIVERY_DENY_CIDRS?.trim();
  const denied = deny ? blockListFromCidrs(deny.split(',')) : undefined;
  const log = opts.log ?? createLogger('delivery');
  const data = await openDb(env.dataDatabaseUrl, { max: Math.min(concurrency + 2, 20), applicationName: 'trace-delivery', role: 'data' });
  try {
    await migrate(data, 'data');
    const loopback = allowHttpLoopbackFromEnv(penv);
    if (loopback) log.warn('TRACE_DELIVERY_ALLOW_HTTP_LOOPBACK is on: http:// loopback receivers are allowed (development only)');
    const delivery = startDelivery({ data, log, concurrency, allowHttpLoopback: loopback, stopGraceMs: shutdownGraceMsFromEnv(penv), ...(denied ? { send: { deniedAddresses: denied } } : {}) });
    const ops = address ? await startOpsListener({
      service: 'delivery', address, log, registry: deliveryRegistry(delivery, data),
      checks: { data_database: (ms) => pingDb(data, ms) },
    }).catch(async (e: unknown) => { await delivery.stop(); throw e; }) : undefined;
    log.info({ owner: delivery.owner, concurrency, ...(ops ? { ops_url: ops.url } : {}) }, 'delivery service started');
    return {
      delivery,
      ...(ops ? { opsUrl: ops.url } : {}),
      async stop() {
        await ops?.stop();
        await delivery.stop();
        await data.close();
      },
    };
  } catch (e) {
    await data.close().catch(() => undefined);
    throw e;
  }
}
