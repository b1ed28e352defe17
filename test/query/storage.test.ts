import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { TraceError } from '../../src/core/errors.js';
import { globToRegExp, parseStorageRef, resolveStorageFiles, storagePrefixUrl, urlWithin } from '../../src/query/storage.js';
import { tempDir, type TempDir } from './support.js';

let tmp: TempDir;
let ds: string;
let outside: string;

const touch = (p: string, body = 'x') => {
  mkdirSync(join(p, '..'), { recursive: true });
  writeFileSync(p, body);
};

before(() => {
  tmp = tempDir();
  ds = join(tmp.dir, 'datasets', 'blocks', 'v1');
  outside = join(tmp.dir, 'elsewhere');
  touch(join(ds, 'b.parquet'));
  touch(join(ds, 'a.parquet'));
  touch(join(ds, 'notes.txt'));
  touch(join(ds, '.staging.parquet'));
  touch(join(ds, 'part=1', 'c.parquet'));
  touch(join(ds, 'part=2', 'deep', 'd.parquet'));
  touch(join(outside, 'secret.parquet'));
});
after(() => tmp.cleanup());

const fileRef = (extra: Record<string, unknown> = {}) => parseStorageRef({ scheme: 'file', prefix: `${ds}/`, glob: '*.parquet', ...extra });
const code = (c: string, status?: number) => (e: unknown) => e instanceof TraceError && e.code === c && (status === undefined || e.status === status);

describe('storage refs', () => {
  it('validates refs and fails closed', () => {
    assert.throws(() => parseStorageRef(undefined), code('STORAGE_REF_MISSING', 403));
    assert.throws(() => parseStorageRef({ scheme: 'ftp', prefix: '/x' }), code('STORAGE_REF_INVALID', 403));
    assert.throws(() => parseStorageRef({ scheme: 'file', prefix: '/x/', glob: '../*.parquet' }), code('STORAGE_REF_INVALID', 403));
    assert.throws(() => parseStorageRef({ scheme: 'file', prefix: '/x/', glob: '/etc/*' }), code('STORAGE_REF_INVALID', 403));
    assert.throws(() => parseStorageRef({ scheme: 's3', bucket: 'B!', prefix: 'x/' }), code('STORAGE_REF_INVALID', 403));
    assert.throws(() => storagePrefixUrl(parseStorageRef({ scheme: 'file', prefix: 'relative/dir/' })), code('STORAGE_REF_INVALID', 403));
    assert.throws(() => storagePrefixUrl(parseStorageRef({ scheme: 'file', prefix: '/a/../etc/' })), code('STORAGE_REF_INVALID', 403));
    assert.equal(storagePrefixUrl(parseStorageRef({ scheme: 's3', bucket: 'bkt', prefix: 'data/ds/', glob: '*.parquet' })), 's3://bkt/data/ds/');
  });

  it('resolves a file prefix and glob to an exact sorted list, skipping hidden files', async () => {
    assert.deepEqual(await resolveStorageFiles(fileRef()), [join(ds, 'a.parquet'), join(ds, 'b.parquet')]);
    assert.deepEqual(await resolveStorageFiles(parseStorageRef({ scheme: 'file', prefix: ds })), [join(ds, 'a.parquet'), join(ds, 'b.parquet')]);
  });

  it('accepts file:/// URL prefixes and recursive globs', async () => {
    const ref = parseStorageRef({ scheme: 'file', prefix: pathToFileURL(ds).href + '/', glob: '**/*.parquet' });
    assert.deepEqual(await resolveStorageFiles(ref), [
      join(ds, 'a.parquet'),
      join(ds, 'b.parquet'),
      join(ds, 'part=1', 'c.parquet'),
      join(ds, 'part=2', 'deep', 'd.parquet'),
    ]);
    assert.deepEqual(await resolveStorageFiles(fileRef({ glob: 'part=*/*.parquet' })), [join(ds, 'part=1', 'c.parquet')]);
  });

  it('returns an empty list for a missing prefix', async () => {
    assert.deepEqual(await resolveStorageFiles(parseStorageRef({ scheme: 'file', prefix: join(tmp.dir, 'nope') + '/' })), []);
  });

  it('refuses symlinks that escape the prefix; follows ones that stay inside', async () => {
    const d = join(tmp.dir, 'links');
    touch(join(d, 'real.parquet'));
    symlinkSync(join(d, 'real.parquet'), join(d, 'inside.parquet'));
    assert.deepEqual(await resolveStorageFiles(parseStorageRef({ scheme: 'file', prefix: d })), [join(d, 'real.parquet')]);
    symlinkSync(join(outside, 'secret.parquet'), join(d, 'escape.parquet'));
    await assert.rejects(resolveStorageFiles(parseStorageRef({ scheme: 'file', prefix: d })), code('STORAGE_OUTSIDE_GRANT', 403));
  });

  it('does not follow symlinked directories', async () => {
    const d = join(tmp.dir, 'dirlink');
    touch(join(d, 'ok.parquet'));
    symlinkSync(outside, join(d, 'sub'));
    assert.deepEqual(await resolveStorageFiles(parseStorageRef({ scheme: 'file', prefix: d, glob: '**/*.parquet' })), [join(d, 'ok.parquet')]);
  });

  it('reads a manifest inside the prefix and refuses entries outside it', async () => {
    writeFileSync(join(ds, '_manifest.json'), JSON.stringify({ parquet_objects: ['b.parquet', `${ds}/part=1/c.parquet`, pathToFileURL(join(ds, 'a.parquet')).href] }));
    assert.deepEqual(await resolveStorageFiles(fileRef({ manifest: '_manifest.json' })), [
      join(ds, 'a.parquet'),
      join(ds, 'b.parquet'),
      join(ds, 'part=1', 'c.parquet'),
    ]);
    for (const bad of [join(outside, 'secret.parquet'), '../../elsewhere/secret.parquet', 's3://bucket/x.parquet', pathToFileURL(join(outside, 'secret.parquet')).href]) {
      writeFileSync(join(ds, 'bad.json'), JSON.stringify({ objects: [bad] }));
      await assert.rejects(resolveStorageFiles(fileRef({ manifest: 'bad.json' })), code('STORAGE_OUTSIDE_GRANT', 403), bad);
    }
    writeFileSync(join(ds, 'broken.json'), '{not json');
    await assert.rejects(resolveStorageFiles(fileRef({ manifest: 'broken.json' })), code('MANIFEST_INVALID', 422));
    writeFileSync(join(ds, 'empty.json'), '{"parquet_objects": []}');
    await assert.rejects(resolveStorageFiles(fileRef({ manifest: 'empty.json' })), code('MANIFEST_INVALID', 422));
    writeFileSync(join(ds, 'missing.json'), '["gone.parquet"]');
    await assert.rejects(resolveStorageFiles(fileRef({ manifest: 'missing.json' })), code('DATASET_UNAVAILABLE', 503));
    symlinkSync(join(outside, 'secret.parquet'), join(ds, 'm-link.json'));
    await assert.rejects(resolveStorageFiles(fileRef({ manifest: 'm-link.json' })), code('STORAGE_OUTSIDE_GRANT', 403));
  });

  it('s3 refs need an injected client, list under the prefix and refuse manifest entries outside it', async () => {
    const ref = parseStorageRef({ scheme: 's3', bucket: 'bkt', prefix: 'data/ds/', glob: '*.parquet' });
    await assert.rejects(resolveStorageFiles(ref), code('S3_UNSUPPORTED', 501));
    const files = await resolveStorageFiles(ref, {
      listS3: async (bucket, prefix) => {
        assert.equal(bucket, 'bkt');
        assert.equal(prefix, 'data/ds/');
        return ['data/ds/b.parquet', 'data/ds/a.parquet', 'data/ds/sub/c.parquet', 'data/ds/.tmp.parquet', 'data/other/x.parquet', 'data/ds/x.csv'];
      },
    });
    assert.deepEqual(files, ['s3://bkt/data/ds/a.parquet', 's3://bkt/data/ds/b.parquet']);
    const mref = parseStorageRef({ scheme: 's3', bucket: 'bkt', prefix: 'data/ds/', glob: '*.parquet', manifest: '_manifest.json' });
    const read = (doc: unknown) => ({ readS3: async () => new TextEncoder().encode(JSON.stringify(doc)) });
    assert.deepEqual(await resolveStorageFiles(mref, read({ parquet_objects: ['s3://bkt/data/ds/x.parquet', 'y.parquet'] })), [
      's3://bkt/data/ds/x.parquet',
      's3://bkt/data/ds/y.parquet',
    ]);
    for (const bad of ['s3://bkt/data/other/x.parquet', 's3://evil/data/ds/x.parquet', 's3://bkt/data/ds/../other/x.parquet', '/etc/passwd']) {
      await assert.rejects(resolveStorageFiles(mref, read({ parquet_objects: [bad] })), code('STORAGE_OUTSIDE_GRANT', 403), bad);
    }
  });

  it('globs and prefix containment', () => {
    assert.ok(globToRegExp('*.parquet').test('a.parquet'));
    assert.ok(!globToRegExp('*.parquet').test('x/a.parquet'));
    assert.ok(globToRegExp('**/*.parquet').test('a.parquet'));
    assert.ok(globToRegExp('**/*.parquet').test('x/y/a.parquet'));
    assert.ok(globToRegExp('blocks_?.parquet').test('blocks_1.parquet'));
    assert.ok(!globToRegExp('a.parquet').test('aXparquet'));
    assert.ok(urlWithin('s3://b/data/ds/', 's3://b/data/'));
    assert.ok(!urlWithin('s3://b/database/', 's3://b/data/'));
    assert.ok(!urlWithin('s3://b/data/../x/', 's3://b/data/'));
  });
});
