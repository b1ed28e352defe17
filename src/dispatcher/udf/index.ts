/**
 * The untrusted-UDF platform pieces of the Dispatcher, as one plugin:
 * - `POST /v1/udf/bundles`, `POST /v1/udf/bundles/{id}/finalize`, `GET /v1/udf/bundles/{id}`;
 * - the signed upload route of the embedded profile (`PUT /v1/uploads?...`, file stores only);
 * - `POST /v1/task/credentials` (file grants or STS, plus signed uploads into attempt prefixes);
 * - `POST /internal/dataset-events` (the sink reports committed buffered batches);
 * - `GET /v1/sink/dead-letters`, `POST /v1/sink/dead-letters/{id}/replay` (admin);
 * - registration of the buffered datasets (`alert_events`) when the Dispatcher starts.
 * The executor for `runtime: lambda` (`UdfExecutor`) is built separately and passed in
 * `deps.executors.lambda`. See README.md in this folder.
 */
import type { DispatcherPlugin } from '../dispatcher.js';
import { TraceError } from '../../core/errors.js';
import type { ObjectStore } from '../../objectstore/objectstore.js';
import { S3ObjectStore } from '../../objectstore/s3.js';
import { uploadRoute, DEFAULT_UPLOAD_PATH } from '../../objectstore/upload-route.js';
import { resolveCaps, type BundleCaps } from '../../udf/manifest.js';
import { bundleRoutes } from './bundle-routes.js';
import { credentialsRoute } from './credentials-route.js';
import { FileCredentialMinter, type CredentialMinter } from './credentials.js';
import { datasetEventRoutes, ensureBufferedDatasets, BUFFERED_DATASETS } from './dataset-events.js';
import { dlqRoutes } from './dlq-routes.js';
import { uploadSignerFor } from './uploads.js';
import { ATTEMPT_UPLOAD_MAX_BYTES } from './credentials-route.js';

export interface UdfPluginOptions {
  /** The object store: bundles, attempt scratch and buffer prefixes. */
  store: ObjectStore;
  /** The Dispatcher's own base URL, for signed upload URLs (embedded profile). */
  publicUrl: () => string | undefined;
  /** HMAC secret (>= 32 bytes) for signed upload URLs; required unless the store is S3. */
  uploadSecret?: string | Uint8Array;
  /** Mount the signed upload route on the Dispatcher (default: true for non-S3 stores). */
  mountUploadRoute?: boolean;
  /** Default: file grants for file stores. S3 deployments pass a StsCredentialMinter. */
  credentials?: CredentialMinter;
  /** Bundle validation caps; `maxZipBytes` is also the bundle upload cap. */
  caps?: Partial<BundleCaps>;
  /** Lifetime of bundle upload URLs (default 15 minutes). */
  uploadTtlSeconds?: number;
  /** Buffered datasets to register (default `alert_events`). */
  bufferedDatasets?: readonly string[];
}

export function udfPlugin(opts: UdfPluginOptions): DispatcherPlugin {
  const caps = resolveCaps(opts.caps);
  const isS3 = opts.store instanceof S3ObjectStore;
  const signer = uploadSignerFor(opts.store, { baseUrl: opts.publicUrl, ...(opts.uploadSecret !== undefined ? { secret: opts.uploadSecret } : {}) });
  let minter = opts.credentials;
  if (!minter) {
    if (isS3) throw new TraceError(500, 'CREDENTIALS_NOT_CONFIGURED', 'an S3 object store needs a credential minter (StsCredentialMinter)');
    minter = new FileCredentialMinter(opts.store.rootUrl);
  }
  const credentialMinter = minter;
  const uploadTtlSeconds = opts.uploadTtlSeconds ?? 900;
  return {
    name: 'udf',
    routes(app, ctx) {
      if (opts.mountUploadRoute ?? !isS3) {
        if (opts.uploadSecret === undefined) throw new TraceError(500, 'UPLOADS_NOT_CONFIGURED', 'the upload route needs an upload secret');
        uploadRoute(app, {
          store: opts.store,
          secret: opts.uploadSecret,
          maxBytes: Math.max(caps.maxZipBytes, ATTEMPT_UPLOAD_MAX_BYTES),
          path: DEFAULT_UPLOAD_PATH,
        }).catch((e: unknown) => ctx.deps.log.error({ err: e instanceof Error ? e.message : String(e) }, 'could not mount the upload route'));
      }
      bundleRoutes(app, ctx, { store: opts.store, signer, caps, uploadTtlSeconds });
      credentialsRoute(app, ctx, { store: opts.store, minter: credentialMinter, signer });
      datasetEventRoutes(app, ctx);
      dlqRoutes(app, ctx);
      app.addHook('onReady', async () => {
        await ensureBufferedDatasets(ctx.deps.state, ctx.deps.orgId, opts.bufferedDatasets ?? BUFFERED_DATASETS, ctx.deps.log);
      });
    },
  };
}

export { UdfExecutor, type UdfExecutorOptions, type UdfRunOutcome } from './executor.js';
export { attemptScopes, attemptPrefixKeys, withAttemptScopes, prefixUrl, type AttemptArea } from './scopes.js';
export {
  FileCredentialMinter,
  StsCredentialMinter,
  buildSessionPolicy,
  canonicalizePrefix,
  deriveScope,
  type CredentialMinter,
  type CredentialGrant,
} from './credentials.js';
export { ensureBufferedDatasets, bufferedDatasetUuid, bufferedDatasetVersion, BUFFERED_DATASETS } from './dataset-events.js';
export { deriveUploadSecret, uploadSignerFor, hmacUploadSigner, s3UploadSigner, type SignedUpload, type UploadSigner } from './uploads.js';
export { pinnedBundle, finalizeBundle, openBundleUpload, bundleUrlPresigner, type PinnedBundle, type BundleView } from './bundles.js';
