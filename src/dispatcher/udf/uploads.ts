/**
 * Signed, expiring, size-capped upload URLs for one object key, the same shape in both profiles:
 * - embedded/local (file store): an HMAC-signed URL of the Dispatcher's own upload route
 *   (src/objectstore/signed-upload.ts + upload-route.ts), which enforces the size cap while the
 *   body streams;
 * - S3: a presigned PUT (`S3ObjectStore.presignPut`). S3 cannot cap a presigned PUT's size, so
 *   whoever consumes the object checks its size again (bundle finalize, the sink).
 */
import { createHmac } from 'node:crypto';
import { TraceError } from '../../core/errors.js';
import type { ObjectStore } from '../../objectstore/objectstore.js';
import { S3ObjectStore } from '../../objectstore/s3.js';
import { signUploadUrl } from '../../objectstore/signed-upload.js';
import { DEFAULT_UPLOAD_PATH } from '../../objectstore/upload-route.js';

/**
 * The secret that signs the embedded profile's upload URLs when none is configured: derived
 * from the task capability secret under its own label, so the two never share a key.
 */
export function deriveUploadSecret(capabilitySecret: string): string {
  return createHmac('sha256', capabilitySecret).update('trace-upload-urls-v1').digest('base64url');
}

export interface SignedUpload {
  url: string;
  method: 'PUT';
  /** Headers the uploader must send with the body. */
  headers: Record<string, string>;
  expires_at: string;
  max_bytes: number;
}

export interface UploadSigner {
  sign(key: string, opts: { expiresSeconds: number; maxBytes: number }): Promise<SignedUpload>;
}

/** HMAC-signed URLs of the Dispatcher's upload route (`baseUrl()` is the Dispatcher's own URL). */
export function hmacUploadSigner(opts: { baseUrl: () => string | undefined; secret: string | Uint8Array; path?: string }): UploadSigner {
  return {
    async sign(key, o) {
      const base = opts.baseUrl();
      if (!base) throw new TraceError(503, 'UPLOADS_UNAVAILABLE', 'the upload endpoint is not listening yet');
      const expiresAt = new Date(Date.now() + o.expiresSeconds * 1000);
      const url = signUploadUrl({ baseUrl: `${base.replace(/\/+$/, '')}${opts.path ?? DEFAULT_UPLOAD_PATH}`, key, expiresAt, maxBytes: o.maxBytes, secret: opts.secret });
      return { url, method: 'PUT', headers: {}, expires_at: new Date(Math.floor(expiresAt.getTime() / 1000) * 1000).toISOString(), max_bytes: o.maxBytes };
    },
  };
}

/** Presigned S3 PUTs. */
export function s3UploadSigner(store: S3ObjectStore): UploadSigner {
  return {
    async sign(key, o) {
      const p = await store.presignPut(key, { expiresSeconds: o.expiresSeconds, maxBytes: o.maxBytes });
      return { url: p.url, method: 'PUT', headers: p.headers, expires_at: p.expiresAt.toISOString(), max_bytes: o.maxBytes };
    },
  };
}

/** The signer that fits a store: presigned PUTs on S3, otherwise the HMAC route (needs a secret). */
export function uploadSignerFor(store: ObjectStore, opts: { baseUrl: () => string | undefined; secret?: string | Uint8Array; path?: string }): UploadSigner {
  if (store instanceof S3ObjectStore) return s3UploadSigner(store);
  if (opts.secret === undefined) throw new TraceError(500, 'UPLOADS_NOT_CONFIGURED', 'a file object store needs an upload signing secret');
  return hmacUploadSigner({ baseUrl: opts.baseUrl, secret: opts.secret, ...(opts.path ? { path: opts.path } : {}) });
}
