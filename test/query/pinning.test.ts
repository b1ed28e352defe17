/**
 * Query pinning (ADR 0009) on the one-process platform: `POST /v1/query` with a `version` reads
 * exactly that version's files, also after a newer version became current, and answers byte for
 * byte as it did before; the answer names the version each relation read; a version that is
 * unknown or belongs to another dataset is refused in the stable error shape.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { BACKENDS } from '../support/db.js';
import { startPlatform, type TestPlatform } from '../support/platform.js';
import { writeParquet } from './support.js';

for (const backend of BACKENDS) {
  describe(`pinned queries (${backend})`, () => {
    let p: TestPlatform;
    let dir: string;
    const versions: string[] = [];
    let other: string;

    const query = async (body: unknown) => {
      const res = await fetch(`${p.info.query_url}/v1/query`, {
        method: 'POST', headers: { authorization: `Bearer ${p.admin}`, 'content-type': 'application/json' }, body: JSON.stringify(body),
      });
      const text = await res.text();
      return { status: res.status, text, body: JSON.parse(text) as any };
    };
    const register = async (name: string, folder: string) => {
      const r = await p.api('POST', `/v1/datasets/${name}/register`, { from: `${pathToFileURL(folder).href}/` });
      assert.ok(r.status === 200 || r.status === 201, JSON.stringify(r.body));
      return r.body.dataset_version as string;
    };
    const SQL = 'SELECT sum(x)::BIGINT AS total, count(*) AS n FROM dataset';

    before(async () => {
      p = await startPlatform(backend, { workers: 0 });
      dir = await mkdtemp(join(tmpdir(), 'trace-pin-'));
      await writeParquet([{ path: join(dir, 'v1', 'part-0.parquet'), select: 'SELECT * FROM range(10) t(x)' }]);
      await writeParquet([{ path: join(dir, 'v2', 'part-0.parquet'), select: 'SELECT * FROM range(100) t(x)' }]);
      await writeParquet([{ path: join(dir, 'o', 'part-0.parquet'), select: 'SELECT 1 AS x' }]);
      versions.push(await register('pinned', join(dir, 'v1')));
      other = await register('other_ds', join(dir, 'o'));
    });
    after(async () => {
      await p?.close();
      if (dir) await rm(dir, { recursive: true, force: true });
    });

    it('a pinned query answers from its version after a newer one is current, byte for byte', async () => {
      const first = await query({ dataset: 'pinned', version: versions[0], sql: SQL });
      assert.equal(first.status, 200, first.text);
      assert.deepEqual(first.body.rows, [['45', '10']]);
      assert.deepEqual(first.body.dataset_versions, { dataset: versions[0] });
      const current = await query({ dataset: 'pinned', sql: SQL });
      assert.equal(current.text, first.text, 'unpinned reads the same current version');

      versions.push(await register('pinned', join(dir, 'v2')));
      assert.notEqual(versions[1], versions[0]);
      const now = await query({ dataset: 'pinned', sql: SQL });
      assert.equal(now.status, 200, now.text);
      assert.deepEqual(now.body.rows, [['4950', '100']], 'unpinned reads the new version');
      assert.deepEqual(now.body.dataset_versions, { dataset: versions[1] });
      const again = await query({ dataset: 'pinned', version: versions[0], sql: SQL });
      assert.equal(again.text, first.text, 'the pinned answer is byte-identical to the one before');
    });

    it('pins relations of a multi-dataset query by relation name', async () => {
      const r = await query({ datasets: { a: 'pinned', b: 'other_ds' }, versions: { a: versions[0] }, sql: 'SELECT (SELECT count(*) FROM a) AS a, (SELECT count(*) FROM b) AS b' });
      assert.equal(r.status, 200, r.text);
      assert.deepEqual(r.body.rows, [['10', '1']]);
      assert.deepEqual(r.body.dataset_versions, { a: versions[0], b: other });
    });

    it('refuses an unknown version, another dataset\'s version and a misplaced pin', async () => {
      const cases: Array<[unknown, number, string]> = [
        [{ dataset: 'pinned', version: '00000000-0000-4000-8000-000000000000', sql: SQL }, 404, 'DATASET_VERSION_NOT_FOUND'],
        [{ dataset: 'pinned', version: other, sql: SQL }, 404, 'DATASET_VERSION_NOT_FOUND'],
        [{ datasets: { a: 'pinned' }, versions: { a: other }, sql: 'SELECT 1 FROM a' }, 404, 'DATASET_VERSION_NOT_FOUND'],
        [{ dataset: 'pinned', version: 'not-a-uuid', sql: SQL }, 400, 'INVALID_REQUEST'],
        [{ datasets: { a: 'pinned' }, version: versions[0], sql: 'SELECT 1 FROM a' }, 400, 'INVALID_REQUEST'],
        [{ datasets: { a: 'pinned' }, versions: { b: versions[0] }, sql: 'SELECT 1 FROM a' }, 400, 'INVALID_REQUEST'],
        [{ dataset: 'nope', version: versions[0], sql: SQL }, 404, 'DATASET_NOT_FOUND'],
      ];
      for (const [body, status, code] of cases) {
        const r = await query(body);
        assert.equal(r.status, status, `${JSON.stringify(body)}: ${r.text}`);
        assert.equal(r.body.code, code, r.text);
        assert.equal(typeof r.body.error, 'string');
      }
    });
  });
}
