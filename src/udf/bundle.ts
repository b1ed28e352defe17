/**
 * Hostile-zip-proof reading of UDF bundles (specs/udf_bundle_manifest.md).
 *
 * `inspectBundle` checks the whole archive structure and the manifest without writing anything:
 * the end record and central directory (no zip64, no multi-disk, no trailing or hidden central
 * records), every entry's name, flags, method and file type, the local header of every entry
 * (same name, method and flags as the central record), entry ranges (no two entries share or
 * overlap bytes), and the exact match between the zip's files and the manifest's `files[]`.
 *
 * `extractBundle` inspects again, then inflates every declared file once to verify its byte
 * count, SHA-256 and CRC-32 (counting inflated bytes and aborting past the declared size, so a
 * deflate bomb stops at the first chunk over), and only when everything verified writes the
 * files into a fresh `mkdtemp` directory with `wx` (O_CREAT|O_EXCL), verifying every byte again
 * as it writes. Any failure removes that directory. Nothing outside it is ever touched: target
 * paths come only from validated manifest paths.
 *
 * Every refusal is TraceError 422 `BUNDLE_INVALID` with `problems` naming the manifest field or
 * the zip entry (`zip["../x"]`).
 */
import { createHash } from 'node:crypto';
import { close as fsClose, fstat, open as fsOpen, read as fsRead } from 'node:fs';
import { chmod, lstat, mkdir, mkdtemp, open, rm } from 'node:fs/promises';
import { join, resolve, sep } from 'node:path';
import { promisify } from 'node:util';
import { crc32 } from 'node:zlib';
import yauzl from 'yauzl';
import type { Entry, LocalFileHeader, Options as YauzlOptions, ZipFile } from 'yauzl';
import { canonicalJson } from '../core/ids.js';
import { isTraceError, unprocessable, type Problem } from '../core/errors.js';
import {
  MANIFEST_FILE,
  foldKey,
  isArchiveName,
  parseManifestBytes,
  pathProblem,
  resolveCaps,
  type BundleCaps,
  type BundleFile,
  type BundleManifest,
} from './manifest.js';

export type ZipSource = string | Buffer;

export interface InspectedBundle {
  manifest: BundleManifest;
  /** Lowercase hex SHA-256 of the zip bytes. */
  sha256: string;
  zipBytes: number;
}

export interface ExtractedBundle {
  /** The fresh private directory (mode 0700) holding exactly the declared files. */
  dir: string;
  manifest: BundleManifest;
  files: number;
  bytes: number;
}

const MAX_PROBLEMS = 50;

// General purpose bit flags.
const FLAG_ENCRYPTED = 0x0001;
const FLAG_DATA_DESCRIPTOR = 0x0008;
const FLAG_PATCHED = 0x0020;
const FLAG_STRONG_ENCRYPTION = 0x0040;
const FLAG_UTF8 = 0x0800;
const FLAG_MASKED_HEADERS = 0x2000;
const FLAGS_THAT_MUST_MATCH = FLAG_ENCRYPTED | FLAG_PATCHED | FLAG_STRONG_ENCRYPTION | FLAG_UTF8 | FLAG_MASKED_HEADERS;

const METHOD_STORED = 0;
const METHOD_DEFLATE = 8;

const EXTRA_UNICODE_PATH = 0x7075;

const S_IFMT = 0o170000;
const S_IFREG = 0o100000;
const S_IFDIR = 0o040000;
const S_IFLNK = 0o120000;

const SIG_EOCD = 0x06054b50;
const SIG_ZIP64_LOCATOR = 0x07064b50;

/** The problem collector: stops listing after MAX_PROBLEMS but remembers how many there were. */
class Problems {
  readonly list: Problem[] = [];
  private dropped = 0;
  add(path: string, message: string): void {
    if (this.list.length < MAX_PROBLEMS) this.list.push({ path, message });
    else this.dropped++;
  }
  get size(): number {
    return this.list.length + this.dropped;
  }
  throwIfAny(): void {
    if (this.size === 0) return;
    const problems = [...this.list];
    if (this.dropped > 0) problems.push({ path: 'zip', message: `and ${this.dropped} more problems` });
    throw unprocessable('UDF bundle is invalid', problems, 'BUNDLE_INVALID');
  }
}

function invalid(path: string, message: string): never {
  throw unprocessable('UDF bundle is invalid', [{ path, message }], 'BUNDLE_INVALID');
}

/** How a zip entry is named in problems: its decoded name, JSON-escaped and shortened. */
function entryLabel(name: string | null, index: number): string {
  if (name === null) return `zip[#${index}]`;
  const short = name.length > 200 ? `${name.slice(0, 200)}...` : name;
  return `zip[${JSON.stringify(short)}]`;
}

// ---------------------------------------------------------------------------------------------
// Opening a zip from a path or a buffer, with raw positional reads on the same bytes.

interface ZipHandle {
  zip: ZipFile;
  size: number;
  readAt(position: number, length: number): Promise<Buffer>;
  close(): void;
}

const YAUZL_OPTIONS: YauzlOptions = {
  lazyEntries: true,
  autoClose: false,
  // Raw names: yauzl then neither rewrites backslashes nor honours the Info-ZIP Unicode Path
  // extra field (a second name other tools would use). Names are decoded and checked here.
  decodeStrings: false,
  validateEntrySizes: true,
  strictFileNames: true,
};

const pOpen = promisify(fsOpen);
const pClose = promisify(fsClose);
const pFstat = promisify(fstat);

function readFd(fd: number, buf: Buffer, position: number): Promise<number> {
  return new Promise((res, rej) => {
    fsRead(fd, buf, 0, buf.length, position, (err, n) => (err ? rej(err) : res(n)));
  });
}

async function openZip(source: ZipSource, caps: BundleCaps): Promise<ZipHandle> {
  if (Buffer.isBuffer(source)) {
    if (source.length > caps.maxZipBytes) invalid('zip', `must be at most ${caps.maxZipBytes} bytes`);
    const zip = await openYauzl(() => yauzl.fromBufferPromise(source, YAUZL_OPTIONS));
    return {
      zip,
      size: source.length,
      readAt: async (position, length) => {
        if (position < 0 || position + length > source.length) invalid('zip', 'is truncated');
        return source.subarray(position, position + length);
      },
      close: () => zip.close(),
    };
  }
  // One descriptor for everything: yauzl reads through it and owns closing it (it closes the fd
  // when its last reference goes), so every raw read here happens while the ZipFile is open.
  const fd = await pOpen(source, 'r');
  let zip: ZipFile;
  let size: number;
  try {
    size = (await pFstat(fd)).size;
    if (size > caps.maxZipBytes) invalid('zip', `must be at most ${caps.maxZipBytes} bytes`);
    zip = await openYauzl(() => yauzl.fromFdPromise(fd, YAUZL_OPTIONS));
  } catch (e) {
    await pClose(fd).catch(() => undefined);
    throw e;
  }
  return {
    zip,
    size,
    readAt: async (position, length) => {
      const buf = Buffer.alloc(length);
      let done = 0;
      while (done < length) {
        const n = await readFd(fd, buf.subarray(done), position + done);
        if (n === 0) invalid('zip', 'is truncated');
        done += n;
      }
      return buf;
    },
    close: () => zip.close(),
  };
}

async function openYauzl(fn: () => Promise<ZipFile>): Promise<ZipFile> {
  try {
    return await fn();
  } catch (e) {
    invalid('zip', `is not a readable zip archive (${errText(e)})`);
  }
}

function errText(e: unknown): string {
  const msg = e instanceof Error ? e.message : String(e);
  return JSON.stringify(msg.slice(0, 200)).slice(1, -1);
}

async function sha256OfSource(source: ZipSource, handle: ZipHandle): Promise<string> {
  const h = createHash('sha256');
  if (Buffer.isBuffer(source)) return h.update(source).digest('hex');
  const step = 1024 * 1024;
  for (let pos = 0; pos < handle.size; pos += step) {
    h.update(await handle.readAt(pos, Math.min(step, handle.size - pos)));
  }
  return h.digest('hex');
}

// ---------------------------------------------------------------------------------------------
// Structure.

interface EndRecord {
  entryCount: number;
  cdOffset: number;
  cdSize: number;
}

/** Finds and checks the end-of-central-directory record the same way yauzl does (last match). */
async function readEndRecord(handle: ZipHandle): Promise<EndRecord> {
  const tailLen = Math.min(handle.size, 22 + 0xffff + 20);
  const tailStart = handle.size - tailLen;
  const tail = await handle.readAt(tailStart, tailLen);
  for (let i = tail.length - 22; i >= 0; i--) {
    if (tail.readUInt32LE(i) !== SIG_EOCD) continue;
    const commentLength = tail.readUInt16LE(i + 20);
    if (commentLength !== tail.length - i - 22) invalid('zip', 'has bytes after the end of central directory record');
    if (i >= 20 && tail.readUInt32LE(i - 20) === SIG_ZIP64_LOCATOR) invalid('zip', 'zip64 archives are not supported (bundles are far below its limits)');
    const disk = tail.readUInt16LE(i + 4);
    const cdDisk = tail.readUInt16LE(i + 6);
    const entriesHere = tail.readUInt16LE(i + 8);
    const entryCount = tail.readUInt16LE(i + 10);
    const cdSize = tail.readUInt32LE(i + 12);
    const cdOffset = tail.readUInt32LE(i + 16);
    if (disk !== 0 || cdDisk !== 0 || entriesHere !== entryCount) invalid('zip', 'multi-disk archives are not supported');
    if (entryCount === 0xffff || cdSize === 0xffffffff || cdOffset === 0xffffffff) invalid('zip', 'zip64 archives are not supported');
    if (cdOffset + cdSize !== tailStart + i) {
      invalid('zip', 'central directory does not end where the end of central directory record starts');
    }
    return { entryCount, cdOffset, cdSize };
  }
  invalid('zip', 'is not a zip archive (no end of central directory record)');
}

interface EntryInfo {
  index: number;
  name: string;
  isDir: boolean;
  entry: Entry;
  /** Byte range [start, end) the entry occupies: local header, data, data descriptor. */
  start: number;
  end: number;
}

function decodeName(raw: Buffer, flags: number): string | null {
  // Without the UTF-8 flag, zip names are CP437; other tools would read non-ASCII bytes
  // differently, so only plain ASCII is accepted there.
  if ((flags & FLAG_UTF8) === 0 && raw.some((b) => b >= 0x80)) return null;
  try {
    return new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(raw);
  } catch {
    return null;
  }
}

function hasUnicodePathField(extra: Buffer): boolean {
  try {
    return yauzl.parseExtraFields(extra).some((f) => f.id === EXTRA_UNICODE_PATH);
  } catch {
    return true;
  }
}

/** Reads every central directory record and checks each entry on its own. */
async function readEntries(handle: ZipHandle, end: EndRecord, caps: BundleCaps, problems: Problems): Promise<EntryInfo[]> {
  const { zip } = handle;
  if (end.entryCount > caps.maxEntries) invalid('zip', `has ${end.entryCount} entries; the limit is ${caps.maxEntries}`);
  if (zip.entryCount !== end.entryCount || (zip as unknown as { readEntryCursor: number }).readEntryCursor !== end.cdOffset) {
    invalid('zip', 'end of central directory record is ambiguous');
  }
  const entries: EntryInfo[] = [];
  const exact = new Map<string, number>();
  const folded = new Map<string, number>();
  let cdBytes = 0;
  try {
    for await (const entry of zip.eachEntry()) {
      const index = entries.length;
      cdBytes += 46 + entry.fileNameLength + entry.extraFieldLength + entry.fileCommentLength;
      const name = decodeName(entry.fileNameRaw, entry.generalPurposeBitFlag);
      const label = entryLabel(name, index);
      if (name === null) {
        problems.add(label, 'has a name that is not valid UTF-8 (or non-ASCII without the UTF-8 flag)');
        continue;
      }
      const isDir = name.endsWith('/');
      const bare = isDir ? name.slice(0, -1) : name;
      const bad = pathProblem(bare, caps);
      if (bad) problems.add(label, `unsafe path: ${bad}`);

      const flags = entry.generalPurposeBitFlag;
      if (flags & (FLAG_ENCRYPTED | FLAG_STRONG_ENCRYPTION)) problems.add(label, 'is encrypted');
      if (flags & (FLAG_PATCHED | FLAG_MASKED_HEADERS)) problems.add(label, 'uses unsupported zip features (patched data or masked headers)');
      if (entry.compressionMethod !== METHOD_STORED && entry.compressionMethod !== METHOD_DEFLATE) {
        problems.add(label, `uses compression method ${entry.compressionMethod}; only stored (0) and deflate (8) are allowed`);
      }
      if (hasUnicodePathField(entry.extraFieldRaw)) problems.add(label, 'carries a second (Unicode path) name');

      const mode = (entry.externalFileAttributes >>> 16) & 0xffff;
      const type = mode & S_IFMT;
      const dosDir = (entry.externalFileAttributes & 0x10) !== 0;
      if (type === S_IFLNK) problems.add(label, 'is a symbolic link');
      else if (type !== 0 && type !== S_IFREG && type !== S_IFDIR) problems.add(label, 'is not a regular file or directory');
      else if (!isDir && (type === S_IFDIR || dosDir)) problems.add(label, 'is marked as a directory but its name has no trailing "/"');
      else if (isDir && type === S_IFREG) problems.add(label, 'has a directory name but is marked as a regular file');

      if (isDir && entry.uncompressedSize !== 0) problems.add(label, 'is a directory with contents');
      const cap = name === MANIFEST_FILE ? caps.maxManifestBytes : caps.maxFileBytes;
      if (entry.uncompressedSize > cap) problems.add(label, `declares ${entry.uncompressedSize} bytes; the limit is ${cap}`);
      if (entry.compressedSize > handle.size) problems.add(label, 'declares more compressed bytes than the archive holds');

      const dupExact = exact.get(name);
      const dupFold = folded.get(foldKey(bare));
      if (dupExact !== undefined) problems.add(label, 'appears more than once');
      else if (dupFold !== undefined) problems.add(label, 'differs from another entry only by letter case (or only by a trailing "/")');
      exact.set(name, index);
      folded.set(foldKey(bare), index);

      entries.push({ index, name, isDir, entry, start: entry.relativeOffsetOfLocalHeader, end: entry.relativeOffsetOfLocalHeader });
    }
  } catch (e) {
    if (isTraceError(e)) throw e;
    problems.add('zip', `central directory is malformed (${errText(e)})`);
    problems.throwIfAny();
  }
  if (cdBytes !== end.cdSize) problems.add('zip', 'central directory size does not match its records (hidden or missing records)');
  return entries;
}

/** Compares each local header with its central record and checks that no entries overlap. */
async function checkLocalHeaders(handle: ZipHandle, end: EndRecord, entries: EntryInfo[], problems: Problems): Promise<void> {
  for (const info of entries) {
    const { entry } = info;
    const label = entryLabel(info.name, info.index);
    let local: LocalFileHeader;
    try {
      local = await handle.zip.readLocalFileHeaderPromise(entry);
    } catch (e) {
      problems.add(label, `local header is unreadable (${errText(e)})`);
      continue;
    }
    if (!local.fileName.equals(entry.fileNameRaw)) problems.add(label, 'local header names a different file than the central directory');
    if (local.compressionMethod !== entry.compressionMethod) problems.add(label, 'local header uses a different compression method');
    if ((local.generalPurposeBitFlag & FLAGS_THAT_MUST_MATCH) !== (entry.generalPurposeBitFlag & FLAGS_THAT_MUST_MATCH)) {
      problems.add(label, 'local header flags differ from the central directory');
    }
    if (hasUnicodePathField(local.extraField)) problems.add(label, 'local header carries a second (Unicode path) name');
    const descriptor = (local.generalPurposeBitFlag & FLAG_DATA_DESCRIPTOR) !== 0;
    if (!descriptor) {
      const sizesMismatch =
        (local.compressedSize !== 0xffffffff && local.compressedSize !== entry.compressedSize) ||
        (local.uncompressedSize !== 0xffffffff && local.uncompressedSize !== entry.uncompressedSize) ||
        local.crc32 !== entry.crc32;
      if (sizesMismatch) problems.add(label, 'local header sizes or checksum differ from the central directory');
    }
    info.end = local.fileDataStart + entry.compressedSize + (descriptor ? 12 : 0);
    if (info.end > end.cdOffset) problems.add(label, 'data runs into the central directory');
  }
  const sorted = [...entries].sort((a, b) => a.start - b.start);
  for (let i = 1; i < sorted.length; i++) {
    const prev = sorted[i - 1]!;
    const cur = sorted[i]!;
    if (cur.start < prev.end) {
      problems.add(entryLabel(cur.name, cur.index), `overlaps the bytes of ${entryLabel(prev.name, prev.index)}`);
    }
  }
}

interface StreamResult {
  bytes: number;
  sha256: string;
  crc32: number;
  head: Buffer;
}

class BombError extends Error {}

/**
 * Inflates one entry, counting the bytes it really produces. Stops with BombError as soon as
 * the count passes `limit`, whatever the headers claim.
 */
async function streamEntry(zip: ZipFile, entry: Entry, limit: number, sink?: (chunk: Buffer) => Promise<void>): Promise<StreamResult> {
  const stream = await zip.openReadStreamPromise(entry);
  const hash = createHash('sha256');
  let crc = 0;
  let bytes = 0;
  const headParts: Buffer[] = [];
  let headLen = 0;
  try {
    for await (const chunk of stream as AsyncIterable<Buffer>) {
      bytes += chunk.length;
      if (bytes > limit) throw new BombError(`inflates past ${limit} bytes`);
      hash.update(chunk);
      crc = crc32(chunk, crc);
      if (headLen < 512) {
        headParts.push(chunk.subarray(0, 512 - headLen));
        headLen += Math.min(chunk.length, 512 - headLen);
      }
      if (sink) await sink(chunk);
    }
  } finally {
    stream.destroy();
  }
  return { bytes, sha256: hash.digest('hex'), crc32: crc >>> 0, head: Buffer.concat(headParts) };
}

/** True when the content starts like an archive or compressed stream, whatever its name. */
function looksLikeArchive(head: Buffer): boolean {
  const starts = (...sig: number[]) => head.length >= sig.length && sig.every((b, i) => head[i] === b);
  return (
    starts(0x50, 0x4b, 0x03, 0x04) || // zip local header
    starts(0x50, 0x4b, 0x05, 0x06) || // empty zip
    starts(0x50, 0x4b, 0x07, 0x08) || // spanned zip
    starts(0x1f, 0x8b, 0x08) || // gzip
    starts(0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00) || // xz
    starts(0x28, 0xb5, 0x2f, 0xfd) || // zstd
    starts(0x37, 0x7a, 0xbc, 0xaf, 0x27, 0x1c) || // 7z
    starts(0x52, 0x61, 0x72, 0x21, 0x1a, 0x07) || // rar
    (head.length >= 262 && head.subarray(257, 262).toString('latin1') === 'ustar') // tar
  );
}

async function readManifestEntry(zip: ZipFile, info: EntryInfo, caps: BundleCaps): Promise<BundleManifest> {
  const chunks: Buffer[] = [];
  try {
    await streamEntry(zip, info.entry, caps.maxManifestBytes, async (c) => {
      chunks.push(Buffer.from(c));
    });
  } catch (e) {
    if (e instanceof BombError) invalid(MANIFEST_FILE, `must be at most ${caps.maxManifestBytes} bytes`);
    invalid(MANIFEST_FILE, `cannot be read (${errText(e)})`);
  }
  return parseManifestBytes(Buffer.concat(chunks), caps);
}

interface Inspection extends InspectedBundle {
  /** Declared path -> its zip entry. */
  files: Map<string, Entry>;
}

async function inspectOpen(source: ZipSource, handle: ZipHandle, caps: BundleCaps): Promise<Inspection> {
  const problems = new Problems();
  const end = await readEndRecord(handle);
  const entries = await readEntries(handle, end, caps, problems);
  problems.throwIfAny();
  await checkLocalHeaders(handle, end, entries, problems);
  problems.throwIfAny();

  const manifestEntry = entries.find((e) => e.name === MANIFEST_FILE);
  if (!manifestEntry) invalid(MANIFEST_FILE, 'is missing from the archive root');
  const manifest = await readManifestEntry(handle.zip, manifestEntry, caps);

  const declared = new Map<string, BundleFile>(manifest.files.map((f) => [f.path, f]));
  const ancestors = new Set<string>();
  for (const f of manifest.files) {
    const segs = f.path.split('/');
    for (let d = 1; d < segs.length; d++) ancestors.add(`${segs.slice(0, d).join('/')}/`);
  }
  const files = new Map<string, Entry>();
  for (const info of entries) {
    if (info === manifestEntry) continue;
    const label = entryLabel(info.name, info.index);
    if (info.isDir) {
      if (!ancestors.has(info.name)) problems.add(label, 'is a directory that holds no declared file');
      continue;
    }
    const decl = declared.get(info.name);
    if (!decl) {
      problems.add(label, 'is not declared in bundle_manifest.json files');
      continue;
    }
    if (info.entry.uncompressedSize !== decl.bytes) {
      problems.add(label, `holds ${info.entry.uncompressedSize} bytes but the manifest declares ${decl.bytes}`);
    }
    files.set(info.name, info.entry);
  }
  manifest.files.forEach((f, i) => {
    if (!entries.some((e) => e.name === f.path)) problems.add(`files[${i}].path`, 'is declared but missing from the archive');
  });
  problems.throwIfAny();
  const sha256 = await sha256OfSource(source, handle);
  return { manifest, sha256, zipBytes: handle.size, files };
}

/**
 * Validates a bundle without writing anything: archive structure, manifest, and the exact
 * match between the two. Reads the central directory, local headers and the manifest entry.
 */
export async function inspectBundle(source: ZipSource, caps?: Partial<BundleCaps>): Promise<InspectedBundle> {
  const c = resolveCaps(caps);
  const handle = await openZip(source, c);
  try {
    const { manifest, sha256, zipBytes } = await inspectOpen(source, handle, c);
    return { manifest, sha256, zipBytes };
  } finally {
    handle.close();
  }
}

function checkContent(path: string, decl: BundleFile, entry: Entry, got: StreamResult, problems: Problems): void {
  const label = entryLabel(path, 0);
  if (got.bytes !== decl.bytes) problems.add(label, `inflates to ${got.bytes} bytes but the manifest declares ${decl.bytes}`);
  else if (got.sha256 !== decl.sha256) problems.add(label, 'SHA-256 does not match the manifest');
  else if (got.crc32 !== entry.crc32 >>> 0) problems.add(label, 'CRC-32 does not match the central directory');
  else if (looksLikeArchive(got.head)) problems.add(label, 'is an archive; nested archives are not allowed in a bundle');
}

async function ensureParents(root: string, relPath: string): Promise<void> {
  const segs = relPath.split('/').slice(0, -1);
  let cur = root;
  for (const seg of segs) {
    cur = join(cur, seg);
    try {
      await mkdir(cur, { mode: 0o700 });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      const st = await lstat(cur);
      if (!st.isDirectory() || st.isSymbolicLink()) throw new Error('parent is not a real directory', { cause: e });
    }
  }
}

/**
 * Validates the bundle, verifies every declared file's content, then writes exactly the
 * declared files into a new directory created with `mkdtemp` under `destDir` (mode 0700).
 * `manifest` must equal the manifest inside the zip (normally the one `inspectBundle` returned).
 * Nothing is written unless every check passed; a failure while writing removes the directory.
 */
export async function extractBundle(source: ZipSource, manifest: BundleManifest, destDir: string, caps?: Partial<BundleCaps>): Promise<ExtractedBundle> {
  const c = resolveCaps(caps);
  const handle = await openZip(source, c);
  try {
    const inspection = await inspectOpen(source, handle, c);
    if (canonicalJson(inspection.manifest) !== canonicalJson(manifest)) {
      invalid(MANIFEST_FILE, 'differs from the manifest the caller validated');
    }
    const files = [...manifest.files].sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));

    // Pass 1: verify every file's content; nothing is written.
    const problems = new Problems();
    for (const f of files) {
      const entry = inspection.files.get(f.path)!;
      try {
        checkContent(f.path, f, entry, await streamEntry(handle.zip, entry, f.bytes), problems);
      } catch (e) {
        problems.add(entryLabel(f.path, 0), e instanceof BombError ? `${e.message} (declared ${f.bytes})` : `cannot be inflated (${errText(e)})`);
      }
    }
    problems.throwIfAny();

    // Pass 2: write, verifying again (the source could change underneath a path).
    const dir = await mkdtemp(join(resolve(destDir), 'udf-'));
    try {
      await chmod(dir, 0o700);
      let total = 0;
      for (const f of files) {
        if (isArchiveName(f.path) || pathProblem(f.path, c)) invalid(MANIFEST_FILE, 'changed during extraction');
        const target = join(dir, ...f.path.split('/'));
        if (!target.startsWith(dir + sep)) invalid(entryLabel(f.path, 0), 'resolves outside the bundle directory');
        await ensureParents(dir, f.path);
        const fh = await open(target, 'wx', 0o600);
        let got: StreamResult;
        try {
          got = await streamEntry(handle.zip, inspection.files.get(f.path)!, f.bytes, async (chunk) => {
            await fh.write(chunk);
          });
        } finally {
          await fh.close();
        }
        const again = new Problems();
        checkContent(f.path, f, inspection.files.get(f.path)!, got, again);
        again.throwIfAny();
        total += got.bytes;
      }
      return { dir, manifest, files: files.length, bytes: total };
    } catch (e) {
      await rm(dir, { recursive: true, force: true });
      if (e instanceof BombError) invalid('zip', `content changed during extraction (${e.message})`);
      throw e;
    }
  } finally {
    handle.close();
  }
}
