import { test } from 'node:test';
import assert from 'node:assert/strict';
import { GatewayRateLimiter } from '../../src/gateway/rate-limit.js';
import { parseCorsOrigins } from '../../src/gateway/cors.js';
import { rawRequest, startTestGateway, token, type TestGateway } from './support.js';

const get = (gw: TestGateway, tok: string, path = '/v1/datasets') => fetch(`${gw.url}${path}`, { headers: { authorization: `Bearer ${tok}` } });
const query = (gw: TestGateway, tok: string) =>
  fetch(`${gw.url}/v1/query`, { method: 'POST', headers: { authorization: `Bearer ${tok}`, 'content-type': 'application/json' }, body: '{"dataset":"d","sql":"select 1"}' });

test('defaults: 10 queries per user per minute, then 429 with Retry-After; other routes and users unaffected', async () => {
  let now = 1_000_000;
  const gw = await startTestGateway({ limits: { userPerMinute: 100, orgPerMinute: 1000, queryPerUserPerMinute: 10 }, clock: () => now });
  try {
    const alice = await token('alice');
    const bob = await token('bob');
    for (let i = 0; i < 10; i++) assert.equal((await query(gw, alice)).status, 200, `query ${i + 1}`);
    const limited = await query(gw, alice);
    assert.equal(limited.status, 429);
    const retry = Number(limited.headers.get('retry-after'));
    assert.ok(Number.isInteger(retry) && retry >= 1 && retry <= 6, `Retry-After ${retry}`);
    const body = (await limited.json()) as Record<string, unknown>;
    assert.equal(body.code, 'RATE_LIMITED');
    assert.equal(body.scope, 'query');
    assert.equal(typeof body.error, 'string');
    assert.equal(gw.query.received.length, 10, 'the 11th query was not proxied');
    assert.equal((await get(gw, alice)).status, 200, 'non-query routes still pass');
    assert.equal((await query(gw, bob)).status, 200, 'another user has their own bucket');
    now += retry * 1000;
    assert.equal((await query(gw, alice)).status, 200, 'after Retry-After the query passes');
    assert.equal((await query(gw, alice)).status, 429, 'and the bucket is empty again');
  } finally {
    await gw.close();
  }
});

test('defaults: 100 requests per user per minute, then 429; the refill is continuous', async () => {
  let now = 5_000_000;
  const gw = await startTestGateway({ limits: { userPerMinute: 100, orgPerMinute: 1000, queryPerUserPerMinute: 10 }, clock: () => now });
  try {
    const carol = await token('carol');
    for (let i = 0; i < 100; i++) assert.equal((await get(gw, carol)).status, 200, `request ${i + 1}`);
    const limited = await get(gw, carol);
    assert.equal(limited.status, 429);
    assert.equal(limited.headers.get('retry-after'), '1');
    assert.equal(((await limited.json()) as Record<string, unknown>).scope, 'user');
    assert.equal(gw.proxied(), 100);
    now += 600; // 100/min refills one token every 600 ms
    assert.equal((await get(gw, carol)).status, 200);
    assert.equal((await get(gw, carol)).status, 429);
  } finally {
    await gw.close();
  }
});

test('the org bucket caps all users together; a refused request spends nothing', async () => {
  let now = 9_000_000;
  const gw = await startTestGateway({ limits: { userPerMinute: 3, orgPerMinute: 5, queryPerUserPerMinute: 2 }, clock: () => now });
  try {
    const [a, b, c] = await Promise.all(['a', 'b', 'c'].map((s) => token(s)));
    assert.equal((await get(gw, a!)).status, 200);
    assert.equal((await get(gw, a!)).status, 200);
    assert.equal((await get(gw, a!)).status, 200);
    const userLimited = await get(gw, a!);
    assert.equal(userLimited.status, 429);
    assert.equal(((await userLimited.json()) as Record<string, unknown>).scope, 'user');
    // a's refused 4th request took nothing from the org bucket, so b still gets the last two.
    assert.equal((await get(gw, b!)).status, 200);
    assert.equal((await get(gw, b!)).status, 200);
    const orgLimited = await get(gw, c!);
    assert.equal(orgLimited.status, 429);
    assert.equal(((await orgLimited.json()) as Record<string, unknown>).scope, 'org');
    assert.equal(gw.proxied(), 5);
    // After a minute the org bucket is full again and c has its own 3.
    now += 60_000;
    for (let i = 0; i < 3; i++) assert.equal((await get(gw, c!)).status, 200);
    assert.equal((await get(gw, c!)).status, 429);
  } finally {
    await gw.close();
  }
});

test('unauthenticated and unknown-route requests are refused before they can spend anyone\'s budget', async () => {
  const now = 1;
  const gw = await startTestGateway({ limits: { userPerMinute: 2, orgPerMinute: 2, queryPerUserPerMinute: 1 }, clock: () => now });
  try {
    for (let i = 0; i < 5; i++) {
      assert.equal((await fetch(`${gw.url}/v1/datasets`)).status, 401);
      assert.equal((await fetch(`${gw.url}/internal/task-claim`, { method: 'POST' })).status, 404);
    }
    const d = await token('dave');
    assert.equal((await get(gw, d)).status, 200);
    assert.equal((await get(gw, d)).status, 200);
  } finally {
    await gw.close();
  }
});

test('the limiter keeps a bounded number of user buckets', () => {
  let now = 0;
  const lim = new GatewayRateLimiter({ userPerMinute: 5, orgPerMinute: 1_000_000, queryPerUserPerMinute: 5 }, { clock: () => now, maxTrackedUsers: 50 });
  for (let i = 0; i < 500; i++) {
    assert.equal(lim.take(`u${i}`, 'query').ok, true);
    now += 1;
  }
  assert.ok(lim.tracked.users <= 50 && lim.tracked.queryUsers <= 50, JSON.stringify(lim.tracked));
  assert.throws(() => new GatewayRateLimiter({ userPerMinute: 0, orgPerMinute: 1, queryPerUserPerMinute: 1 }));
});

test('CORS: preflight is answered only for allowlisted origins, methods and headers; never a wildcard or credentials', async () => {
  const gw = await startTestGateway({ corsOrigins: ['https://app.example.com', 'http://localhost:3000'] });
  try {
    const preflight = (origin: string | undefined, path: string, method: string, headers = 'authorization, content-type') =>
      rawRequest(gw.port, 'OPTIONS', path, {
        ...(origin ? { Origin: origin } : {}),
        'Access-Control-Request-Method': method,
        'Access-Control-Request-Headers': headers,
      });
    const ok = await preflight('https://app.example.com', '/v1/query', 'POST');
    assert.equal(ok.status, 204);
    assert.equal(ok.headers['access-control-allow-origin'], 'https://app.example.com');
    assert.equal(ok.headers['access-control-allow-methods'], 'POST');
    assert.match(ok.headers['access-control-allow-headers'] ?? '', /authorization/);
    assert.match(ok.headers['access-control-allow-headers'] ?? '', /content-type/);
    assert.match(ok.headers.vary ?? '', /Origin/);
    assert.equal(ok.headers['access-control-allow-credentials'], undefined);
    const alerts = await preflight('http://localhost:3000', '/v1/alerts/a1', 'DELETE');
    assert.equal(alerts.status, 204);
    assert.equal(alerts.headers['access-control-allow-methods'], 'GET, PUT, DELETE');

    for (const [origin, path, method, headers, status] of [
      ['https://evil.example.com', '/v1/query', 'POST', 'authorization', 403],
      ['https://app.example.com.evil.com', '/v1/query', 'POST', 'authorization', 403],
      ['http://app.example.com', '/v1/query', 'POST', 'authorization', 403],
      ['null', '/v1/query', 'POST', 'authorization', 403],
      [undefined, '/v1/query', 'POST', 'authorization', 403],
      ['https://app.example.com', '/v1/query', 'DELETE', 'authorization', 403],
      ['https://app.example.com', '/v1/query', 'POST', 'authorization, x-trace-worker-token', 403],
      ['https://app.example.com', '/v1/query', 'POST', 'cookie', 403],
      ['https://app.example.com', '/internal/task-claim', 'POST', 'authorization', 404],
      ['https://app.example.com', '/v1/task/complete', 'POST', 'authorization', 404],
    ] as const) {
      const r = await preflight(origin, path, method, headers);
      assert.equal(r.status, status, `${origin} ${method} ${path} ${headers}`);
      assert.equal(r.headers['access-control-allow-origin'], status === 404 ? (origin === 'https://app.example.com' ? origin : undefined) : undefined);
      assert.equal(typeof r.json().code, 'string');
    }
    // OPTIONS without the preflight headers is not a method of the route.
    const plainOptions = await rawRequest(gw.port, 'OPTIONS', '/v1/query', { Origin: 'https://app.example.com' });
    assert.equal(plainOptions.status, 405);
    assert.equal(plainOptions.headers.allow, 'POST');

    // Actual requests: the allowed origin gets the CORS headers, others get none; both need a token.
    const tok = await token('alice');
    const allowed = await fetch(`${gw.url}/v1/datasets`, { headers: { authorization: `Bearer ${tok}`, origin: 'https://app.example.com' } });
    assert.equal(allowed.status, 200);
    assert.equal(allowed.headers.get('access-control-allow-origin'), 'https://app.example.com');
    assert.match(allowed.headers.get('access-control-expose-headers') ?? '', /x-request-id/);
    assert.equal(allowed.headers.get('access-control-allow-credentials'), null);
    const other = await fetch(`${gw.url}/v1/datasets`, { headers: { authorization: `Bearer ${tok}`, origin: 'https://evil.example.com' } });
    assert.equal(other.headers.get('access-control-allow-origin'), null);
    const anon = await fetch(`${gw.url}/v1/datasets`, { headers: { origin: 'https://app.example.com' } });
    assert.equal(anon.status, 401);
    assert.equal(anon.headers.get('access-control-allow-origin'), 'https://app.example.com', 'the browser may read the error');
    assert.equal(gw.proxied(), 2, 'preflights are never proxied');
  } finally {
    await gw.close();
  }
});

test('CORS default is same-origin only: no origin is allowed', async () => {
  const gw = await startTestGateway();
  try {
    const r = await rawRequest(gw.port, 'OPTIONS', '/v1/datasets', { Origin: 'http://localhost:3000', 'Access-Control-Request-Method': 'GET' });
    assert.equal(r.status, 403);
    assert.equal(r.headers['access-control-allow-origin'], undefined);
    const tok = await token('alice');
    const res = await fetch(`${gw.url}/v1/datasets`, { headers: { authorization: `Bearer ${tok}`, origin: 'http://localhost:3000' } });
    assert.equal(res.status, 200);
    assert.equal(res.headers.get('access-control-allow-origin'), null);
  } finally {
    await gw.close();
  }
});

test('CORS origin configuration is exact: wildcards, paths and non-http schemes are refused', () => {
  assert.deepEqual(parseCorsOrigins(' https://a.example.com , http://localhost:3000 ,'), ['https://a.example.com', 'http://localhost:3000']);
  assert.deepEqual(parseCorsOrigins('https://A.example.com/'), ['https://a.example.com']);
  assert.deepEqual(parseCorsOrigins(undefined), []);
  for (const bad of ['*', 'https://*.example.com', 'https://a.example.com/app', 'ftp://a.example.com', 'null', 'a.example.com', 'https://u:p@a.example.com', 'https://a.example.com?x=1']) {
    assert.throws(() => parseCorsOrigins(bad), TypeError, bad);
  }
});
