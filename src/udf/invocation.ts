/**
 * The Dispatcher -> UDF runner invocation payload (architecture/contracts/lambda_invocation.md):
 * the fencing triple, the per-attempt capability token, the bundle reference and the full task
 * payload (same shape as `/internal/task-fetch`). The contract says the exact fields are still
 * evolving, so fields beyond the ones the runner needs pass through untouched.
 *
 * Trace's addition: `udf` carries the job's `{bundle_id, entrypoint}` plus the bundle's pinned
 * `sha256` and `runtime` recorded at upload, so a runner can verify the bytes it is given.
 */
import { z } from 'zod';
import { UUID_RE } from '../core/ids.js';
import { SHA256_HEX_RE } from './manifest.js';

const uuid = z.string().regex(UUID_RE, 'must be a UUID');

export const udfRefSchema = z.looseObject({
  bundle_id: z.string().min(1).max(200),
  entrypoint: z.string().min(1).max(512),
  sha256: z.string().regex(SHA256_HEX_RE, 'must be 64 lowercase hex characters').optional(),
  runtime: z.enum(['node', 'python']).optional(),
});

export const lambdaInvocationPayloadSchema = z.looseObject({
  task_id: uuid,
  attempt: z.number().int().min(1),
  lease_token: uuid,
  lease_expires_at: z.string().optional(),
  capability_token: z.string().min(1),
  /** Object-scoped pre-signed GET URL of the bundle zip (AWS); optional for local runners. */
  bundle_url: z.string().url().optional(),
  udf: udfRefSchema,
  job: z.looseObject({ dag_name: z.string(), name: z.string() }).optional(),
  operator: z.string().optional(),
  config: z.record(z.string(), z.unknown()).optional(),
  inputs: z.array(z.unknown()).optional(),
  /** Task timeout; runners bound the UDF run by it (capped by their own maximum). */
  timeout_seconds: z.number().int().positive().optional(),
});

export type LambdaInvocationPayload = z.infer<typeof lambdaInvocationPayloadSchema>;

/**
 * What the UDF reads on stdin: the payload without `bundle_url` (the UDF has no use for its own
 * bundle's download link). The capability token stays: SDKs may read it from here or from
 * `TRACE_TASK_CAPABILITY_TOKEN`.
 */
export function udfStdinPayload(payload: LambdaInvocationPayload): Record<string, unknown> {
  const { bundle_url: _url, ...rest } = payload;
  return rest;
}
