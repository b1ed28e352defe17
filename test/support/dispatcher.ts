import type { Db } from '../../src/db/db.js';
import type { Queue } from '../../src/queue/queue.js';
import { PgQueue } from '../../src/queue/pgqueue.js';
import { createCapabilityIssuer } from '../../src/auth/capability.js';
import { createUserVerifier, mintDevUserToken } from '../../src/auth/user.js';
import { operatorCatalog, operatorRegistry } from '../../src/operators/registry.js';
import { Dispatcher } from '../../src/dispatcher/dispatcher.js';
import { defaultSettings, type DispatcherSettings } from '../../src/dispatcher/settings.js';
import { bootstrapDeployment } from '../../src/dispatcher/identity.js';
import { InProcessExecutor } from '../../src/dispatcher/executors.js';
import { silentLogger } from '../../src/core/log.js';
import { FAST } from './platform.js';

export const TEST_SECRETS = {
  worker: 'test-worker-token-0123456789abcdef',
  capability: 'c'.repeat(48),
  user: 'u'.repeat(48),
};

/**
 * A Dispatcher built by hand on given databases, so tests can restart it, break its queue or
 * run two of them against the same state.
 */
export async function buildDispatcher(state: Db, opts: { queue?: Queue; inTx?: boolean; settings?: Partial<DispatcherSettings> } = {}) {
  const { org_id } = await bootstrapDeployment(state, { adminSub: 'admin' });
  const issuer = await createCapabilityIssuer({ alg: 'HS256', current: { kid: 'test', secret: TEST_SECRETS.capability } });
  const pg = new PgQueue(state);
  const queue = opts.queue ?? pg;
  const registry = operatorRegistry({ includeTestOperators: true });
  let url: string | undefined;
  const executor = new InProcessExecutor({ dispatcherUrl: () => url, registry, log: silentLogger });
  const d = new Dispatcher({
    state,
    queue,
    ...(opts.inTx !== false && !opts.queue ? { sendInTx: (q, name, bodies) => pg.sendInTx(q, name, bodies) } : {}),
    issuer,
    capabilityVerifier: issuer.verifier(),
    userVerifier: createUserVerifier({ mode: 'dev', secret: TEST_SECRETS.user }),
    workerToken: TEST_SECRETS.worker,
    catalog: operatorCatalog({ includeTestOperators: true }),
    allowHiddenOperators: true,
    executors: { dispatcher: executor, lambda: executor },
    orgId: org_id,
    settings: defaultSettings({ ...FAST, ...opts.settings }),
    log: silentLogger,
  });
  return {
    dispatcher: d,
    pgQueue: pg,
    orgId: org_id,
    adminToken: await mintDevUserToken(TEST_SECRETS.user, 'admin'),
    async start(o: { loops?: boolean } = {}) {
      await d.start({ host: '127.0.0.1', port: 0, ...(o.loops === false ? { loops: false } : {}) });
      url = d.url;
      return d.url!;
    },
    async stop() {
      await d.stop();
      await pg.close();
    },
  };
}
