import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { appendFile, mkdir, mkdtemp, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ingestModeFromEnv, ingestRange } from '../../src/operators/cryo_ingest/ingest.js';
import { MANIFEST_FILE, SUCCESS_FILE, readCommittedManifest, type IngestManifest } from '../../src/operators/cryo_ingest/manifest.js';
import { cryoFileName, parseCryoFileName } from '../../src/operators/cryo_ingest/parquet.js';
import { sha256Hex } from '../../src/core/ids.js';
import { duck } from './support.js';

let work: string;
before(async () => {
  work = await mkdtemp(join(tmpdir(), 'trace-cryo-fake-'));
});
after(async () => {
  if (work) await rm(work, { recursive: true, force: true });
});

const ALL = ['blocks', 'transactions', 'logs'] as const;
const fake = (dir: string, start: number, end: number, extra: Partial<Parameters<typeof ingestRange>[0]> = {}) =>
  ingestRange({ chainId: 1, datasets: [...ALL], start, end, outDir: join(work, dir), mode: 'fake', ...extra });

test('fake mode is deterministic: same range, byte-identical files and manifest', async () => {
  const a = await fake('det-a', 100, 140);
  const b = await fake('det-b', 100, 140, { chunkBlocks: 7 });
  assert.deepEqual(a.manifest, b.manifest);
  assert.equal(
    await readFile(join(work, 'det-a', MANIFEST_FILE), 'utf8'),
    await readFile(join(work, 'det-b', MANIFEST_FILE), 'utf8'),
  );
  assert.deepEqual(a.row_counts, { blocks: 40, transactions: 60, logs: 40 });
  assert.deepEqual(
    a.files.map((f) => f.path),
    ['ethereum__blocks__00000100_to_00000139.parquet', 'ethereum__logs__00000100_to_00000139.parquet', 'ethereum__transactions__00000100_to_00000139.parquet'],
  );
  // the network never comes into it: no RPC client was given
});

test('fake rows depend on the block number only: overlapping ranges agree', async () => {
  await fake('ov-a', 0, 30);
  await fake('ov-b', 20, 50);
  for (const [ds, key] of [
    ['blocks', 'block_number'],
    ['transactions', 'block_number, transaction_index'],
    ['logs', 'block_number, log_index'],
  ] as const) {
    const q = (dir: string) => `SELECT * FROM read_parquet('${join(work, dir)}/*__${ds}__*.parquet') WHERE block_number BETWEEN 20 AND 29`;
    const diff = await duck<{ n: number }>(`SELECT count(*)::INT AS n FROM ((${q('ov-a')} EXCEPT ${q('ov-b')}) UNION ALL (${q('ov-b')} EXCEPT ${q('ov-a')}))`);
    assert.equal(diff[0]!.n, 0, `${ds} rows of blocks 20..29 differ`);
    const dup = await duck<{ n: number }>(`SELECT count(*)::INT AS n FROM (SELECT ${key} FROM (${q('ov-a')}) GROUP BY ${key} HAVING count(*) > 1)`);
    assert.equal(dup[0]!.n, 0);
  }
  const big = await duck<{ v: string; f: number; b: string }>(
    `SELECT value_string AS v, value_f64 AS f, hex(value_binary) AS b FROM read_parquet('${join(work, 'ov-b')}/*__transactions__*.parquet') WHERE block_number = 49 AND transaction_index = 0`,
  );
  assert.deepEqual(big, [{ v: (49n * 10n ** 18n).toString(), f: 49e18, b: (49n * 10n ** 18n).toString(16).toUpperCase().padStart(64, '0') }]);
});

test('commit protocol: files, then manifest.json, then _SUCCESS holding the manifest hash', async () => {
  await fake('commit', 0, 10);
  const dir = join(work, 'commit');
  const manifestText = await readFile(join(dir, MANIFEST_FILE), 'utf8');
  assert.equal((await readFile(join(dir, SUCCESS_FILE), 'utf8')).trim(), sha256Hex(manifestText));
  const m = JSON.parse(manifestText) as IngestManifest;
  assert.equal(m.range_start, 0);
  assert.equal(m.range_end, 10);
  assert.equal(m.chain_id, 1);
  for (const f of m.files) {
    const st = await stat(join(dir, f.path));
    assert.equal(st.size, f.bytes);
    assert.equal(sha256Hex(await readFile(join(dir, f.path))), f.sha256);
  }
  assert.equal(m.bytes, m.files.reduce((a, f) => a + f.bytes, 0));
  assert.equal(((await stat(dir)).mode & 0o777).toString(8), '700', 'private staging directory');
  assert.deepEqual((await readdir(dir)).filter((n) => n.startsWith('.')), [], 'no partial files left');
  assert.deepEqual(await readCommittedManifest(dir, { checkHashes: true }), m);

  // tampering is detected
  await appendFile(join(dir, m.files[0]!.path), 'x');
  await assert.rejects(readCommittedManifest(dir), (e: { code?: string }) => e.code === 'CRYO_OUTPUT_INVALID');
});

test('re-running a committed range is a no-op; a different range in the same prefix is a conflict', async () => {
  const first = await fake('rerun', 5, 25);
  const mtime = (await stat(join(work, 'rerun', first.files[0]!.path))).mtimeMs;
  const again = await fake('rerun', 5, 25);
  assert.deepEqual(again.manifest, first.manifest);
  assert.equal((await stat(join(work, 'rerun', first.files[0]!.path))).mtimeMs, mtime, 'nothing rewritten');
  await assert.rejects(fake('rerun', 5, 26), (e: { code?: string }) => e.code === 'CRYO_STAGING_CONFLICT');
});

test('leftovers of a crashed attempt (no _SUCCESS) are replaced, unrelated files are kept', async () => {
  const dir = join(work, 'crashed');
  await mkdir(dir, { recursive: true });
  await writeFile(join(dir, 'ethereum__blocks__00000000_to_00000099.parquet'), 'garbage');
  await writeFile(join(dir, '.ethereum__logs__00000000_to_00000009.parquet.partial'), 'garbage');
  await writeFile(join(dir, 'manifest.json'), '{}');
  await writeFile(join(dir, 'notes.txt'), 'keep me');
  const r = await fake('crashed', 0, 10);
  const names = (await readdir(dir)).sort();
  assert.deepEqual(names, [...r.files.map((f) => f.path), MANIFEST_FILE, SUCCESS_FILE, 'notes.txt'].sort());
});

test('MAX_PARQUET_BYTES_PER_FILE splits a range into contiguous, Cryo-named sub-ranges', async () => {
  const whole = await fake('nosplit', 0, 200, { datasets: ['transactions'] });
  const cap = Math.floor(whole.bytes / 3);
  const r = await fake('split', 0, 200, { datasets: ['transactions'], caps: { maxBytesPerFile: cap } });
  assert.ok(r.files.length >= 3, `split into ${r.files.length} files`);
  let next = 0;
  for (const f of [...r.files].sort((a, b) => a.range_start - b.range_start)) {
    assert.equal(f.range_start, next, 'contiguous');
    assert.ok(f.bytes <= cap);
    assert.equal(f.path, cryoFileName(1, 'transactions', f.range_start, f.range_end));
    assert.deepEqual(parseCryoFileName(f.path), { network: 'ethereum', dataset: 'transactions', start: f.range_start, end: f.range_end });
    const inRange = await duck<{ lo: number; hi: number; n: number }>(
      `SELECT min(block_number)::INT AS lo, max(block_number)::INT AS hi, count(*)::INT AS n FROM read_parquet('${join(work, 'split', f.path)}')`,
    );
    assert.ok(inRange[0]!.lo >= f.range_start && inRange[0]!.hi < f.range_end);
    assert.equal(inRange[0]!.n, f.rows);
    next = f.range_end;
  }
  assert.equal(next, 200);
  assert.equal(r.row_counts.transactions, whole.row_counts.transactions);
  const same = await duck<{ n: number }>(
    `SELECT count(*)::INT AS n FROM ((SELECT * FROM read_parquet('${join(work, 'split')}/*.parquet') EXCEPT ALL SELECT * FROM read_parquet('${join(work, 'nosplit')}/*.parquet')))`,
  );
  assert.equal(same[0]!.n, 0, 'the split files hold exactly the rows of the single file');
});

test('file-count and total-bytes caps fail the range and commit nothing', async () => {
  const whole = await fake('cap-ref', 0, 200, { datasets: ['transactions'] });
  await assert.rejects(
    fake('cap-files', 0, 200, { datasets: ['transactions'], caps: { maxBytesPerFile: Math.floor(whole.bytes / 3), maxFilesPerRange: 2 } }),
    (e: { code?: string; status?: number }) => e.code === 'CRYO_ARTIFACT_CAP_EXCEEDED' && e.status === 422,
  );
  assert.ok(!existsSync(join(work, 'cap-files', SUCCESS_FILE)));
  await assert.rejects(
    fake('cap-total', 0, 200, { caps: { maxTotalBytesPerRange: 1000 } }),
    (e: { code?: string }) => e.code === 'CRYO_ARTIFACT_CAP_EXCEEDED',
  );
  assert.ok(!existsSync(join(work, 'cap-total', SUCCESS_FILE)));
  await assert.rejects(fake('cap-block', 0, 4, { datasets: ['transactions'], caps: { maxBytesPerFile: 10 } }), /alone exceeds/);
});

test('bad requests are rejected before anything is written', async () => {
  const bad = async (o: Partial<Parameters<typeof ingestRange>[0]>, path: string) => {
    await assert.rejects(fake(`bad-${path}`, 0, 10, o), (e: { code?: string; problems?: Array<{ path: string }> }) => {
      assert.equal(e.code, 'CRYO_INGEST_INVALID');
      assert.ok(e.problems?.some((p) => p.path === path), JSON.stringify(e.problems));
      return true;
    });
    assert.ok(!existsSync(join(work, `bad-${path}`)));
  };
  await bad({ start: 10, end: 10 }, 'end');
  await bad({ datasets: ['geth_calls'] }, 'datasets');
  await bad({ datasets: ['blocks', 'blocks'] }, 'datasets');
  await bad({ chainId: 0 }, 'chainId');
  await bad({ end: 2 ** 32 + 1 }, 'end');
  await assert.rejects(
    ingestRange({ chainId: 1, datasets: ['blocks'], start: 0, end: 1, outDir: join(work, 'no-rpc'), mode: 'native' }),
    /needs an RPC client/,
  );
});

test('TRACE_CRYO_MODE maps to ingest modes', () => {
  assert.equal(ingestModeFromEnv({}), 'native');
  assert.equal(ingestModeFromEnv({}, 'fake'), 'fake');
  assert.equal(ingestModeFromEnv({ TRACE_CRYO_MODE: 'real' }), 'cryo');
  assert.equal(ingestModeFromEnv({ TRACE_CRYO_MODE: 'FAKE' }), 'fake');
  assert.throws(() => ingestModeFromEnv({ TRACE_CRYO_MODE: 'other' }), /TRACE_CRYO_MODE/);
});
