import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { migrate } from '../../src/db/migrate.js';
import { recordTaskQuery, recordUserQuery } from '../../src/query/audit.js';
import { BACKENDS } from '../support/db.js';
import { freshDataDb } from './support.js';

for (const backend of BACKENDS) {
  describe(`query audit tables (${backend})`, () => {
    it('migrate creates the tables once; rows carry ids and counts, PII rows one principal', async () => {
      const { db, close } = await freshDataDb(backend);
      try {
        assert.deepEqual((await migrate(db, 'data')).applied, []);
        const org = randomUUID();
        const taskId = randomUUID();
        const user = randomUUID();
        const ds = randomUUID();
        await recordTaskQuery(db, {
          org_id: org, task_id: taskId, attempt: 3, datasets: [{ dataset_uuid: ds, dataset_version: null, pii_dataset: ds }],
          duration_ms: 12.6, row_count: 7, columns: ['a', 'b'], truncated: true,
        });
        await recordUserQuery(db, {
          org_id: org, user_id: user, datasets: [{ dataset_uuid: ds, dataset_name: 'blocks', dataset_version: 'v9' }],
          duration_ms: 1, row_count: 0, columns: [], truncated: false,
        });
        const t = await db.query<Record<string, unknown>>('SELECT * FROM query_audit');
        assert.equal(t.rows.length, 1);
        assert.equal(t.rows[0]!.attempt, 3);
        assert.equal(t.rows[0]!.duration_ms, 13);
        assert.equal(Number(t.rows[0]!.result_row_count), 7);
        assert.deepEqual(t.rows[0]!.result_columns, ['a', 'b']);
        assert.equal(t.rows[0]!.truncated, true);
        assert.equal(t.rows[0]!.columns_accessed, null);
        assert.ok(t.rows[0]!.query_time instanceof Date);
        const u = await db.query<Record<string, unknown>>('SELECT * FROM user_query_audit');
        assert.equal(u.rows[0]!.user_sub, user, 'user_sub falls back to user_id');
        assert.deepEqual(u.rows[0]!.result_columns, []);
        const p = await db.query<Record<string, unknown>>('SELECT * FROM pii_access_log');
        assert.equal(p.rows.length, 1);
        assert.equal(p.rows[0]!.task_id, taskId);
        assert.equal(p.rows[0]!.user_id, null);
        // exactly one principal per row
        await assert.rejects(db.query(`INSERT INTO pii_access_log (id, org_id, dataset, action) VALUES ($1, $2, 'x', 'query')`, [randomUUID(), org]));
        await assert.rejects(db.query(`INSERT INTO pii_access_log (id, org_id, user_id, task_id, dataset, action) VALUES ($1, $2, $3, $4, 'x', 'query')`, [randomUUID(), org, user, taskId]));
      } finally {
        await close();
      }
    });

    it('an audit write is all or nothing', async () => {
      const { db, close } = await freshDataDb(backend);
      try {
        // a PII row that cannot be written rolls the audit row back with it
        await assert.rejects(recordUserQuery(db, {
          org_id: randomUUID(), user_id: 'not-a-uuid', datasets: [{ dataset_uuid: randomUUID(), dataset_name: 'people', dataset_version: null, pii_dataset: 'people' }],
          duration_ms: 1, row_count: 1, columns: [], truncated: false,
        }));
        assert.equal((await db.query<{ n: number }>('SELECT count(*)::int AS n FROM user_query_audit')).rows[0]!.n, 0);
      } finally {
        await close();
      }
    });
  });
}
