/**
 * A queue database of its own (TRACE_QUEUE_DATABASE_URL) gets the pgqueue tables from the
 * 'queue' migration set, tracked apart from the state and data histories, so the set can also be
 * applied to a database that already has them (the state database) or that holds other data.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { BACKENDS, createPgDatabase } from '../support/db.js';
import { openDb } from '../../src/db/open.js';
import { migrate } from '../../src/db/migrate.js';
import { PgQueue } from '../../src/queue/pgqueue.js';

if (BACKENDS.includes('postgres')) {
  test('postgres: the queue migration makes a working pgqueue database and is idempotent next to the state and data sets', async () => {
    const q = await createPgDatabase('trace_qm');
    const db = await openDb(q.url, { role: 'queue' });
    try {
      const first = await migrate(db, 'queue');
      assert.deepEqual(first.applied.map((a) => a.version), [1]);
      assert.deepEqual((await migrate(db, 'queue')).applied, []);
      const queue = new PgQueue(db);
      await queue.send('tasks', { task_id: '00000000-0000-4000-8000-000000000001' });
      const got = await queue.receive('tasks', { maxMessages: 1 });
      assert.equal(got.length, 1);
      await queue.close();
      // The same database can also hold the data set: the histories do not collide.
      const data = await migrate(db, 'data');
      assert.ok(data.applied.length >= 1);
      const hist = await db.query<{ n: number }>(`SELECT count(*)::int AS n FROM queue_schema_migrations`);
      assert.equal(hist.rows[0]!.n, 1);
    } finally {
      await db.close();
      await q.drop();
    }
  });

  test('postgres: on a state database the queue migration changes nothing (its tables already exist)', async () => {
    const s = await createPgDatabase('trace_qm');
    const db = await openDb(s.url, { role: 'state' });
    try {
      await migrate(db, 'state');
      const r = await migrate(db, 'queue');
      assert.deepEqual(r.applied.map((a) => a.version), [1]);
      const t = await db.query<{ n: number }>(`SELECT count(*)::int AS n FROM information_schema.tables WHERE table_name IN ('queue_messages', 'queue_dead_letters')`);
      assert.equal(t.rows[0]!.n, 2);
    } finally {
      await db.close();
      await s.drop();
    }
  });
}
