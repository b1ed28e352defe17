import { tmpdir } from 'node:os';
import type { Db } from '../../src/db/db.js';
import type { Queue } from '../../src/queue/queue.js';
import { PgQueue } from '../../src/queue/pgqueue.js';
import { createCapabilityIssuer } from '../../src/auth/capability.js';
import { createUserVerifier, mintDevUserToken } from '../../src/auth/user.js';
import { operatorCatalog, operatorRegistry } from '../../src/operators/registry.js';
import { Dispatcher } from '../../src/dispatcher/dispatcher.js';
import type { DispatcherDeps } from '../../src/dispatcher/service.js';
import type { CapabilityIssuer } from '../../src/auth/capability.js';
import type { OperatorCatalog } from '../../src/dag/catalog-types.js';
import type { Logger } from '../../src/core/log.js';
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
 * The Dispatcher dependencies every hand-built test Dispatcher shares: the test secrets, a dev
 * user verifier, and the issuer's own verifier; the caller supplies what differs.
 */
export function testDispatcherDeps(o: {
  state: Db;
  queue: Queue;
  sendInTx?: DispatcherDeps['sendInTx'];
  issuer: CapabilityIssuer;
  catalog: OperatorCatalog;
  executors: DispatcherDeps['executors'];
  orgId: string;
  settings?: Partial<DispatcherSettings>;
  log?: Logger;
  probes?: DispatcherDeps['probes'];
  datasetStorage?: DispatcherDeps['datasetStorage'];
}): DispatcherDeps {
  return {
    state: o.state,
    queue: o.queue,
    ...(o.sendInTx ? { sendInTx: o.sendInTx } : {}),
    issuer: o.issuer,
    capabilityVerifier: o.issuer.verifier(),
    userVerifier: createUserVerifier({ mode: 'dev', secret: TEST_SECRETS.user }),
    workerToken: TEST_SECRETS.worker,
    catalog: o.catalog,
    allowHiddenOperators: true,
    executors: o.executors,
    orgId: o.orgId,
    settings: defaultSettings({ ...FAST, ...o.settings }),
    log: o.log ?? silentLogger,
    ...(o.probes ? { probes: o.probes } : {}),
    // Tests register Parquet they write in their own temp folders.
    datasetStorage: o.datasetStorage ?? { roots: [tmpdir()] },
  };
}

/**
 * A Dispatcher built by hand on given databases, so tests can restart it, break its queue or
 * run two of them against the same state.
 */
export async function buildDispatcher(state: Db, opts: { queue?: Queue; inTx?: boolean; settings?: Partial<DispatcherSettings>; probes?: DispatcherDeps['probes']; log?: Logger; datasetStorage?: DispatcherDeps['datasetStorage'] } = {}) {
  const { org_id } = await bootstrapDeployment(state, { adminSub: 'admin' });
  const issuer = await createCapabilityIssuer({ alg: 'HS256', current: { kid: 'test', secret: TEST_SECRETS.capability } });
  const pg = new PgQueue(state);
  const queue = opts.queue ?? pg;
  const registry = operatorRegistry({ includeTestOperators: true });
  let url: string | undefined;
  const executor = new InProcessExecutor({ dispatcherUrl: () => url, registry, log: silentLogger, workerToken: TEST_SECRETS.worker });
  const d = new Dispatcher(testDispatcherDeps({
    state,
    queue,
    ...(opts.inTx !== false && !opts.queue ? { sendInTx: (q, name, bodies) => pg.sendInTx(q, name, bodies) } : {}),
    issuer,
    catalog: operatorCatalog({ includeTestOperators: true }),
    executors: { dispatcher: executor, lambda: executor },
    orgId: org_id,
    ...(opts.settings ? { settings: opts.settings } : {}),
    ...(opts.probes ? { probes: opts.probes } : {}),
    ...(opts.log ? { log: opts.log } : {}),
    ...(opts.datasetStorage ? { datasetStorage: opts.datasetStorage } : {}),
  }));
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
    async stop(o: { graceMs?: number } = {}) {
      await d.stop(o);
      await pg.close();
    },
  };
}
