import type { FastifyInstance } from 'fastify';
import { z } from 'zod';
import { bindTaskRequest } from '../../auth/capability.js';
import { TraceError } from '../../core/errors.js';
import { header, parseInput } from '../../core/http.js';
import { isUrlWithin, keyProblem } from '../../objectstore/keys.js';
import type { DispatcherContext } from '../service.js';
import { fence } from '../http/schemas.js';
import { lockFenced } from '../tasks/fence.js';
import { deriveScope, type CredentialMinter } from './credentials.js';
import { attemptPrefixKeys, type AttemptArea } from './scopes.js';
import type { ObjectStore } from '../../objectstore/objectstore.js';
import type { SignedUpload, UploadSigner } from './uploads.js';

/** Default cap of one upload into an attempt prefix: the buffer batch limit (operations.md). */
export const ATTEMPT_UPLOAD_MAX_BYTES = 16 * 1024 * 1024;

const uploadName = z.string().min(1).max(200).refine((n) => keyProblem(n) === null, 'must be a relative object name without ., .., empty segments, wildcards or control characters');

const credentialsBody = z.strictObject({
  ...fence,
  /** Signed upload URLs to create inside the attempt's own prefixes (at most 16). */
  uploads: z.array(z.strictObject({
    name: uploadName,
    area: z.enum(['buffers', 'scratch']).default('buffers'),
    max_bytes: z.number().int().min(0).max(ATTEMPT_UPLOAD_MAX_BYTES).optional(),
  })).max(16).default([]),
});

export interface CredentialsRouteOptions {
  /** The object store the attempt prefixes live in (its root must be the minter's root). */
  store: ObjectStore;
  minter: CredentialMinter;
  signer: UploadSigner;
  /** Lifetime of signed upload URLs (capped by the token's own expiry). Default 15 minutes. */
  uploadTtlSeconds?: number;
}

/**
 * `POST /v1/task/credentials` (contracts/credential_minting.md): capability token + fencing
 * triple of a live attempt. Answers `{ok, credentials, uploads}`:
 * - `credentials`: the minter's grant for exactly the token's prefixes (deny by default);
 * - `uploads`: for each requested `{name, area}`, a signed PUT URL for the object
 *   `{area}/{task_id}/{attempt}/{name}` and its object URI (`uri`, the `batch_uri` to publish),
 *   refused unless that URI lies inside one of the token's write prefixes.
 */
export function credentialsRoute(app: FastifyInstance, ctx: DispatcherContext, opts: CredentialsRouteOptions): void {
  const { deps } = ctx;
  app.post('/v1/task/credentials', async (req) => {
    const claims = await deps.capabilityVerifier.verify(header(req, 'x-trace-task-capability'));
    const body = parseInput(credentialsBody, req.body);
    bindTaskRequest(claims, body);
    await deps.state.tx(async (q) => {
      const { task, mode } = await lockFenced(q, body);
      if (mode !== 'live') throw new TraceError(409, 'TASK_NOT_RUNNING', `the task is ${task.status}; the attempt is over`);
    });
    const scope = deriveScope(claims.s3, opts.minter.rootUrl);
    const credentials = await opts.minter.mint(claims, scope);

    const uploads: Array<SignedUpload & { name: string; area: AttemptArea; uri: string }> = [];
    if (body.uploads.length > 0) {
      const keys = attemptPrefixKeys(claims.task_id, claims.attempt);
      const ttl = Math.max(1, Math.min(opts.uploadTtlSeconds ?? 900, claims.exp - Math.floor(Date.now() / 1000)));
      for (const [i, u] of body.uploads.entries()) {
        const key = `${keys[u.area]}${u.name}`;
        const uri = opts.store.url(key);
        if (!scope.write.some((p) => isUrlWithin(uri, p.url))) {
          throw new TraceError(403, 'UPLOAD_OUTSIDE_SCOPE', `uploads[${i}] is outside the prefixes this task may write`);
        }
        const signed = await opts.signer.sign(key, { expiresSeconds: ttl, maxBytes: u.max_bytes ?? ATTEMPT_UPLOAD_MAX_BYTES });
        uploads.push({ name: u.name, area: u.area, uri, ...signed });
      }
    }
    req.log.info({ task_id: claims.task_id, attempt: claims.attempt, scheme: credentials.scheme, uploads: uploads.length }, 'task credentials minted');
    return { ok: true, credentials, uploads };
  });
}
