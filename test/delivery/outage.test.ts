/**
 * The Delivery Service when the data database goes away in the middle of a send: the webhook
 * went out, the outcome cannot be written yet. The write is retried while the delivery lease
 * holds, so the send is recorded once the database is back, and is not sent a second time after
 * the lease expires. The cut is made through a TCP proxy the test owns, at the moment the
 * receiver gets the request.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { BACKENDS, freshDbs } from '../support/db.js';
import { pgTarget, startTcpProxy } from '../support/tcp-proxy.js';
import { PostgresDb } from '../../src/db/postgres.js';
import { silentLogger } from '../../src/core/log.js';
import { createAlertRouteStore } from '../../src/alerting/route-store.js';
import { startDelivery } from '../../src/delivery/service/service.js';
import { insertDefinition, insertEvents, startReceiver } from '../alerting/support.js';

if (BACKENDS.includes('postgres')) {
  test('postgres: a data database cut after a send is outlived: the outcome is recorded once and nothing is sent twice', async () => {
    const dbs = await freshDbs('postgres');
    const proxy = await startTcpProxy(pgTarget(dbs.dataUrl));
    const data = new PostgresDb(proxy.urlFor(dbs.dataUrl), { role: 'data', max: 4, timeouts: { connectTimeoutMs: 500 } });
    const rec = await startReceiver((i) => {
      if (i === 0) {
        // The send arrived: the database goes away before the outcome can be written.
        proxy.cut();
        setTimeout(() => proxy.restore(), 1_500);
      }
      return { status: 200 };
    });
    try {
      const org = randomUUID();
      const def = await insertDefinition(dbs.data, org, [{ name: 'webhook', type: 'webhook', url: `${rec.url}/hook` }]);
      const range = await insertEvents(dbs.data, org, [{ alert_definition_id: def, dedupe_key: `k-${randomUUID()}` }]);
      await createAlertRouteStore(dbs.data).route({ org_id: org, task_id: randomUUID(), range: range! });
      const id = (await dbs.data.query<{ id: string }>(`SELECT id FROM alert_deliveries WHERE org_id = $1`, [org])).rows[0]!.id;
      const svc = startDelivery({ data, log: silentLogger, allowHttpLoopback: true, leaseSeconds: 4 }, false);
      assert.equal(await svc.drainOnce(), 1);
      const row = (await dbs.data.query<{ status: string; attempt: number }>(`SELECT status, attempt FROM alert_deliveries WHERE id = $1`, [id])).rows[0]!;
      assert.deepEqual({ ...row }, { status: 'Delivered', attempt: 1 });
      // Past the lease nothing is due again: the receiver saw the delivery once.
      await new Promise((r) => setTimeout(r, 4_500));
      await svc.drainOnce();
      assert.equal(rec.requests.length, 1);
      assert.equal(rec.requests[0]!.headers['idempotency-key'], id);
      const audits = await dbs.data.query<{ n: number }>(`SELECT count(*)::int AS n FROM alert_delivery_attempts WHERE delivery_id = $1`, [id]);
      assert.equal(audits.rows[0]!.n, 1);
      assert.equal(svc.stats.delivered, 1);
      assert.equal(svc.stats.lost_leases, 0);
    } finally {
      await rec.close();
      await data.close();
      await proxy.close();
      await dbs.close();
    }
  });
}
