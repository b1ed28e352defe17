/**
 * Request shapes of the S3 adapter. A real S3Client is used with a middleware at the front of
 * its stack that records each command's name and input and answers it, so nothing leaves the
 * process. Presigned URLs are produced by the real presigner, offline. This does not prove S3
 * accepts these requests; see the note in src/objectstore/s3.ts.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import { mkdtemp, realpath, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { S3Client, S3ServiceException } from '@aws-sdk/client-s3';
import { isTraceError } from '../../src/core/errors.js';
import { MIN_PART_BYTES, S3ObjectStore, s3ClientConfig } from '../../src/objectstore/s3.js';
import { FileObjectStore } from '../../src/objectstore/file.js';
import { openObjectStore } from '../../src/objectstore/open.js';

type Input = Record<string, unknown>;
interface Call { name: string; input: Input }
type Handler = (name: string, input: Input, n: number) => Input | Promise<Input>;

const CREDS = { accessKeyId: 'AKIDTEST', secretAccessKey: 'test-secret' };

function fakeS3(handler: Handler = () => ({}), opts: { prefix?: string; partBytes?: number } = {}): { store: S3ObjectStore; calls: Call[] } {
  const client = new S3Client({ ...s3ClientConfig({ env: {} }), credentials: CREDS });
  const calls: Call[] = [];
  client.middlewareStack.add(
    (_next, context) => async (args) => {
      const name = context.commandName ?? '?';
      const input = { ...(args.input as Input) };
      // Bodies are recorded as their bytes (text when short) so shapes can be compared.
      if (input.Body !== undefined) input.Body = Buffer.from(input.Body as Uint8Array);
      calls.push({ name, input });
      const output = await handler(name, input, calls.length);
      return { output: { $metadata: {}, ...output }, response: {} } as never;
    },
    { step: 'initialize', priority: 'high', name: 'traceFakeS3' },
  );
  const store = new S3ObjectStore({ bucket: 'trace-data', prefix: opts.prefix ?? 'base', client, ...(opts.partBytes ? { partBytes: opts.partBytes } : {}) });
  return { store, calls };
}

function s3Error(name: string, status: number): S3ServiceException {
  return new S3ServiceException({ name, message: name, $fault: 'client', $metadata: { httpStatusCode: status } });
}

async function rejectsWith(p: Promise<unknown>, status: number, code: string): Promise<void> {
  await assert.rejects(p, (e: unknown) => isTraceError(e) && e.status === status && e.code === code);
}

test('put, get, stat, exists, delete: one command each, keys under the store prefix', async () => {
  const { store, calls } = fakeS3((name, input) => {
    if (name === 'GetObjectCommand') return { Body: Readable.from([Buffer.from('hello '), Buffer.from('world')]), ContentLength: 11 };
    if (name === 'HeadObjectCommand') {
      if (input.Key === 'base/missing') throw s3Error('NotFound', 404);
      return { ContentLength: 11, LastModified: new Date('2026-01-02T03:04:05Z') };
    }
    return {};
  });
  assert.equal(store.rootUrl, 's3://trace-data/base/');
  assert.equal(store.url('a/b.parquet'), 's3://trace-data/base/a/b.parquet');
  await store.put('a/b.txt', 'hi');
  assert.equal(Buffer.from(await store.get('a/b.txt')).toString(), 'hello world');
  assert.deepEqual(await store.stat('a/b.txt'), { key: 'a/b.txt', size: 11, lastModified: new Date('2026-01-02T03:04:05Z') });
  assert.equal(await store.stat('missing'), null);
  assert.equal(await store.exists('missing'), false);
  await store.delete('a/b.txt');
  assert.deepEqual(calls, [
    { name: 'PutObjectCommand', input: { Bucket: 'trace-data', Key: 'base/a/b.txt', Body: Buffer.from('hi') } },
    { name: 'GetObjectCommand', input: { Bucket: 'trace-data', Key: 'base/a/b.txt' } },
    { name: 'HeadObjectCommand', input: { Bucket: 'trace-data', Key: 'base/a/b.txt' } },
    { name: 'HeadObjectCommand', input: { Bucket: 'trace-data', Key: 'base/missing' } },
    { name: 'HeadObjectCommand', input: { Bucket: 'trace-data', Key: 'base/missing' } },
    { name: 'DeleteObjectCommand', input: { Bucket: 'trace-data', Key: 'base/a/b.txt' } },
  ]);
});

test('errors: NoSuchKey is 404, size caps are 413, other failures 503, hostile keys issue nothing', async () => {
  const { store, calls } = fakeS3((name, input) => {
    if (input.Key === 'base/gone') throw s3Error('NoSuchKey', 404);
    if (input.Key === 'base/denied') throw s3Error('AccessDenied', 403);
    if (name === 'GetObjectCommand' && input.Key === 'base/big') return { Body: Readable.from([Buffer.alloc(100)]), ContentLength: 100 };
    if (name === 'GetObjectCommand' && input.Key === 'base/liar') return { Body: Readable.from([Buffer.alloc(60), Buffer.alloc(60)]) };
    return {};
  });
  await rejectsWith(store.get('gone'), 404, 'OBJECT_NOT_FOUND');
  await rejectsWith(store.getStream('gone'), 404, 'OBJECT_NOT_FOUND');
  await rejectsWith(store.get('denied'), 503, 'OBJECT_STORE_UNAVAILABLE');
  await rejectsWith(store.put('denied', 'x'), 503, 'OBJECT_STORE_UNAVAILABLE');
  await rejectsWith(store.get('big', { maxBytes: 99 }), 413, 'OBJECT_TOO_LARGE');
  await rejectsWith(store.get('liar', { maxBytes: 100 }), 413, 'OBJECT_TOO_LARGE');
  await store.delete('gone'); // deleting a missing object is fine
  const n = calls.length;
  for (const k of ['../x', '/abs', 'a//b', 'a\\b', 'a/*', '']) {
    await rejectsWith(store.put(k, 'x'), 400, 'INVALID_OBJECT_KEY');
    await rejectsWith(store.get(k), 400, 'INVALID_OBJECT_KEY');
    await rejectsWith(store.stat(k), 400, 'INVALID_OBJECT_KEY');
    await rejectsWith(store.delete(k), 400, 'INVALID_OBJECT_KEY');
    await rejectsWith(store.presignPut(k, { expiresSeconds: 60 }), 400, 'INVALID_OBJECT_KEY');
  }
  await rejectsWith(store.list('../'), 400, 'INVALID_OBJECT_KEY');
  await rejectsWith(store.deletePrefix(''), 400, 'INVALID_OBJECT_KEY');
  assert.equal(calls.length, n, 'refused keys issue no request');
});

test('list: ListObjectsV2 with a directory prefix, follows pagination, strips the store prefix, sorts, skips markers', async () => {
  const { store, calls } = fakeS3((_name, input) => {
    if (input.ContinuationToken === undefined) {
      return {
        IsTruncated: true,
        NextContinuationToken: 'tok-1',
        Contents: [
          { Key: 'base/a/b/2', Size: 2 },
          { Key: 'base/a/b/', Size: 0 }, // a "directory marker": not an addressable key
          { Key: 'base/a/b/1', Size: 1, LastModified: new Date(0) },
        ],
      };
    }
    return { IsTruncated: false, Contents: [{ Key: 'base/a/b/c/é', Size: 3 }, { Key: 'base/a/b/x//y', Size: 4 }, { Key: 'base/a/b/Z', Size: 5 }] };
  });
  const out = await store.list('a/b');
  assert.deepEqual(out, [
    { key: 'a/b/1', size: 1, lastModified: new Date(0) },
    { key: 'a/b/2', size: 2 },
    { key: 'a/b/Z', size: 5 },
    { key: 'a/b/c/é', size: 3 },
  ]);
  assert.deepEqual(calls, [
    { name: 'ListObjectsV2Command', input: { Bucket: 'trace-data', Prefix: 'base/a/b/' } },
    { name: 'ListObjectsV2Command', input: { Bucket: 'trace-data', Prefix: 'base/a/b/', ContinuationToken: 'tok-1' } },
  ]);

  const loop = fakeS3(() => ({ IsTruncated: true, NextContinuationToken: 'same', Contents: [] }));
  await rejectsWith(loop.store.list(''), 503, 'OBJECT_STORE_UNAVAILABLE');
  assert.equal(loop.calls.length, 2, 'a repeated continuation token stops the loop');
  assert.deepEqual(loop.calls[0]!.input, { Bucket: 'trace-data', Prefix: 'base/' });

  const bare = fakeS3(() => ({ Contents: [] }), { prefix: '' });
  await bare.store.list('');
  assert.deepEqual(bare.calls[0]!.input, { Bucket: 'trace-data' });
});

test('deletePrefix: lists then DeleteObjects in batches of 1000, refuses partial failures', async () => {
  const keys = Array.from({ length: 1500 }, (_, i) => `base/stage/t1/part-${String(i).padStart(4, '0')}`);
  const { store, calls } = fakeS3((name) => (name === 'ListObjectsV2Command' ? { Contents: keys.map((Key) => ({ Key, Size: 1 })) } : {}));
  assert.equal(await store.deletePrefix('stage/t1'), 1500);
  assert.deepEqual(calls.map((c) => c.name), ['ListObjectsV2Command', 'DeleteObjectsCommand', 'DeleteObjectsCommand']);
  const first = calls[1]!.input as { Bucket: string; Delete: { Objects: Array<{ Key: string }>; Quiet: boolean } };
  assert.equal(first.Bucket, 'trace-data');
  assert.equal(first.Delete.Quiet, true);
  assert.equal(first.Delete.Objects.length, 1000);
  assert.deepEqual(first.Delete.Objects[0], { Key: 'base/stage/t1/part-0000' });
  assert.equal((calls[2]!.input as typeof first).Delete.Objects.length, 500);

  const failing = fakeS3((name) => (name === 'ListObjectsV2Command'
    ? { Contents: [{ Key: 'base/p/x', Size: 1 }] }
    : { Errors: [{ Key: 'base/p/x', Code: 'AccessDenied' }] }));
  await rejectsWith(failing.store.deletePrefix('p'), 503, 'OBJECT_STORE_UNAVAILABLE');
});

test('putStream: small bodies are one PutObject with hash and size', async () => {
  const { store, calls } = fakeS3();
  const res = await store.putStream('buffers/t1/1/batch.jsonl', Readable.from([Buffer.from('{"a":1}\n'), '{"a":2}\n']), { contentType: 'application/jsonl' });
  assert.deepEqual(res, { key: 'buffers/t1/1/batch.jsonl', size: 16, sha256: createHash('sha256').update('{"a":1}\n{"a":2}\n').digest('hex') });
  assert.deepEqual(calls, [{
    name: 'PutObjectCommand',
    input: { Bucket: 'trace-data', Key: 'base/buffers/t1/1/batch.jsonl', Body: Buffer.from('{"a":1}\n{"a":2}\n'), ContentType: 'application/jsonl' },
  }]);
});

test('putStream: large bodies are a multipart upload with fixed-size parts; failures and the cap abort it', async () => {
  const MiB = 1024 * 1024;
  const body = () => (async function* () { for (let i = 0; i < 11; i++) yield Buffer.alloc(MiB, i); })();
  const { store, calls } = fakeS3((name, input) => {
    if (name === 'CreateMultipartUploadCommand') return { UploadId: 'up-1' };
    if (name === 'UploadPartCommand') return { ETag: `"etag-${String(input.PartNumber)}"` };
    return {};
  }, { partBytes: MIN_PART_BYTES });
  const res = await store.putStream('udf/bundles/b1.zip', body(), { contentType: 'application/zip' });
  assert.equal(res.size, 11 * MiB);
  const hash = createHash('sha256');
  for (let i = 0; i < 11; i++) hash.update(Buffer.alloc(MiB, i));
  assert.equal(res.sha256, hash.digest('hex'));
  assert.deepEqual(calls.map((c) => c.name), [
    'CreateMultipartUploadCommand', 'UploadPartCommand', 'UploadPartCommand', 'UploadPartCommand', 'CompleteMultipartUploadCommand',
  ]);
  assert.deepEqual(calls[0]!.input, { Bucket: 'trace-data', Key: 'base/udf/bundles/b1.zip', ContentType: 'application/zip' });
  const parts = calls.slice(1, 4).map((c) => c.input);
  assert.deepEqual(parts.map((p) => [p.Bucket, p.Key, p.UploadId, p.PartNumber, (p.Body as Buffer).length]), [
    ['trace-data', 'base/udf/bundles/b1.zip', 'up-1', 1, 5 * MiB],
    ['trace-data', 'base/udf/bundles/b1.zip', 'up-1', 2, 5 * MiB],
    ['trace-data', 'base/udf/bundles/b1.zip', 'up-1', 3, 1 * MiB],
  ]);
  assert.equal((parts[1]!.Body as Buffer)[0], 5, 'part 2 starts with the sixth MiB');
  assert.deepEqual(calls[4]!.input, {
    Bucket: 'trace-data', Key: 'base/udf/bundles/b1.zip', UploadId: 'up-1',
    MultipartUpload: { Parts: [{ ETag: '"etag-1"', PartNumber: 1 }, { ETag: '"etag-2"', PartNumber: 2 }, { ETag: '"etag-3"', PartNumber: 3 }] },
  });

  const capped = fakeS3((name) => (name === 'CreateMultipartUploadCommand' ? { UploadId: 'up-2' } : { ETag: '"e"' }), { partBytes: MIN_PART_BYTES });
  await rejectsWith(capped.store.putStream('big', body(), { maxBytes: 7 * MiB }), 413, 'OBJECT_TOO_LARGE');
  assert.deepEqual(capped.calls.map((c) => c.name), ['CreateMultipartUploadCommand', 'UploadPartCommand', 'AbortMultipartUploadCommand']);
  assert.deepEqual(capped.calls[2]!.input, { Bucket: 'trace-data', Key: 'base/big', UploadId: 'up-2' });

  const broken = fakeS3((name) => {
    if (name === 'CreateMultipartUploadCommand') return { UploadId: 'up-3' };
    if (name === 'UploadPartCommand') throw s3Error('InternalError', 500);
    return {};
  }, { partBytes: MIN_PART_BYTES });
  await rejectsWith(broken.store.putStream('big', body()), 503, 'OBJECT_STORE_UNAVAILABLE');
  assert.deepEqual(broken.calls.map((c) => c.name), ['CreateMultipartUploadCommand', 'UploadPartCommand', 'AbortMultipartUploadCommand']);

  const small = fakeS3();
  await rejectsWith(small.store.putStream('x', (async function* () { yield Buffer.alloc(10); })(), { maxBytes: 9 }), 413, 'OBJECT_TOO_LARGE');
  assert.equal(small.calls.length, 0, 'an oversized small body sends nothing');
});

test('child: same bucket and client, longer prefix, keys relative to it', async () => {
  const { store, calls } = fakeS3((name) => (name === 'ListObjectsV2Command' ? { Contents: [{ Key: 'base/tenants/a/x/1', Size: 1 }] } : {}));
  const child = store.child('tenants/a');
  assert.equal(child.rootUrl, 's3://trace-data/base/tenants/a/');
  assert.equal(child.url('x/1'), 's3://trace-data/base/tenants/a/x/1');
  await child.put('x/1', 'v');
  assert.deepEqual(await child.list('x'), [{ key: 'x/1', size: 1 }]);
  assert.deepEqual(calls.map((c) => c.input.Key ?? c.input.Prefix), ['base/tenants/a/x/1', 'base/tenants/a/x/']);
  assert.throws(() => store.child('../b'), (e: unknown) => isTraceError(e) && e.code === 'INVALID_OBJECT_KEY');
  assert.throws(() => store.child(''), (e: unknown) => isTraceError(e) && e.code === 'INVALID_OBJECT_KEY');
});

test('presigned PUT and GET: path-style on a custom endpoint, expiry, signed length, no checksum parameters', async () => {
  const env = { AWS_ENDPOINT_URL: 'http://127.0.0.1:9', AWS_ENDPOINT_URL_S3: 'http://127.0.0.1:9000', AWS_REGION: 'eu-west-1' };
  const client = new S3Client({ ...s3ClientConfig({ env }), credentials: CREDS });
  const store = new S3ObjectStore({ bucket: 'trace-data', prefix: 'udf', client });

  const up = await store.presignPut('bundles/b1.zip', { expiresSeconds: 600, maxBytes: 1000, contentLength: 812, contentType: 'application/zip' });
  const u = new URL(up.url);
  assert.equal(u.origin, 'http://127.0.0.1:9000');
  assert.equal(u.pathname, '/trace-data/udf/bundles/b1.zip');
  assert.equal(u.searchParams.get('X-Amz-Expires'), '600');
  assert.equal(u.searchParams.get('X-Amz-Algorithm'), 'AWS4-HMAC-SHA256');
  assert.match(u.searchParams.get('X-Amz-Credential') ?? '', /^AKIDTEST\/\d{8}\/eu-west-1\/s3\/aws4_request$/);
  assert.equal(u.searchParams.get('X-Amz-SignedHeaders'), 'content-length;host');
  assert.match(u.searchParams.get('X-Amz-Signature') ?? '', /^[0-9a-f]{64}$/);
  assert.ok(![...u.searchParams.keys()].some((k) => k.toLowerCase().includes('checksum')), 'no checksum of an empty body is presigned');
  assert.equal(up.method, 'PUT');
  assert.deepEqual(up.headers, { 'content-length': '812', 'content-type': 'application/zip' });
  assert.equal(up.maxBytes, 1000);
  assert.ok(Math.abs(up.expiresAt.getTime() - (Date.now() + 600_000)) < 5000);
  assert.ok(!up.url.includes('test-secret'));

  const open = await store.presignPut('bundles/b2.zip', { expiresSeconds: 60 });
  assert.equal(new URL(open.url).searchParams.get('X-Amz-SignedHeaders'), 'host');
  assert.deepEqual(open.headers, {});

  const get = new URL(await store.presignGet('bundles/b1.zip', { expiresSeconds: 300 }));
  assert.equal(get.pathname, '/trace-data/udf/bundles/b1.zip');
  assert.equal(get.searchParams.get('X-Amz-Expires'), '300');
  assert.ok(![...get.searchParams.keys()].some((k) => k.toLowerCase().includes('checksum')));

  await rejectsWith(store.presignPut('x', { expiresSeconds: 0 }), 500, 'OBJECT_STORE_MISUSE');
  await rejectsWith(store.presignGet('x', { expiresSeconds: 8 * 24 * 3600 }), 500, 'OBJECT_STORE_MISUSE');
  await rejectsWith(store.presignPut('x', { expiresSeconds: 60, maxBytes: 10, contentLength: 11 }), 413, 'OBJECT_TOO_LARGE');

  // A client that checksums every request would presign the CRC of an empty body: refused.
  const eager = new S3ObjectStore({ bucket: 'trace-data', client: new S3Client({ region: 'us-east-1', credentials: CREDS }) });
  await rejectsWith(eager.presignPut('x', { expiresSeconds: 60 }), 500, 'OBJECT_STORE_MISUSE');
});

test('s3ClientConfig reads the standard AWS variables', () => {
  assert.deepEqual(s3ClientConfig({ env: {} }), { region: 'us-east-1', requestChecksumCalculation: 'WHEN_REQUIRED', responseChecksumValidation: 'WHEN_REQUIRED' });
  const c = s3ClientConfig({ env: { AWS_REGION: 'ap-south-1', AWS_ENDPOINT_URL: 'http://minio:9000' } });
  assert.equal(c.region, 'ap-south-1');
  assert.equal(c.endpoint, 'http://minio:9000');
  assert.equal(c.forcePathStyle, true);
  assert.equal(s3ClientConfig({ env: { AWS_DEFAULT_REGION: 'eu-central-1' } }).region, 'eu-central-1');
  assert.equal(s3ClientConfig({ env: { AWS_ENDPOINT_URL: 'http://a', AWS_ENDPOINT_URL_S3: 'http://b' } }).endpoint, 'http://b');
  assert.equal(s3ClientConfig({ env: { AWS_ENDPOINT_URL: 'http://a' }, forcePathStyle: false }).forcePathStyle, undefined);
});

test('openObjectStore: default folder, file URLs, s3 URLs, clear errors otherwise', async (t) => {
  const home = await realpath(await mkdtemp(join(tmpdir(), 'trace-open-')));
  t.after(() => rm(home, { recursive: true, force: true }));
  const def = openObjectStore(undefined, home);
  assert.ok(def instanceof FileObjectStore);
  assert.equal(def.rootUrl, `file://${home}/objects/`);
  assert.equal(openObjectStore('  ', home).rootUrl, `file://${home}/objects/`);
  const f = openObjectStore(`file://${home}/elsewhere`, home);
  assert.ok(f instanceof FileObjectStore);
  assert.equal(f.rootUrl, `file://${home}/elsewhere/`);

  const client = new S3Client({ ...s3ClientConfig({ env: {} }), credentials: CREDS });
  const s = openObjectStore('s3://trace-data/prod/objects', home, { s3Client: client });
  assert.ok(s instanceof S3ObjectStore);
  assert.equal(s.rootUrl, 's3://trace-data/prod/objects/');
  assert.equal(s.client, client);
  const bare = openObjectStore('s3://trace-data', home, { env: { AWS_REGION: 'us-west-2' } });
  assert.equal(bare.rootUrl, 's3://trace-data/');
  assert.equal(await (bare as S3ObjectStore).client.config.region(), 'us-west-2');

  for (const bad of ['http://example.com/x', 's3://', 's3://UPPER/x', 's3://trace-data/../x', 'file://relative/path', 'file:relative', 'file:///', 'file:///a/../b', '/abs/path', 'objects']) {
    assert.throws(() => openObjectStore(bad, home), (e: unknown) => isTraceError(e) && e.code === 'OBJECT_STORE_URL_INVALID' && /file:\/\/\/|root/.test(e.message), bad);
  }
});
