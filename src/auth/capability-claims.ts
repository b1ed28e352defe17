/**
 * The claim set of a task capability token (contracts/task_capability_tokens.md, v1) as types
 * and as a strict zod schema. Deny by default: unknown claims, wrong types and out-of-range
 * values are all refused, by the verifier and by the issuer before it signs.
 */
import { z } from 'zod';
import { UUID_RE } from '../core/ids.js';
import { CAPABILITY_AUDIENCE } from './jwt-common.js';
import { FILTER_COLUMN_RE, INPUT_FILTER_LIMITS, type InputFilter } from '../core/input-filter.js';

/** Where a granted dataset version lives, for trusted attach by the Query Service. */
export type StorageRef =
  /** Local object store: `prefix` is an absolute directory path ending in `/`. */
  | { scheme: 'file'; prefix: string; glob: string; manifest?: string }
  /** S3: `prefix` is a key prefix inside `bucket` (no leading `/`), ending in `/`. */
  | { scheme: 's3'; bucket: string; prefix: string; glob: string; manifest?: string };

/** One dataset version the task may read through `/v1/task/query`. */
export interface DatasetGrant {
  dataset_uuid: string;
  dataset_version: string;
  /** Required when the reader must attach Parquet; readers fail closed when it is missing. */
  storage_ref?: StorageRef;
  /**
   * The input edge filter of the task's edge from this dataset (ADR 0007): the Query Service
   * shows the task only the rows that match. Signed with the grant, so the task cannot drop it.
   */
  where?: InputFilter;
}

/** Object-store prefixes for `/v1/task/credentials`: `s3://bucket/prefix/` or `file:///abs/dir/`. */
export interface CapabilityS3Scope {
  read_prefixes: string[];
  write_prefixes: string[];
}

/** What the Dispatcher decides per `(task_id, attempt)`; the issuer adds the registered claims. */
export interface CapabilityGrant {
  org_id: string;
  task_id: string;
  attempt: number;
  datasets: DatasetGrant[];
  s3: CapabilityS3Scope;
  /** Token id; the issuer generates a random one when absent. */
  jti?: string;
}

/** A verified capability token's claims. */
export interface CapabilityClaims extends CapabilityGrant {
  iss: string;
  aud: typeof CAPABILITY_AUDIENCE;
  /** Always `task:{task_id}`. */
  sub: string;
  exp: number;
  iat: number;
}

const uuid = z.string().regex(UUID_RE, 'must be a UUID');

/** No NUL bytes, no backslashes, and no `.` or `..` path segments. */
function plainPath(s: string): boolean {
  if (s.includes('\0') || s.includes('\\')) return false;
  return !s.split('/').some((seg) => seg === '.' || seg === '..');
}

const glob = z
  .string()
  .min(1)
  .max(256)
  .refine((s) => !s.startsWith('/') && plainPath(s), 'must be a relative glob without . or .. segments');

const s3Bucket = z.string().regex(/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/, 'must be an S3 bucket name');

const fileStorageRef = z.strictObject({
  scheme: z.literal('file'),
  prefix: z
    .string()
    .min(2)
    .max(1024)
    .refine((s) => s.startsWith('/') && s.endsWith('/') && plainPath(s), 'must be an absolute directory path ending in /'),
  glob,
  /** A manifest listing the exact files of the version (relative to the prefix), e.g. a chain-sync view. */
  manifest: glob.optional(),
});

const s3StorageRef = z.strictObject({
  scheme: z.literal('s3'),
  bucket: s3Bucket,
  prefix: z
    .string()
    .min(1)
    .max(1024)
    .refine((s) => !s.startsWith('/') && s.endsWith('/') && plainPath(s), 'must be a key prefix ending in /'),
  glob,
  manifest: glob.optional(),
});

export const storageRefSchema: z.ZodType<StorageRef> = z.discriminatedUnion('scheme', [fileStorageRef, s3StorageRef]);

const filterScalar = z.union([z.string().max(INPUT_FILTER_LIMITS.stringMax), z.number().refine(Number.isFinite), z.boolean()]);
const inputFilterSchema: z.ZodType<InputFilter> = z
  .record(z.string().regex(FILTER_COLUMN_RE), z.union([filterScalar, z.array(filterScalar).min(1).max(INPUT_FILTER_LIMITS.values)]))
  .refine((w) => { const n = Object.keys(w).length; return n > 0 && n <= INPUT_FILTER_LIMITS.columns; }, 'must name 1 to 64 columns');

export const datasetGrantSchema: z.ZodType<DatasetGrant> = z.strictObject({
  dataset_uuid: uuid,
  dataset_version: uuid,
  storage_ref: storageRefSchema.optional(),
  where: inputFilterSchema.optional(),
});

const CANONICAL_PREFIX_RE = /^(s3:\/\/[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]\/|file:\/\/\/)/;
const objectPrefix = z
  .string()
  .max(1024)
  .refine((s) => CANONICAL_PREFIX_RE.test(s) && s.endsWith('/') && plainPath(s.replace(/^[a-z0-9]+:\/\//, '')), {
    message: 'must be a canonical s3://bucket/prefix/ or file:///dir/ prefix',
  });

export const s3ScopeSchema: z.ZodType<CapabilityS3Scope> = z.strictObject({
  read_prefixes: z.array(objectPrefix).max(256),
  write_prefixes: z.array(objectPrefix).max(256),
});

const grantShape = {
  org_id: uuid,
  task_id: uuid,
  attempt: z.int().min(1),
  datasets: z.array(datasetGrantSchema).max(1000),
  s3: s3ScopeSchema,
  jti: z.string().min(1).max(128).optional(),
};

export const capabilityGrantSchema: z.ZodType<CapabilityGrant> = z.strictObject(grantShape);

export const capabilityClaimsSchema: z.ZodType<CapabilityClaims> = z
  .strictObject({
    ...grantShape,
    iss: z.string().min(1).max(256),
    aud: z.literal(CAPABILITY_AUDIENCE),
    sub: z.string().min(1).max(64),
    exp: z.int().positive(),
    iat: z.int().nonnegative(),
  })
  .refine((c) => c.sub === `task:${c.task_id}`, { message: 'sub must be task:{task_id}', path: ['sub'] });
