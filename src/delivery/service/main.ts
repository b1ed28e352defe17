/**
 * `trace delivery`: the Delivery Service as its own process (one or several instances).
 *
 * Environment: TRACE_DATA_DATABASE_URL (required, postgres://), TRACE_DELIVERY_ALLOW_HTTP_LOOPBACK
 * (development only: http:// to loopback receivers), TRACE_DELIVERY_DENY_CIDRS (comma-separated
 * extra denied ranges, e.g. the VPC CIDR when it is public space), TRACE_DELIVERY_CONCURRENCY
 * (default 8). Applies pending data migrations at start.
 */
import { readEnv, shutdownGraceMsFromEnv } from '../../core/config.js';
import { createLogger, type Logger } from '../../core/log.js';
import { openDb } from '../../db/open.js';
import { migrate } from '../../db/migrate.js';
import { allowHttpLoopbackFromEnv, blockListFromCidrs } from '../net/index.js';
import { startDelivery, type DeliveryHandle } from './service.js';

export { startDelivery, type DeliveryHandle, type DeliveryOptions, type DeliveryStats } from './service.js';

export async function runDeliveryProcess(penv: NodeJS.ProcessEnv, opts: { log?: Logger } = {}): Promise<{ delivery: DeliveryHandle; stop(): Promise<void> }> {
  const env = readEnv(penv);
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
    log.info({ owner: delivery.owner, concurrency }, 'delivery service started');
    return {
      delivery,
      async stop() {
        await delivery.stop();
        await data.close();
      },
    };
  } catch (e) {
    await data.close().catch(() => undefined);
    throw e;
  }
}
