/**
 * The Delivery Service against real local receivers (http on 127.0.0.1 with the development
 * loopback switch on): one request per delivery with `Idempotency-Key: <delivery_id>`; drill 8
 * (a failing receiver gets bounded retries, then a terminal failure, all on one row with one
 * key); redirects and private destinations refused without following; deleted definitions
 * canceled; a lost lease cannot overwrite; several instances never send one delivery twice.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { BACKENDS, freshDbs, type TestDbs } from '../support/db.js';
import { silentLogger } from '../../src/core/log.js';
import { createAlertRouteStore } from '../../src/alerting/route-store.js';
import { startDelivery } from '../../src/delivery/service/service.js';
import { leaseDue, recordOutcome } from '../../src/delivery/service/store.js';
import { insertDefinition, insertEvents, startReceiver, type Receiver } from './support.js';

const FAST_BACKOFF = { baseMs: 5, maxMs: 40 };

for (const backend of BACKENDS) {
  describe(`delivery service (${backend})`, () => {
    let dbs: TestDbs;
    const receivers: Receiver[] = [];
    before(async () => { dbs = await freshDbs(backend); });
    after(async () => {
      for (const r of receivers) await r.close();
      await dbs.close();
    });
    const receiver = async (respond?: Receiver['respond']) => {
      const r = await startReceiver(respond);
      receivers.push(r);
      return r;
    };
    /** One definition with the given channels, one event, routed: returns the delivery rows. */
    const setup = async (channels: Array<Record<string, unknown>>, payload: Record<string, unknown> = { n: 1 }) => {
      const org = randomUUID();
      const def = await insertDefinition(dbs.data, org, channels);
      const range = await insertEvents(dbs.data, org, [{ alert_definition_id: def, dedupe_key: `k-${randomUUID()}`, payload }]);
      await createAlertRouteStore(dbs.data).route({ org_id: org, task_id: randomUUID(), range: range! });
      const rows = (await dbs.data.query<{ id: string }>(`SELECT id FROM alert_deliveries WHERE org_id = $1 ORDER BY channel`, [org])).rows;
      return { org, def, ids: rows.map((r) => r.id) };
    };
    const row = async (id: string) => (await dbs.data.query<any>(`SELECT * FROM alert_deliveries WHERE id = $1`, [id])).rows[0];
    const attempts = async (id: string) => (await dbs.data.query<any>(`SELECT * FROM alert_delivery_attempts WHERE delivery_id = $1 ORDER BY attempt`, [id])).rows;
    const drainUntil = async (svc: { drainOnce(): Promise<number> }, done: () => Promise<boolean>, ms = 15_000) => {
      const deadline = Date.now() + ms;
      while (!(await done())) {
        if (Date.now() > deadline) throw new Error('timed out draining deliveries');
        await svc.drainOnce();
        await new Promise((r) => setTimeout(r, 5));
      }
    };

    it('delivers once with Idempotency-Key = delivery_id and delivery_id in the body', async () => {
      const rec = await receiver();
      const { ids, def } = await setup([{ name: 'webhook', type: 'webhook', url: `${rec.url}/hook?token=abc`, headers: { 'X-Receiver-Secret': 'shh' } }], { chain_id: 143, tx_hash: '0x01' });
      const svc = startDelivery({ data: dbs.data, log: silentLogger, allowHttpLoopback: true, backoff: FAST_BACKOFF }, false);
      await drainUntil(svc, async () => (await row(ids[0]!)).status !== 'Pending');
      const d = await row(ids[0]!);
      assert.equal(d.status, 'Delivered');
      assert.equal(d.attempt, 1);
      assert.equal(d.last_status_code, 200);
      assert.ok(d.delivered_at);
      assert.equal(rec.requests.length, 1);
      const req = rec.requests[0]!;
      assert.equal(req.method, 'POST');
      assert.equal(req.url, '/hook?token=abc');
      assert.equal(req.headers['idempotency-key'], ids[0]);
      assert.equal(req.headers['x-receiver-secret'], 'shh');
      assert.equal(req.body.delivery_id, ids[0]);
      assert.equal(req.body.alert_definition_id, def);
      assert.equal(req.body.severity, 'critical');
      assert.deepEqual(req.body.payload, { chain_id: 143, tx_hash: '0x01' });
      const a = await attempts(ids[0]!);
      assert.equal(a.length, 1);
      assert.equal(a[0].outcome, 'delivered');
      assert.equal(a[0].address, '127.0.0.1');
      // Nothing due any more: further rounds send nothing.
      await svc.drainOnce();
      assert.equal(rec.requests.length, 1);
    });

    it('drill 8: a failing receiver gets bounded retries, then a terminal failure on the same row and key', async () => {
      const rec = await receiver(() => ({ status: 503 }));
      const { ids } = await setup([{ type: 'webhook', name: 'webhook', url: `${rec.url}/down` }]);
      const svc = startDelivery({ data: dbs.data, log: silentLogger, allowHttpLoopback: true, backoff: FAST_BACKOFF }, false);
      await drainUntil(svc, async () => (await row(ids[0]!)).status !== 'Pending');
      const d = await row(ids[0]!);
      assert.equal(d.status, 'Failed');
      assert.equal(d.attempt, 12, 'operations.md: 12 attempts');
      assert.equal(d.last_status_code, 503);
      assert.match(d.error_message, /gave up after 12 attempts/);
      assert.equal(rec.requests.length, 12);
      assert.ok(rec.requests.every((r) => r.headers['idempotency-key'] === ids[0] && r.body.delivery_id === ids[0]));
      assert.deepEqual(rec.requests.map((r) => r.body.attempt), Array.from({ length: 12 }, (_, i) => i + 1));
      const a = await attempts(ids[0]!);
      assert.equal(a.length, 12);
      assert.ok(a.every((x: any) => x.outcome === 'retryable' && x.status_code === 503));
      assert.equal(Number((await dbs.data.query<{ n: number }>(`SELECT count(*)::int AS n FROM alert_deliveries WHERE alert_event_id = $1`, [d.alert_event_id])).rows[0]!.n), 1, 'retries never add rows');
      await svc.drainOnce();
      assert.equal(rec.requests.length, 12, 'terminal: no more sends');
    });

    it('recovers after transient failures (one row, one key) and backs off between attempts', async () => {
      const rec = await receiver((i) => (i < 2 ? { status: 500 } : { status: 204 }));
      const { ids } = await setup([{ type: 'webhook', name: 'webhook', url: `${rec.url}/flaky` }]);
      const svc = startDelivery({ data: dbs.data, log: silentLogger, allowHttpLoopback: true, backoff: { baseMs: 200, maxMs: 400 } }, false);
      await svc.drainOnce();
      const after1 = await row(ids[0]!);
      assert.equal(after1.status, 'Pending');
      assert.ok(new Date(after1.next_attempt_at).getTime() > Date.now() + 50, 'the next attempt waits for the backoff');
      await svc.drainOnce();
      assert.equal(rec.requests.length, 1, 'not due yet: nothing sent');
      await drainUntil(svc, async () => (await row(ids[0]!)).status !== 'Pending');
      assert.equal((await row(ids[0]!)).status, 'Delivered');
      assert.equal(rec.requests.length, 3);
      assert.equal(new Set(rec.requests.map((r) => r.headers['idempotency-key'])).size, 1);
    });

    it('refuses a redirect (to the metadata address) without following it', async () => {
      const rec = await receiver(() => ({ status: 302, headers: { location: 'http://169.254.169.254/latest/meta-data/' } }));
      const { ids } = await setup([{ type: 'webhook', name: 'webhook', url: `${rec.url}/redirect` }]);
      const svc = startDelivery({ data: dbs.data, log: silentLogger, allowHttpLoopback: true, backoff: FAST_BACKOFF }, false);
      await drainUntil(svc, async () => (await row(ids[0]!)).status !== 'Pending');
      const d = await row(ids[0]!);
      assert.equal(d.status, 'Failed');
      assert.equal(d.attempt, 1, 'terminal at once');
      assert.match(d.error_message, /redirect/);
      assert.equal(rec.requests.length, 1);
    });

    it('refuses forbidden destinations at send time too (stored literals, DNS answers), sending nothing', async () => {
      const rec = await receiver();
      const cases = [
        { url: 'http://169.254.169.254/latest/meta-data/', lookup: undefined },
        { url: 'https://10.0.0.7/hook', lookup: undefined },
        { url: 'https://hooks.example.com/hook', lookup: async () => [{ address: '10.0.0.7', family: 4 }] },
        { url: 'https://hooks.example.com/hook', lookup: async () => [{ address: '93.184.216.34', family: 4 }, { address: '169.254.169.254', family: 4 }] },
        { url: 'http://127.0.0.1:1/loopback-without-switch', lookup: undefined, noLoopback: true },
      ];
      for (const c of cases) {
        const { ids } = await setup([{ type: 'webhook', name: 'webhook', url: c.url }]);
        const svc = startDelivery({
          data: dbs.data, log: silentLogger, allowHttpLoopback: !c.noLoopback, backoff: FAST_BACKOFF,
          ...(c.lookup ? { send: { lookup: c.lookup } } : {}),
        }, false);
        await drainUntil(svc, async () => (await row(ids[0]!)).status !== 'Pending');
        const d = await row(ids[0]!);
        assert.equal(d.status, 'Failed', c.url);
        assert.equal(d.attempt, 1, c.url);
        assert.match(d.error_message, /forbidden|https|refused/, c.url);
        assert.ok(!d.error_message.includes('/hook'), 'the URL path is never recorded');
      }
      assert.equal(rec.requests.length, 0);
    });

    it('cancels deliveries of a deleted definition without sending', async () => {
      const rec = await receiver();
      const { ids, def, org } = await setup([{ type: 'webhook', name: 'webhook', url: `${rec.url}/x` }]);
      await dbs.data.query(`UPDATE alert_definitions SET deleted_at = now() WHERE id = $1 AND org_id = $2`, [def, org]);
      const svc = startDelivery({ data: dbs.data, log: silentLogger, allowHttpLoopback: true }, false);
      await drainUntil(svc, async () => (await row(ids[0]!)).status !== 'Pending');
      assert.equal((await row(ids[0]!)).status, 'Canceled');
      assert.equal(rec.requests.length, 0);
    });

    it('a lease that ran out cannot overwrite the newer attempt', async () => {
      const rec = await receiver();
      const { ids } = await setup([{ type: 'webhook', name: 'webhook', url: `${rec.url}/x` }]);
      // Instance A leases for 0.2 s and "crashes" mid-send.
      const leasedA = await leaseDue(dbs.data, 'A', 100, 0.2);
      const mine = leasedA.find((d) => d.id === ids[0])!;
      assert.equal(mine.attempt, 1);
      await new Promise((r) => setTimeout(r, 300));
      const svc = startDelivery({ data: dbs.data, log: silentLogger, allowHttpLoopback: true, owner: 'B' }, false);
      await drainUntil(svc, async () => (await row(ids[0]!)).status !== 'Pending');
      const d = await row(ids[0]!);
      assert.equal(d.status, 'Delivered');
      assert.equal(d.attempt, 2);
      const kept = await recordOutcome(dbs.data, mine, 'A', { status: 'Failed', error: 'late', audit: { started_at: new Date(), outcome: 'terminal' } });
      assert.equal(kept, false);
      assert.equal((await row(ids[0]!)).status, 'Delivered');
      assert.equal(rec.requests.length, 1);
    });

    if (backend === 'postgres') {
      it('several instances at once never send one delivery twice (SKIP LOCKED + lease)', async () => {
        const rec = await receiver();
        const org = randomUUID();
        const def = await insertDefinition(dbs.data, org, [{ name: 'a', type: 'webhook', url: `${rec.url}/a` }, { name: 'b', type: 'webhook', url: `${rec.url}/b` }]);
        const range = await insertEvents(dbs.data, org, Array.from({ length: 30 }, (_, i) => ({ alert_definition_id: def, dedupe_key: `many-${i}` })));
        await createAlertRouteStore(dbs.data).route({ org_id: org, task_id: randomUUID(), range: range! });
        const svcs = [1, 2, 3].map((i) => startDelivery({ data: dbs.data, log: silentLogger, allowHttpLoopback: true, owner: `inst-${i}`, batchSize: 7, concurrency: 4, pollMs: 20 }));
        try {
          const deadline = Date.now() + 20_000;
          while (Number((await dbs.data.query<{ n: number }>(`SELECT count(*)::int AS n FROM alert_deliveries WHERE org_id = $1 AND status = 'Delivered'`, [org])).rows[0]!.n) < 60) {
            if (Date.now() > deadline) throw new Error('timed out');
            await new Promise((r) => setTimeout(r, 50));
          }
        } finally {
          await Promise.all(svcs.map((s) => s.stop()));
        }
        const keys = rec.requests.map((r) => r.headers['idempotency-key']);
        assert.equal(keys.length, 60);
        assert.equal(new Set(keys).size, 60, 'every delivery sent exactly once');
        const owners = (await dbs.data.query<{ lease_owner: string }>(`SELECT DISTINCT lease_owner FROM alert_deliveries WHERE org_id = $1`, [org])).rows;
        assert.ok(owners.length >= 2, 'the work was shared');
      });
    }
  });
}
