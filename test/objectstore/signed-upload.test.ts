import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, createHmac } from 'node:crypto';
import { request } from 'node:http';
import { mkdtemp, readdir, realpath, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { FastifyInstance } from 'fastify';
import { isTraceError } from '../../src/core/errors.js';
import { createHttpServer, listen } from '../../src/core/http.js';
import { silentLogger } from '../../src/core/log.js';
import { FileObjectStore } from '../../src/objectstore/file.js';
import { signUploadUrl, verifyUploadSignature } from '../../src/objectstore/signed-upload.js';
import { uploadRoute } from '../../src/objectstore/upload-route.js';

const SECRET = 'an-upload-signing-secret-of-at-least-32-bytes';
const NOW = new Date('2026-03-01T12:00:00Z');
const LATER = new Date('2026-03-01T12:10:00Z');

function sign(key: string, maxBytes = 1024, expiresAt = LATER, baseUrl = 'http://127.0.0.1:8081/v1/uploads'): string {
  return signUploadUrl({ baseUrl, key, expiresAt, maxBytes, secret: SECRET });
}

function refused(fn: () => unknown, code: string): boolean {
  try {
    fn();
    return false;
  } catch (e) {
    return isTraceError(e) && e.status === 403 && e.code === code;
  }
}

test('a signed URL verifies and says what it authorizes', () => {
  const url = new URL(sign('udf/bundles/b1.zip', 5000));
  assert.equal(url.pathname, '/v1/uploads');
  assert.deepEqual([...url.searchParams.keys()], ['key', 'expires', 'max_bytes', 'sig']);
  assert.equal(url.searchParams.get('expires'), String(LATER.getTime() / 1000));
  const expectedSig = createHmac('sha256', SECRET)
    .update(`trace-upload-v1\nudf/bundles/b1.zip\n${LATER.getTime() / 1000}\n5000`)
    .digest('base64url');
  assert.equal(url.searchParams.get('sig'), expectedSig);
  assert.deepEqual(verifyUploadSignature(url.searchParams, SECRET, NOW), { key: 'udf/bundles/b1.zip', expiresAt: LATER, maxBytes: 5000 });
  assert.deepEqual(verifyUploadSignature(url.search, SECRET, NOW), { key: 'udf/bundles/b1.zip', expiresAt: LATER, maxBytes: 5000 });
  assert.deepEqual(verifyUploadSignature(Object.fromEntries(url.searchParams), SECRET, NOW).key, 'udf/bundles/b1.zip');
  // keys with characters that need escaping survive the round trip
  const odd = new URL(sign('a b/ü&x=1+2.zip'));
  assert.equal(verifyUploadSignature(odd.searchParams, SECRET, NOW).key, 'a b/ü&x=1+2.zip');
});

test('expired, forged and tampered URLs are refused', () => {
  const url = new URL(sign('udf/bundles/b1.zip', 5000));
  const q = () => new URLSearchParams(url.searchParams);
  assert.ok(refused(() => verifyUploadSignature(q(), SECRET, LATER), 'UPLOAD_URL_EXPIRED'), 'at expiry');
  assert.ok(refused(() => verifyUploadSignature(q(), SECRET, new Date(LATER.getTime() + 1)), 'UPLOAD_URL_EXPIRED'));
  assert.ok(refused(() => verifyUploadSignature(q(), 'another-secret-that-is-long-enough-to-use', NOW), 'UPLOAD_SIGNATURE_INVALID'), 'forged with another secret');

  const tamper = (name: string, value: string) => {
    const t = q();
    t.set(name, value);
    return t;
  };
  assert.ok(refused(() => verifyUploadSignature(tamper('key', 'udf/bundles/b2.zip'), SECRET, NOW), 'UPLOAD_SIGNATURE_INVALID'), 'tampered key');
  assert.ok(refused(() => verifyUploadSignature(tamper('key', '../../etc/passwd'), SECRET, NOW), 'UPLOAD_SIGNATURE_INVALID'), 'hostile key');
  assert.ok(refused(() => verifyUploadSignature(tamper('max_bytes', '500000'), SECRET, NOW), 'UPLOAD_SIGNATURE_INVALID'), 'raised cap');
  assert.ok(refused(() => verifyUploadSignature(tamper('expires', String(LATER.getTime() / 1000 + 3600)), SECRET, NOW), 'UPLOAD_SIGNATURE_INVALID'), 'extended expiry');
  assert.ok(refused(() => verifyUploadSignature(tamper('expires', `0${LATER.getTime() / 1000}`), SECRET, NOW), 'UPLOAD_SIGNATURE_INVALID'), 'leading zero');
  const sig = url.searchParams.get('sig')!;
  const flipped = (sig[0] === 'A' ? 'B' : 'A') + sig.slice(1);
  assert.ok(refused(() => verifyUploadSignature(tamper('sig', flipped), SECRET, NOW), 'UPLOAD_SIGNATURE_INVALID'), 'flipped signature');
  assert.ok(refused(() => verifyUploadSignature(tamper('sig', sig.slice(0, -1)), SECRET, NOW), 'UPLOAD_SIGNATURE_INVALID'), 'short signature');
  // A second spelling of the same bytes (base64 padding bits) is not accepted either.
  const last = sig.at(-1)!;
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';
  const twin = sig.slice(0, -1) + alphabet[alphabet.indexOf(last) ^ 1];
  assert.ok(refused(() => verifyUploadSignature(tamper('sig', twin), SECRET, NOW), 'UPLOAD_SIGNATURE_INVALID'), 'non-canonical signature');
  const noSig = q();
  noSig.delete('sig');
  assert.ok(refused(() => verifyUploadSignature(noSig, SECRET, NOW), 'UPLOAD_SIGNATURE_INVALID'), 'missing signature');
  const dup = q();
  dup.append('key', 'other');
  assert.ok(refused(() => verifyUploadSignature(dup, SECRET, NOW), 'UPLOAD_SIGNATURE_INVALID'), 'repeated parameter');
  assert.ok(refused(() => verifyUploadSignature(undefined, SECRET, NOW), 'UPLOAD_SIGNATURE_INVALID'));
  assert.ok(refused(() => verifyUploadSignature({ key: ['a'], expires: '1', max_bytes: '1', sig: sig }, SECRET, NOW), 'UPLOAD_SIGNATURE_INVALID'));
});

test('signing refuses hostile keys, weak secrets and bad arguments', () => {
  assert.throws(() => sign('../x'), (e: unknown) => isTraceError(e) && e.status === 400 && e.code === 'INVALID_OBJECT_KEY');
  assert.throws(() => signUploadUrl({ baseUrl: 'http://x/u', key: 'k', expiresAt: LATER, maxBytes: 1, secret: 'short' }), (e: unknown) => isTraceError(e) && e.code === 'UPLOAD_SECRET_WEAK');
  assert.throws(() => verifyUploadSignature(new URL(sign('k')).searchParams, 'short', NOW), (e: unknown) => isTraceError(e) && e.code === 'UPLOAD_SECRET_WEAK');
  assert.throws(() => sign('k', -1), (e: unknown) => isTraceError(e) && e.code === 'OBJECT_STORE_MISUSE');
  assert.throws(() => sign('k', 1.5), (e: unknown) => isTraceError(e) && e.code === 'OBJECT_STORE_MISUSE');
  assert.throws(() => sign('k', 1, new Date(Number.NaN)), (e: unknown) => isTraceError(e) && e.code === 'OBJECT_STORE_MISUSE');
  assert.throws(() => sign('k', 1, LATER, 'ftp://x/u'), (e: unknown) => isTraceError(e) && e.code === 'OBJECT_STORE_MISUSE');
  // a base URL's own query is dropped, so it cannot smuggle parameters in
  const u = new URL(sign('k', 1, LATER, 'http://x/u?key=evil&max_bytes=999#frag'));
  assert.equal(u.searchParams.getAll('key').join(), 'k');
  assert.equal(u.hash, '');
});

// ---------------------------------------------------------------------------------------------
// The HTTP route, on a real listener.

interface Harness { base: string; store: FileObjectStore; dir: string; app: FastifyInstance; now: { t: Date } }

async function harness(t: { after: (fn: () => Promise<void>) => void }, routeMax = 64 * 1024, drain: { drainBytes?: number; drainMs?: number } = {}): Promise<Harness> {
  const dir = await realpath(await mkdtemp(join(tmpdir(), 'trace-upload-')));
  const store = new FileObjectStore(join(dir, 'objects'));
  const app = createHttpServer({ log: silentLogger, name: 'upload-test' });
  const now = { t: NOW };
  await app.register(uploadRoute, { store, secret: SECRET, maxBytes: routeMax, now: () => now.t, ...drain });
  const base = await listen(app, '127.0.0.1', 0);
  t.after(async () => {
    await app.close();
    await rm(dir, { recursive: true, force: true });
  });
  return { base, store, dir, app, now };
}

function signedFor(h: Harness, key: string, maxBytes: number, expiresAt = LATER): string {
  return signUploadUrl({ baseUrl: `${h.base}/v1/uploads`, key, expiresAt, maxBytes, secret: SECRET });
}

async function filesUnder(dir: string): Promise<string[]> {
  return (await readdir(dir, { recursive: true })).map(String).sort();
}

interface RawResult { status: number; body: string }

/**
 * A PUT whose body is sent in chunks with Transfer-Encoding: chunked (no Content-Length), so the
 * server cannot know the size up front. Stops writing as soon as a response arrives.
 */
function chunkedPut(url: string, chunk: Buffer, count: number, contentType: string | null = 'application/octet-stream'): Promise<RawResult> {
  return new Promise((resolve, reject) => {
    const req = request(url, { method: 'PUT', headers: contentType === null ? {} : { 'content-type': contentType } });
    let answered = false;
    req.on('response', (res) => {
      answered = true;
      req.end();
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => { body += d; });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      res.on('error', reject);
    });
    req.on('error', (e) => { if (!answered) reject(e); });
    let sent = 0;
    const pump = () => {
      if (answered || req.destroyed) return;
      if (sent === count) { req.end(); return; }
      sent++;
      req.write(chunk, () => setImmediate(pump));
    };
    pump();
  });
}

test('upload route: a valid upload streams to the store and reports size and hash', async (t) => {
  const h = await harness(t);
  const body = Buffer.from('PK\u0003\u0004 pretend zip bytes');
  const res = await fetch(signedFor(h, 'udf/bundles/b1.zip', 1024), { method: 'PUT', body, headers: { 'content-type': 'application/zip' } });
  assert.equal(res.status, 200);
  assert.deepEqual(await res.json(), { key: 'udf/bundles/b1.zip', size: body.length, sha256: createHash('sha256').update(body).digest('hex') });
  assert.deepEqual(Buffer.from(await h.store.get('udf/bundles/b1.zip')), body);

  // JSON bodies are stored as bytes, not parsed; a missing content type is fine too.
  const json = '{"not": "parsed"}';
  assert.equal((await fetch(signedFor(h, 'buffers/b.json', 1024), { method: 'PUT', body: json, headers: { 'content-type': 'application/json' } })).status, 200);
  assert.equal(Buffer.from(await h.store.get('buffers/b.json')).toString(), json);
  const noType = await chunkedPut(signedFor(h, 'raw/no-type.bin', 1024), Buffer.from('abc'), 3, null);
  assert.equal(noType.status, 200, noType.body);
  assert.equal(Buffer.from(await h.store.get('raw/no-type.bin')).toString(), 'abcabcabc');

  // chunked (unknown length) under the cap
  const chunked = await chunkedPut(signedFor(h, 'raw/chunked.bin', 4096), Buffer.alloc(1000, 7), 4);
  assert.equal(chunked.status, 200);
  assert.equal(JSON.parse(chunked.body).size, 4000);
});

test('upload route: bad signatures are 403 and nothing is written', async (t) => {
  const h = await harness(t);
  const good = signedFor(h, 'udf/bundles/b1.zip', 1024);

  const forged = signUploadUrl({ baseUrl: `${h.base}/v1/uploads`, key: 'udf/bundles/b1.zip', expiresAt: LATER, maxBytes: 1024, secret: 'x'.repeat(40) });
  const tamperedKey = new URL(good);
  tamperedKey.searchParams.set('key', 'udf/bundles/other.zip');
  const tamperedCap = new URL(good);
  tamperedCap.searchParams.set('max_bytes', '999999');
  const unsigned = `${h.base}/v1/uploads?key=udf/bundles/b1.zip`;

  for (const [label, url, code] of [
    ['forged', forged, 'UPLOAD_SIGNATURE_INVALID'],
    ['tampered key', tamperedKey.toString(), 'UPLOAD_SIGNATURE_INVALID'],
    ['tampered cap', tamperedCap.toString(), 'UPLOAD_SIGNATURE_INVALID'],
    ['unsigned', unsigned, 'UPLOAD_SIGNATURE_INVALID'],
  ] as const) {
    const res = await fetch(url, { method: 'PUT', body: 'payload' });
    assert.equal(res.status, 403, label);
    assert.deepEqual(await res.json(), { error: code === 'UPLOAD_SIGNATURE_INVALID' ? 'upload URL signature is missing or invalid' : '', code }, label);
  }
  h.now.t = LATER;
  const expired = await fetch(good, { method: 'PUT', body: 'payload' });
  assert.equal(expired.status, 403);
  assert.equal(((await expired.json()) as { code: string }).code, 'UPLOAD_URL_EXPIRED');
  assert.deepEqual(await filesUnder(h.dir), ['objects'], 'nothing was written');

  const wrongMethod = await fetch(good, { method: 'POST', body: 'payload' });
  assert.equal(wrongMethod.status, 405);
  assert.equal(wrongMethod.headers.get('allow'), 'PUT');
  assert.deepEqual(await filesUnder(h.dir), ['objects'], 'nothing was written');
});

test('upload route: oversized bodies are 413 (declared or counted) and nothing is written', async (t) => {
  const h = await harness(t, 64 * 1024);
  // declared Content-Length over the signed cap: refused before reading
  const declared = await fetch(signedFor(h, 'big/declared.bin', 1000), { method: 'PUT', body: Buffer.alloc(1001) });
  assert.equal(declared.status, 413);
  assert.equal(((await declared.json()) as { code: string }).code, 'PAYLOAD_TOO_LARGE');
  // exactly at the cap is fine
  assert.equal((await fetch(signedFor(h, 'big/exact.bin', 1000), { method: 'PUT', body: Buffer.alloc(1000) })).status, 200);

  // chunked, no length: counted as it arrives, refused once past the signed cap
  const counted = await chunkedPut(signedFor(h, 'big/chunked.bin', 10_000), Buffer.alloc(4096, 1), 200);
  assert.equal(counted.status, 413, counted.body);
  assert.equal(JSON.parse(counted.body).code, 'PAYLOAD_TOO_LARGE');

  // the route's own cap wins over a larger signed cap (640 KiB: past the 64 KiB cap, within what
  // the server drains after refusing, so the connection is not cut under the client's writes;
  // the cut itself is the stubborn-client test's subject)
  const routeCap = await chunkedPut(signedFor(h, 'big/route.bin', 10 * 1024 * 1024), Buffer.alloc(16 * 1024, 2), 40);
  assert.equal(routeCap.status, 413, routeCap.body);

  assert.equal(await h.store.exists('big/declared.bin'), false);
  assert.equal(await h.store.exists('big/chunked.bin'), false);
  assert.equal(await h.store.exists('big/route.bin'), false);
  assert.deepEqual(await filesUnder(h.dir), ['objects', 'objects/big', 'objects/big/exact.bin'], 'no object and no temp file is left');

  // the server is still healthy afterwards
  assert.equal((await fetch(signedFor(h, 'big/after.bin', 10), { method: 'PUT', body: 'ok' })).status, 200);
});

/** Sends `count` chunks no matter what the server answers; reports how it ended. */
function stubbornPut(url: string, chunk: Buffer, count: number): Promise<{ status?: number; error?: string; sent: number }> {
  return new Promise((resolve) => {
    const req = request(url, { method: 'PUT', headers: { 'content-type': 'application/octet-stream' } });
    let status: number | undefined;
    let sent = 0;
    let settled = false;
    const done = (error?: string) => {
      if (settled) return;
      settled = true;
      resolve({ ...(status === undefined ? {} : { status }), ...(error === undefined ? {} : { error }), sent });
    };
    req.on('response', (res) => {
      status = res.statusCode;
      res.resume();
      res.on('end', () => setTimeout(() => done(), 200));
    });
    req.on('error', (e: NodeJS.ErrnoException) => done(e.code ?? e.message));
    const pump = () => {
      if (req.destroyed || settled) return;
      if (sent === count) { req.end(); return; }
      sent++;
      req.write(chunk, (err) => { if (!err) setImmediate(pump); });
    };
    pump();
  });
}

test('upload route: a client that keeps sending after a refusal is cut off; an aborted upload stores nothing', async (t) => {
  const h = await harness(t, 64 * 1024, { drainBytes: 256 * 1024, drainMs: 2000 });
  const chunk = Buffer.alloc(64 * 1024, 3);
  const res = await stubbornPut(signedFor(h, 'big/stubborn.bin', 100_000), chunk, 400); // 25 MiB offered
  assert.ok(res.sent < 400, `the server stopped reading (sent ${res.sent} of 400 chunks)`);
  assert.ok(res.status === 413 || res.error !== undefined, JSON.stringify(res));

  // A client that disconnects half way: no object, no temp file.
  await new Promise<void>((resolve) => {
    const req = request(signedFor(h, 'big/aborted.bin', 1_000_000), { method: 'PUT', headers: { 'content-type': 'application/octet-stream' } });
    req.on('error', () => resolve());
    req.write(Buffer.alloc(32 * 1024, 4), () => {
      setTimeout(() => { req.destroy(); resolve(); }, 100);
    });
  });
  let files: string[] = [];
  for (let i = 0; i < 40; i++) {
    files = await filesUnder(h.dir);
    if (!files.some((f) => f.includes('.trace-tmp-'))) break;
    await new Promise((r) => setTimeout(r, 50));
  }
  assert.ok(!files.some((f) => f.includes('.trace-tmp-') || f.endsWith('.bin')), JSON.stringify(files));
  assert.equal(await h.store.exists('big/aborted.bin'), false);
  assert.equal((await fetch(signedFor(h, 'after.bin', 10), { method: 'PUT', body: 'ok' })).status, 200);
});
