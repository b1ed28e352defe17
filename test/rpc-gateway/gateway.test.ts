import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { pino } from 'pino';
import { startRpcGateway, type StartedRpcGateway } from '../../src/rpc-gateway/gateway.js';
import { jsonRpcServer, listen, sendJson, type TestServer } from '../chain/support.js';

function captureLogger() {
  const lines: string[] = [];
  const stream = new Writable({
    write(chunk, _enc, cb) {
      lines.push(String(chunk));
      cb();
    },
  });
  return { log: pino({ level: 'debug' }, stream), lines };
}

async function post(gw: StartedRpcGateway, pool: string, body: unknown) {
  const res = await fetch(`${gw.url}/rpc/${pool}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
  const text = await res.text();
  return { status: res.status, body: JSON.parse(text) as Record<string, unknown> | Array<Record<string, unknown>>, text, headers: res.headers };
}

const req = (id: number, method = 'eth_blockNumber', params: unknown[] = []) => ({ jsonrpc: '2.0', id, method, params });

async function liveProvider() {
  return jsonRpcServer({ answer: (method) => (method === 'eth_blockNumber' ? { result: '0x2a' } : { result: method }) });
}

/** A provider that fails every request in the given way, counting hits. */
async function deadProvider(kind: 500 | 429 | 401 | 'html' | 'jsonrpc-limit'): Promise<TestServer & { hits: () => number }> {
  let hits = 0;
  const s = await listen((_req, res) => {
    hits++;
    if (kind === 'jsonrpc-limit') {
      sendJson(res, 200, { jsonrpc: '2.0', id: 1, error: { code: -32005, message: 'daily request count exceeded, request rate limited' } });
      return;
    }
    if (kind === 'html') {
      res.writeHead(200, { 'content-type': 'text/html' });
      res.end('<html>bad gateway</html>');
      return;
    }
    sendJson(res, kind, { error: 'nope' });
  });
  return Object.assign(s, { hits: () => hits });
}

/** A port that refuses connections: bind, note the port, close. */
async function closedPortUrl(): Promise<string> {
  const s = await listen(() => undefined);
  await s.close();
  return `${s.url}/v1/closed`;
}

for (const kind of [500, 429, 401, 'html', 'jsonrpc-limit'] as const) {
  test(`failover: a provider answering ${kind} is skipped for the live one, then cools down`, async () => {
    const dead = await deadProvider(kind);
    const live = await liveProvider();
    const gw = await startRpcGateway({ port: 0, pools: { main: [dead.url, live.url] }, log: captureLogger().log });
    try {
      const first = await post(gw, 'main', req(1));
      assert.equal(first.status, 200);
      assert.deepEqual(first.body, { jsonrpc: '2.0', id: 1, result: '0x2a' });
      assert.equal(first.headers.get('x-trace-rpc-provider'), '1');
      assert.equal(dead.hits(), 1, 'the dead provider was tried first (round robin starts at #0)');
      // the dead provider is cooling down now: the next requests go straight to the live one
      for (let i = 2; i <= 4; i++) assert.equal((await post(gw, 'main', req(i))).status, 200);
      assert.equal(dead.hits(), 1, 'no retries against a provider in cooldown');
      assert.equal(live.calls.length, 4);
    } finally {
      await gw.close();
      await dead.close();
      await live.close();
    }
  });
}

test('failover: a closed port (connect error) and a hanging provider (timeout) fall through to the live one', async () => {
  const hang = await listen(() => undefined); // never answers
  const live = await liveProvider();
  const gw = await startRpcGateway({ port: 0, timeoutMs: 300, pools: { main: [await closedPortUrl(), hang.url, live.url] }, log: captureLogger().log });
  try {
    const r = await post(gw, 'main', req(7));
    assert.equal(r.status, 200);
    assert.deepEqual(r.body, { jsonrpc: '2.0', id: 7, result: '0x2a' });
    assert.equal(live.calls.length, 1);
  } finally {
    await gw.close();
    await hang.close();
    await live.close();
  }
});

test('when every provider fails the gateway answers with a stable error code', async () => {
  const a = await deadProvider(429);
  const b = await deadProvider(429);
  const c = await deadProvider(500);
  const gw = await startRpcGateway({ port: 0, pools: { limited: [a.url, b.url], broken: [c.url, await closedPortUrl()] }, log: captureLogger().log });
  try {
    const r1 = await post(gw, 'limited', req(1));
    assert.equal(r1.status, 429);
    assert.equal((r1.body as Record<string, unknown>).code, 'RPC_UPSTREAM_RATE_LIMITED');
    const r2 = await post(gw, 'broken', req(1));
    assert.equal(r2.status, 502);
    assert.equal((r2.body as Record<string, unknown>).code, 'RPC_UPSTREAM_UNAVAILABLE');
    assert.equal(typeof (r2.body as Record<string, unknown>).error, 'string');
  } finally {
    await gw.close();
    await Promise.all([a.close(), b.close(), c.close()]);
  }
});

test('unknown pool is 404 {error, code}; healthz and pool listing expose no URLs', async () => {
  const live = await liveProvider();
  const secretUrl = `${live.url}/v2/SECRETPATHKEY?apikey=SECRETQUERYKEY`;
  const gw = await startRpcGateway({ port: 0, pools: { standard: [secretUrl, live.url], traces: [live.url] }, log: captureLogger().log });
  try {
    const r = await post(gw, 'nosuchpool', req(1));
    assert.equal(r.status, 404);
    assert.deepEqual(r.body, { error: 'unknown RPC pool', code: 'RPC_POOL_NOT_FOUND' });
    assert.equal((await post(gw, '..%2Fetc', req(1))).status, 404);

    const health = await fetch(`${gw.url}/healthz`);
    assert.equal(health.status, 200);
    assert.deepEqual(await health.json(), { ok: true, service: 'rpc-gateway' });

    const pools = await fetch(`${gw.url}/v1/pools`);
    const text = await pools.text();
    assert.deepEqual(JSON.parse(text), { pools: [{ name: 'standard', providers: 2 }, { name: 'traces', providers: 1 }] });
    assert.ok(!text.includes('127.0.0.1') && !text.includes('SECRET'));

    const other = await fetch(`${gw.url}/nope`);
    assert.equal(other.status, 404);
    assert.deepEqual(await other.json(), { error: 'no such route', code: 'NOT_FOUND' });
  } finally {
    await gw.close();
    await live.close();
  }
});

test('logs name providers by index and host, never by path or query string', async () => {
  const dead = await deadProvider(500);
  const live = await liveProvider();
  const cap = captureLogger();
  const pools = {
    main: [`${dead.url}/v3/SECRETPATHKEY?apikey=SECRETQUERYKEY`, `${live.url}/rpc/SECRETPATH2?key=SECRETQUERY2`],
  };
  const gw = await startRpcGateway({ port: 0, pools, log: cap.log });
  try {
    for (let i = 0; i < 3; i++) assert.equal((await post(gw, 'main', [req(1), req(2, 'eth_chainId')])).status, 200);
    const all = cap.lines.join('');
    assert.ok(cap.lines.length >= 4, 'request and failover lines were logged');
    assert.ok(!all.includes('SECRET'), 'no key material in logs');
    assert.ok(!all.includes('apikey'), 'no query string in logs');
    assert.ok(all.includes(`"provider":"0:127.0.0.1:${dead.port}"`), 'the failing provider is named by index:host');
    assert.ok(all.includes(`"provider":"1:127.0.0.1:${live.port}"`));
    assert.ok(all.includes('"reason":"http_5xx"'));
    assert.ok(all.includes('"methods":["eth_blockNumber","eth_chainId"]'));
    // the upstream saw the path and query (that is where providers read keys)
    assert.equal(live.calls.length, 6);
  } finally {
    await gw.close();
    await dead.close();
    await live.close();
  }
});

test('batches are forwarded intact; malformed and oversized bodies are rejected before any upstream call', async () => {
  const live = await liveProvider();
  const gw = await startRpcGateway({ port: 0, bodyLimitBytes: 2048, maxBatchItems: 5, pools: { main: [live.url] }, log: captureLogger().log });
  try {
    const r = await post(gw, 'main', [req(1), req(2, 'eth_chainId'), req(3, 'net_version')]);
    assert.equal(r.status, 200);
    assert.deepEqual(r.body, [
      { jsonrpc: '2.0', id: 1, result: '0x2a' },
      { jsonrpc: '2.0', id: 2, result: 'eth_chainId' },
      { jsonrpc: '2.0', id: 3, result: 'net_version' },
    ]);
    assert.deepEqual(live.batches, [3]);

    const bad = await post(gw, 'main', { jsonrpc: '1.0', id: 1, method: 'x y' });
    assert.equal(bad.status, 400);
    assert.equal((bad.body as Record<string, unknown>).code, 'RPC_INVALID_REQUEST');
    assert.equal((await post(gw, 'main', [])).status, 400);
    assert.equal((await post(gw, 'main', '{not json')).status, 400);
    const big = await post(gw, 'main', req(1, 'eth_call', ['x'.repeat(4096)]));
    assert.equal(big.status, 413);
    assert.equal((big.body as Record<string, unknown>).code, 'PAYLOAD_TOO_LARGE');
    const many = await post(gw, 'main', Array.from({ length: 6 }, (_, i) => req(i)));
    assert.equal(many.status, 413);
    assert.equal((many.body as Record<string, unknown>).code, 'RPC_BATCH_TOO_LARGE');
    assert.equal(live.calls.length, 3, 'rejected requests never reached the provider');
  } finally {
    await gw.close();
    await live.close();
  }
});

test('per-pool concurrency limit: excess requests wait, and a full queue answers 429', async () => {
  let inflight = 0;
  let peak = 0;
  const release: Array<() => void> = [];
  const slow = await jsonRpcServer({
    answer: async () => {
      inflight++;
      peak = Math.max(peak, inflight);
      await new Promise<void>((r) => release.push(r));
      inflight--;
      return { result: '0x1' };
    },
  });
  const gw = await startRpcGateway({ port: 0, concurrencyPerPool: 2, maxQueuePerPool: 1, pools: { main: [slow.url] }, log: captureLogger().log });
  try {
    const pending = [post(gw, 'main', req(1)), post(gw, 'main', req(2)), post(gw, 'main', req(3))];
    while (release.length < 2) await new Promise((r) => setTimeout(r, 10));
    const rejected = await post(gw, 'main', req(4)); // two running, one waiting: the queue is full
    assert.equal(rejected.status, 429);
    assert.equal((rejected.body as Record<string, unknown>).code, 'RPC_POOL_BUSY');
    let released = 0;
    while (released < 3) {
      const next = release.shift();
      if (next) {
        next();
        released++;
      }
      await new Promise((r) => setTimeout(r, 10));
    }
    for (const p of await Promise.all(pending)) assert.equal(p.status, 200);
    assert.equal(peak, 2, 'never more than concurrencyPerPool upstream requests at once');
  } finally {
    await gw.close();
    await slow.close();
  }
});

test('pool configuration errors never echo the provider URL', async () => {
  await assert.rejects(
    startRpcGateway({ port: 0, pools: { main: ['ftp://host/SECRET?k=SECRET'] } }),
    (e: Error & { code?: string }) => e.code === 'RPC_POOL_CONFIG_INVALID' && !e.message.includes('SECRET'),
  );
  await assert.rejects(startRpcGateway({ port: 0, pools: { 'bad-name': ['http://127.0.0.1:1'] } }), /pool names/);
});

test('an upstream answer over maxResponseBytes is 502 RPC_RESPONSE_TOO_LARGE, declared or streamed; the pool stays usable', async () => {
  const big = 'x'.repeat(4096);
  const s = await listen((req, res) => {
    if (req.url?.includes('declared')) {
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': String(big.length + 20) });
      res.end(`{"jsonrpc":"2.0","id":1,"result":"${big}"}`.slice(0, big.length + 20));
      return;
    }
    if (req.url?.includes('streamed')) {
      res.writeHead(200, { 'content-type': 'application/json' }); // chunked: counted as it arrives
      res.write('{"jsonrpc":"2.0","id":1,"result":"');
      for (let i = 0; i < 4; i++) res.write(big);
      res.end('"}');
      return;
    }
    sendJson(res, 200, { jsonrpc: '2.0', id: 1, result: '0x1' });
  });
  const gw = await startRpcGateway({
    port: 0, maxResponseBytes: 1024, log: captureLogger().log,
    pools: { declared: [`${s.url}/declared`], streamed: [`${s.url}/streamed`], small: [`${s.url}/small`] },
  });
  try {
    for (const pool of ['declared', 'streamed']) {
      const r = await post(gw, pool, req(1));
      assert.equal(r.status, 502, pool);
      assert.equal((r.body as Record<string, unknown>).code, 'RPC_RESPONSE_TOO_LARGE', pool);
    }
    const ok = await post(gw, 'small', req(1));
    assert.equal(ok.status, 200);
    assert.equal((ok.body as Record<string, unknown>).result, '0x1');
  } finally {
    await gw.close();
    await s.close();
  }
});
