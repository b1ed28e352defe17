/**
 * Object-store scopes of one task attempt (contracts/task_capability_tokens.md `s3` claim,
 * contracts/buffered_datasets.md, credential_minting.md).
 *
 * Every attempt owns two directory prefixes below the object store root, derived only from
 * `(task_id, attempt)`:
 * - `buffers/{task_id}/{attempt}/`: buffered-dataset batch artifacts (`/v1/task/buffer-publish`
 *   pointers must lie here; the sink refuses anything else);
 * - `scratch/{task_id}/{attempt}/`: any other attempt-scoped output.
 *
 * The capability token carries them as canonical prefix URLs (`s3://bucket/prefix/...` or
 * `file:///abs/dir/...`) in both `read_prefixes` and `write_prefixes`; read prefixes also list the
 * S3 prefixes of the granted dataset versions (the Query Service requires that of S3 refs).
 */
import type { CapabilityIssuer } from '../../auth/capability.js';
import type { CapabilityGrant, CapabilityS3Scope, DatasetGrant } from '../../auth/capability-claims.js';
import { canonicalPrefix, canonicalPrefixUrl } from '../../objectstore/keys.js';

export type AttemptArea = 'buffers' | 'scratch';
export const ATTEMPT_AREAS: readonly AttemptArea[] = ['buffers', 'scratch'];

/** The store keys (directory prefixes, ending in `/`) an attempt may write. */
export function attemptPrefixKeys(taskId: string, attempt: number): Record<AttemptArea, string> {
  if (!Number.isSafeInteger(attempt) || attempt < 1) throw new TypeError('attempt must be a positive integer');
  return {
    buffers: canonicalPrefix(`buffers/${taskId}/${attempt}`),
    scratch: canonicalPrefix(`scratch/${taskId}/${attempt}`),
  };
}

/** `rootUrl` (ending in `/`) joined with a canonical key prefix, as a canonical prefix URL. */
export function prefixUrl(rootUrl: string, keyPrefix: string): string {
  const root = rootUrl.endsWith('/') ? rootUrl : `${rootUrl}/`;
  return canonicalPrefixUrl(`${root}${canonicalPrefix(keyPrefix)}`);
}

/** The canonical S3 prefix URL of a dataset grant stored on S3, if any. */
function datasetReadPrefix(g: DatasetGrant): string | undefined {
  const ref = g.storage_ref;
  if (!ref || ref.scheme !== 's3') return undefined;
  try {
    return canonicalPrefixUrl(`s3://${ref.bucket}/${ref.prefix}`);
  } catch {
    return undefined; // a malformed ref grants nothing (the Query Service refuses it anyway)
  }
}

/**
 * The `s3` claim for one attempt: its buffer and scratch prefixes (read and write) plus the S3
 * prefixes of its granted datasets (read). Deterministic; nothing else is ever granted.
 */
export function attemptScopes(
  task: { task_id: string; attempt: number },
  opts: { rootUrl: string; datasets?: readonly DatasetGrant[] },
): CapabilityS3Scope {
  const keys = attemptPrefixKeys(task.task_id, task.attempt);
  const own = ATTEMPT_AREAS.map((a) => prefixUrl(opts.rootUrl, keys[a]));
  const reads = new Set(own);
  for (const g of opts.datasets ?? []) {
    const p = datasetReadPrefix(g);
    if (p) reads.add(p);
  }
  return { read_prefixes: [...reads], write_prefixes: own };
}

/**
 * An issuer that fills an empty `s3` claim with `attemptScopes` before signing. It lets a
 * deployment grant attempt prefixes without changing how claims are assembled elsewhere; a grant
 * that already carries prefixes is signed unchanged.
 */
export function withAttemptScopes(issuer: CapabilityIssuer, rootUrl: string): CapabilityIssuer {
  return {
    get alg() { return issuer.alg; },
    get iss() { return issuer.iss; },
    get kid() { return issuer.kid; },
    jwks: () => issuer.jwks(),
    verifier: (opts) => issuer.verifier(opts),
    sign(grant: CapabilityGrant, ttlSeconds: number) {
      const empty = grant.s3.read_prefixes.length === 0 && grant.s3.write_prefixes.length === 0;
      const s3 = empty ? attemptScopes(grant, { rootUrl, datasets: grant.datasets }) : grant.s3;
      return issuer.sign({ ...grant, s3 }, ttlSeconds);
    },
  };
}
