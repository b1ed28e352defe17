import { createHash } from 'node:crypto';
import { lstat, readdir, readFile, stat } from 'node:fs/promises';
import { join, relative, sep } from 'node:path';
import type { Command } from '../args.js';
import { UsageError } from '../args.js';
import { ApiError, api, resolveTarget, type ApiTarget } from '../client.js';

/**
 * `trace udf upload DIR_OR_ZIP`: builds a bundle from a folder (or takes a ready zip), opens an
 * upload (`POST /v1/udf/bundles`), PUTs the bytes to the signed URL it got, and finalizes
 * (`POST /v1/udf/bundles/{id}/finalize` with the SHA-256), printing the bundle id to put in a
 * DAG's `udf.bundle_id`. A refused bundle prints the reason and every problem.
 *
 * For a folder: every regular file is listed with its SHA-256 and size (like
 * sdk/make-manifest.mjs), except `bundle_manifest.json` itself, `.git/`, `__pycache__/` and
 * `.DS_Store`; symlinks and special files are refused. Runtime and entrypoint come from the flags,
 * else from an existing bundle_manifest.json in the folder, else from `index.mjs`/`index.js`
 * (node) or `main.py` (python). The zip is built in memory with fixed timestamps (the same folder
 * gives the same bytes and hash); the folder is not modified.
 */

const SKIP_DIRS = new Set(['.git', '__pycache__']);
const SKIP_FILES = new Set(['.DS_Store', 'bundle_manifest.json']);

export interface BuiltBundle {
  zip: Buffer;
  sha256: string;
  manifest: { schema_version: 1; runtime: 'node' | 'python'; entrypoint: string; files: Array<{ path: string; sha256: string; bytes: number }>; env_allowlist?: string[] };
}

async function listFiles(root: string): Promise<Array<{ path: string; abs: string }>> {
  const out: Array<{ path: string; abs: string }> = [];
  const walk = async (dir: string) => {
    for (const name of (await readdir(dir)).sort()) {
      const abs = join(dir, name);
      const rel = relative(root, abs).split(sep).join('/');
      const st = await lstat(abs);
      if (st.isSymbolicLink()) throw new UsageError(`${rel} is a symlink; copy the real file into the bundle instead`);
      if (st.isDirectory()) {
        if (!SKIP_DIRS.has(name)) await walk(abs);
      } else if (st.isFile()) {
        if (!(SKIP_FILES.has(name) && dir === root) && name !== '.DS_Store') out.push({ path: rel, abs });
      } else {
        throw new UsageError(`${rel} is not a regular file`);
      }
    }
  };
  await walk(root);
  return out;
}

/** Builds the manifest and the zip for a bundle folder. */
export async function buildBundleFromDir(dir: string, opts: { runtime?: string; entrypoint?: string; env?: string[] } = {}): Promise<BuiltBundle> {
  let existing: Partial<BuiltBundle['manifest']>;
  try {
    existing = JSON.parse(await readFile(join(dir, 'bundle_manifest.json'), 'utf8')) as Partial<BuiltBundle['manifest']>;
  } catch {
    existing = {};
  }
  const files = await listFiles(dir);
  const names = new Set(files.map((f) => f.path));
  let runtime = opts.runtime ?? existing.runtime;
  let entrypoint = opts.entrypoint ?? (opts.runtime === undefined ? existing.entrypoint : undefined);
  if (!runtime || !entrypoint) {
    const guess = ['index.mjs', 'index.js'].find((n) => names.has(n)) ? { runtime: 'node', entrypoint: ['index.mjs', 'index.js'].find((n) => names.has(n))! }
      : names.has('main.py') ? { runtime: 'python', entrypoint: 'main.py' } : undefined;
    runtime ??= guess?.runtime;
    entrypoint ??= runtime === guess?.runtime ? guess?.entrypoint : undefined;
  }
  if (runtime !== 'node' && runtime !== 'python') throw new UsageError('cannot tell the runtime: pass --runtime node|python');
  if (!entrypoint) throw new UsageError('cannot tell the entrypoint: pass --entrypoint PATH');
  if (!names.has(entrypoint)) throw new UsageError(`the entrypoint ${entrypoint} is not a file in ${dir}`);
  const contents = await Promise.all(files.map(async (f) => ({ ...f, data: await readFile(f.abs) })));
  const manifest: BuiltBundle['manifest'] = {
    schema_version: 1,
    runtime,
    entrypoint,
    files: contents.map((f) => ({ path: f.path, sha256: createHash('sha256').update(f.data).digest('hex'), bytes: f.data.length })),
  };
  const env = opts.env && opts.env.length > 0 ? opts.env : existing.env_allowlist;
  if (env && env.length > 0) manifest.env_allowlist = [...env];
  const { default: yazl } = await import('yazl'); // only when a bundle is built
  const zip = new yazl.ZipFile();
  const mtime = new Date(Date.UTC(2000, 0, 1));
  zip.addBuffer(Buffer.from(`${JSON.stringify(manifest, null, 2)}\n`), 'bundle_manifest.json', { mtime, mode: 0o100644 });
  for (const f of contents) zip.addBuffer(f.data, f.path, { mtime, mode: 0o100644 });
  zip.end();
  const chunks: Buffer[] = [];
  for await (const c of zip.outputStream as AsyncIterable<Buffer>) chunks.push(c);
  const bytes = Buffer.concat(chunks);
  return { zip: bytes, sha256: createHash('sha256').update(bytes).digest('hex'), manifest };
}

interface UploadAnswer {
  bundle_id: string;
  upload: { url: string; method: 'PUT'; headers: Record<string, string>; expires_at: string; max_bytes: number };
}

export interface BundleAnswer {
  bundle_id: string;
  status: string;
  sha256: string;
  runtime: string;
  entrypoint: string;
  size_bytes: number;
  files: number;
}

/**
 * Opens an upload (`POST /v1/udf/bundles` with what the bundle declares), PUTs the zip to the
 * signed URL and finalizes with its SHA-256. Throws ApiError with the server's reason.
 */
export async function uploadBundleZip(t: ApiTarget, zip: Buffer, declared: { runtime: string; entrypoint: string; name?: string }): Promise<BundleAnswer> {
  const sha256 = createHash('sha256').update(zip).digest('hex');
  const open = await api<UploadAnswer>(t, 'POST', '/v1/udf/bundles', declared);
  let res: Response;
  try {
    res = await fetch(open.upload.url, { method: open.upload.method, headers: open.upload.headers, body: zip });
  } catch (e) {
    throw new Error(`cannot reach the upload URL: ${e instanceof Error ? e.message : String(e)}`, { cause: e });
  }
  if (!res.ok) {
    let b: { error?: string; code?: string } = {};
    try { b = JSON.parse(await res.text()) as typeof b; } catch { /* not JSON */ }
    throw new ApiError(res.status, b.code ?? `HTTP_${res.status}`, `upload refused: ${b.error ?? res.status}`, b);
  }
  return api<BundleAnswer>(t, 'POST', `/v1/udf/bundles/${open.bundle_id}/finalize`, { sha256 });
}

export const udfUpload: Command = {
  name: 'udf upload',
  summary: 'Upload a UDF bundle (a folder or a zip): builds the manifest for a folder, uploads through a signed URL and finalizes; prints the bundle id (only the id with --quiet).',
  usage: 'trace udf upload DIR_OR_ZIP [--runtime node|python] [--entrypoint PATH] [--env NAME]... [--name NAME] [--json | --quiet]',
  options: { runtime: { type: 'string' }, entrypoint: { type: 'string' }, env: { type: 'string', multiple: true }, name: { type: 'string' }, json: { type: 'boolean' }, quiet: { type: 'boolean', short: 'q' } },
  async run({ values, positionals }) {
    const src = positionals[0];
    if (!src || positionals.length > 1) throw new UsageError('expected exactly one DIR_OR_ZIP');
    const st = await stat(src).catch(() => { throw new UsageError(`cannot read ${src}`); });
    let zip: Buffer;
    let declared: { runtime?: string | undefined; entrypoint?: string | undefined };
    if (st.isDirectory()) {
      const built = await buildBundleFromDir(src, {
        ...(values.runtime ? { runtime: String(values.runtime) } : {}),
        ...(values.entrypoint ? { entrypoint: String(values.entrypoint) } : {}),
        ...(Array.isArray(values.env) ? { env: values.env.map(String) } : {}),
      });
      zip = built.zip;
      declared = { runtime: built.manifest.runtime, entrypoint: built.manifest.entrypoint };
    } else {
      if (values.env) throw new UsageError('--env applies to folders; a zip carries its own manifest');
      zip = await readFile(src);
      // What the zip's own manifest says, unless the flags say otherwise (then finalize checks they agree).
      const { inspectBundle } = await import('../../udf/bundle.js');
      const m = await inspectBundle(zip).then((b) => b.manifest, () => undefined);
      declared = { runtime: values.runtime ? String(values.runtime) : m?.runtime, entrypoint: values.entrypoint ? String(values.entrypoint) : m?.entrypoint };
      if (!declared.runtime || !declared.entrypoint) throw new UsageError(`${src} has no readable bundle_manifest.json; pass --runtime and --entrypoint`);
    }
    const fin = await uploadBundleZip(await resolveTarget(), zip, {
      runtime: declared.runtime!, entrypoint: declared.entrypoint!, ...(values.name ? { name: String(values.name) } : {}),
    });
    if (values.quiet) process.stdout.write(`${fin.bundle_id}\n`);
    else if (values.json) process.stdout.write(`${JSON.stringify(fin, null, 2)}\n`);
    else process.stdout.write(`bundle ${fin.bundle_id} (${fin.runtime}, entrypoint ${fin.entrypoint}, ${fin.files} files, ${fin.size_bytes} bytes, sha256 ${fin.sha256})\n`);
  },
};

export const udfCommands: Command[] = [udfUpload];
