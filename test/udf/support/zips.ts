/**
 * Zip builders for the UDF tests: `yazlZip` for well-formed archives, `craftZip` for hostile ones
 * written byte by byte (names, flags, methods, attributes, header disagreements, overlaps).
 */
import { createHash } from 'node:crypto';
import { crc32, deflateRawSync } from 'node:zlib';
import yazl from 'yazl';

export const sha256 = (b: Buffer | string) => createHash('sha256').update(b).digest('hex');

export interface BundleEntry {
  name: string;
  data: Buffer | string;
}

/** A well-formed zip written by yazl (deflate, UTF-8 names). */
export async function yazlZip(entries: BundleEntry[], opts: { dirs?: string[]; compress?: boolean } = {}): Promise<Buffer> {
  const zip = new yazl.ZipFile();
  for (const d of opts.dirs ?? []) zip.addEmptyDirectory(d);
  for (const e of entries) zip.addBuffer(Buffer.from(e.data), e.name, { compress: opts.compress ?? true, mtime: new Date(0) });
  zip.end();
  const chunks: Buffer[] = [];
  for await (const c of zip.outputStream as AsyncIterable<Buffer>) chunks.push(c);
  return Buffer.concat(chunks);
}

export interface ManifestOpts {
  runtime?: string;
  entrypoint?: string;
  env_allowlist?: string[];
  /** Paths declared on top of (or instead of) the files' own. */
  override?: Record<string, unknown>;
}

/** The manifest that truthfully declares `files`. */
export function manifestFor(files: BundleEntry[], opts: ManifestOpts = {}): Record<string, unknown> {
  const m: Record<string, unknown> = {
    schema_version: 1,
    runtime: opts.runtime ?? 'node',
    entrypoint: opts.entrypoint ?? files[0]!.name,
    files: files.map((f) => ({ path: f.name, sha256: sha256(Buffer.from(f.data)), bytes: Buffer.byteLength(f.data) })),
  };
  if (opts.env_allowlist) m.env_allowlist = opts.env_allowlist;
  return { ...m, ...(opts.override ?? {}) };
}

/** A well-formed bundle: the files plus a truthful manifest. */
export async function goodBundle(files: BundleEntry[], opts: ManifestOpts = {}): Promise<Buffer> {
  const manifest = manifestFor(files, opts);
  return yazlZip([{ name: 'bundle_manifest.json', data: JSON.stringify(manifest) }, ...files]);
}

export interface CraftEntry {
  /** Central directory name. */
  name: string | Buffer;
  /** Local header name (defaults to `name`). */
  localName?: string | Buffer;
  data: Buffer | string;
  /** 0 stored, 8 deflate (default), anything else is written stored but labelled so. */
  method?: number;
  /** Replaces the compressed bytes (for bombs and lies). */
  compressed?: Buffer;
  flags?: number;
  localFlags?: number;
  externalAttrs?: number;
  versionMadeBy?: number;
  crc?: number;
  uncompressedSize?: number;
  compressedSize?: number;
  centralExtra?: Buffer;
  localExtra?: Buffer;
  /** Central record points here instead of at its own local header. */
  offsetOverride?: number;
  /** Write no local header or data for this entry (use with offsetOverride). */
  centralOnly?: boolean;
}

export interface CraftResult {
  zip: Buffer;
  /** Offset of each entry's local header (undefined for centralOnly entries). */
  offsets: Array<number | undefined>;
}

const b = (s: string | Buffer) => (typeof s === 'string' ? Buffer.from(s, 'utf8') : s);

export function localHeader(e: CraftEntry, compressed: Buffer, data: Buffer): Buffer {
  const name = b(e.localName ?? e.name);
  const extra = e.localExtra ?? Buffer.alloc(0);
  const h = Buffer.alloc(30);
  h.writeUInt32LE(0x04034b50, 0);
  h.writeUInt16LE(20, 4);
  h.writeUInt16LE(e.localFlags ?? e.flags ?? 0x800, 6);
  h.writeUInt16LE(e.method ?? 8, 8);
  h.writeUInt16LE(0, 10);
  h.writeUInt16LE(0x21, 12);
  h.writeUInt32LE(e.crc ?? crc32(data), 14);
  h.writeUInt32LE(e.compressedSize ?? compressed.length, 18);
  h.writeUInt32LE(e.uncompressedSize ?? data.length, 22);
  h.writeUInt16LE(name.length, 26);
  h.writeUInt16LE(extra.length, 28);
  return Buffer.concat([h, name, extra]);
}

/** Writes a zip from raw entry descriptions; every field can lie. */
export function craftZip(entries: CraftEntry[], opts: { hiddenCentral?: Buffer; comment?: string; trailing?: Buffer } = {}): CraftResult {
  const parts: Buffer[] = [];
  const offsets: Array<number | undefined> = [];
  const centrals: Buffer[] = [];
  let pos = 0;
  for (const e of entries) {
    const data = b(e.data);
    const method = e.method ?? 8;
    const compressed = e.compressed ?? (method === 8 ? deflateRawSync(data) : data);
    let offset: number | undefined;
    if (!e.centralOnly) {
      offset = pos;
      const lh = localHeader(e, compressed, data);
      parts.push(lh, compressed);
      pos += lh.length + compressed.length;
    }
    offsets.push(offset);
    const name = b(e.name);
    const extra = e.centralExtra ?? Buffer.alloc(0);
    const c = Buffer.alloc(46);
    c.writeUInt32LE(0x02014b50, 0);
    c.writeUInt16LE(e.versionMadeBy ?? (3 << 8) | 20, 4);
    c.writeUInt16LE(20, 6);
    c.writeUInt16LE(e.flags ?? 0x800, 8);
    c.writeUInt16LE(method, 10);
    c.writeUInt16LE(0, 12);
    c.writeUInt16LE(0x21, 14);
    c.writeUInt32LE(e.crc ?? crc32(data), 16);
    c.writeUInt32LE(e.compressedSize ?? compressed.length, 20);
    c.writeUInt32LE(e.uncompressedSize ?? data.length, 24);
    c.writeUInt16LE(name.length, 28);
    c.writeUInt16LE(extra.length, 30);
    c.writeUInt16LE(0, 32);
    c.writeUInt16LE(0, 34);
    c.writeUInt16LE(0, 36);
    c.writeUInt32LE(e.externalAttrs ?? ((0o100644 << 16) >>> 0), 38);
    c.writeUInt32LE(e.offsetOverride ?? offset ?? 0, 42);
    centrals.push(Buffer.concat([c, name, extra]));
  }
  const cdOffset = pos;
  const cd = Buffer.concat([...centrals, opts.hiddenCentral ?? Buffer.alloc(0)]);
  const comment = Buffer.from(opts.comment ?? '', 'latin1');
  const eocd = Buffer.alloc(22);
  eocd.writeUInt32LE(0x06054b50, 0);
  eocd.writeUInt16LE(entries.length, 8);
  eocd.writeUInt16LE(entries.length, 10);
  eocd.writeUInt32LE(cd.length, 12);
  eocd.writeUInt32LE(cdOffset, 16);
  eocd.writeUInt16LE(comment.length, 20);
  return { zip: Buffer.concat([...parts, cd, eocd, comment, opts.trailing ?? Buffer.alloc(0)]), offsets };
}

/** The manifest entry for craftZip, declaring `files` truthfully unless overridden. */
export function manifestEntry(files: BundleEntry[], opts: ManifestOpts = {}): CraftEntry {
  return { name: 'bundle_manifest.json', data: JSON.stringify(manifestFor(files, opts)) };
}
