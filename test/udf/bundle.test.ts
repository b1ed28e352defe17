import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { deflateRawSync } from 'node:zlib';
import { TraceError } from '../../src/core/errors.js';
import { extractBundle, inspectBundle } from '../../src/udf/bundle.js';
import type { BundleCaps, BundleManifest } from '../../src/udf/manifest.js';
import { craftZip, goodBundle, manifestEntry, manifestFor, sha256, yazlZip, type BundleEntry, type CraftEntry } from './support/zips.js';

const ROOT = new URL('../../', import.meta.url).pathname;
let work: string;
before(() => {
  work = mkdtempSync(join(tmpdir(), 'trace-udf-bundle-test-'));
});
after(() => rmSync(work, { recursive: true, force: true }));

function freshParent(): string {
  return mkdtempSync(join(work, 'dest-'));
}

const INDEX: BundleEntry = { name: 'index.js', data: 'console.log("{}")\n' };
const UTIL: BundleEntry = { name: 'lib/util.js', data: 'module.exports = 42;\n' };

async function expectInvalid(p: Promise<unknown>, match: RegExp): Promise<TraceError> {
  try {
    await p;
  } catch (e) {
    assert.ok(e instanceof TraceError, `expected TraceError, got ${String(e)}`);
    assert.equal(e.status, 422);
    assert.equal(e.code, 'BUNDLE_INVALID');
    const text = (e.problems ?? []).map((x) => `${x.path}: ${x.message}`).join('\n');
    assert.match(text, match);
    return e;
  }
  assert.fail('expected the bundle to be refused');
}

/**
 * The bundle must be refused by inspect and by extract, and extract must leave the destination
 * parent exactly as empty as it found it.
 */
async function assertRefused(zip: Buffer, match: RegExp, manifest?: unknown, caps?: Partial<BundleCaps>): Promise<void> {
  await expectInvalid(inspectBundle(zip, caps), match);
  const parent = freshParent();
  const m = (manifest ?? manifestFor([INDEX])) as BundleManifest;
  await expectInvalid(extractBundle(zip, m, parent, caps), /./);
  assert.deepEqual(readdirSync(parent), [], 'nothing may be written for a refused bundle');
  // The same refusal through a file path.
  const file = join(work, `z-${Math.random().toString(36).slice(2)}.zip`);
  writeFileSync(file, zip);
  await expectInvalid(inspectBundle(file, caps), match);
}

/** A crafted bundle: the given entries plus a manifest that declares `declared`. */
function crafted(entries: CraftEntry[], declared: BundleEntry[], opts: Parameters<typeof manifestEntry>[1] = {}): Buffer {
  return craftZip([manifestEntry(declared, opts), ...entries]).zip;
}

describe('inspectBundle and extractBundle: well-formed bundles', () => {
  it('inspects a yazl bundle and returns the manifest and the zip hash', async () => {
    const zip = await goodBundle([INDEX, UTIL]);
    const got = await inspectBundle(zip);
    assert.equal(got.sha256, sha256(zip));
    assert.equal(got.zipBytes, zip.length);
    assert.equal(got.manifest.entrypoint, 'index.js');
    assert.deepEqual(got.manifest.files.map((f) => f.path), ['index.js', 'lib/util.js']);
    const file = join(work, 'good.zip');
    writeFileSync(file, zip);
    assert.equal((await inspectBundle(file)).sha256, sha256(zip));
  });

  it('extracts exactly the declared files into a fresh 0700 directory', async () => {
    const zip = await goodBundle([INDEX, UTIL]);
    const { manifest } = await inspectBundle(zip);
    const parent = freshParent();
    const out = await extractBundle(zip, manifest, parent);
    assert.equal(readdirSync(parent).length, 1);
    assert.ok(out.dir.startsWith(parent));
    assert.equal(statSync(out.dir).mode & 0o777, 0o700);
    assert.deepEqual(readdirSync(out.dir).sort(), ['index.js', 'lib']);
    assert.equal(readFileSync(join(out.dir, 'lib/util.js'), 'utf8'), UTIL.data);
    assert.equal(statSync(join(out.dir, 'index.js')).mode & 0o777, 0o600);
    assert.equal(out.files, 2);
    assert.equal(out.bytes, Buffer.byteLength(String(INDEX.data)) + Buffer.byteLength(String(UTIL.data)));
  });

  it('accepts stored entries, empty files and directory entries of declared files', async () => {
    const empty = { name: 'lib/empty.txt', data: '' };
    const files = [INDEX, UTIL, empty];
    const zip = await yazlZip([{ name: 'bundle_manifest.json', data: JSON.stringify(manifestFor(files)) }, ...files], { dirs: ['lib'], compress: false });
    const { manifest } = await inspectBundle(zip);
    const out = await extractBundle(zip, manifest, freshParent());
    assert.equal(readFileSync(join(out.dir, 'lib/empty.txt'), 'utf8'), '');
  });

  it('refuses to extract with a manifest other than the one inside the zip', async () => {
    const zip = await goodBundle([INDEX]);
    const other = manifestFor([INDEX], { runtime: 'python' }) as unknown as BundleManifest;
    const parent = freshParent();
    await expectInvalid(extractBundle(zip, other, parent), /differs from the manifest/);
    assert.deepEqual(readdirSync(parent), []);
  });
});

describe('bundles made with the author tools', () => {
  it('make-manifest + python zipfile (and zip, when installed) produce accepted bundles', async () => {
    const src = mkdtempSync(join(work, 'author-'));
    mkdirSync(join(src, 'lib'));
    writeFileSync(join(src, 'index.mjs'), 'import x from "./lib/x.mjs"; process.stdout.write(JSON.stringify({ x }));');
    writeFileSync(join(src, 'lib', 'x.mjs'), 'export default 1;');
    const mm = spawnSync(process.execPath, [join(ROOT, 'sdk/make-manifest.mjs'), src, '--runtime', 'node', '--entrypoint', 'index.mjs', '--env', 'MY_MODE'], { encoding: 'utf8' });
    assert.equal(mm.status, 0, mm.stderr);
    const manifest = JSON.parse(readFileSync(join(src, 'bundle_manifest.json'), 'utf8'));
    assert.deepEqual(manifest.files.map((f: { path: string }) => f.path), ['index.mjs', 'lib/x.mjs']);
    assert.deepEqual(manifest.env_allowlist, ['MY_MODE']);
    const tools: Array<[string, string[]]> = [['python3', ['-m', 'zipfile', '-c', join(work, 'py.zip'), ...readdirSync(src)]]];
    if (spawnSync('zip', ['-v']).status === 0) tools.push(['zip', ['-r', '-X', join(work, 'zip.zip'), '.']]);
    for (const [cmd, args] of tools) {
      const z = spawnSync(cmd, args, { cwd: src, encoding: 'utf8' });
      assert.equal(z.status, 0, z.stderr);
      const zipPath = args.find((a) => a.endsWith('.zip'))!;
      const got = await inspectBundle(zipPath);
      assert.deepEqual(got.manifest, manifest);
      const out = await extractBundle(zipPath, got.manifest, freshParent());
      assert.equal(readFileSync(join(out.dir, 'lib/x.mjs'), 'utf8'), 'export default 1;');
    }
  });

  it('make-manifest refuses symlinks and a missing entrypoint', async () => {
    const src = mkdtempSync(join(work, 'author-bad-'));
    writeFileSync(join(src, 'index.mjs'), '');
    symlinkSync('/etc/passwd', join(src, 'link'));
    const r = spawnSync(process.execPath, [join(ROOT, 'sdk/make-manifest.mjs'), src, '--runtime', 'node', '--entrypoint', 'index.mjs'], { encoding: 'utf8' });
    assert.equal(r.status, 2);
    assert.match(r.stderr, /symlink/);
    rmSync(join(src, 'link'));
    const r2 = spawnSync(process.execPath, [join(ROOT, 'sdk/make-manifest.mjs'), src, '--runtime', 'node', '--entrypoint', 'main.mjs'], { encoding: 'utf8' });
    assert.equal(r2.status, 2);
    assert.match(r2.stderr, /entrypoint/);
  });
});

describe('hostile bundles are refused with nothing written', () => {
  it('zip-slip ../x, as an undeclared entry and as a declared one', async () => {
    await assertRefused(crafted([{ name: 'index.js', data: INDEX.data }, { name: '../x', data: 'pwned' }], [INDEX]), /zip\["\.\.\/x"\].*"\.\."/);
    const slip = { name: '../../x.js', data: 'pwned' };
    await assertRefused(crafted([{ name: slip.name, data: slip.data }], [slip], { entrypoint: slip.name }), /"\.\."/);
  });

  it('absolute paths', async () => {
    const abs = { name: '/tmp/evil.js', data: 'x' };
    await assertRefused(crafted([{ name: 'index.js', data: INDEX.data }, { name: abs.name, data: abs.data }], [INDEX]), /absolute/);
  });

  it('backslash paths', async () => {
    await assertRefused(crafted([{ name: 'index.js', data: INDEX.data }, { name: '..\\evil.js', data: 'x' }], [INDEX]), /backslash/);
  });

  it('symlink entries', async () => {
    const link = { name: 'link.js', data: '/etc/passwd' };
    const zip = crafted([{ name: 'index.js', data: INDEX.data }, { name: link.name, data: link.data, method: 0, externalAttrs: (0o120777 << 16) >>> 0 }], [INDEX, link]);
    await assertRefused(zip, /symbolic link/, manifestFor([INDEX, link]));
  });

  it('device and other special entries', async () => {
    const dev = { name: 'dev.js', data: '' };
    await assertRefused(crafted([{ name: 'index.js', data: INDEX.data }, { name: dev.name, data: dev.data, externalAttrs: (0o020644 << 16) >>> 0 }], [INDEX, dev]), /not a regular file/);
  });

  it('undeclared files', async () => {
    await assertRefused(crafted([{ name: 'index.js', data: INDEX.data }, { name: 'extra.js', data: 'x' }], [INDEX]), /zip\["extra\.js"\].*not declared/);
  });

  it('undeclared directories', async () => {
    await assertRefused(crafted([{ name: 'index.js', data: INDEX.data }, { name: 'stray/', data: '', method: 0, externalAttrs: (0o040755 << 16) >>> 0 }], [INDEX]), /holds no declared file/);
  });

  it('missing declared files', async () => {
    await assertRefused(crafted([{ name: 'index.js', data: INDEX.data }], [INDEX, UTIL]), /files\[1\]\.path.*missing/);
  });

  it('hash mismatch', async () => {
    const liar = { name: 'index.js', data: 'console.log("tampered")' };
    const declared = { name: 'index.js', data: 'console.log("original")' };
    assert.equal(Buffer.byteLength(liar.data), Buffer.byteLength(declared.data));
    const parent = freshParent();
    const zip = crafted([{ name: liar.name, data: liar.data }], [declared]);
    // Structure and manifest are fine, so inspect passes; extraction verifies the content.
    const { manifest } = await inspectBundle(zip);
    await expectInvalid(extractBundle(zip, manifest, parent), /SHA-256 does not match/);
    assert.deepEqual(readdirSync(parent), []);
  });

  it('a hash mismatch in a later file leaves nothing from the earlier ones', async () => {
    const bad = { name: 'z.js', data: 'BBBB' };
    const zip = crafted([{ name: 'index.js', data: INDEX.data }, { name: 'z.js', data: 'AAAA' }], [INDEX, bad]);
    const { manifest } = await inspectBundle(zip);
    const parent = freshParent();
    await expectInvalid(extractBundle(zip, manifest, parent), /zip\["z\.js"\].*SHA-256/);
    assert.deepEqual(readdirSync(parent), []);
  });

  it('oversize: declared sizes over the caps', async () => {
    const big = { name: 'index.js', data: 'x'.repeat(2000) };
    await assertRefused(crafted([{ name: big.name, data: big.data }], [big]), /declares 2000 bytes; the limit is 1000/, manifestFor([big]), { maxFileBytes: 1000 });
    await assertRefused(crafted([{ name: big.name, data: big.data }], [big]), /add up to/, manifestFor([big]), { maxTotalBytes: 1000 });
    await assertRefused(await goodBundle([big]), /zip.*at most 100 bytes/, manifestFor([big]), { maxZipBytes: 100 });
  });

  it('oversize: a deflate bomb whose headers claim a small size', async () => {
    const real = Buffer.alloc(50 * 1024 * 1024, 0); // 50 MiB of zeros deflates to ~50 KiB
    const bombData = deflateRawSync(real);
    assert.ok(bombData.length < 100 * 1024);
    const declared = { name: 'index.js', data: 'x'.repeat(100) };
    const zip = crafted([{ name: 'index.js', data: declared.data, compressed: bombData }], [declared]);
    const { manifest } = await inspectBundle(zip); // headers agree with the manifest
    const parent = freshParent();
    const t0 = Date.now();
    await expectInvalid(extractBundle(zip, manifest, parent), /inflate|too many bytes/);
    assert.ok(Date.now() - t0 < 5000, 'the bomb must be stopped early, not inflated fully');
    assert.deepEqual(readdirSync(parent), []);
  });

  it('oversize: a bomb whose headers claim the real (huge) size is refused before inflating', async () => {
    const declared = { name: 'index.js', data: 'x' };
    const zip = crafted([{ name: 'index.js', data: 'x', compressed: deflateRawSync(Buffer.alloc(5_000_000)), uncompressedSize: 5_000_000 }], [declared]);
    await assertRefused(zip, /declares 5000000 bytes; the limit is 1000000/, manifestFor([declared]), { maxFileBytes: 1_000_000 });
  });

  it('oversize manifest and too many entries', async () => {
    const zip = await goodBundle([INDEX]);
    await assertRefused(zip, /bundle_manifest\.json.*limit is 50|at most 50 bytes/, undefined, { maxManifestBytes: 50 });
    await assertRefused(await goodBundle([INDEX, UTIL]), /3 entries; the limit is 2/, undefined, { maxEntries: 2 });
  });

  it('duplicate names', async () => {
    await assertRefused(crafted([{ name: 'index.js', data: INDEX.data }, { name: 'index.js', data: 'evil()' }], [INDEX]), /appears more than once/);
  });

  it('case-fold duplicate names', async () => {
    await assertRefused(crafted([{ name: 'index.js', data: INDEX.data }, { name: 'INDEX.js', data: 'evil()' }], [INDEX]), /letter case/);
    await assertRefused(crafted([{ name: 'Bundle_Manifest.json', data: '{}' }, { name: 'index.js', data: INDEX.data }], [INDEX]), /letter case/);
  });

  it('encrypted entries', async () => {
    await assertRefused(crafted([{ name: 'index.js', data: INDEX.data, flags: 0x801 }], [INDEX]), /encrypted/);
  });

  it('unsupported compression methods', async () => {
    for (const method of [12, 14, 93, 99]) {
      await assertRefused(crafted([{ name: 'index.js', data: INDEX.data, method }], [INDEX]), new RegExp(`compression method ${method}`));
    }
  });

  it('nested archives, by name and by content', async () => {
    const inner = await yazlZip([{ name: 'hidden.js', data: 'evil()' }]);
    const byName = { name: 'vendor/dep.zip', data: inner };
    await assertRefused(crafted([{ name: 'index.js', data: INDEX.data }, { name: byName.name, data: inner }], [INDEX, byName]), /nested archives/, manifestFor([INDEX, byName]));
    const disguised = { name: 'vendor/dep.js', data: inner };
    const zip = crafted([{ name: 'index.js', data: INDEX.data }, { name: disguised.name, data: inner }], [INDEX, disguised]);
    const { manifest } = await inspectBundle(zip);
    const parent = freshParent();
    await expectInvalid(extractBundle(zip, manifest, parent), /is an archive/);
    assert.deepEqual(readdirSync(parent), []);
    const gz = { name: 'data.js', data: Buffer.concat([Buffer.from([0x1f, 0x8b, 0x08]), Buffer.alloc(20)]) };
    const gzZip = crafted([{ name: 'index.js', data: INDEX.data }, { name: gz.name, data: gz.data }], [INDEX, gz]);
    await expectInvalid(extractBundle(gzZip, (await inspectBundle(gzZip)).manifest, freshParent()), /is an archive/);
  });

  it('overlapping entries: an entry hidden inside another entry\'s data', async () => {
    // A is stored; its data contains a complete local header + data for B; the central
    // directory points B into the middle of A (the "overlapping files" zip bomb shape).
    const bData = Buffer.from('evil()');
    const bEntry: CraftEntry = { name: 'b.js', data: bData, method: 0 };
    const bLocal = Buffer.concat([
      (await import('./support/zips.js')).localHeader(bEntry, bData, bData),
      bData,
    ]);
    const a = { name: 'a.js', data: bLocal };
    const b = { name: 'b.js', data: bData };
    const manifest = manifestEntry([a, b], { entrypoint: 'a.js' });
    // Manifest first, then A (stored). B's local header starts 30 + len("a.js") bytes into A.
    const first = craftZip([manifest, { name: 'a.js', data: bLocal, method: 0 }]);
    const aOffset = first.offsets[1]!;
    const zip = craftZip([manifest, { name: 'a.js', data: bLocal, method: 0 }, { name: 'b.js', data: bData, method: 0, centralOnly: true, offsetOverride: aOffset + 30 + 4 }]).zip;
    await assertRefused(zip, /overlaps/, manifestFor([a, b], { entrypoint: 'a.js' }));
  });

  it('overlapping entries: two central records pointing at the same local header', async () => {
    const twin = { name: 'index2.js', data: INDEX.data };
    const manifest = manifestEntry([INDEX, twin]);
    const first = craftZip([manifest, { name: 'index.js', data: INDEX.data }]);
    const zip = craftZip([manifest, { name: 'index.js', data: INDEX.data }, { name: 'index2.js', localName: 'index.js', data: INDEX.data, centralOnly: true, offsetOverride: first.offsets[1]! }]).zip;
    await assertRefused(zip, /zip\["index2\.js"\]: overlaps the bytes of zip\["index\.js"\]|zip\["index\.js"\]: overlaps the bytes of zip\["index2\.js"\]/, manifestFor([INDEX, twin]));
  });

  it('names that differ between the local and central headers', async () => {
    await assertRefused(crafted([{ name: 'index.js', localName: '../../etc/x', data: INDEX.data }], [INDEX]), /local header names a different file/);
  });

  it('a second name in a Unicode Path extra field', async () => {
    const name = Buffer.from('index.js');
    const uni = Buffer.from('../evil.js');
    const data = Buffer.alloc(5 + uni.length);
    data.writeUInt8(1, 0);
    data.writeUInt32LE((await import('node:zlib')).crc32(name), 1);
    uni.copy(data, 5);
    const field = Buffer.concat([Buffer.from([0x75, 0x70]), Buffer.from([data.length & 0xff, data.length >> 8]), data]);
    await assertRefused(crafted([{ name: 'index.js', data: INDEX.data, centralExtra: field }], [INDEX]), /second \(Unicode path\) name/);
  });

  it('non-UTF-8 names and names with control characters', async () => {
    await assertRefused(crafted([{ name: 'index.js', data: INDEX.data }, { name: Buffer.from([0x61, 0xff, 0x2e, 0x6a, 0x73]), data: 'x' }], [INDEX]), /not valid UTF-8/);
    await assertRefused(crafted([{ name: 'index.js', data: INDEX.data }, { name: 'a\u0001.js', data: 'x' }], [INDEX]), /control/);
  });

  it('central directory with hidden records, trailing junk, or zip64 markers', async () => {
    const hidden = craftZip([manifestEntry([INDEX]), { name: 'index.js', data: INDEX.data }], { hiddenCentral: Buffer.alloc(46, 0x41) }).zip;
    await assertRefused(hidden, /central directory size does not match its records/);
    const trailing = craftZip([manifestEntry([INDEX]), { name: 'index.js', data: INDEX.data }], { trailing: Buffer.from('junk') }).zip;
    await assertRefused(trailing, /Invalid comment length|bytes after the end/);
    await assertRefused(Buffer.from('not a zip at all'), /not a (readable )?zip/);
  });

  it('stored entries whose sizes disagree, and local headers whose sizes disagree', async () => {
    await assertRefused(crafted([{ name: 'index.js', data: INDEX.data, method: 0, compressedSize: 3 }], [INDEX]), /size mismatch for stored file/);
    const e: CraftEntry = { name: 'index.js', data: INDEX.data };
    const zip = craftZip([manifestEntry([INDEX]), e]).zip;
    // Corrupt the local header's CRC (offset 14 of the second local header).
    const second = craftZip([manifestEntry([INDEX]), e]).offsets[1]!;
    const bad = Buffer.from(zip);
    bad.writeUInt32LE(0xdeadbeef, second + 14);
    await assertRefused(bad, /local header sizes or checksum differ/);
  });

  it('a directory flag on a file name', async () => {
    await assertRefused(crafted([{ name: 'index.js', data: INDEX.data, externalAttrs: 0x10 }], [INDEX]), /marked as a directory/);
  });
});
