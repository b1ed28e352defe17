/**
 * Batch queries on the one-process platform (both backends), through the Gateway: the result is
 * written under the results prefix of the platform's own object store, paged and exported over
 * the Gateway, and the CLI prints the id and the rows.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { BACKENDS } from '../support/db.js';
import { startPlatform, waitFor, type TestPlatform } from '../support/platform.js';
import { tempDir, writeParquet, type TempDir } from './support.js';
import { resultKey } from '../../src/query/results.js';
import { openObjectStore } from '../../src/objectstore/open.js';

for (const backend of BACKENDS) {
  describe(`batch queries through the Gateway (${backend})`, () => {
    let p: TestPlatform;
    let tmp: TempDir;
    let gw: string;
    const auth = () => ({ authorization: `Bearer ${p.admin}` });

    before(async () => {
      tmp = tempDir();
      p = await startPlatform(backend, { workers: 0, settings: { leaseSeconds: 60 } });
      gw = p.info.gateway_url;
      const dir = join(tmp.dir, 'nums');
      await writeParquet([{ path: join(dir, 'part-0.parquet'), select: 'SELECT range::BIGINT AS n, range * 2 AS twice FROM range(1500)' }]);
      const reg = await p.api('POST', '/v1/datasets/nums/register', { from: `${pathToFileURL(dir).href}/` });
      assert.equal(reg.status, 201, JSON.stringify(reg.body));
    });
    after(async () => {
      await p.close();
      tmp.cleanup();
    });

    it('POST /v1/query mode batch answers 202; the result pages and exports over the Gateway', async () => {
      const sql = 'SELECT n, twice FROM dataset ORDER BY n';
      const post = (body: unknown) => fetch(`${gw}/v1/query`, { method: 'POST', headers: { ...auth(), 'content-type': 'application/json' }, body: JSON.stringify(body) });
      const inter = await post({ dataset: 'nums', sql });
      assert.equal(inter.status, 200);
      const interBody = (await inter.json()) as { rows: unknown[][] };
      const res = await post({ dataset: 'nums', sql, mode: 'batch' });
      assert.equal(res.status, 202);
      const accepted = (await res.json()) as { query_id: string; status: string };
      const id = accepted.query_id;
      const done = await waitFor('batch result', async () => {
        const r = await fetch(`${gw}/v1/query-results/${id}?limit=1000`, { headers: auth() });
        assert.equal(r.status, 200);
        const b = (await r.json()) as { status: string; rows?: unknown[][]; next_cursor?: string | null };
        return b.status === 'queued' || b.status === 'running' ? undefined : b;
      }, 120_000);
      assert.equal(done.status, 'succeeded');
      const store = openObjectStore(undefined, p.info.home);
      assert.ok(await store.exists(resultKey(p.info.org_id, id)));
      const second = await fetch(`${gw}/v1/query-results/${id}?limit=1000&cursor=${done.next_cursor}`, { headers: auth() });
      const page2 = (await second.json()) as { rows: unknown[][]; next_cursor: string | null };
      assert.equal(page2.next_cursor, null);
      assert.deepEqual([...done.rows!, ...page2.rows], interBody.rows);
      const csv = await fetch(`${gw}/v1/query-results/${id}/export?format=csv`, { headers: auth() });
      assert.equal(csv.status, 200);
      assert.equal((await csv.text()).trim().split('\n').length, 1501);
      const pq = await fetch(`${gw}/v1/query-results/${id}/export?format=parquet`, { headers: auth() });
      assert.equal(pq.status, 200);
      assert.equal(Buffer.from(await pq.arrayBuffer()).subarray(0, 4).toString(), 'PAR1');
      const bad = await fetch(`${gw}/v1/query-results/${id}/export?format=xml`, { headers: auth() });
      assert.equal(bad.status, 400);
    });
  });
}
