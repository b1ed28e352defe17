/**
 * UDF bundle records (state table `udf_bundles`) and the two-step upload:
 *
 * 1. `openBundleUpload`: a Pending record and a signed upload URL for `udf/uploads/{org}/{id}.zip`
 *    (expiring, capped at the bundle size limit).
 * 2. `finalizeBundle`: reads the whole uploaded object once, hashes it, validates it with
 *    `inspectBundle` (manifest, paths, caps, undeclared files, every zip-level check) and a
 *    verifying extraction (every file's size, SHA-256 and CRC; removed right after), compares
 *    what the uploader declared, copies the verified bytes to the immutable key
 *    `udf/bundles/{org}/{id}/{sha256}.zip` (no URL was ever signed for it), and records sha256,
 *    runtime, entrypoint and the manifest. A refused bundle becomes Rejected with the reason and
 *    its upload is deleted; a Finalized bundle never changes. Finalize is idempotent.
 *
 * Executors load by `(org_id, bundle_id)` and get the bytes plus the pinned hash; the runner
 * verifies the hash of the bytes it runs, so a tampered object fails closed.
 */
import type { Db, Queryable } from '../../db/db.js';
import { TraceError, isTraceError, notFound, type Problem } from '../../core/errors.js';
import { newId, sha256Hex, UUID_RE } from '../../core/ids.js';
import type { ObjectStore } from '../../objectstore/objectstore.js';
import { extractBundle, inspectBundle } from '../../udf/bundle.js';
import { rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { resolveCaps, type BundleCaps, type BundleManifest, type BundleRuntime } from '../../udf/manifest.js';
import type { SignedUpload, UploadSigner } from './uploads.js';

export interface BundleRow {
  id: string;
  org_id: string;
  created_by: string | null;
  name: string | null;
  status: 'Pending' | 'Finalized' | 'Rejected';
  upload_key: string;
  object_key: string | null;
  max_bytes: number;
  upload_expires_at: Date;
  declared_runtime: string | null;
  declared_entrypoint: string | null;
  sha256: string | null;
  runtime: BundleRuntime | null;
  entrypoint: string | null;
  size_bytes: number | null;
  file_count: number | null;
  reject_reason: string | null;
  created_at: Date;
  finalized_at: Date | null;
}

/** What users see of a bundle. */
export interface BundleView {
  bundle_id: string;
  name: string | null;
  status: BundleRow['status'];
  sha256: string | null;
  runtime: BundleRuntime | null;
  entrypoint: string | null;
  size_bytes: number | null;
  files: number | null;
  reject_reason: string | null;
  created_at: string;
  finalized_at: string | null;
}

export function bundleView(r: BundleRow): BundleView {
  return {
    bundle_id: r.id,
    name: r.name,
    status: r.status,
    sha256: r.sha256,
    runtime: r.runtime,
    entrypoint: r.entrypoint,
    size_bytes: r.size_bytes === null ? null : Number(r.size_bytes),
    files: r.file_count,
    reject_reason: r.reject_reason,
    created_at: new Date(r.created_at).toISOString(),
    finalized_at: r.finalized_at ? new Date(r.finalized_at).toISOString() : null,
  };
}

const COLUMNS = `id, org_id, created_by, name, status, upload_key, object_key, max_bytes, upload_expires_at, declared_runtime,
  declared_entrypoint, sha256, runtime, entrypoint, size_bytes, file_count, reject_reason, created_at, finalized_at`;

const INSERT = `
INSERT INTO udf_bundles (id, org_id, created_by, name, status, upload_key, max_bytes, upload_expires_at, declared_runtime, declared_entrypoint)
VALUES ($1, $2, $3, $4, 'Pending', $5, $6, now() + make_interval(secs => $7), $8, $9)
RETURNING ${COLUMNS}`;

const GET = `SELECT ${COLUMNS} FROM udf_bundles WHERE id = $1 AND org_id = $2`;

const FINALIZE = `
UPDATE udf_bundles SET status = 'Finalized', object_key = $3, sha256 = $4, runtime = $5, entrypoint = $6, size_bytes = $7,
  file_count = $8, manifest = $9::jsonb, finalized_at = now()
WHERE id = $1 AND org_id = $2 AND status = 'Pending'
RETURNING ${COLUMNS}`;

const REJECT = `
UPDATE udf_bundles SET status = 'Rejected', reject_reason = $3
WHERE id = $1 AND org_id = $2 AND status = 'Pending'
RETURNING ${COLUMNS}`;

export interface OpenUploadInput {
  org_id: string;
  user_id: string | null;
  name?: string;
  runtime?: BundleRuntime;
  entrypoint?: string;
}

export interface BundleSettings {
  store: ObjectStore;
  signer: UploadSigner;
  /** Bundle validation caps (zip size is also the upload cap). */
  caps: BundleCaps;
  uploadTtlSeconds: number;
}

export const bundleUploadKey = (orgId: string, id: string) => `udf/uploads/${orgId}/${id}.zip`;
export const bundleObjectKey = (orgId: string, id: string, sha: string) => `udf/bundles/${orgId}/${id}/${sha}.zip`;

/** Step 1: a Pending bundle and its signed upload URL. */
export async function openBundleUpload(db: Queryable, s: BundleSettings, input: OpenUploadInput): Promise<{ bundle: BundleView; upload: SignedUpload }> {
  const id = newId();
  const key = bundleUploadKey(input.org_id, id);
  const max = s.caps.maxZipBytes;
  const upload = await s.signer.sign(key, { expiresSeconds: s.uploadTtlSeconds, maxBytes: max });
  const r = await db.query<BundleRow>(INSERT, [id, input.org_id, input.user_id, input.name ?? null, key, max, s.uploadTtlSeconds, input.runtime ?? null, input.entrypoint ?? null]);
  return { bundle: bundleView(r.rows[0]!), upload };
}

export async function getBundle(db: Queryable, orgId: string, id: string): Promise<BundleRow | undefined> {
  if (!UUID_RE.test(id)) return undefined;
  return (await db.query<BundleRow>(GET, [id, orgId])).rows[0];
}

function summarize(e: TraceError): string {
  const first = e.problems?.[0];
  const more = (e.problems?.length ?? 0) > 1 ? ` (and ${(e.problems!.length - 1)} more)` : '';
  return (first ? `${e.message}: ${first.path}: ${first.message}${more}` : e.message).slice(0, 2000);
}

/**
 * Step 2: validate the whole upload and record it, or refuse it with the reason. Idempotent: a
 * Finalized bundle is returned as is; a Rejected one is refused again with its reason.
 */
export async function finalizeBundle(db: Db, s: BundleSettings, orgId: string, id: string, declared: { sha256?: string }): Promise<BundleView> {
  const row = await getBundle(db, orgId, id);
  if (!row) throw notFound('no such bundle', 'BUNDLE_NOT_FOUND');
  if (row.status === 'Finalized') {
    if (declared.sha256 !== undefined && declared.sha256 !== row.sha256) {
      throw new TraceError(409, 'BUNDLE_IMMUTABLE', 'this bundle is already finalized with a different SHA-256; upload a new bundle');
    }
    return bundleView(row);
  }
  if (row.status === 'Rejected') throw new TraceError(409, 'BUNDLE_REJECTED', `this bundle was rejected: ${row.reject_reason ?? 'invalid'}`);

  const st = await s.store.stat(row.upload_key);
  if (!st) throw new TraceError(409, 'BUNDLE_NOT_UPLOADED', 'nothing has been uploaded for this bundle yet');

  const reject = async (e: TraceError): Promise<never> => {
    await db.query(REJECT, [row.id, orgId, summarize(e)]);
    await s.store.delete(row.upload_key).catch(() => undefined);
    throw e;
  };

  if (st.size > Number(row.max_bytes) || st.size > s.caps.maxZipBytes) {
    return reject(new TraceError(413, 'BUNDLE_TOO_LARGE', `the bundle is ${st.size} bytes; the limit is ${Math.min(Number(row.max_bytes), s.caps.maxZipBytes)}`));
  }
  let bytes: Buffer;
  try {
    bytes = Buffer.from(await s.store.get(row.upload_key, { maxBytes: s.caps.maxZipBytes }));
  } catch (e) {
    if (isTraceError(e) && e.code === 'OBJECT_TOO_LARGE') return reject(new TraceError(413, 'BUNDLE_TOO_LARGE', `the bundle is larger than ${s.caps.maxZipBytes} bytes`));
    throw e;
  }
  const sha256 = sha256Hex(bytes);
  if (declared.sha256 !== undefined && declared.sha256 !== sha256) {
    return reject(new TraceError(422, 'BUNDLE_HASH_MISMATCH', 'the uploaded bytes do not hash to the declared sha256'));
  }
  let manifest: BundleManifest;
  try {
    manifest = (await inspectBundle(bytes, s.caps)).manifest;
    // inspectBundle reads structure only; extraction inflates every file and verifies its size,
    // SHA-256 and CRC before it writes anything. The verified copy is removed at once.
    const { dir } = await extractBundle(bytes, manifest, tmpdir(), s.caps);
    await rm(dir, { recursive: true, force: true });
  } catch (e) {
    if (isTraceError(e) && e.status < 500) return reject(e);
    throw e;
  }
  const problems: Problem[] = [];
  if (row.declared_runtime !== null && row.declared_runtime !== manifest.runtime) problems.push({ path: 'runtime', message: `the manifest says ${manifest.runtime}, the upload declared ${row.declared_runtime}` });
  if (row.declared_entrypoint !== null && row.declared_entrypoint !== manifest.entrypoint) problems.push({ path: 'entrypoint', message: 'the manifest entrypoint differs from the one declared at upload' });
  if (problems.length > 0) return reject(new TraceError(422, 'BUNDLE_INVALID', 'UDF bundle does not match what was declared', { problems }));

  const objectKey = bundleObjectKey(orgId, row.id, sha256);
  await s.store.put(objectKey, bytes);
  const done = await db.query<BundleRow>(FINALIZE, [row.id, orgId, objectKey, sha256, manifest.runtime, manifest.entrypoint, bytes.length, manifest.files.length, JSON.stringify(manifest)]);
  await s.store.delete(row.upload_key).catch(() => undefined);
  const out = done.rows[0] ?? (await getBundle(db, orgId, id));
  if (!out || out.status !== 'Finalized' || out.sha256 !== sha256) throw new TraceError(409, 'BUNDLE_CONFLICT', 'the bundle changed while it was being finalized');
  return bundleView(out);
}

/** A finalized bundle's pinned facts, for executors. */
export interface PinnedBundle {
  id: string;
  org_id: string;
  sha256: string;
  runtime: BundleRuntime;
  entrypoint: string;
  object_key: string;
}

export async function pinnedBundle(db: Queryable, orgId: string, id: string): Promise<PinnedBundle | undefined> {
  const r = await getBundle(db, orgId, id);
  if (!r || r.status !== 'Finalized') return undefined;
  return { id: r.id, org_id: r.org_id, sha256: r.sha256!, runtime: r.runtime!, entrypoint: r.entrypoint!, object_key: r.object_key! };
}

/**
 * For `AwsLambdaInvoker.presignBundleUrl`: an object-scoped presigned GET of a finalized bundle,
 * so the runner Lambda needs no S3 permissions (lambda_invocation.md). The executor has already
 * checked the bundle belongs to the task's org and pinned its hash in the payload.
 */
export function bundleUrlPresigner(db: Queryable, store: { presignGet(key: string, o: { expiresSeconds: number }): Promise<string> }, expiresSeconds = 900): (bundleId: string) => Promise<string> {
  return async (bundleId) => {
    if (!UUID_RE.test(bundleId)) throw notFound('no such bundle', 'BUNDLE_NOT_FOUND');
    const r = await db.query<{ object_key: string }>(`SELECT object_key FROM udf_bundles WHERE id = $1 AND status = 'Finalized'`, [bundleId]);
    const key = r.rows[0]?.object_key;
    if (!key) throw notFound('no such bundle', 'BUNDLE_NOT_FOUND');
    return store.presignGet(key, { expiresSeconds });
  };
}

export { resolveCaps };
