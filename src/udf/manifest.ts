/**
 * `bundle_manifest.json`: the trace-owned manifest at the root of every UDF bundle zip
 * (specs/udf_bundle_manifest.md, schema v1). The manifest is untrusted input: it is parsed here,
 * strictly (unknown fields refused), and every rule is checked before a single byte of the
 * bundle is written anywhere. Failures are TraceError 422 `BUNDLE_INVALID` listing every
 * problem with the manifest field it concerns (`files[2].path`, `entrypoint`, ...).
 */
import { posix } from 'node:path';
import { z } from 'zod';
import { formatPath, unprocessable, type Problem } from '../core/errors.js';

export const MANIFEST_FILE = 'bundle_manifest.json';

/** Size and count limits a runner applies to bundles (the spec lets runners configure them). */
export interface BundleCaps {
  /** The zip file itself. */
  maxZipBytes: number;
  /** `bundle_manifest.json`, uncompressed. */
  maxManifestBytes: number;
  /** Entries in `files[]`. */
  maxFiles: number;
  /** Central-directory entries in the zip (files, the manifest, directory entries). */
  maxEntries: number;
  /** Declared and actual uncompressed size of one file. */
  maxFileBytes: number;
  /** Sum of the declared sizes of all files. */
  maxTotalBytes: number;
  /** Characters in one path. */
  maxPathLength: number;
  /** Segments in one path. */
  maxPathDepth: number;
  /** Names in `env_allowlist`. */
  maxEnvNames: number;
}

/** Roughly AWS Lambda's own zip limits, scaled down for a local runner. */
export const DEFAULT_BUNDLE_CAPS: Readonly<BundleCaps> = Object.freeze({
  maxZipBytes: 64 * 1024 * 1024,
  maxManifestBytes: 256 * 1024,
  maxFiles: 2000,
  maxEntries: 4000,
  maxFileBytes: 32 * 1024 * 1024,
  maxTotalBytes: 128 * 1024 * 1024,
  maxPathLength: 512,
  maxPathDepth: 32,
  maxEnvNames: 64,
});

export function resolveCaps(caps?: Partial<BundleCaps>): BundleCaps {
  return { ...DEFAULT_BUNDLE_CAPS, ...(caps ?? {}) };
}

export type BundleRuntime = 'node' | 'python';

export interface BundleFile {
  path: string;
  /** Lowercase hex SHA-256 of the uncompressed contents. */
  sha256: string;
  /** Uncompressed length in bytes. */
  bytes: number;
}

export interface BundleManifest {
  schema_version: 1;
  runtime: BundleRuntime;
  entrypoint: string;
  files: BundleFile[];
  env_allowlist?: string[];
}

export const SHA256_HEX_RE = /^[0-9a-f]{64}$/;
export const ENV_NAME_RE = /^[A-Z_][A-Z0-9_]*$/;

/**
 * Variable names the runner sets itself or that change how an interpreter loads code. A
 * manifest may not ask for them; the runner never passes them through either way.
 */
export function isReservedEnvName(name: string): boolean {
  return (
    name === 'PATH' ||
    name === 'HOME' ||
    name.startsWith('TRACE_') ||
    name.startsWith('NODE_') ||
    name.startsWith('PYTHON') ||
    name.startsWith('LD_') ||
    name.startsWith('DYLD_') ||
    name === 'PGPASSWORD' ||
    name.startsWith('AWS_')
  );
}

/**
 * Extensions of archive formats. A bundle is one flat zip: archives inside it would carry files
 * the manifest does not list (Python even imports straight from zip files), so they are refused.
 */
const ARCHIVE_EXTENSIONS = [
  '.zip', '.jar', '.war', '.ear', '.apk', '.whl', '.egg', '.pyz', '.tar', '.tgz', '.gz', '.bz2',
  '.tbz2', '.xz', '.txz', '.zst', '.lz', '.lzma', '.7z', '.rar', '.cab', '.cpio',
];

export function isArchiveName(path: string): boolean {
  const lower = path.toLowerCase();
  return ARCHIVE_EXTENSIONS.some((ext) => lower.endsWith(ext));
}

// Control characters (C0, DEL, C1), Unicode format characters (bidi overrides, zero-width
// joiners) and lone surrogates: none of them belong in a file name a human reviews.
const BAD_CHARS_RE = /[\p{Cc}\p{Cf}\p{Cs}]/u;

/**
 * Checks one bundle-relative path against the spec's safety rules plus the ones a fail-closed
 * extractor needs. Returns a sentence describing the first violation, or null when safe.
 */
export function pathProblem(path: string, caps: Pick<BundleCaps, 'maxPathLength' | 'maxPathDepth'> = DEFAULT_BUNDLE_CAPS): string | null {
  if (path.length === 0) return 'must not be empty';
  if (path.length > caps.maxPathLength) return `must be at most ${caps.maxPathLength} characters`;
  if (path.includes('\0')) return 'must not contain NUL bytes';
  if (BAD_CHARS_RE.test(path)) return 'must not contain control or format characters';
  if (path.includes('\\')) return 'must not contain backslashes';
  if (path.startsWith('/')) return 'must be relative, not absolute';
  if (/^[A-Za-z]:/.test(path)) return 'must not start with a drive letter';
  if (path.includes(':')) return 'must not contain ":"';
  if (path.endsWith('/')) return 'must not end with "/"';
  const segments = path.split('/');
  if (segments.length > caps.maxPathDepth) return `must have at most ${caps.maxPathDepth} segments`;
  for (const seg of segments) {
    if (seg === '') return 'must not contain empty segments ("//")';
    if (seg === '..') return 'must not contain ".." segments';
    if (seg === '.') return 'must not contain "." segments';
    if (Buffer.byteLength(seg, 'utf8') > 255) return 'must not have a segment longer than 255 bytes';
  }
  if (path.normalize('NFC') !== path) return 'must be in Unicode normalization form C';
  if (posix.normalize(path) !== path) return 'must be a normalized path';
  return null;
}

/** The key two paths collide under on a case-insensitive file system. */
export function foldKey(path: string): string {
  return path.normalize('NFC').toLowerCase();
}

const fileSchema = z.strictObject({
  path: z.string(),
  sha256: z.string().regex(SHA256_HEX_RE, 'must be 64 lowercase hex characters'),
  bytes: z.number().int().min(0),
});

const manifestSchema = z.strictObject({
  schema_version: z.literal(1),
  runtime: z.enum(['node', 'python']),
  entrypoint: z.string(),
  files: z.array(fileSchema).min(1),
  env_allowlist: z.array(z.string()).optional(),
});

function invalid(problems: Problem[]): never {
  throw unprocessable('UDF bundle is invalid', problems, 'BUNDLE_INVALID');
}

/**
 * Validates a parsed manifest value. Returns the typed manifest or throws TraceError 422
 * `BUNDLE_INVALID` naming every problem.
 */
export function validateManifest(value: unknown, capsIn?: Partial<BundleCaps>): BundleManifest {
  const caps = resolveCaps(capsIn);
  const problems: Problem[] = [];
  if (value !== null && typeof value === 'object' && !Array.isArray(value)) {
    const runtime = (value as Record<string, unknown>).runtime;
    if (runtime === 'rust') {
      invalid([{ path: 'runtime', message: 'runtime "rust" is planned but not supported by this runner yet' }]);
    }
    const files = (value as Record<string, unknown>).files;
    if (Array.isArray(files) && files.length > caps.maxFiles) {
      invalid([{ path: 'files', message: `must list at most ${caps.maxFiles} files` }]);
    }
  }
  const parsed = manifestSchema.safeParse(value);
  if (!parsed.success) {
    for (const issue of parsed.error.issues) {
      problems.push({ path: formatPath(issue.path), message: issue.message });
    }
    invalid(problems);
  }
  const m = parsed.data;

  const seen = new Map<string, number>();
  const folded = new Map<string, number>();
  let total = 0;
  m.files.forEach((f, i) => {
    const where = `files[${i}]`;
    const bad = pathProblem(f.path, caps);
    if (bad) problems.push({ path: `${where}.path`, message: bad });
    if (foldKey(f.path) === MANIFEST_FILE) {
      problems.push({ path: `${where}.path`, message: `"${MANIFEST_FILE}" is reserved and must not be listed` });
    }
    if (isArchiveName(f.path)) {
      problems.push({ path: `${where}.path`, message: 'nested archives are not allowed in a bundle' });
    }
    const dup = seen.get(f.path);
    if (dup !== undefined) problems.push({ path: `${where}.path`, message: `duplicates files[${dup}].path` });
    else seen.set(f.path, i);
    const fdup = folded.get(foldKey(f.path));
    if (fdup !== undefined && dup === undefined) {
      problems.push({ path: `${where}.path`, message: `differs from files[${fdup}].path only by letter case` });
    } else if (fdup === undefined) folded.set(foldKey(f.path), i);
    if (f.bytes > caps.maxFileBytes) problems.push({ path: `${where}.bytes`, message: `must be at most ${caps.maxFileBytes}` });
    total += f.bytes;
  });
  if (total > caps.maxTotalBytes) {
    problems.push({ path: 'files', message: `declared sizes add up to ${total} bytes; the limit is ${caps.maxTotalBytes}` });
  }
  // A path may not be both a file and the directory of another file (`a` and `a/b`).
  m.files.forEach((f, i) => {
    const segs = foldKey(f.path).split('/');
    for (let d = 1; d < segs.length; d++) {
      const other = folded.get(segs.slice(0, d).join('/'));
      if (other !== undefined) {
        problems.push({ path: `files[${i}].path`, message: `lies under files[${other}].path, which is a file` });
        break;
      }
    }
  });

  const entryBad = pathProblem(m.entrypoint, caps);
  if (entryBad) problems.push({ path: 'entrypoint', message: entryBad });
  else if (!seen.has(m.entrypoint)) problems.push({ path: 'entrypoint', message: 'must be one of the paths listed in files' });

  if (m.env_allowlist) {
    if (m.env_allowlist.length > caps.maxEnvNames) {
      problems.push({ path: 'env_allowlist', message: `must list at most ${caps.maxEnvNames} names` });
    }
    const names = new Set<string>();
    m.env_allowlist.forEach((name, i) => {
      const where = `env_allowlist[${i}]`;
      if (!ENV_NAME_RE.test(name)) problems.push({ path: where, message: 'must match ^[A-Z_][A-Z0-9_]*$' });
      else if (isReservedEnvName(name)) problems.push({ path: where, message: 'is reserved by the runner' });
      if (names.has(name)) problems.push({ path: where, message: 'is listed twice' });
      names.add(name);
    });
  }

  if (problems.length > 0) invalid(problems);
  const out: BundleManifest = { schema_version: 1, runtime: m.runtime, entrypoint: m.entrypoint, files: m.files };
  if (m.env_allowlist) out.env_allowlist = m.env_allowlist;
  return out;
}

/** Parses the raw bytes of `bundle_manifest.json` (size-capped, strict UTF-8, JSON) and validates. */
export function parseManifestBytes(bytes: Uint8Array, capsIn?: Partial<BundleCaps>): BundleManifest {
  const caps = resolveCaps(capsIn);
  if (bytes.byteLength > caps.maxManifestBytes) {
    invalid([{ path: MANIFEST_FILE, message: `must be at most ${caps.maxManifestBytes} bytes` }]);
  }
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(bytes);
  } catch {
    invalid([{ path: MANIFEST_FILE, message: 'must be UTF-8 text' }]);
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    invalid([{ path: MANIFEST_FILE, message: 'must be valid JSON' }]);
  }
  return validateManifest(value, caps);
}
