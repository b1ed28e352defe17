import { test } from 'node:test';
import assert from 'node:assert/strict';
import { freshDbs, BACKENDS } from './support/db.js';
import { migrate } from '../src/db/migrate.js';

for (const backend of BACKENDS) {
  test(`${backend}: migrations apply once and record what they applied`, async () => {
    const dbs = await freshDbs(backend);
    try {
      const again = await migrate(dbs.state, 'state');
      assert.deepEqual(again.applied, [], 'second run applies nothing');
      assert.ok(again.current >= 1);
      const r = await dbs.state.query<{ n: number }>('SELECT count(*)::int AS n FROM schema_migrations');
      assert.equal(r.rows[0]!.n, again.current);
      const d = await dbs.data.query<{ value: string }>(`SELECT value FROM data_info WHERE key = 'role'`);
      assert.equal(d.rows[0]!.value, 'trace-data');
      // int8 comes back as a number on both adapters
      const big = await dbs.state.query<{ x: number }>('SELECT 9007199254740991::bigint AS x');
      assert.equal(big.rows[0]!.x, 9007199254740991);
    } finally {
      await dbs.close();
    }
  });

  test(`${backend}: a failing transaction leaves nothing behind`, async () => {
    const dbs = await freshDbs(backend);
    try {
      await assert.rejects(dbs.state.tx(async (q) => {
        await q.query(`INSERT INTO orgs (id, name, slug) VALUES (gen_random_uuid(), 'x', 'x')`);
        throw new Error('boom');
      }));
      const r = await dbs.state.query<{ n: number }>('SELECT count(*)::int AS n FROM orgs');
      assert.equal(r.rows[0]!.n, 0);
    } finally {
      await dbs.close();
    }
  });
}
