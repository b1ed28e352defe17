import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, readFile, readdir, realpath, rm, symlink, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { isTraceError } from '../../src/core/errors.js';
import { FileObjectStore } from '../../src/objectstore/file.js';

async function tempDir(t: { after: (fn: () => Promise<void>) => void }): Promise<string> {
  const dir = await realpath(await mkdtemp(join(tmpdir(), 'trace-os-')));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

/** Every file and directory under `dir`, as relative paths (temp files included). */
async function tree(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { recursive: true });
  return entries.map(String).sort();
}

async function rejectsWith(p: Promise<unknown>, status: number, code: string): Promise<void> {
  await assert.rejects(p, (e: unknown) => isTraceError(e) && e.status === status && e.code === code);
}

const text = (b: Uint8Array) => Buffer.from(b).toString('utf8');

function gate(): { wait: Promise<void>; open: () => void } {
  let open!: () => void;
  const wait = new Promise<void>((r) => { open = r; });
  return { wait, open };
}

test('round trips: put/get/stat/exists/url/localPath/delete', async (t) => {
  const dir = await tempDir(t);
  const store = new FileObjectStore(join(dir, 'objects'));
  assert.equal(store.rootUrl, `file://${dir}/objects/`);

  await store.put('datasets/d1/v1/blocks_0_1000.parquet', new Uint8Array([1, 2, 3, 255]));
  await store.put('notes/hello.txt', 'héllo');
  assert.deepEqual([...(await store.get('datasets/d1/v1/blocks_0_1000.parquet'))], [1, 2, 3, 255]);
  assert.equal(text(await store.get('notes/hello.txt')), 'héllo');
  assert.equal(await store.exists('notes/hello.txt'), true);
  assert.equal(await store.exists('notes/other.txt'), false);
  assert.equal(await store.exists('notes'), false, 'a prefix is not an object');
  const st = await store.stat('notes/hello.txt');
  assert.equal(st?.size, 6);
  assert.ok(st?.lastModified instanceof Date);
  assert.equal(await store.stat('nope'), null);

  const url = store.url('notes/hello.txt');
  assert.equal(url, `file://${dir}/objects/notes/hello.txt`);
  const local = await store.localPath('notes/hello.txt');
  assert.equal(fileURLToPath(url), local);
  assert.equal(await readFile(local, 'utf8'), 'héllo');
  assert.equal(store.url('a b/c#d.txt'), `file://${dir}/objects/a%20b/c%23d.txt`);
  assert.equal(store.localDir('datasets/d1'), join(dir, 'objects', 'datasets', 'd1'));

  await store.put('notes/hello.txt', 'replaced');
  assert.equal(text(await store.get('notes/hello.txt')), 'replaced');

  await rejectsWith(store.get('notes/missing.txt'), 404, 'OBJECT_NOT_FOUND');
  await rejectsWith(store.get('notes'), 404, 'OBJECT_NOT_FOUND');
  await rejectsWith(store.localPath('notes/missing.txt'), 404, 'OBJECT_NOT_FOUND');
  await rejectsWith(store.getStream('notes/missing.txt'), 404, 'OBJECT_NOT_FOUND');
  await rejectsWith(store.get('notes/hello.txt', { maxBytes: 3 }), 413, 'OBJECT_TOO_LARGE');

  await store.delete('datasets/d1/v1/blocks_0_1000.parquet');
  await store.delete('datasets/d1/v1/blocks_0_1000.parquet'); // idempotent
  await store.delete('never/existed');
  assert.equal(existsSync(join(dir, 'objects', 'datasets')), false, 'empty directories are pruned');
  assert.deepEqual(await tree(join(dir, 'objects')), ['notes', 'notes/hello.txt']);
});

test('hostile keys are refused by every method and nothing is touched', async (t) => {
  const dir = await tempDir(t);
  const store = new FileObjectStore(join(dir, 'objects'));
  await writeFile(join(dir, 'victim.txt'), 'keep');
  const before = await tree(dir);
  const hostile = ['../victim.txt', '/etc/passwd', 'a/../../victim.txt', 'a\\..\\..\\victim.txt', 'a\u0000b', '', 'a//b', '.', 'x/*', '.trace-tmp-1'];
  for (const k of hostile) {
    await rejectsWith(store.put(k, 'x'), 400, 'INVALID_OBJECT_KEY');
    await rejectsWith(store.putStream(k, (async function* () { yield Buffer.from('x'); })()), 400, 'INVALID_OBJECT_KEY');
    await rejectsWith(store.get(k), 400, 'INVALID_OBJECT_KEY');
    await rejectsWith(store.stat(k), 400, 'INVALID_OBJECT_KEY');
    await rejectsWith(store.delete(k), 400, 'INVALID_OBJECT_KEY');
    await rejectsWith(store.localPath(k), 400, 'INVALID_OBJECT_KEY');
    assert.throws(() => store.url(k), (e: unknown) => isTraceError(e) && e.code === 'INVALID_OBJECT_KEY');
  }
  for (const p of ['../', '/', 'a//', '..', 'a/*']) await rejectsWith(store.list(p), 400, 'INVALID_OBJECT_KEY');
  await rejectsWith(store.deletePrefix(''), 400, 'INVALID_OBJECT_KEY');
  assert.throws(() => store.child('..'), (e: unknown) => isTraceError(e) && e.code === 'INVALID_OBJECT_KEY');
  assert.throws(() => store.child(''), (e: unknown) => isTraceError(e) && e.code === 'INVALID_OBJECT_KEY');
  assert.deepEqual(await tree(dir), before);
  assert.equal(await readFile(join(dir, 'victim.txt'), 'utf8'), 'keep');
});

test('atomic put: a write in flight is invisible, a failed or oversized write leaves nothing', async (t) => {
  const dir = await tempDir(t);
  const store = new FileObjectStore(dir);
  await store.put('out/data.bin', 'old');

  // An overwrite in flight: readers keep seeing the old object, list shows no temp file.
  const g = gate();
  const writing = store.putStream('out/data.bin', (async function* () {
    yield Buffer.from('new-part-1,');
    await g.wait;
    yield Buffer.from('new-part-2');
  })());
  const fresh = store.putStream('out/fresh.bin', (async function* () {
    yield Buffer.from('partial');
    await g.wait;
    yield Buffer.from('-rest');
  })());
  await new Promise((r) => setTimeout(r, 50));
  assert.equal(text(await store.get('out/data.bin')), 'old');
  assert.equal(await store.exists('out/fresh.bin'), false, 'a new object is not visible before it is complete');
  assert.deepEqual((await store.list('out')).map((o) => o.key), ['out/data.bin']);
  assert.ok((await readdir(join(dir, 'out'))).some((n) => n.startsWith('.trace-tmp-')), 'the bytes go to a temp file meanwhile');
  g.open();
  const [r1, r2] = await Promise.all([writing, fresh]);
  assert.equal(text(await store.get('out/data.bin')), 'new-part-1,new-part-2');
  assert.equal(text(await store.get('out/fresh.bin')), 'partial-rest');
  assert.deepEqual(r1, { key: 'out/data.bin', size: 21, sha256: createHash('sha256').update('new-part-1,new-part-2').digest('hex') });
  assert.equal(r2.size, 12);

  // A body that fails half way: the old object stays, no temp file is left.
  await assert.rejects(store.putStream('out/data.bin', (async function* () {
    yield Buffer.from('broken');
    throw new Error('source died');
  })()), /source died/);
  assert.equal(text(await store.get('out/data.bin')), 'new-part-1,new-part-2');
  await assert.rejects(store.putStream('out/never.bin', (async function* () {
    yield Buffer.from('broken');
    throw new Error('source died');
  })()));
  assert.equal(await store.exists('out/never.bin'), false);

  // Over the cap: 413 as soon as the count passes it, nothing stored.
  let pulled = 0;
  await rejectsWith(store.putStream('out/big.bin', (async function* () {
    for (let i = 0; i < 100; i++) { pulled++; yield Buffer.alloc(1024, 1); }
  })(), { maxBytes: 4096 }), 413, 'OBJECT_TOO_LARGE');
  assert.equal(pulled, 5, 'stops reading at the first chunk over the cap');
  assert.equal(await store.exists('out/big.bin'), false);
  const exact = await store.putStream('out/exact.bin', (async function* () { yield Buffer.alloc(4096, 2); })(), { maxBytes: 4096 });
  assert.equal(exact.size, 4096);

  assert.deepEqual((await readdir(join(dir, 'out'))).sort(), ['data.bin', 'exact.bin', 'fresh.bin']);
});

test('list: recursive, sorted by bytes, with sizes, prefix-safe', async (t) => {
  const dir = await tempDir(t);
  const store = new FileObjectStore(dir);
  const keys = ['a/b/2', 'a/b/1', 'a/bc/3', 'a/b.txt', 'a/b/c/d', 'b', 'a/b/Z', 'a/b/é', 'a/b/_SUCCESS'];
  for (const k of keys) await store.put(k, k);
  const ab = await store.list('a/b');
  assert.deepEqual(ab.map((o) => o.key), ['a/b/1', 'a/b/2', 'a/b/Z', 'a/b/_SUCCESS', 'a/b/c/d', 'a/b/é']);
  assert.deepEqual(await store.list('a/b/'), ab);
  assert.deepEqual(ab.map((o) => o.size), [5, 5, 5, 12, 7, 6]);
  assert.deepEqual((await store.list('')).map((o) => o.key), ['a/b.txt', 'a/b/1', 'a/b/2', 'a/b/Z', 'a/b/_SUCCESS', 'a/b/c/d', 'a/b/é', 'a/bc/3', 'b']);
  assert.deepEqual(await store.list('a/b/1'), [], 'an object is not a prefix');
  assert.deepEqual(await store.list('nothing/here'), []);
  // names Trace could not address are skipped, not returned
  await writeFile(join(dir, 'a', 'b', 'bad\\name'), 'x');
  await writeFile(join(dir, 'a', 'b', '.trace-tmp-leftover'), 'x');
  assert.deepEqual((await store.list('a/b')).map((o) => o.key), ab.map((o) => o.key));

  assert.equal(await store.deletePrefix('a/b'), 6);
  assert.deepEqual((await store.list('')).map((o) => o.key), ['a/b.txt', 'a/bc/3', 'b']);
});

test('a key cannot be both an object and a prefix (409)', async (t) => {
  const dir = await tempDir(t);
  const store = new FileObjectStore(dir);
  await store.put('a', '1');
  await rejectsWith(store.put('a/b', '2'), 409, 'OBJECT_KEY_CONFLICT');
  await store.put('d/e', '3');
  await rejectsWith(store.put('d', '4'), 409, 'OBJECT_KEY_CONFLICT');
  assert.deepEqual((await store.list('')).map((o) => o.key), ['a', 'd/e']);
  assert.deepEqual(await tree(dir), ['a', 'd', 'd/e']);
});

test('symlinks that leave the root are refused; ones that stay inside are followed', async (t) => {
  const dir = await tempDir(t);
  const root = join(dir, 'objects');
  const outside = join(dir, 'outside');
  await mkdir(outside);
  await writeFile(join(outside, 'secret.txt'), 'top secret');
  const store = new FileObjectStore(root);
  await symlink(outside, join(root, 'link'));
  await symlink(join(outside, 'secret.txt'), join(root, 'secret-file'));
  await symlink('../outside/secret.txt', join(root, 'relative-link'));

  await rejectsWith(store.get('link/secret.txt'), 403, 'OBJECT_PATH_ESCAPE');
  await rejectsWith(store.getStream('link/secret.txt'), 403, 'OBJECT_PATH_ESCAPE');
  await rejectsWith(store.stat('link/secret.txt'), 403, 'OBJECT_PATH_ESCAPE');
  await rejectsWith(store.exists('link/secret.txt'), 403, 'OBJECT_PATH_ESCAPE');
  await rejectsWith(store.localPath('link/secret.txt'), 403, 'OBJECT_PATH_ESCAPE');
  await rejectsWith(store.get('secret-file'), 403, 'OBJECT_PATH_ESCAPE');
  await rejectsWith(store.get('relative-link'), 403, 'OBJECT_PATH_ESCAPE');
  await rejectsWith(store.put('link/planted.txt', 'x'), 403, 'OBJECT_PATH_ESCAPE');
  await rejectsWith(store.put('link/deep/er/planted.txt', 'x'), 403, 'OBJECT_PATH_ESCAPE');
  await rejectsWith(store.delete('link/secret.txt'), 403, 'OBJECT_PATH_ESCAPE');
  await rejectsWith(store.list('link'), 403, 'OBJECT_PATH_ESCAPE');
  assert.deepEqual(await store.list(''), [], 'escaping links are not listed');
  assert.deepEqual((await readdir(outside)).sort(), ['secret.txt'], 'nothing was written outside');
  assert.equal(await readFile(join(outside, 'secret.txt'), 'utf8'), 'top secret');

  // Writing to a key that is an escaping file symlink replaces the link, never the target.
  await store.put('secret-file', 'mine');
  assert.equal(text(await store.get('secret-file')), 'mine');
  assert.equal(await readFile(join(outside, 'secret.txt'), 'utf8'), 'top secret');

  // Links that stay inside the root work.
  await store.put('real/data.txt', 'inside');
  await symlink(join(root, 'real'), join(root, 'alias-dir'));
  await symlink(join(root, 'real', 'data.txt'), join(root, 'alias-file'));
  assert.equal(text(await store.get('alias-dir/data.txt')), 'inside');
  assert.equal(text(await store.get('alias-file')), 'inside');
  assert.equal(await store.localPath('alias-file'), join(root, 'real', 'data.txt'));
  const listed = (await store.list('')).map((o) => o.key);
  assert.deepEqual(listed, ['alias-file', 'real/data.txt', 'secret-file'], 'symlinked files inside count, symlinked directories are not walked');

  // A root that is itself reached through a symlink is fine (its real path is the root).
  await symlink(root, join(dir, 'root-alias'));
  const viaAlias = new FileObjectStore(join(dir, 'root-alias'));
  assert.equal(viaAlias.rootDir, root);
  assert.equal(text(await viaAlias.get('real/data.txt')), 'inside');
});

test('child views are confined to their prefix, symlinks included', async (t) => {
  const dir = await tempDir(t);
  const store = new FileObjectStore(dir);
  const a = store.child('tenants/a');
  const b = store.child('tenants/b/');
  assert.equal(a.rootUrl, `file://${dir}/tenants/a/`);
  await a.put('x/1.txt', 'a1');
  await b.put('x/1.txt', 'b1');
  assert.deepEqual((await store.list('tenants')).map((o) => o.key), ['tenants/a/x/1.txt', 'tenants/b/x/1.txt']);
  assert.deepEqual((await a.list('')).map((o) => o.key), ['x/1.txt']);
  assert.equal(text(await a.get('x/1.txt')), 'a1');
  assert.equal(a.url('x/1.txt'), store.url('tenants/a/x/1.txt'));
  const nested = a.child('x');
  assert.equal(text(await nested.get('1.txt')), 'a1');
  await rejectsWith(a.get('../b/x/1.txt'), 400, 'INVALID_OBJECT_KEY');

  // A symlink inside a's prefix pointing at b's objects stays inside the store but leaves a's view.
  await symlink(join(dir, 'tenants', 'b'), join(dir, 'tenants', 'a', 'peek'));
  await rejectsWith(a.get('peek/x/1.txt'), 403, 'OBJECT_PATH_ESCAPE');
  await rejectsWith(a.put('peek/x/2.txt', 'planted'), 403, 'OBJECT_PATH_ESCAPE');
  assert.equal(text(await store.get('tenants/a/peek/x/1.txt')), 'b1', 'the whole store may follow it');
  assert.equal(await b.exists('x/2.txt'), false);

  assert.equal(await a.deletePrefix('x'), 1);
  assert.equal(text(await b.get('x/1.txt')), 'b1');
});

test('large objects stream in and out with a matching hash', async (t) => {
  const dir = await tempDir(t);
  const store = new FileObjectStore(dir);
  const chunk = Buffer.alloc(256 * 1024);
  for (let i = 0; i < chunk.length; i++) chunk[i] = (i * 31) & 0xff;
  const hash = createHash('sha256');
  for (let i = 0; i < 12; i++) hash.update(chunk);
  const res = await store.putStream('big/blob.bin', (async function* () { for (let i = 0; i < 12; i++) yield chunk; })());
  assert.equal(res.size, 12 * chunk.length);
  assert.equal(res.sha256, hash.digest('hex'));
  const back = createHash('sha256');
  let n = 0;
  for await (const c of await store.getStream('big/blob.bin')) { back.update(c as Buffer); n += (c as Buffer).length; }
  assert.equal(n, res.size);
  assert.equal(back.digest('hex'), res.sha256);
  assert.equal((await store.get('big/blob.bin')).length, res.size);
});

test('concurrent writes and deletes in one directory do not lose objects', async (t) => {
  const dir = await tempDir(t);
  const store = new FileObjectStore(dir);
  for (let i = 0; i < 40; i++) {
    await store.put('c/only', 'x');
    // deleting the last object prunes c/ while another write into c/ is in flight
    await Promise.all([store.delete('c/only'), store.put(`c/other-${i}`, 'y'), store.put('c/only2', 'z'), store.delete('c/only2')]);
    assert.equal(text(await store.get(`c/other-${i}`)), 'y');
    await store.delete(`c/other-${i}`);
    await store.delete('c/only2');
  }
  assert.deepEqual(await store.list(''), []);
  assert.deepEqual(await tree(dir), []);
});
