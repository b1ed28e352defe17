/**
 * The task channel on its own: a real Unix socket in front of a real upstream HTTP server that
 * records every call it receives. Allowed calls pass with their answers; every refusal has the
 * stable error shape and never reaches the upstream (state untouched). A sandboxed UDF reaches
 * the same channel through the socket bound into its sandbox.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { createServer, request, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, afterEach, before, beforeEach, describe, it } from 'node:test';
import { openTaskChannel, type TaskChannel } from '../../src/udf/sandbox/channel.js';
import { DEFAULT_CHANNEL_LIMITS } from '../../src/udf/sandbox/config.js';
import { silentLogger } from '../../src/core/log.js';
import { runUdf } from '../../src/udf/runner.js';
import type { UdfSandbox } from '../../src/udf/sandbox/sandbox.js';
import { goodBundle, sha256 } from './support/zips.js';
import { startTestSandbox } from './support/sandbox.js';

const TOKEN = `cap.${'a'.repeat(40)}`;
const OTHER_TOKEN = `cap.${'b'.repeat(40)}`;
const FENCE = { task_id: randomUUID(), attempt: 2, lease_token: randomUUID() };

interface Seen { method: string; path: string; capability?: string; body: string }
let upstream: Server;
let upstreamUrl: string;
let seen: Seen[] = [];
let dir: string;
let channel: TaskChannel;
const socketPath = () => join(dir, 'task.sock');

function readAll(req: IncomingMessage): Promise<string> {
  return new Promise((res) => {
    let s = '';
    req.on('data', (c) => (s += c));
    req.on('end', () => res(s));
  });
}

before(async () => {
  upstream = createServer(async (req, res) => {
    const body = await readAll(req);
    seen.push({ method: req.method ?? '', path: req.url ?? '', ...(req.headers['x-trace-task-capability'] ? { capability: String(req.headers['x-trace-task-capability']) } : {}), body });
    res.writeHead(200, { 'content-type': 'application/json' });
    if (req.url === '/v1/task/credentials') {
      res.end(JSON.stringify({ ok: true, credentials: { scheme: 'file' }, uploads: [{ name: 'a.jsonl', area: 'buffers', uri: 'file:///objects/buffers/a.jsonl', url: `${upstreamUrl}/v1/uploads?key=a&sig=x`, method: 'PUT', headers: { 'x-upload': 'signed' }, max_bytes: 100 }] }));
      return;
    }
    res.end(JSON.stringify({ ok: true, path: req.url }));
  });
  await new Promise<void>((r) => upstream.listen(0, '127.0.0.1', () => r()));
  upstreamUrl = `http://127.0.0.1:${(upstream.address() as AddressInfo).port}`;
});
after(async () => {
  await new Promise<void>((r) => upstream.close(() => r()));
});
beforeEach(async () => {
  seen = [];
  dir = mkdtempSync(join(tmpdir(), 'trace-chan-'));
  channel = await openTaskChannel({
    socketPath: socketPath(), dispatcherUrl: upstreamUrl, queryUrl: `${upstreamUrl}/`, capabilityToken: TOKEN, fence: FENCE,
    limits: { ...DEFAULT_CHANNEL_LIMITS, maxRequestBytes: 4096, maxConcurrent: 2 }, log: silentLogger,
  });
});
afterEach(async () => {
  await channel.close();
  rmSync(dir, { recursive: true, force: true });
});

interface Answer { status: number; body: any; headers: Record<string, string | string[] | undefined> }
function call(method: string, path: string, body: unknown, headers: Record<string, string> = {}): Promise<Answer> {
  const payload = typeof body === 'string' ? body : body === undefined ? '' : JSON.stringify(body);
  return new Promise((resolve, reject) => {
    const req = request({ socketPath: socketPath(), method, path, headers: { 'content-type': 'application/json', 'x-trace-task-capability': TOKEN, 'content-length': Buffer.byteLength(payload), ...headers } }, (res) => {
      let s = '';
      res.on('data', (c) => (s += c));
      res.on('end', () => {
        let parsed: unknown = s;
        try { parsed = JSON.parse(s); } catch { /* raw */ }
        resolve({ status: res.statusCode ?? 0, body: parsed, headers: res.headers });
      });
    });
    req.on('error', reject);
    req.end(payload);
  });
}

const fenced = (extra: Record<string, unknown> = {}) => ({ ...FENCE, ...extra });

function refused(a: Answer, status: number, code: string): void {
  assert.equal(a.status, status, JSON.stringify(a.body));
  assert.equal(a.body.code, code);
  assert.equal(typeof a.body.error, 'string');
  assert.ok(a.body.error.length > 10, 'a sentence');
  assert.ok(!JSON.stringify(a.body).includes(TOKEN), 'never echoes the token');
}

describe('task channel', () => {
  it('is a socket only its owner can use', () => {
    assert.equal(statSync(socketPath()).mode & 0o777, 0o600);
  });

  it('forwards the task-scoped routes of its own attempt with the token, and passes answers back', async () => {
    for (const path of ['/v1/task/heartbeat', '/v1/task/complete', '/v1/task/events', '/v1/task/buffer-publish', '/v1/task/credentials']) {
      const a = await call('POST', path, fenced({ extra: path }));
      assert.equal(a.status, 200, path);
    }
    const q = await call('POST', '/v1/task/query', { task_id: FENCE.task_id, attempt: FENCE.attempt, sql: 'SELECT 1' });
    assert.equal(q.status, 200);
    assert.deepEqual(q.body, { ok: true, path: '/v1/task/query' });
    assert.deepEqual(seen.map((s) => s.path), ['/v1/task/heartbeat', '/v1/task/complete', '/v1/task/events', '/v1/task/buffer-publish', '/v1/task/credentials', '/v1/task/query']);
    for (const s of seen) {
      assert.equal(s.capability, TOKEN);
      assert.equal(s.method, 'POST');
    }
    assert.deepEqual(JSON.parse(seen[0]!.body), fenced({ extra: '/v1/task/heartbeat' }), 'the body goes upstream byte for byte');
    assert.equal(channel.counts.forwarded, 6);
  });

  it('refuses routes not on the list, in every spelling, without calling upstream', async () => {
    for (const path of ['/internal/task-claim', '/v1/tasks', '/v1/dags/x/versions', '/v1/task/heartbeat?x=1', '/v1/task/../tasks', '/v1/task/heartbeat/', '//v1/task/heartbeat', '/V1/TASK/HEARTBEAT', '/v1/uploads?key=a&sig=x', 'http://127.0.0.1:1/v1/task/heartbeat']) {
      refused(await call('POST', path, fenced()), 404, 'ROUTE_NOT_ALLOWED');
    }
    assert.deepEqual(seen, []);
  });

  it('refuses a wrong method', async () => {
    for (const method of ['GET', 'PUT', 'DELETE', 'PATCH']) {
      const a = await call(method, '/v1/task/heartbeat', method === 'GET' || method === 'DELETE' ? undefined : fenced());
      refused(a, 405, 'METHOD_NOT_ALLOWED');
      assert.equal(a.headers.allow, 'POST');
    }
    assert.deepEqual(seen, []);
  });

  it('refuses an oversized body, declared or streamed', async () => {
    refused(await call('POST', '/v1/task/events', fenced({ pad: 'x'.repeat(5000) })), 413, 'PAYLOAD_TOO_LARGE');
    const streamed = await new Promise<Answer>((resolve, reject) => {
      const req = request({ socketPath: socketPath(), method: 'POST', path: '/v1/task/events', headers: { 'content-type': 'application/json', 'x-trace-task-capability': TOKEN, 'transfer-encoding': 'chunked' } }, (res) => {
        let s = '';
        res.on('data', (c) => (s += c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body: JSON.parse(s), headers: res.headers }));
      });
      req.on('error', reject);
      for (let i = 0; i < 10; i++) req.write('x'.repeat(1000));
      req.end();
    });
    refused(streamed, 413, 'PAYLOAD_TOO_LARGE');
    assert.deepEqual(seen, []);
  });

  it("refuses another task's token, a missing token, and calls for another task, attempt or lease", async () => {
    refused(await call('POST', '/v1/task/heartbeat', fenced(), { 'x-trace-task-capability': OTHER_TOKEN }), 403, 'CAPABILITY_MISMATCH');
    refused(await call('POST', '/v1/task/heartbeat', fenced(), { 'x-trace-task-capability': '' }), 401, 'MISSING_CAPABILITY');
    refused(await call('POST', '/v1/task/heartbeat', fenced({ task_id: randomUUID() })), 403, 'TASK_MISMATCH');
    refused(await call('POST', '/v1/task/heartbeat', fenced({ attempt: 1 })), 403, 'TASK_MISMATCH');
    refused(await call('POST', '/v1/task/complete', fenced({ lease_token: randomUUID() })), 403, 'TASK_MISMATCH');
    refused(await call('POST', '/v1/task/complete', { task_id: FENCE.task_id, attempt: FENCE.attempt }), 403, 'TASK_MISMATCH');
    refused(await call('POST', '/v1/task/query', { task_id: randomUUID(), attempt: FENCE.attempt, sql: 'SELECT 1' }), 403, 'TASK_MISMATCH');
    assert.deepEqual(seen, []);
  });

  it('refuses bodies that are not JSON objects naming the attempt', async () => {
    refused(await call('POST', '/v1/task/heartbeat', '{not json'), 400, 'MALFORMED_BODY');
    refused(await call('POST', '/v1/task/heartbeat', '[1]'), 400, 'MALFORMED_BODY');
    const bad = await call('POST', '/v1/task/heartbeat', { task_id: 7, attempt: 'one' });
    refused(bad, 400, 'INVALID_REQUEST');
    assert.deepEqual(bad.body.problems.map((p: { path: string }) => p.path).sort(), ['attempt', 'task_id']);
    refused(await call('POST', '/v1/task/heartbeat', fenced(), { 'content-type': 'text/plain' }), 415, 'UNSUPPORTED_MEDIA_TYPE');
    assert.deepEqual(seen, []);
  });

  it('turns signed uploads into channel paths that reach only the URL issued to this run', async () => {
    const cred = await call('POST', '/v1/task/credentials', fenced({ uploads: [{ name: 'a.jsonl' }] }));
    assert.equal(cred.status, 200);
    assert.equal(cred.body.uploads[0].url, '/v1/task/uploads/0');
    assert.deepEqual(cred.body.uploads[0].headers, {});
    assert.equal(cred.body.uploads[0].uri, 'file:///objects/buffers/a.jsonl');
    const put = await call('PUT', '/v1/task/uploads/0', '{"x":1}\n', { 'content-type': 'application/octet-stream' });
    assert.equal(put.status, 200);
    const up = seen.at(-1)!;
    assert.equal(up.method, 'PUT');
    assert.equal(up.path, '/v1/uploads?key=a&sig=x');
    assert.equal(up.body, '{"x":1}\n');
    seen = [];
    refused(await call('PUT', '/v1/task/uploads/1', 'x'), 404, 'UPLOAD_NOT_ISSUED');
    refused(await call('PUT', '/v1/task/uploads/0', 'x'.repeat(101)), 413, 'PAYLOAD_TOO_LARGE');
    const lying = await new Promise<Answer>((resolve, reject) => {
      const req = request({ socketPath: socketPath(), method: 'PUT', path: '/v1/task/uploads/0', headers: { 'x-trace-task-capability': TOKEN, 'transfer-encoding': 'chunked' } }, (res) => {
        let s = '';
        res.on('data', (c) => (s += c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body: JSON.parse(s), headers: res.headers }));
      });
      req.on('error', reject);
      req.end('x'.repeat(50));
    });
    refused(lying, 411, 'LENGTH_REQUIRED');
    refused(await call('POST', '/v1/task/uploads/0', 'x'), 405, 'METHOD_NOT_ALLOWED');
    refused(await call('PUT', '/v1/task/uploads/0', 'x', { 'x-trace-task-capability': OTHER_TOKEN }), 403, 'CAPABILITY_MISMATCH');
    assert.deepEqual(seen, []);
  });

  it('limits calls in flight', async () => {
    const held: Array<() => void> = [];
    const slow = createServer((req, res) => {
      req.resume();
      held.push(() => { res.writeHead(200, { 'content-type': 'application/json' }); res.end('{}'); });
    });
    await new Promise<void>((r) => slow.listen(0, '127.0.0.1', () => r()));
    await channel.close();
    channel = await openTaskChannel({
      socketPath: socketPath(), dispatcherUrl: `http://127.0.0.1:${(slow.address() as AddressInfo).port}`, capabilityToken: TOKEN, fence: FENCE,
      limits: { ...DEFAULT_CHANNEL_LIMITS, maxConcurrent: 2 }, log: silentLogger,
    });
    try {
      const first = [call('POST', '/v1/task/heartbeat', fenced()), call('POST', '/v1/task/heartbeat', fenced())];
      while (held.length < 2) await new Promise((r) => slow.once('request', r));
      refused(await call('POST', '/v1/task/heartbeat', fenced()), 429, 'TOO_MANY_REQUESTS');
      for (const h of held) h();
      for (const a of await Promise.all(first)) assert.equal(a.status, 200);
    } finally {
      slow.closeAllConnections();
      await new Promise<void>((r) => slow.close(() => r()));
    }
  });

  it('answers 502 when the upstream is down', async () => {
    await channel.close();
    channel = await openTaskChannel({ socketPath: socketPath(), dispatcherUrl: 'http://127.0.0.1:1', capabilityToken: TOKEN, fence: FENCE, limits: DEFAULT_CHANNEL_LIMITS, log: silentLogger });
    refused(await call('POST', '/v1/task/heartbeat', fenced()), 502, 'UPSTREAM_UNAVAILABLE');
  });
});

describe('task channel from inside the sandbox', () => {
  let sb: UdfSandbox & { dispose(): Promise<void> };
  before(async () => {
    sb = await startTestSandbox({ channel: { ...DEFAULT_CHANNEL_LIMITS, maxRequestBytes: 4096 } });
  });
  after(async () => {
    await sb?.dispose();
  });

  it('is the only way out: allowed calls arrive, refused ones do not', async () => {
    seen = [];
    const code = `
import { request } from 'node:http';
let raw = ''; for await (const c of process.stdin) raw += c;
const inv = JSON.parse(raw);
const call = (method, path, body, token = process.env.TRACE_TASK_CAPABILITY_TOKEN) => new Promise((resolve) => {
  const payload = JSON.stringify(body);
  const req = request({ socketPath: process.env.TRACE_TASK_SOCKET, method, path, headers: { 'content-type': 'application/json', 'x-trace-task-capability': token, 'content-length': Buffer.byteLength(payload) } }, (res) => {
    let s = ''; res.on('data', (c) => (s += c)); res.on('end', () => resolve([res.statusCode, JSON.parse(s).code ?? 'ok']));
  });
  req.on('error', (e) => resolve([0, e.code]));
  req.end(payload);
});
const fence = { task_id: inv.task_id, attempt: inv.attempt, lease_token: inv.lease_token };
const out = {
  heartbeat: await call('POST', '/v1/task/heartbeat', fence),
  claim: await call('POST', '/internal/task-claim', fence),
  get: await call('GET', '/v1/task/heartbeat', fence),
  big: await call('POST', '/v1/task/events', { ...fence, pad: 'x'.repeat(8000) }),
  other: await call('POST', '/v1/task/heartbeat', fence, 'someone.elses.token'),
};
let direct;
try { await fetch('${upstreamUrl}/v1/task/heartbeat', { method: 'POST', body: '{}', signal: AbortSignal.timeout(2000) }); direct = 'reached'; } catch (e) { direct = e.cause?.code ?? e.name; }
out.direct = direct;
process.stdout.write(JSON.stringify(out));
`;
    const bytes = await goodBundle([{ name: 'index.mjs', data: code }]);
    const r = await runUdf({
      sandbox: sb, bundle: bytes, expectedSha256: sha256(bytes), invocation: { ...FENCE, capability_token: TOKEN }, timeoutMs: 20_000,
      maxStdoutBytes: 65536, maxStderrBytes: 4096, capabilityToken: TOKEN, dispatcherUrl: upstreamUrl, queryUrl: upstreamUrl,
    });
    assert.ok(r.ok, JSON.stringify(r));
    assert.deepEqual(r.output, {
      heartbeat: [200, 'ok'],
      claim: [404, 'ROUTE_NOT_ALLOWED'],
      get: [405, 'METHOD_NOT_ALLOWED'],
      big: [413, 'PAYLOAD_TOO_LARGE'],
      other: [403, 'CAPABILITY_MISMATCH'],
      direct: 'ECONNREFUSED',
    });
    assert.deepEqual(seen.map((s) => s.path), ['/v1/task/heartbeat'], 'only the allowed call reached the service');
  });
});
