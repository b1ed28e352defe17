/**
 * Real Cryo output through the whole query path: the three shared Monad fixture files (blocks
 * 45216-46336 plus a file repeating two transactions at block 99999) as one dataset, queried over
 * HTTP with the duplicate-transaction diagnostic (examples/data_verification.md). The fixtures
 * live outside the repository; without them this test skips.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { randomUUID } from 'node:crypto';
import type { FastifyInstance } from 'fastify';
import { unauthorized } from '../../src/core/errors.js';
import { listen } from '../../src/core/http.js';
import type { Db } from '../../src/db/db.js';
import { buildQueryApp } from '../../src/query/service.js';
import { parseStorageRef, resolveStorageFiles } from '../../src/query/storage.js';
import { freshDataDb } from './support.js';

const repoRoot = resolve(fileURLToPath(new URL('.', import.meta.url)), '..', '..');
const FIXTURES = process.env.TRACE_TEST_CRYO_FIXTURES ?? resolve(repoRoot, '..', 'shared', 'fixtures', 'cryo-monad');
const present = existsSync(resolve(FIXTURES, 'tx_fake_duplicate.parquet'));
const skip = present ? false : `Cryo fixtures not found at ${FIXTURES}; skipping the real-Cryo query test`;

const DUPLICATE_TX_SQL = `
WITH per_tx AS (
  SELECT transaction_hash, count(*) AS occurrences, count(DISTINCT block_number) AS blocks,
         list(DISTINCT block_number ORDER BY block_number) AS block_numbers
  FROM dataset
  GROUP BY transaction_hash
)
SELECT transaction_hash, occurrences, blocks, block_numbers
FROM per_tx
WHERE blocks > 1
ORDER BY transaction_hash`;

describe('Cryo Monad fixtures', { skip }, () => {
  const ORG = randomUUID();
  const USER = randomUUID();
  let data: { db: Db; close(): Promise<void> };
  let app: FastifyInstance;
  let base: string;

  before(async () => {
    data = await freshDataDb('pglite');
    app = buildQueryApp({
      dataDb: data.db,
      verifyTaskToken: () => {
        throw unauthorized();
      },
      checkTaskLease: async () => {
        throw unauthorized();
      },
      config: { maxConcurrent: 1 },
      authenticateUser: () => ({ org_id: ORG, user_id: USER, roles: [] }),
      resolveDataset: (_org, name) =>
        name === 'monad_transactions'
          ? { dataset_uuid: randomUUID(), dataset_version: randomUUID(), storage_ref: { scheme: 'file', prefix: `${FIXTURES}/`, glob: '*.parquet' }, read_roles: [] }
          : null,
    });
    base = await listen(app, '127.0.0.1', 0);
  });
  after(async () => {
    await app?.close();
    await data?.close();
  });

  it('resolves all three files as one dataset', async () => {
    const files = await resolveStorageFiles(parseStorageRef({ scheme: 'file', prefix: `${FIXTURES}/`, glob: '*.parquet' }));
    assert.deepEqual(files.map((f) => f.split('/').pop()), ['tx_45000.parquet', 'tx_46000.parquet', 'tx_fake_duplicate.parquet']);
  });

  it('the duplicate-transaction diagnostic finds exactly the two repeated hashes', async () => {
    const res = await fetch(`${base}/v1/query`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: 'Bearer dev' },
      body: JSON.stringify({ dataset: 'monad_transactions', sql: DUPLICATE_TX_SQL }),
    });
    const body = (await res.json()) as { columns: Array<{ name: string; type: string }>; rows: unknown[][]; truncated: boolean };
    assert.equal(res.status, 200, JSON.stringify(body));
    assert.deepEqual(body.columns.map((c) => c.name), ['transaction_hash', 'occurrences', 'blocks', 'block_numbers']);
    assert.equal(body.columns[0]!.type, 'BLOB');
    assert.deepEqual(body.rows, [
      ['0xc9b4bbebb2e3c52d70297cfafe4e7726dbcac8d23a41672697028dd0637b2e52', '2', '2', [45216, 99999]],
      ['0xf36b0800ef832bc64c1f7fa3967407783a711bfaa76ee3dac7cd3102b0a02499', '2', '2', [45463, 99999]],
    ]);
    assert.equal(body.truncated, false);
  });

  it('reads Cryo types (UINTEGER, UBIGINT, BLOB addresses) JSON-safely', async () => {
    const res = await fetch(`${base}/v1/query`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: 'Bearer dev' },
      body: JSON.stringify({ dataset: 'monad_transactions', sql: 'SELECT count(*) AS n, min(block_number) AS lo, max(block_number) AS hi, any_value(chain_id) AS chain FROM dataset WHERE block_number < 99999' }),
    });
    const body = (await res.json()) as { rows: unknown[][] };
    assert.equal(res.status, 200, JSON.stringify(body));
    assert.deepEqual(body.rows, [['3', 45216, 46336, '143']]);
  });
});
