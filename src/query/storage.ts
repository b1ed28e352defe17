/**
 * Trusted resolution of a dataset storage reference to the exact, sorted file list the sandbox
 * attaches (ADR 0009: a fixed list resolved once at query start). Fail closed:
 * - `file` refs: `prefix` is an absolute directory (path or `file:///` URL); `glob` (default
 *   `*.parquet`, `*` within one path segment, `**` across segments, `?` one character) selects
 *   files below it. No `.`/`..` segments, hidden entries are skipped, symlinked directories are
 *   not followed, a symlinked file is kept only if its real path stays inside the prefix
 *   (otherwise 403). Files are returned as real paths.
 * - `manifest` (either scheme): a JSON object `{ "parquet_objects": [...] }` (alias `objects`
 *   or `files`, or a bare array) stored inside the prefix; entries are URLs, absolute paths or
 *   keys relative to the prefix, and every one must resolve inside the prefix (otherwise 403).
 * - `s3` refs: need an injected lister/reader (see StorageDeps); without them they fail with
 *   501 S3_UNSUPPORTED. Keys are listed below `prefix` and matched against `glob`.
 */
import { lstat, readdir, readFile, realpath, stat } from 'node:fs/promises';
import { isAbsolute, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { z } from 'zod';
import { TraceError, forbidden } from '../core/errors.js';

export const STORAGE_LIMITS = {
  maxFiles: 10_000,
  maxManifestBytes: 1024 * 1024,
  maxUriLength: 2048,
  maxWalkEntries: 200_000,
  maxDepth: 32,
} as const;

export const DEFAULT_GLOB = '*.parquet';

export type StorageRefInput =
  | { scheme: 'file'; prefix: string; glob?: string | undefined; manifest?: string | undefined }
  | { scheme: 's3'; bucket: string; prefix: string; glob?: string | undefined; manifest?: string | undefined };

export interface StorageDeps {
  /** Lists every key below `prefix` in `bucket` (S3 refs without a manifest). */
  listS3?: (bucket: string, prefix: string) => Promise<string[]>;
  /** Reads one S3 object (S3 manifests). */
  readS3?: (bucket: string, key: string) => Promise<Uint8Array>;
}

const noBadSegments = (s: string) => !s.includes('\0') && !s.includes('\\') && !s.split('/').some((seg) => seg === '.' || seg === '..');
const relPattern = z
  .string()
  .min(1)
  .max(512)
  .refine((s) => !s.startsWith('/') && noBadSegments(s), 'must be relative, without . or .. segments');

const storageRefSchema = z.discriminatedUnion('scheme', [
  z.object({
    scheme: z.literal('file'),
    prefix: z.string().min(1).max(STORAGE_LIMITS.maxUriLength),
    glob: relPattern.optional(),
    manifest: relPattern.optional(),
  }),
  z.object({
    scheme: z.literal('s3'),
    bucket: z.string().regex(/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/),
    prefix: z.string().max(STORAGE_LIMITS.maxUriLength).refine((s) => !s.startsWith('/') && noBadSegments(s), 'must be a key prefix'),
    glob: relPattern.optional(),
    manifest: relPattern.optional(),
  }),
]);

/** Validates an untrusted-shaped storage ref (from claims or the registry); 403 when unusable. */
export function parseStorageRef(ref: unknown): StorageRefInput {
  if (ref === undefined || ref === null) throw forbidden('the dataset has no storage reference', 'STORAGE_REF_MISSING');
  const r = storageRefSchema.safeParse(ref);
  if (!r.success) throw forbidden('the dataset storage reference is malformed', 'STORAGE_REF_INVALID');
  return r.data;
}

/** The canonical URL of a ref's prefix (`file:///dir/` or `s3://bucket/prefix/`), for prefix checks. */
export function storagePrefixUrl(ref: StorageRefInput): string {
  if (ref.scheme === 's3') return `s3://${ref.bucket}/${ref.prefix.replace(/^\/+/, '')}`.replace(/\/?$/, '/');
  return `file://${filePrefixDir(ref.prefix)}/`;
}

/** True when `url` lies inside the canonical prefix `prefix` (both URLs; prefix ends in `/`). */
export function urlWithin(url: string, prefix: string): boolean {
  const p = prefix.endsWith('/') ? prefix : `${prefix}/`;
  return url.startsWith(p) && noBadSegments(url.slice(p.length));
}

export function filePrefixDir(prefix: string): string {
  let dir: string;
  try {
    dir = prefix.startsWith('file:') ? fileURLToPath(prefix) : prefix;
  } catch {
    throw forbidden('the dataset storage prefix is not a valid file URL', 'STORAGE_REF_INVALID');
  }
  if (!isAbsolute(dir) || !dir.startsWith('/') || !noBadSegments(dir)) {
    throw forbidden('the dataset storage prefix must be an absolute directory without . or .. segments', 'STORAGE_REF_INVALID');
  }
  return dir.replace(/\/+$/, '') || '/';
}

/** Compiles a glob to a RegExp over `/`-separated relative paths. */
export function globToRegExp(glob: string): RegExp {
  let re = '';
  for (let i = 0; i < glob.length; i++) {
    const c = glob[i]!;
    if (c === '*') {
      if (glob[i + 1] === '*') {
        const atSegStart = i === 0 || glob[i - 1] === '/';
        if (atSegStart && glob[i + 2] === '/') { re += '(?:[^/]+/)*'; i += 2; continue; }
        if (atSegStart && i + 2 === glob.length) { re += '.*'; i += 1; continue; }
        re += '[^/]*';
        i += 1;
        continue;
      }
      re += '[^/]*';
    } else if (c === '?') {
      re += '[^/]';
    } else {
      re += c.replace(/[.+^${}()|[\]\\]/g, '\\$&');
    }
  }
  return new RegExp(`^${re}$`);
}

const within = (root: string, p: string) => p === root || p.startsWith(root === '/' ? '/' : `${root}/`);

function tooMany(): never {
  throw new TraceError(422, 'DATASET_TOO_LARGE', `the dataset has more than ${STORAGE_LIMITS.maxFiles} files`);
}

async function realRoot(dir: string): Promise<string | null> {
  try {
    const r = await realpath(dir);
    return (await stat(r)).isDirectory() ? r : null;
  } catch {
    return null;
  }
}

async function walkFiles(root: string, glob: string): Promise<string[]> {
  const re = globToRegExp(glob);
  const out = new Set<string>();
  let visited = 0;
  const visit = async (dir: string, rel: string, depth: number): Promise<void> => {
    if (depth > STORAGE_LIMITS.maxDepth) return;
    let entries;
    try {
      entries = await readdir(dir, { withFileTypes: true });
    } catch {
      return;
    }
    entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    for (const ent of entries) {
      if (++visited > STORAGE_LIMITS.maxWalkEntries) tooMany();
      if (ent.name.startsWith('.')) continue;
      const relPath = rel === '' ? ent.name : `${rel}/${ent.name}`;
      const full = join(dir, ent.name);
      if (ent.isDirectory()) {
        await visit(full, relPath, depth + 1);
      } else if (ent.isFile()) {
        if (re.test(relPath)) out.add(full);
      } else if (ent.isSymbolicLink() && re.test(relPath)) {
        let target: string;
        try {
          target = await realpath(full);
        } catch {
          continue; // dangling link: not a file
        }
        if (!within(root, target)) throw forbidden('a dataset file resolves outside the dataset prefix', 'STORAGE_OUTSIDE_GRANT');
        if ((await stat(target)).isFile()) out.add(target);
      }
      if (out.size > STORAGE_LIMITS.maxFiles) tooMany();
    }
  };
  await visit(root, '', 0);
  return [...out].sort();
}

interface ManifestDoc {
  entries: string[];
}

function parseManifest(bytes: Uint8Array): ManifestDoc {
  if (bytes.byteLength > STORAGE_LIMITS.maxManifestBytes) {
    throw new TraceError(422, 'MANIFEST_INVALID', `the dataset manifest is larger than ${STORAGE_LIMITS.maxManifestBytes} bytes`);
  }
  let doc: unknown;
  try {
    doc = JSON.parse(Buffer.from(bytes).toString('utf8'));
  } catch {
    throw new TraceError(422, 'MANIFEST_INVALID', 'the dataset manifest is not valid JSON');
  }
  const list = Array.isArray(doc)
    ? doc
    : typeof doc === 'object' && doc !== null
      ? ((doc as Record<string, unknown>).parquet_objects ?? (doc as Record<string, unknown>).objects ?? (doc as Record<string, unknown>).files)
      : undefined;
  const parsed = z.array(z.string().min(1).max(STORAGE_LIMITS.maxUriLength)).min(1).safeParse(list);
  if (!parsed.success) throw new TraceError(422, 'MANIFEST_INVALID', 'the dataset manifest must list at least one object');
  if (parsed.data.length > STORAGE_LIMITS.maxFiles) tooMany();
  return { entries: parsed.data };
}

async function resolveFileRef(ref: Extract<StorageRefInput, { scheme: 'file' }>): Promise<string[]> {
  const dir = filePrefixDir(ref.prefix);
  const root = await realRoot(dir);
  if (root === null) return [];
  if (ref.manifest === undefined) return walkFiles(root, ref.glob ?? DEFAULT_GLOB);

  const manifestPath = join(root, ref.manifest);
  let manifestReal: string;
  try {
    manifestReal = await realpath(manifestPath);
  } catch {
    throw new TraceError(503, 'DATASET_UNAVAILABLE', 'the dataset manifest could not be read');
  }
  if (!within(root, manifestReal)) throw forbidden('the dataset manifest resolves outside the dataset prefix', 'STORAGE_OUTSIDE_GRANT');
  const info = await lstat(manifestReal);
  if (!info.isFile()) throw new TraceError(422, 'MANIFEST_INVALID', 'the dataset manifest is not a file');
  if (info.size > STORAGE_LIMITS.maxManifestBytes) {
    throw new TraceError(422, 'MANIFEST_INVALID', `the dataset manifest is larger than ${STORAGE_LIMITS.maxManifestBytes} bytes`);
  }
  const { entries } = parseManifest(await readFile(manifestReal));
  const out = new Set<string>();
  for (const entry of entries) {
    let p: string;
    if (entry.startsWith('file:')) {
      try {
        p = fileURLToPath(entry);
      } catch {
        throw new TraceError(422, 'MANIFEST_INVALID', 'a manifest entry is not a valid file URL');
      }
    } else if (/^[a-z][a-z0-9+.-]*:\/\//i.test(entry)) {
      throw forbidden('a manifest entry lies outside the dataset prefix', 'STORAGE_OUTSIDE_GRANT');
    } else {
      p = entry.startsWith('/') ? entry : join(dir, entry);
    }
    if (!noBadSegments(p) || !(within(dir, p) || within(root, p))) {
      throw forbidden('a manifest entry lies outside the dataset prefix', 'STORAGE_OUTSIDE_GRANT');
    }
    let real: string;
    try {
      real = await realpath(p);
    } catch {
      throw new TraceError(503, 'DATASET_UNAVAILABLE', 'a file listed in the dataset manifest is missing');
    }
    if (!within(root, real)) throw forbidden('a manifest entry resolves outside the dataset prefix', 'STORAGE_OUTSIDE_GRANT');
    out.add(real);
  }
  return [...out].sort();
}

async function resolveS3Ref(ref: Extract<StorageRefInput, { scheme: 's3' }>, deps: StorageDeps): Promise<string[]> {
  const prefixUrl = storagePrefixUrl(ref);
  const keyPrefix = prefixUrl.slice(`s3://${ref.bucket}/`.length);
  if (ref.manifest !== undefined) {
    if (!deps.readS3) throw new TraceError(501, 'S3_UNSUPPORTED', 'this Query Service has no S3 client configured');
    let bytes: Uint8Array;
    try {
      bytes = await deps.readS3(ref.bucket, `${keyPrefix}${ref.manifest}`);
    } catch {
      throw new TraceError(503, 'DATASET_UNAVAILABLE', 'the dataset manifest could not be read');
    }
    const out = new Set<string>();
    for (const entry of parseManifest(bytes).entries) {
      const url = entry.startsWith('s3://') ? entry : /^[a-z][a-z0-9+.-]*:/i.test(entry) || entry.startsWith('/') ? '' : `${prefixUrl}${entry}`;
      if (!url || !urlWithin(url, prefixUrl)) throw forbidden('a manifest entry lies outside the dataset prefix', 'STORAGE_OUTSIDE_GRANT');
      out.add(url);
    }
    return [...out].sort();
  }
  if (!deps.listS3) throw new TraceError(501, 'S3_UNSUPPORTED', 'this Query Service has no S3 client configured');
  let keys: string[];
  try {
    keys = await deps.listS3(ref.bucket, keyPrefix);
  } catch {
    throw new TraceError(503, 'DATASET_UNAVAILABLE', 'the dataset objects could not be listed');
  }
  const re = globToRegExp(ref.glob ?? DEFAULT_GLOB);
  const out = new Set<string>();
  for (const key of keys) {
    if (!key.startsWith(keyPrefix)) continue;
    const rel = key.slice(keyPrefix.length);
    if (!noBadSegments(rel) || rel.split('/').some((seg) => seg.startsWith('.')) || !re.test(rel)) continue;
    out.add(`s3://${ref.bucket}/${key}`);
    if (out.size > STORAGE_LIMITS.maxFiles) tooMany();
  }
  return [...out].sort();
}

/**
 * Resolves a ref to its exact sorted file list (absolute real paths or `s3://` URLs). An empty
 * list means the dataset has no files yet; callers decide how to answer that.
 */
export async function resolveStorageFiles(ref: StorageRefInput, deps: StorageDeps = {}): Promise<string[]> {
  return ref.scheme === 'file' ? resolveFileRef(ref) : resolveS3Ref(ref, deps);
}

