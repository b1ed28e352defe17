/**
 * The object store on S3 or an S3-compatible service (AWS profile; local services with MinIO).
 *
 * UNTESTED AGAINST S3 ITSELF. Its tests (test/objectstore/s3.test.ts) put a middleware at the
 * front of a real S3Client that records each command and input and answers with canned output,
 * and they check presigned URLs offline; nothing here has run against AWS S3 or MinIO. Verify
 * against a real bucket before relying on it, in particular multipart uploads, the error names
 * treated as "not found", and presigned PUTs through a custom endpoint.
 *
 * - Keys live under `s3://bucket/prefix/`; `child(p)` is the same bucket with a longer prefix.
 * - Client configuration: region from `AWS_REGION` / `AWS_DEFAULT_REGION` (default us-east-1),
 *   endpoint from `AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL` (path-style addressing whenever an
 *   endpoint is set, as MinIO needs), keys from the SDK's default chain (`AWS_ACCESS_KEY_ID`...).
 *   Checksums are computed only when an operation requires them: S3-compatible stores vary in
 *   support, and a presigned PUT must not carry the checksum of an empty body.
 * - putStream buffers up to one part (8 MiB): smaller bodies are one PutObject, larger ones a
 *   multipart upload (aborted on any failure, including the byte cap), so nothing partial is
 *   ever visible.
 * - A presigned PUT cannot enforce a maximum size (only an exact, signed Content-Length).
 *   presignPut signs `contentLength` when given; otherwise the finalize step must stat() the
 *   object and refuse (and delete) anything over `maxBytes`.
 * - SDK failures other than "not found" become 503 OBJECT_STORE_UNAVAILABLE (cause attached).
 */
import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import {
  AbortMultipartUploadCommand,
  CompleteMultipartUploadCommand,
  CreateMultipartUploadCommand,
  DeleteObjectCommand,
  DeleteObjectsCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
  UploadPartCommand,
  type CompletedPart,
  type S3ClientConfig,
} from '@aws-sdk/client-s3';
import { getSignedUrl } from '@aws-sdk/s3-request-presigner';
import { TraceError, isTraceError } from '../core/errors.js';
import { MAX_KEY_BYTES, canonicalKey, canonicalNonEmptyPrefix, canonicalPrefix, compareKeys, isS3Bucket, isValidKey } from './keys.js';
import type { ByteSource, GetOptions, ObjectInfo, ObjectStore, PutResult, PutStreamOptions } from './objectstore.js';
import { checkByteLimit, objectNotFound, objectTooLarge, storeUnavailable, toBuffer } from './common.js';

export const DEFAULT_PART_BYTES = 8 * 1024 * 1024;
export const MIN_PART_BYTES = 5 * 1024 * 1024;
export const MAX_PARTS = 10_000;
/** SigV4 presigned URLs live at most 7 days. */
export const MAX_PRESIGN_SECONDS = 7 * 24 * 3600;
const DELETE_BATCH = 1000;
const MAX_LIST_PAGES = 100_000;

export interface S3ObjectStoreOptions {
  bucket: string;
  /** Key prefix inside the bucket (`''` or a canonical prefix; a missing trailing `/` is added). */
  prefix?: string;
  /** A preconfigured client (tests, custom settings). Build it from s3ClientConfig() so presigned PUTs carry no checksum. */
  client?: S3Client;
  region?: string;
  endpoint?: string;
  forcePathStyle?: boolean;
  /** Where the AWS variables are read from (default process.env). */
  env?: NodeJS.ProcessEnv;
  /** Multipart part size for putStream (at least 5 MiB). */
  partBytes?: number;
}

export interface PresignPutOptions {
  expiresSeconds: number;
  /** Recorded in the result; S3 cannot enforce it on a PUT (see the file comment). */
  maxBytes?: number;
  /** Exact body size; signed, so S3 refuses any other length. */
  contentLength?: number;
  /** Sent by the uploader as `Content-Type` (not signed). */
  contentType?: string;
}

export interface PresignedUpload {
  url: string;
  method: 'PUT';
  /** Headers the uploader must send with the body. */
  headers: Record<string, string>;
  expiresAt: Date;
  maxBytes?: number;
}

function envValue(env: NodeJS.ProcessEnv, name: string): string | undefined {
  const v = env[name];
  return v === undefined || v.trim() === '' ? undefined : v.trim();
}

/** S3Client settings from options and the standard AWS variables. */
export function s3ClientConfig(opts: { region?: string; endpoint?: string; forcePathStyle?: boolean; env?: NodeJS.ProcessEnv } = {}): S3ClientConfig {
  const env = opts.env ?? process.env;
  const region = opts.region ?? envValue(env, 'AWS_REGION') ?? envValue(env, 'AWS_DEFAULT_REGION') ?? 'us-east-1';
  const endpoint = opts.endpoint ?? envValue(env, 'AWS_ENDPOINT_URL_S3') ?? envValue(env, 'AWS_ENDPOINT_URL');
  const config: S3ClientConfig = {
    region,
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
  };
  if (endpoint !== undefined) config.endpoint = endpoint;
  const pathStyle = opts.forcePathStyle ?? endpoint !== undefined;
  if (pathStyle) config.forcePathStyle = true;
  return config;
}

function errInfo(e: unknown): { name: string; status: number | undefined } {
  const err = e as { name?: unknown; $metadata?: { httpStatusCode?: unknown } } | undefined;
  const status = err?.$metadata?.httpStatusCode;
  return { name: typeof err?.name === 'string' ? err.name : '', status: typeof status === 'number' ? status : undefined };
}

function isNotFound(e: unknown): boolean {
  const { name, status } = errInfo(e);
  return name === 'NoSuchKey' || name === 'NotFound' || status === 404;
}

function mapError(e: unknown): TraceError {
  if (isTraceError(e)) return e;
  if (isNotFound(e)) return objectNotFound();
  return storeUnavailable(e);
}

function checkExpiry(seconds: number): void {
  if (!Number.isInteger(seconds) || seconds < 1 || seconds > MAX_PRESIGN_SECONDS) {
    throw new TraceError(500, 'OBJECT_STORE_MISUSE', `expiresSeconds must be an integer in [1, ${MAX_PRESIGN_SECONDS}]`);
  }
}

export class S3ObjectStore implements ObjectStore {
  readonly bucket: string;
  /** Key prefix of this store inside the bucket (`''` or ending in `/`). */
  readonly prefix: string;
  readonly rootUrl: string;
  readonly client: S3Client;
  private readonly partBytes: number;

  constructor(opts: S3ObjectStoreOptions) {
    if (!isS3Bucket(opts.bucket)) throw new TraceError(500, 'OBJECT_STORE_URL_INVALID', 'S3 bucket name is not valid');
    this.bucket = opts.bucket;
    this.prefix = canonicalPrefix(opts.prefix ?? '');
    this.rootUrl = `s3://${this.bucket}/${this.prefix}`;
    const cfg: { region?: string; endpoint?: string; forcePathStyle?: boolean; env?: NodeJS.ProcessEnv } = {};
    if (opts.region !== undefined) cfg.region = opts.region;
    if (opts.endpoint !== undefined) cfg.endpoint = opts.endpoint;
    if (opts.forcePathStyle !== undefined) cfg.forcePathStyle = opts.forcePathStyle;
    if (opts.env !== undefined) cfg.env = opts.env;
    this.client = opts.client ?? new S3Client(s3ClientConfig(cfg));
    const part = opts.partBytes ?? DEFAULT_PART_BYTES;
    if (!Number.isSafeInteger(part) || part < MIN_PART_BYTES) {
      throw new TraceError(500, 'OBJECT_STORE_MISUSE', `partBytes must be an integer of at least ${MIN_PART_BYTES}`);
    }
    this.partBytes = part;
  }

  child(prefix: string): S3ObjectStore {
    const full = this.prefix + canonicalNonEmptyPrefix(prefix);
    if (Buffer.byteLength(full, 'utf8') > MAX_KEY_BYTES) throw new TraceError(400, 'INVALID_OBJECT_KEY', `object prefix is longer than ${MAX_KEY_BYTES} bytes`);
    return new S3ObjectStore({ bucket: this.bucket, prefix: full, client: this.client, partBytes: this.partBytes });
  }

  url(key: string): string {
    return `s3://${this.bucket}/${this.fullKey(key)}`;
  }

  async put(key: string, body: Uint8Array | string): Promise<void> {
    const Key = this.fullKey(key);
    try {
      await this.client.send(new PutObjectCommand({ Bucket: this.bucket, Key, Body: toBuffer(body) }));
    } catch (e) {
      throw mapError(e);
    }
  }

  async putStream(key: string, body: ByteSource, opts: PutStreamOptions = {}): Promise<PutResult> {
    checkByteLimit(opts.maxBytes, 'maxBytes');
    const Key = this.fullKey(key);
    const max = opts.maxBytes ?? Number.POSITIVE_INFINITY;
    const ct = opts.contentType === undefined ? {} : { ContentType: opts.contentType };
    const hash = createHash('sha256');
    let pending: Buffer[] = [];
    let pendingBytes = 0;
    let size = 0;
    let uploadId: string | undefined;
    const parts: CompletedPart[] = [];

    const uploadPart = async (data: Buffer): Promise<void> => {
      if (uploadId === undefined) {
        const created = await this.client.send(new CreateMultipartUploadCommand({ Bucket: this.bucket, Key, ...ct }));
        if (!created.UploadId) throw storeUnavailable();
        uploadId = created.UploadId;
      }
      const PartNumber = parts.length + 1;
      if (PartNumber > MAX_PARTS) throw objectTooLarge();
      const res = await this.client.send(new UploadPartCommand({ Bucket: this.bucket, Key, UploadId: uploadId, PartNumber, Body: data }));
      parts.push({ ETag: res.ETag, PartNumber });
    };

    try {
      for await (const chunk of body) {
        const buf = toBuffer(chunk);
        size += buf.length;
        if (size > max) throw objectTooLarge();
        hash.update(buf);
        pending.push(buf);
        pendingBytes += buf.length;
        while (pendingBytes >= this.partBytes) {
          const all = Buffer.concat(pending, pendingBytes);
          const rest = all.subarray(this.partBytes);
          await uploadPart(all.subarray(0, this.partBytes));
          pending = rest.length > 0 ? [rest] : [];
          pendingBytes = rest.length;
        }
      }
      if (uploadId === undefined) {
        await this.client.send(new PutObjectCommand({ Bucket: this.bucket, Key, Body: Buffer.concat(pending, pendingBytes), ...ct }));
      } else {
        if (pendingBytes > 0) await uploadPart(Buffer.concat(pending, pendingBytes));
        await this.client.send(new CompleteMultipartUploadCommand({ Bucket: this.bucket, Key, UploadId: uploadId, MultipartUpload: { Parts: parts } }));
      }
    } catch (e) {
      if (uploadId !== undefined) {
        await this.client.send(new AbortMultipartUploadCommand({ Bucket: this.bucket, Key, UploadId: uploadId })).catch(() => undefined);
      }
      throw mapError(e);
    }
    return { key, size, sha256: hash.digest('hex') };
  }

  async get(key: string, opts: GetOptions = {}): Promise<Uint8Array> {
    checkByteLimit(opts.maxBytes, 'maxBytes');
    const Key = this.fullKey(key);
    try {
      const res = await this.client.send(new GetObjectCommand({ Bucket: this.bucket, Key }));
      const stream = toReadable(res.Body);
      const max = opts.maxBytes ?? Number.POSITIVE_INFINITY;
      if (res.ContentLength !== undefined && res.ContentLength > max) {
        stream.destroy();
        throw objectTooLarge();
      }
      const chunks: Buffer[] = [];
      let size = 0;
      for await (const chunk of stream) {
        const buf = toBuffer(chunk as Uint8Array | string);
        size += buf.length;
        if (size > max) throw objectTooLarge();
        chunks.push(buf);
      }
      const all = Buffer.concat(chunks, size);
      return new Uint8Array(all.buffer, all.byteOffset, all.byteLength);
    } catch (e) {
      throw mapError(e);
    }
  }

  async getStream(key: string): Promise<Readable> {
    const Key = this.fullKey(key);
    try {
      const res = await this.client.send(new GetObjectCommand({ Bucket: this.bucket, Key }));
      return toReadable(res.Body);
    } catch (e) {
      throw mapError(e);
    }
  }

  async stat(key: string): Promise<ObjectInfo | null> {
    const Key = this.fullKey(key);
    try {
      const res = await this.client.send(new HeadObjectCommand({ Bucket: this.bucket, Key }));
      const info: ObjectInfo = { key, size: res.ContentLength ?? 0 };
      if (res.LastModified) info.lastModified = res.LastModified;
      return info;
    } catch (e) {
      if (isNotFound(e)) return null;
      throw mapError(e);
    }
  }

  async exists(key: string): Promise<boolean> {
    return (await this.stat(key)) !== null;
  }

  async list(prefix: string): Promise<ObjectInfo[]> {
    const p = canonicalPrefix(prefix);
    const Prefix = this.prefix + p;
    if (Buffer.byteLength(Prefix, 'utf8') > MAX_KEY_BYTES) throw new TraceError(400, 'INVALID_OBJECT_KEY', `object prefix is longer than ${MAX_KEY_BYTES} bytes`);
    const out: ObjectInfo[] = [];
    let token: string | undefined;
    const seen = new Set<string>();
    try {
      for (let page = 0; page < MAX_LIST_PAGES; page++) {
        const res = await this.client.send(new ListObjectsV2Command({
          Bucket: this.bucket,
          ...(Prefix === '' ? {} : { Prefix }),
          ...(token === undefined ? {} : { ContinuationToken: token }),
        }));
        for (const obj of res.Contents ?? []) {
          if (obj.Key === undefined || !obj.Key.startsWith(Prefix)) continue;
          const key = obj.Key.slice(this.prefix.length);
          if (!isValidKey(key)) continue; // directory markers and keys Trace could not address
          const info: ObjectInfo = { key, size: obj.Size ?? 0 };
          if (obj.LastModified) info.lastModified = obj.LastModified;
          out.push(info);
        }
        if (!res.IsTruncated) break;
        token = res.NextContinuationToken;
        if (token === undefined || seen.has(token)) throw storeUnavailable();
        seen.add(token);
      }
    } catch (e) {
      throw mapError(e);
    }
    out.sort((a, b) => compareKeys(a.key, b.key));
    return out;
  }

  async delete(key: string): Promise<void> {
    const Key = this.fullKey(key);
    try {
      await this.client.send(new DeleteObjectCommand({ Bucket: this.bucket, Key }));
    } catch (e) {
      if (isNotFound(e)) return;
      throw mapError(e);
    }
  }

  async deletePrefix(prefix: string): Promise<number> {
    const p = canonicalNonEmptyPrefix(prefix);
    const objects = await this.list(p);
    try {
      for (let i = 0; i < objects.length; i += DELETE_BATCH) {
        const batch = objects.slice(i, i + DELETE_BATCH);
        const res = await this.client.send(new DeleteObjectsCommand({
          Bucket: this.bucket,
          Delete: { Objects: batch.map((o) => ({ Key: this.prefix + o.key })), Quiet: true },
        }));
        if (res.Errors && res.Errors.length > 0) throw storeUnavailable();
      }
    } catch (e) {
      throw mapError(e);
    }
    return objects.length;
  }

  /** A presigned PUT for one key (UDF bundle uploads). */
  async presignPut(key: string, opts: PresignPutOptions): Promise<PresignedUpload> {
    checkExpiry(opts.expiresSeconds);
    checkByteLimit(opts.maxBytes, 'maxBytes');
    checkByteLimit(opts.contentLength, 'contentLength');
    if (opts.contentLength !== undefined && opts.maxBytes !== undefined && opts.contentLength > opts.maxBytes) throw objectTooLarge();
    await this.refuseChecksummedPresign();
    const Key = this.fullKey(key);
    const headers: Record<string, string> = {};
    const input: { Bucket: string; Key: string; ContentLength?: number; ContentType?: string } = { Bucket: this.bucket, Key };
    if (opts.contentLength !== undefined) {
      input.ContentLength = opts.contentLength;
      headers['content-length'] = String(opts.contentLength);
    }
    if (opts.contentType !== undefined) {
      input.ContentType = opts.contentType;
      headers['content-type'] = opts.contentType;
    }
    const now = Date.now();
    let url: string;
    try {
      url = await getSignedUrl(this.client, new PutObjectCommand(input), { expiresIn: opts.expiresSeconds });
    } catch (e) {
      throw mapError(e);
    }
    const out: PresignedUpload = { url, method: 'PUT', headers, expiresAt: new Date(now + opts.expiresSeconds * 1000) };
    if (opts.maxBytes !== undefined) out.maxBytes = opts.maxBytes;
    return out;
  }

  /** A presigned GET URL for one key (the Lambda runner's bundle URL). */
  async presignGet(key: string, opts: { expiresSeconds: number }): Promise<string> {
    checkExpiry(opts.expiresSeconds);
    await this.refuseChecksummedPresign();
    const Key = this.fullKey(key);
    try {
      return await getSignedUrl(this.client, new GetObjectCommand({ Bucket: this.bucket, Key }), { expiresIn: opts.expiresSeconds });
    } catch (e) {
      throw mapError(e);
    }
  }

  // -------------------------------------------------------------------------------------------

  private fullKey(key: string): string {
    const full = this.prefix + canonicalKey(key);
    if (Buffer.byteLength(full, 'utf8') > MAX_KEY_BYTES) throw new TraceError(400, 'INVALID_OBJECT_KEY', `object key is longer than ${MAX_KEY_BYTES} bytes`);
    return full;
  }

  /** A client that adds checksums to every request would presign the checksum of an empty body. */
  private async refuseChecksummedPresign(): Promise<void> {
    const cfg = this.client.config as { requestChecksumCalculation?: () => Promise<string> };
    const mode = typeof cfg.requestChecksumCalculation === 'function' ? await cfg.requestChecksumCalculation() : undefined;
    if (mode !== undefined && mode !== 'WHEN_REQUIRED') {
      throw new TraceError(500, 'OBJECT_STORE_MISUSE', 'presigning needs an S3 client with requestChecksumCalculation WHEN_REQUIRED (use s3ClientConfig())');
    }
  }
}

function toReadable(body: unknown): Readable {
  if (body instanceof Readable) return body;
  if (body !== null && typeof body === 'object' && typeof (body as { getReader?: unknown }).getReader === 'function') {
    return Readable.fromWeb(body as Parameters<typeof Readable.fromWeb>[0]);
  }
  if (body instanceof Uint8Array) return Readable.from([body]);
  throw storeUnavailable();
}
