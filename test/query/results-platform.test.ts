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
import { readFileSync } from 'node:fs';
import { trace } from '../cli/support.js';

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

    it('CLI: trace query --batch prints the id; trace query-results show and export read it through the Gateway', async () => {
      const env = { TRACE_QUERY_URL: gw, TRACE_TOKEN: p.admin, TRACE_HOME: tmp.dir };
      const cli = async (args: string[]) => {
        const r = await trace(args, env, { timeoutMs: 120_000 });
        assert.equal(r.code, 0, `trace ${args.join(' ')}: ${r.stderr}`);
        return r.stdout;
      };
      const id = (await cli(['query', '--dataset', 'nums', '--batch', 'SELECT n FROM dataset WHERE n < 250 ORDER BY n'])).trim();
      assert.match(id, /^[0-9a-f-]{36}$/);
      const shown = await waitFor('batch result', async () => {
        const v = JSON.parse(await cli(['query-results', 'show', id, '--json', '--limit', '100', '--all'])) as { status: string; rows: unknown[][] };
        return v.status === 'succeeded' ? v : v.status === 'failed' ? assert.fail(JSON.stringify(v)) : undefined;
      }, 120_000, 200);
      assert.deepEqual(shown.rows, Array.from({ length: 250 }, (_, i) => [String(i)]));
      const text = await cli(['query-results', 'show', id, '--limit', '10']);
      assert.match(text, /succeeded, 250 rows/);
      assert.match(text, /more rows: trace query-results show .* --cursor /);
      const file = join(tmp.dir, 'out.csv');
      assert.match(await cli(['query-results', 'export', id, '--format', 'csv', '--to', file]), /wrote .*out\.csv \(csv/);
      assert.equal(readFileSync(file, 'utf8').trim().split('\n').length, 251);
      const bad = await trace(['query-results', 'export', id, '--format', 'xml', '--to', file], env);
      assert.notEqual(bad.code, 0);
      assert.match(bad.stderr, /--format must be csv or parquet/);
      const other = await trace(['query-results', 'show', '00000000-0000-4000-8000-000000000000'], env);
      assert.notEqual(other.code, 0);
      assert.match(other.stderr, /QUERY_RESULT_NOT_FOUND|no such query result/);
    });
  });
}
