/**
 * alert_route's database half: events of the triggering seq range, the edge `where` filter,
 * staleness gating, one delivery per channel, idempotent re-runs, org isolation.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { BACKENDS, freshDbs, type TestDbs } from '../support/db.js';
import { createAlertRouteStore } from '../../src/alerting/route-store.js';
import { createAlertRoute, durationToSeconds } from '../../src/operators/alert_route/index.js';
import { bufferedDatasetUuid } from '../../src/sink/ids.js';
import { silentLogger } from '../../src/core/log.js';
import type { TaskPayload } from '../../src/worker/payload.js';
import { insertDefinition, insertEvents } from './support.js';

const DAY = 86_400_000;

for (const backend of BACKENDS) {
  describe(`alert routing (${backend})`, () => {
    let dbs: TestDbs;
    before(async () => { dbs = await freshDbs(backend); });
    after(async () => { await dbs.close(); });
    const deliveries = async (org: string) => (await dbs.data.query<{ alert_event_id: string; channel: string; status: string }>(
      `SELECT alert_event_id, channel, status FROM alert_deliveries WHERE org_id = $1 ORDER BY alert_event_id, channel`, [org])).rows;

    it('routes the range, one delivery per channel, gated by where and age, and re-runs add nothing', async () => {
      const org = randomUUID();
      const store = createAlertRouteStore(dbs.data);
      const def = await insertDefinition(dbs.data, org, [{ name: 'ops', type: 'webhook', url: 'https://a.example.com' }, { name: 'pager', type: 'webhook', url: 'https://b.example.com' }]);
      const old = await insertEvents(dbs.data, org, [{ alert_definition_id: def, dedupe_key: 'before-range' }]);
      const range = await insertEvents(dbs.data, org, [
        { alert_definition_id: def, dedupe_key: 'crit-1', severity: 'critical', payload: { chain_id: 1 } },
        { alert_definition_id: def, dedupe_key: 'warn-1', severity: 'warning', payload: { chain_id: 1 } },
        { alert_definition_id: def, dedupe_key: 'crit-chain2', severity: 'critical', payload: { chain_id: 2 } },
        { alert_definition_id: def, dedupe_key: 'crit-stale', severity: 'critical', payload: { chain_id: 1 }, event_time: new Date(Date.now() - 10 * DAY).toISOString() },
      ]);
      assert.ok(old && range);
      const req = { org_id: org, task_id: randomUUID(), range: range!, where: { severity: ['critical'], chain_id: 1 }, max_age_seconds: durationToSeconds('7d')! };
      const r = await store.route(req);
      assert.deepEqual(r, { events: 2, stale: 1, targets: 2, created: 2 });
      const ds = await deliveries(org);
      assert.equal(ds.length, 2);
      assert.deepEqual(ds.map((d) => d.channel).sort(), ['ops', 'pager']);
      assert.ok(ds.every((d) => d.status === 'Pending'));
      assert.deepEqual(await store.route(req), { events: 2, stale: 1, targets: 2, created: 0 }, 'a re-run creates nothing');
      // No range (replay): everything of the org that passes; the existing ones are not duplicated.
      const all = await store.route({ org_id: org, task_id: randomUUID() });
      assert.equal(all.events, 5);
      assert.equal(all.targets, 10, 'five events x two channels, no age gate');
      assert.equal(all.created, 10 - 2);
      assert.equal((await deliveries(org)).length, 10);
      // Only one channel when configured.
      const org2 = randomUUID();
      const def2 = await insertDefinition(dbs.data, org2, [{ name: 'ops', type: 'webhook', url: 'https://a.example.com' }, { name: 'pager', type: 'webhook', url: 'https://b.example.com' }]);
      const r2 = await insertEvents(dbs.data, org2, [{ alert_definition_id: def2, dedupe_key: 'x' }]);
      assert.equal((await store.route({ org_id: org2, task_id: randomUUID(), range: r2!, channel: 'pager' })).created, 1);
      assert.deepEqual((await deliveries(org2)).map((d) => d.channel), ['pager']);
    });

    it('never crosses orgs and skips disabled or deleted definitions', async () => {
      const orgA = randomUUID();
      const orgB = randomUUID();
      const store = createAlertRouteStore(dbs.data);
      const defA = await insertDefinition(dbs.data, orgA, [{ name: 'webhook', type: 'webhook', url: 'https://a.example.com' }]);
      // Org B's evaluator names org A's definition: no delivery anywhere.
      const rb = await insertEvents(dbs.data, orgB, [{ alert_definition_id: defA, dedupe_key: 'spoof' }]);
      assert.equal((await store.route({ org_id: orgB, task_id: randomUUID(), range: rb! })).created, 0);
      assert.equal((await store.route({ org_id: orgA, task_id: randomUUID(), range: rb! })).events, 0, "org A's run does not see org B's rows");
      assert.equal((await deliveries(orgA)).length + (await deliveries(orgB)).length, 0);
      const disabled = await insertDefinition(dbs.data, orgA, [{ name: 'webhook', type: 'webhook', url: 'https://a.example.com' }], { enabled: false });
      const rd = await insertEvents(dbs.data, orgA, [{ alert_definition_id: disabled, dedupe_key: 'off' }]);
      assert.equal((await store.route({ org_id: orgA, task_id: randomUUID(), range: rd! })).created, 0);
    });

    it('refuses where fields alert_events does not have, and non-alert_events inputs', async () => {
      const store = createAlertRouteStore(dbs.data);
      await assert.rejects(store.route({ org_id: randomUUID(), task_id: randomUUID(), where: { label_type: 'x' } }), /not a filterable field/);
      await assert.rejects(store.route({ org_id: randomUUID(), task_id: randomUUID(), where: { severity: 'loud' } }), /severity/);
      const op = createAlertRoute(store);
      const org = randomUUID();
      const task = { task_id: randomUUID(), attempt: 1, org_id: org, job: { id: randomUUID(), dag_name: 'd', name: 'r' }, operator: 'alert_route', runtime: 'ecs_platform', config: {}, timeout_seconds: 60, heartbeat_timeout_seconds: 60, trigger: { kind: 'event' }, inputs: [{ dataset_uuid: randomUUID(), dataset_version: randomUUID(), start: 1, end: 2 }], outputs: [], operator_state: [] } as TaskPayload;
      const ctx = { task, signal: new AbortController().signal, log: silentLogger, capabilityToken: 'x', emit: async () => undefined };
      await assert.rejects(op.run(ctx), /alert_events/);
      task.inputs = [{ dataset_uuid: bufferedDatasetUuid(org, 'alert_events'), dataset_version: randomUUID(), start: 1, end: 2 }];
      assert.deepEqual((await op.run(ctx)).outputs, [{ events: 0, stale: 0, targets: 0, created: 0 }]);
      assert.deepEqual(op.info.validateConfig!({ max_delivery_age: 'forever' }).map((x) => x.path), ['max_delivery_age']);
      assert.deepEqual(op.info.validateConfig!({ max_delivery_age: '7d', channel: 'pager' }), []);
    });
  });
}
