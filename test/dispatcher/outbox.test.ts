/**
 * Outbox retries per operations.md: a row that fails inside the drain transaction is isolated
 * (a savepoint), its attempts count, it backs off and ends Failed with an error-level alert line
 * after outboxMaxAttempts, while the rows around it are delivered and later batches take the
 * one-transaction path again. A side effect that failed because the queue was unreachable is
 * retried without counting.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { BACKENDS, freshDbs } from '../support/db.js';
import { buildDispatcher } from '../support/dispatcher.js';
import { captureLogger } from '../support/log-capture.js';
import { waitFor } from '../support/platform.js';
import { DependencyUnavailable } from '../../src/core/dependency.js';
import { PgQueue } from '../../src/queue/pgqueue.js';

const n = async (db: { query: (sql: string, p?: unknown[]) => Promise<{ rows: unknown[] }> }, sql: string, params: unknown[] = []) =>
  Number(((await db.query(sql, params)).rows[0] as { n: number }).n);

for (const backend of BACKENDS) {
  test(`${backend}: a poison outbox row is isolated, counted, backed off and ends Failed with an alert`, async () => {
    const dbs = await freshDbs(backend);
    const { log, lines } = captureLogger('warn');
    const d = await buildDispatcher(dbs.state, { log, settings: { outboxMaxAttempts: 4, outboxBaseMs: 100, outboxMaxMs: 200 } });
    try {
      // A route_event whose dataset id is not a UUID fails inside the drain transaction; good
      // rows around it must not be held back by it.
      await dbs.state.query(`INSERT INTO outbox (kind, payload) VALUES ('route_event', $1::jsonb)`,
        [JSON.stringify({ org_id: d.orgId, event: { dataset_uuid: 'not-a-uuid', dataset_version: 'x', cursor: 1 } })]);
      const goodEvent = { org_id: d.orgId, event: { dataset_uuid: '11111111-1111-4111-8111-111111111111', dataset_version: '22222222-2222-4222-8222-222222222222', cursor: 1 } };
      await dbs.state.query(`INSERT INTO outbox (kind, payload) VALUES ('route_event', $1::jsonb), ('enqueue_task', $2::jsonb)`,
        [JSON.stringify(goodEvent), JSON.stringify({ task_id: '33333333-3333-4333-8333-333333333333' })]);
      await d.start();
      await waitFor('the poison row Failed', async () => (await n(dbs.state, `SELECT count(*)::int AS n FROM outbox WHERE status = 'Failed'`)) === 1, 20_000);
      const poison = (await dbs.state.query<{ attempts: number; last_error: string }>(`SELECT attempts, last_error FROM outbox WHERE status = 'Failed'`)).rows[0]!;
      assert.equal(poison.attempts, 4, 'every failed try counted');
      assert.match(poison.last_error, /uuid/i);
      assert.equal(await n(dbs.state, `SELECT count(*)::int AS n FROM outbox WHERE status = 'Done'`), 2, 'the good rows were delivered');
      assert.equal(await n(dbs.state, `SELECT count(*)::int AS n FROM queue_messages WHERE body->>'task_id' = '33333333-3333-4333-8333-333333333333'`), 1);
      const alerts = lines.filter((l) => l.alert === 'outbox_row_failed');
      assert.equal(alerts.length, 1);
      assert.equal(alerts[0]!.level, 50, 'an error-level line');
      assert.equal(alerts[0]!.attempts, 4);
      // Backed off, not retried every loop turn: four tries spread over the growing delays.
      const fails = lines.filter((l) => l.msg === 'outbox side effect failed');
      assert.equal(fails.length, 3);
      // Row-by-row only for batches holding the poison row: once per try, never after it Failed.
      const isolating = () => lines.filter((l) => String(l.msg).startsWith('outbox batch failed')).length;
      assert.equal(isolating(), 4);
      for (let i = 0; i < 5; i++) {
        await dbs.state.query(`INSERT INTO outbox (kind, payload) VALUES ('enqueue_task', $1::jsonb)`, [JSON.stringify({ task_id: `44444444-4444-4444-8444-00000000000${i}` })]);
      }
      await waitFor('later rows drained', async () => (await n(dbs.state, `SELECT count(*)::int AS n FROM outbox WHERE status = 'Pending'`)) === 0);
      assert.equal(isolating(), 4, 'later batches took the one-transaction path');
    } finally {
      await d.stop();
      await dbs.close();
    }
  });

  test(`${backend}: side effects that fail on an unreachable queue are retried without counting`, async () => {
    const dbs = await freshDbs(backend);
    const real = new PgQueue(dbs.state);
    let down = true;
    let refused = 0;
    const flaky = Object.create(real) as PgQueue;
    flaky.sendBatch = async (q, b) => {
      if (down) {
        refused++;
        throw new DependencyUnavailable('queue', 'ECONNREFUSED');
      }
      return real.sendBatch(q, b);
    };
    const d = await buildDispatcher(dbs.state, { queue: flaky, settings: { outboxMaxAttempts: 2, outboxBaseMs: 20, outboxMaxMs: 40 } });
    try {
      await dbs.state.query(`INSERT INTO outbox (kind, payload) VALUES ('enqueue_task', $1::jsonb)`, [JSON.stringify({ task_id: '55555555-5555-4555-8555-555555555555' })]);
      await d.start();
      await waitFor('a failed send recorded', async () => (await n(dbs.state, `SELECT count(*)::int AS n FROM outbox WHERE last_error LIKE '%queue is unreachable%'`)) === 1);
      // Well past outboxMaxAttempts tries, still Pending with no attempt counted.
      // (Taking a row counts an attempt until the refused send hands it back uncounted, so the
      // row is read once that hand-back has happened.)
      await waitFor('more refused sends than outboxMaxAttempts', async () => refused > 4, 60_000);
      const row = await waitFor('the row handed back uncounted', async () => {
        const r = (await dbs.state.query<{ status: string; attempts: number }>(`SELECT status, attempts FROM outbox`)).rows[0]!;
        return r.status !== 'Pending' || r.attempts === 0 ? r : undefined;
      });
      assert.deepEqual(row, { status: 'Pending', attempts: 0 });
      down = false;
      await waitFor('delivered after the queue is back', async () => (await n(dbs.state, `SELECT count(*)::int AS n FROM outbox WHERE status = 'Done'`)) === 1, 15_000);
      assert.equal(await n(dbs.state, `SELECT count(*)::int AS n FROM queue_messages`), 1);
    } finally {
      await d.stop();
      await real.close();
      await dbs.close();
    }
  });
}
