import { join } from 'node:path';
import type { S3Client } from '@aws-sdk/client-s3';
import { TraceError, isTraceError } from '../core/errors.js';
import { FileObjectStore } from './file.js';
import { parseObjectUrl } from './keys.js';
import { S3ObjectStore } from './s3.js';

export interface OpenObjectStoreOptions {
  /** Client for `s3://` URLs (tests, custom settings); default: built from the AWS variables. */
  s3Client?: S3Client;
  /** Where S3 settings are read from (default process.env). */
  env?: NodeJS.ProcessEnv;
}

/**
 * Opens the object store named by TRACE_OBJECT_STORE_URL:
 * - undefined or blank: the folder `<home>/objects` (created if missing);
 * - `file:///abs/path`: that folder (created if missing);
 * - `s3://bucket` or `s3://bucket/prefix`: S3, endpoint/region/keys from the AWS variables.
 * Anything else throws 500 OBJECT_STORE_URL_INVALID with a sentence saying what is accepted.
 */
export function openObjectStore(url: string | undefined, home: string, opts: OpenObjectStoreOptions = {}): FileObjectStore | S3ObjectStore {
  const raw = url?.trim() ?? '';
  if (raw === '') return new FileObjectStore(join(home, 'objects'));
  let parsed;
  try {
    parsed = parseObjectUrl(raw);
  } catch (e) {
    const why = isTraceError(e) ? e.message : 'malformed URL';
    throw new TraceError(500, 'OBJECT_STORE_URL_INVALID', `TRACE_OBJECT_STORE_URL must be file:///absolute/path or s3://bucket/prefix (${why})`);
  }
  if (parsed.scheme === 'file') {
    if (parsed.path === '/') throw new TraceError(500, 'OBJECT_STORE_URL_INVALID', 'TRACE_OBJECT_STORE_URL must not be the filesystem root');
    return new FileObjectStore(parsed.path);
  }
  return new S3ObjectStore({
    bucket: parsed.bucket,
    prefix: parsed.prefix,
    ...(opts.s3Client ? { client: opts.s3Client } : {}),
    ...(opts.env ? { env: opts.env } : {}),
  });
}
