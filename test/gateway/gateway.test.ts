import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { connect } from 'node:net';
import { SignJWT } from 'jose';
import { ROUTES, RouteTable } from '../../src/gateway/routes.js';
import { canonicalTarget } from '../../src/gateway/target.js';
import { UUID_RE } from '../../src/core/ids.js';
import { USER_SECRET, closedUrl, fakeBackend, rawRequest, startTestGateway, token } from './support.js';

const ALERT = '0b8f7a52-6f0e-4a43-9a57-3f0f5b0e8c11';
const TASK = '7d1c6c2e-8d7b-4b8e-9a57-1f0e5b0e8c22';

/** One concrete request per allowlisted method + pattern. */
const ALLOWED: Array<[method: string, path: string, upstream: 'dispatcher' | 'query']> = [
  ['POST', '/v1/query', 'query'],
  ['GET', `/v1/query-results/${TASK}`, 'query'],
  ['GET', `/v1/query-results/${TASK}/export?format=csv`, 'query'],
  ['GET', '/v1/datasets', 'dispatcher'],
  ['GET', '/v1/datasets/eth_blocks', 'dispatcher'],
  ['GET', '/v1/datasets/eth_blocks/export', 'dispatcher'],
  ['GET', '/v1/datasets/eth_blocks/export/files/ethereum__blocks__00000000_to_00000999.parquet', 'dispatcher'],
  ['GET', '/v1/datasets/eth_blocks/versions', 'dispatcher'],
  ['GET', '/v1/dags', 'dispatcher'],
  ['POST', '/v1/dags/my_dag/versions', 'dispatcher'],
  ['GET', '/v1/dags/my_dag/versions', 'dispatcher'],
  ['PUT', '/v1/dags/my_dag/active', 'dispatcher'],
  ['POST', '/v1/udf/bundles', 'dispatcher'],
  ['POST', '/v1/udf/bundles/bundle-1/finalize', 'dispatcher'],
  ['POST', '/v1/alerts', 'dispatcher'],
  ['GET', '/v1/alerts', 'dispatcher'],
  ['GET', `/v1/alerts/${ALERT}`, 'dispatcher'],
  ['PUT', `/v1/alerts/${ALERT}`, 'dispatcher'],
  ['DELETE', `/v1/alerts/${ALERT}`, 'dispatcher'],
  ['GET', `/v1/alerts/${ALERT}/deliveries`, 'dispatcher'],
  ['POST', '/v1/dags/my_dag/jobs/my_job/trigger', 'dispatcher'],
  ['GET', '/v1/tasks', 'dispatcher'],
  ['GET', `/v1/tasks/${TASK}`, 'dispatcher'],
  ['POST', `/v1/tasks/${TASK}/cancel`, 'dispatcher'],
  ['POST', '/v1/datasets/eth_blocks/register', 'dispatcher'],
  ['POST', '/v1/gc', 'dispatcher'],
  ['GET', '/v1/chain-sync', 'dispatcher'],
  ['POST', '/v1/chain-sync', 'dispatcher'],
  ['GET', '/v1/chain-sync/monad_mainnet', 'dispatcher'],
  ['POST', '/v1/chain-sync/monad_mainnet/pause', 'dispatcher'],
  ['POST', '/v1/chain-sync/monad_mainnet/resume', 'dispatcher'],
  ['GET', '/v1/datasets/eth_blocks/invalidations', 'dispatcher'],
  ['POST', '/v1/datasets/eth_blocks/invalidations', 'dispatcher'],
  ['GET', '/v1/admin/orgs', 'dispatcher'],
  ['GET', '/v1/admin/orgs/default', 'dispatcher'],
  ['GET', '/v1/admin/roles', 'dispatcher'],
  ['GET', '/v1/admin/users', 'dispatcher'],
  ['POST', '/v1/admin/users', 'dispatcher'],
  ['GET', '/v1/admin/users/00000000-0000-4000-8000-000000000000', 'dispatcher'],
  ['DELETE', '/v1/admin/users/00000000-0000-4000-8000-000000000000', 'dispatcher'],
  ['GET', '/v1/admin/members', 'dispatcher'],
  ['POST', '/v1/admin/members', 'dispatcher'],
  ['PUT', '/v1/admin/members/00000000-0000-4000-8000-000000000000', 'dispatcher'],
  ['DELETE', '/v1/admin/members/00000000-0000-4000-8000-000000000000/member', 'dispatcher'],
  ['GET', '/v1/dags/my_dag/webhooks', 'dispatcher'],
  ['POST', '/v1/dags/my_dag/webhooks/my_job/rotate', 'dispatcher'],
];

/** Webhook ingress: no user token (the backend checks the HMAC signature). */
const WEBHOOK_CASES: Array<[method: string, path: string, upstream: 'dispatcher']> = [
  ['POST', '/v1/webhooks/hooks/my_feed', 'dispatcher'],
];

test('the case list covers every method of every allowlisted pattern, and nothing routes /v1/task or /internal', () => {
  const table = new RouteTable();
  const covered = new Set<string>();
  for (const [method, path] of [...ALLOWED, ...WEBHOOK_CASES]) {
    const matches = table.matchPath(canonicalTarget(path, 4096).segments).filter((m) => (m.rule.methods as readonly string[]).includes(method));
    assert.equal(matches.length, 1, `${method} ${path} matches exactly one rule`);
    covered.add(`${method} ${matches[0]!.rule.pattern}`);
  }
  for (const r of ROUTES) for (const m of r.methods) assert.ok(covered.has(`${m} ${r.pattern}`), `${m} ${r.pattern} has a test case`);
  for (const r of ROUTES) assert.ok(!r.pattern.startsWith('/v1/task/') && !r.pattern.startsWith('/internal'), r.pattern);
  assert.throws(() => new RouteTable([{ methods: ['POST'], pattern: '/v1/task/{x}', upstream: 'dispatcher', audience: 'user', rateClass: 'default' }]));
});

test('allowlisted routes are proxied with method, path, query, body and Authorization intact', async () => {
  const gw = await startTestGateway();
  try {
    const tok = await token('alice');
    for (const [method, path, upstream] of ALLOWED) {
      const backend = upstream === 'query' ? gw.query : gw.dispatcher;
      const other = upstream === 'query' ? gw.dispatcher : gw.query;
      const before = other.received.length;
      const hasBody = method !== 'GET' && method !== 'DELETE';
      const body = hasBody ? JSON.stringify({ path, n: 1, text: 'ünïcode' }) : undefined;
      const query = '?limit=5&dag=my_dag&x=a%20b';
      const res = await fetch(`${gw.url}${path}${query}`, {
        method,
        headers: { authorization: `Bearer ${tok}`, ...(hasBody ? { 'content-type': 'application/json' } : {}) },
        ...(body !== undefined ? { body } : {}),
      });
      assert.equal(res.status, 200, `${method} ${path}`);
      assert.match(res.headers.get('content-type') ?? '', /^application\/json/);
      const got = backend.received.at(-1)!;
      assert.equal(got.method, method);
      assert.equal(got.url, `${path}${query}`);
      assert.equal(got.body, body ?? '');
      assert.equal(got.headers.authorization, `Bearer ${tok}`);
      assert.match(String(got.headers['x-request-id']), UUID_RE);
      assert.equal(res.headers.get('x-request-id'), got.headers['x-request-id']);
      if (hasBody) assert.equal(got.headers['content-type'], 'application/json');
      assert.equal(other.received.length, before, `${method} ${path} went only to the ${upstream}`);
      assert.deepEqual(await res.json(), { seen: { method, url: `${path}${query}`, body: body ?? '' } });
      // Backend-internal response headers stay inside.
      for (const h of ['x-internal-node', 'set-cookie', 'x-trace-debug', 'access-control-allow-origin']) assert.equal(res.headers.get(h), null, h);
    }
    assert.equal(gw.proxied(), ALLOWED.length);
  } finally {
    await gw.close();
  }
});

test('identity, worker, capability, forwarding, cookie and hop-by-hop headers are stripped; a fresh X-Request-Id is added', async () => {
  const gw = await startTestGateway();
  try {
    const tok = await token('alice');
    const hostile: Record<string, string> = {
      Authorization: `Bearer ${tok}`,
      'X-Trace-Worker-Token': 'stolen-worker-token',
      'X-Trace-Task-Capability': 'stolen-capability',
      'X-Trace-Org-Id': 'org-evil',
      'X-Trace-User': 'root',
      'X-Forwarded-For': '10.0.0.1',
      'X-Forwarded-User': 'admin',
      'X-Forwarded-Email': 'admin@example.com',
      'X-Forwarded-Host': 'internal.example',
      'X-Forwarded-Proto': 'https',
      Forwarded: 'for=10.0.0.1;by=admin',
      'X-Real-IP': '10.0.0.1',
      'X-User-Id': 'admin',
      'X-Org-Id': 'org-evil',
      'X-Auth-Request-User': 'admin',
      'X-Remote-User': 'admin',
      'X-Amzn-Oidc-Identity': 'admin',
      'X-Request-Id': 'client-chosen\\nforged-log-line',
      Cookie: 'session=abc',
      'Proxy-Authorization': 'Basic Zm9vOmJhcg==',
      'Keep-Alive': 'timeout=999',
      TE: 'trailers',
      Upgrade: 'websocket',
      'Content-Type': 'application/json',
      Accept: 'application/json',
      'Idempotency-Key': 'k-1',
    };
    const res = await rawRequest(gw.port, 'POST', '/v1/alerts', hostile, '{"name":"a"}');
    assert.equal(res.status, 200);
    const got = gw.dispatcher.received[0]!;
    const names = Object.keys(got.headers).sort();
    assert.deepEqual(names, ['accept', 'authorization', 'connection', 'content-length', 'content-type', 'host', 'idempotency-key', 'x-request-id']);
    assert.equal(got.headers.connection, 'keep-alive');
    assert.equal(got.headers.authorization, `Bearer ${tok}`);
    assert.notEqual(got.headers.host, 'gateway.test');
    assert.match(String(got.headers['x-request-id']), UUID_RE);
    assert.equal(got.body, '{"name":"a"}');
    assert.equal(res.headers['x-request-id'], got.headers['x-request-id']);
    assert.equal(res.headers['set-cookie'], undefined);
    assert.equal(res.headers['x-internal-node'], undefined);
  } finally {
    await gw.close();
  }
});

/** Targets that must never reach a backend. Each is sent raw, with a valid token. */
const BYPASSES: Array<[method: string, target: string]> = [
  ['POST', '/internal/task-claim'],
  ['GET', '/internal/task-fetch?task_id=7d1c6c2e-8d7b-4b8e-9a57-1f0e5b0e8c22'],
  ['GET', '/internal/jwks/task'],
  ['POST', '/v1/task/complete'],
  ['POST', '/v1/task/heartbeat'],
  ['POST', '/v1/task/events'],
  ['POST', '/v1/task/buffer-publish'],
  ['POST', '/v1/task/credentials'],
  ['POST', '/v1/task/query'],
  ['GET', '/v1/task/complete'],
  ['PUT', '/v1/task/complete'],
  ['DELETE', '/v1/task/complete'],
  ['OPTIONS', '/v1/task/complete'],
  ['PATCH', '/v1/alerts'],
  ['POST', '/internal/dataset-events'],
  ['DELETE', '/v1/chain-sync/monad_mainnet'],
  ['POST', '/v1/chain-sync/monad_mainnet/delete'],
  ['GET', '/v1/sink/dead-letters'],
  ['GET', '/v1/udf/bundles/bundle-1'],
  ['HEAD', '/v1/datasets'],
  // case
  ['POST', '/V1/task/complete'],
  ['POST', '/v1/TASK/complete'],
  ['POST', '/v1/Task/Complete'],
  ['POST', '/INTERNAL/task-claim'],
  ['POST', '/Internal/Task-Claim'],
  // slashes
  ['POST', '/v1//task/complete'],
  ['POST', '//v1/task/complete'],
  ['POST', '/v1/task//complete'],
  ['POST', '//internal/task-claim'],
  ['POST', '///internal/task-claim'],
  ['POST', '/v1/task/complete/'],
  ['GET', '/v1/datasets/'],
  ['GET', '/v1/datasets//'],
  ['GET', '/'],
  // dot segments
  ['POST', '/v1/./task/complete'],
  ['POST', '/v1/datasets/../task/complete'],
  ['POST', '/v1/datasets/x/../../internal/task-claim'],
  ['POST', '/v1/task/complete/.'],
  ['POST', '/v1/task/complete/..'],
  ['POST', '/v1/tasks/../task/complete'],
  ['GET', '/v1/datasets/..'],
  ['GET', '/v1/datasets/.'],
  ['POST', '/v1/task/complete.'],
  ['POST', '/v1/datasets/..;/internal/task-claim'],
  // percent-encoding
  ['POST', '/v1/%74ask/complete'],
  ['POST', '/v1/ta%73k/complete'],
  ['POST', '/%69nternal/task-claim'],
  ['POST', '/v1/task%2Fcomplete'],
  ['POST', '/v1/task%2fcomplete'],
  ['POST', '/v1%2Ftask%2Fcomplete'],
  ['POST', '/v1/datasets/%2e%2e/task/complete'],
  ['POST', '/v1/datasets/%2E%2E/%2E%2E/internal/task-claim'],
  ['POST', '/v1/datasets/.%2e/internal/task-claim'],
  ['POST', '/v1/datasets/%2e/../internal/task-claim'],
  ['POST', '/v1/datasets/..%2F..%2Finternal%2Ftask-claim'],
  ['POST', '/v1/datasets/%252e%252e/%252e%252e/internal/task-claim'],
  ['POST', '/v1/task%252Fcomplete'],
  ['POST', '/v1/%5Ctask/complete'],
  ['POST', '/v1/datasets/%5C..%5C..%5Cinternal%5Ctask-claim'],
  ['POST', '/v1/task/complete%00'],
  ['POST', '/v1/task/complete%20'],
  ['POST', '/v1/task/complete%09'],
  ['POST', '/v1/%C0%AE%C0%AE/internal/task-claim'],
  ['POST', '/v1/datasets/%EF%BC%8E%EF%BC%8E/internal/task-claim'],
  ['POST', '/v1/datasets/%u002e%u002e/internal/task-claim'],
  ['POST', '/v1/%E0%A4%A/task/complete'],
  ['POST', '/v1/%zz/task/complete'],
  ['POST', '/v1/task/complete%'],
  // backslashes, path parameters, fragments, odd forms
  ['POST', '/v1\\task\\complete'],
  ['POST', '/v1/datasets\\..\\..\\internal\\task-claim'],
  ['POST', '/v1/task/complete;jsessionid=1'],
  ['POST', '/v1/task;/complete'],
  ['GET', '/v1/datasets#/../../internal/task-claim'],
  ['GET', '/v1/datasets?x=1#frag'],
  ['POST', 'http://127.0.0.1/internal/task-claim'],
  ['POST', 'http://127.0.0.1/v1/task/complete'],
  ['OPTIONS', '*'],
  ['POST', '/internal/task-claim?next=/v1/datasets'],
  ['POST', '/v1/task/complete?/v1/datasets'],
  // overlong
  ['GET', `/v1/${'a'.repeat(5000)}`],
  ['GET', `/v1/datasets/${'a'.repeat(300)}`],
  ['GET', `/v1/datasets?${'q'.repeat(5000)}`],
  ['POST', `/v1/${'../'.repeat(1200)}internal/task-claim`],
];

test('404 (or 400/414) for /internal/*, /v1/task/* and every bypass spelling, 405 for a wrong method on an allowlisted path; nothing is proxied', async () => {
  const gw = await startTestGateway();
  try {
    const tok = await token('alice');
    for (const [method, target] of BYPASSES) {
      const res = await rawRequest(gw.port, method, target, { Authorization: `Bearer ${tok}`, 'Content-Type': 'application/json' }, method === 'GET' || method === 'HEAD' || method === 'OPTIONS' ? undefined : '{"task_id":"x","attempt":1,"lease_token":"y"}');
      const label = `${method} ${target.slice(0, 80)}`;
      assert.ok([400, 404, 405, 414].includes(res.status), `${label} -> ${res.status}`);
      if (res.status === 405) {
        // Only allowlisted paths reveal their methods; internal and task routes never do.
        assert.ok(!/internal|\/v1\/task/i.test(target), `${label} must be 404, not 405`);
        assert.ok(res.headers.allow, `${label}: 405 names the allowed methods`);
      }
      if (method !== 'HEAD') {
        const body = res.json();
        assert.equal(typeof body.error, 'string', label);
        assert.ok(['NOT_FOUND', 'NON_CANONICAL_PATH', 'URI_TOO_LONG', 'METHOD_NOT_ALLOWED'].includes(String(body.code)), `${label} -> ${String(body.code)}`);
      }
      assert.equal(gw.proxied(), 0, `${label} reached a backend`);
    }
    const plain = await rawRequest(gw.port, 'POST', '/internal/task-claim', { Authorization: `Bearer ${tok}` }, '{}');
    assert.equal(plain.status, 404);
    assert.deepEqual(plain.json(), { error: 'no such route', code: 'NOT_FOUND' });
    assert.match(plain.headers['x-request-id'] ?? '', UUID_RE);
    const task = await fetch(`${gw.url}/v1/task/complete`, { method: 'POST', headers: { authorization: `Bearer ${tok}`, 'x-trace-task-capability': 'x' }, body: '{}' });
    assert.equal(task.status, 404);
    assert.deepEqual(await task.json(), { error: 'no such route', code: 'NOT_FOUND' });
    // Without a token the answer is the same 404: the route check comes first.
    const anon = await rawRequest(gw.port, 'POST', '/v1/task/complete', {}, '{}');
    assert.equal(anon.status, 404);
    assert.equal(gw.proxied(), 0);
  } finally {
    await gw.close();
  }
});

test('equivalent spellings of an allowed path are forwarded in one canonical form', async () => {
  const gw = await startTestGateway();
  try {
    const auth = { Authorization: `Bearer ${await token('alice')}` };
    assert.equal((await rawRequest(gw.port, 'GET', '/v1/d%61tasets?x=%2e%2e', auth)).status, 200);
    assert.equal(gw.dispatcher.received.at(-1)!.url, '/v1/datasets?x=%2e%2e');
    assert.equal((await rawRequest(gw.port, 'GET', '/v1/alerts/abc%3Adef', auth)).status, 200);
    assert.equal(gw.dispatcher.received.at(-1)!.url, '/v1/alerts/abc%3Adef');
    assert.equal((await rawRequest(gw.port, 'GET', '/v1/alerts/abc:def/deliveries', auth)).status, 200);
    assert.equal(gw.dispatcher.received.at(-1)!.url, '/v1/alerts/abc%3Adef/deliveries');
  } finally {
    await gw.close();
  }
});

test('401 without a token or with a bad one, and nothing is proxied', async () => {
  const gw = await startTestGateway();
  try {
    const now = Math.floor(Date.now() / 1000);
    const key = new TextEncoder().encode(USER_SECRET);
    const sign = (payload: Record<string, unknown>, header: Record<string, unknown> = {}) =>
      new SignJWT(payload).setProtectedHeader({ alg: 'HS256', kid: 'trace-dev-user', typ: 'JWT', ...header }).sign(key);
    const base = { iss: 'trace-dev', aud: 'trace.user', sub: 'alice', iat: now, exp: now + 600 };
    const good = await sign(base);
    const cases: Array<[string, string | undefined]> = [
      ['no header', undefined],
      ['empty', ''],
      ['basic', 'Basic YWxpY2U6c2VjcmV0'],
      ['not a jwt', 'Bearer not-a-jwt'],
      ['wrong secret', `Bearer ${await new SignJWT(base).setProtectedHeader({ alg: 'HS256', kid: 'trace-dev-user' }).sign(new TextEncoder().encode('another-secret-another-secret-0123456789'))}`],
      ['expired', `Bearer ${await sign({ ...base, iat: now - 7200, exp: now - 3600 })}`],
      ['wrong audience', `Bearer ${await sign({ ...base, aud: 'someone.else' })}`],
      ['task capability shape', `Bearer ${await sign({ ...base, aud: 'trace.task', sub: 'task:abc' })}`],
      ['tampered', `Bearer ${good.slice(0, -2)}${good.endsWith('A') ? 'BB' : 'AA'}`],
      ['alg none', `Bearer ${Buffer.from('{"alg":"none","kid":"trace-dev-user"}').toString('base64url')}.${Buffer.from(JSON.stringify(base)).toString('base64url')}.`],
    ];
    for (const [label, authz] of cases) {
      for (const [method, path] of [['GET', '/v1/datasets'], ['POST', '/v1/query']] as const) {
        const res = await fetch(`${gw.url}${path}`, {
          method,
          headers: { ...(authz !== undefined ? { authorization: authz } : {}), ...(method === 'POST' ? { 'content-type': 'application/json' } : {}) },
          ...(method === 'POST' ? { body: '{"dataset":"x","sql":"select 1"}' } : {}),
        });
        assert.equal(res.status, 401, `${label} ${path}`);
        const body = (await res.json()) as Record<string, unknown>;
        assert.equal(body.code, 'UNAUTHORIZED', label);
        assert.equal(typeof body.error, 'string');
        if (authz) assert.ok(!String(body.error).includes(authz.slice(7, 40)), 'the token is not echoed');
        assert.match(res.headers.get('x-request-id') ?? '', UUID_RE);
      }
    }
    assert.equal(gw.proxied(), 0);
    const ok = await fetch(`${gw.url}/v1/datasets`, { headers: { authorization: `Bearer ${good}` } });
    assert.equal(ok.status, 200);
    assert.equal(gw.proxied(), 1);
  } finally {
    await gw.close();
  }
});

test('body cap: at the cap is forwarded, over it is 413 with nothing proxied (declared and chunked)', async () => {
  const gw = await startTestGateway({ limits: { maxBodyBytes: 1024 } });
  try {
    const auth = { Authorization: `Bearer ${await token('alice')}`, 'Content-Type': 'application/json' };
    const exact = 'x'.repeat(1024);
    const ok = await rawRequest(gw.port, 'POST', '/v1/alerts', auth, exact);
    assert.equal(ok.status, 200);
    assert.equal(gw.dispatcher.received.at(-1)!.body, exact);

    // Declared too large: refused from the headers alone, before any body byte is read.
    const declared = await rawRequest(gw.port, 'POST', '/v1/alerts', { ...auth, 'Content-Length': '1025' });
    assert.equal(declared.status, 413);
    assert.deepEqual(declared.json(), { error: 'request body is larger than 1024 bytes', code: 'PAYLOAD_TOO_LARGE' });
    const huge = await rawRequest(gw.port, 'PUT', '/v1/dags/d/active', { ...auth, 'Content-Length': String(50 * 1024 * 1024) });
    assert.equal(huge.status, 413);

    // Chunked: read up to the cap, then refused; the backend sees nothing.
    const chunk = (s: string) => `${Buffer.byteLength(s).toString(16)}\r\n${s}\r\n`;
    const small = await rawRequest(gw.port, 'POST', '/v1/query', { ...auth, 'Transfer-Encoding': 'chunked' }, `${chunk('{"a":')}${chunk('"b"}')}0\r\n\r\n`);
    assert.equal(small.status, 200);
    assert.equal(gw.query.received.at(-1)!.body, '{"a":"b"}');
    assert.equal(gw.query.received.at(-1)!.headers['content-length'], '9');
    const before = gw.proxied();
    const big = await rawRequest(gw.port, 'POST', '/v1/query', { ...auth, 'Transfer-Encoding': 'chunked' }, `${chunk('y'.repeat(1000))}${chunk('y'.repeat(100))}0\r\n\r\n`);
    assert.equal(big.status, 413);
    assert.equal(big.json().code, 'PAYLOAD_TOO_LARGE');
    assert.equal(gw.proxied(), before);
  } finally {
    await gw.close();
  }
});

test('the default cap is 1 MiB; a body under it streams through byte for byte', async () => {
  const gw = await startTestGateway();
  try {
    const tok = await token('alice');
    const body = randomBytes(700 * 1024).toString('base64').slice(0, 900 * 1024);
    const res = await fetch(`${gw.url}/v1/dags/my_dag/versions`, { method: 'POST', headers: { authorization: `Bearer ${tok}`, 'content-type': 'application/yaml' }, body });
    assert.equal(res.status, 200);
    await res.arrayBuffer();
    const got = gw.dispatcher.received.at(-1)!;
    assert.equal(createHash('sha256').update(got.body).digest('hex'), createHash('sha256').update(body).digest('hex'));
    assert.equal(got.headers['content-type'], 'application/yaml');
    const over = await rawRequest(gw.port, 'POST', '/v1/dags/my_dag/versions', { Authorization: `Bearer ${tok}`, 'Content-Length': String(1024 * 1024 + 1) });
    assert.equal(over.status, 413);
    assert.equal(gw.proxied(), 1);
  } finally {
    await gw.close();
  }
});

test('backend status, body and content type pass through; streamed responses arrive whole', async () => {
  const dispatcher = await fakeBackend('dispatcher', (r, res) => {
    if (r.url.startsWith('/v1/dags/')) {
      res.writeHead(422, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ error: 'DAG is invalid', code: 'VALIDATION_FAILED', problems: [{ path: 'jobs[0].name', message: 'bad' }] }));
      return;
    }
    if (r.url === '/v1/alerts') {
      res.writeHead(201, { 'content-type': 'application/json', location: '/v1/alerts/a1', 'retry-after': '3' });
      res.end('{"id":"a1"}');
      return;
    }
    res.writeHead(200, { 'content-type': 'application/x-ndjson' });
    let i = 0;
    const tick = () => {
      if (i === 5) return res.end();
      res.write(`{"row":${i++}}\n`);
      setTimeout(tick, 20);
    };
    tick();
  });
  const gw = await startTestGateway({ dispatcher });
  try {
    const auth = { authorization: `Bearer ${await token('alice')}` };
    const bad = await fetch(`${gw.url}/v1/dags/d/versions`, { method: 'POST', headers: auth, body: 'name: d' });
    assert.equal(bad.status, 422);
    assert.deepEqual(await bad.json(), { error: 'DAG is invalid', code: 'VALIDATION_FAILED', problems: [{ path: 'jobs[0].name', message: 'bad' }] });
    const created = await fetch(`${gw.url}/v1/alerts`, { method: 'POST', headers: { ...auth, 'content-type': 'application/json' }, body: '{}' });
    assert.equal(created.status, 201);
    assert.equal(created.headers.get('location'), '/v1/alerts/a1');
    assert.equal(await created.text(), '{"id":"a1"}');
    const streamed = await fetch(`${gw.url}/v1/tasks`, { headers: auth });
    assert.equal(streamed.headers.get('content-type'), 'application/x-ndjson');
    assert.equal(await streamed.text(), [0, 1, 2, 3, 4].map((i) => `{"row":${i}}\n`).join(''));
  } finally {
    await gw.close();
  }
});

test('backend down is 502, backend slow is 504, backend hanging up is 502', async () => {
  const slowQuery = await fakeBackend('query', () => undefined); // never answers
  const hangUp = await fakeBackend('dispatcher', (_r, res) => res.socket?.destroy());
  const down = await startTestGateway({ dispatcherUrl: await closedUrl(), query: slowQuery, limits: { queryTimeoutMs: 300 } });
  const rude = await startTestGateway({ dispatcher: hangUp });
  try {
    const auth = { authorization: `Bearer ${await token('alice')}` };
    const r502 = await fetch(`${down.url}/v1/datasets`, { headers: auth });
    assert.equal(r502.status, 502);
    assert.deepEqual(await r502.json(), { error: 'the dispatcher service is unavailable', code: 'UPSTREAM_UNAVAILABLE' });
    const t0 = Date.now();
    const r504 = await fetch(`${down.url}/v1/query`, { method: 'POST', headers: { ...auth, 'content-type': 'application/json' }, body: '{"dataset":"x","sql":"select 1"}' });
    assert.equal(r504.status, 504);
    assert.deepEqual(await r504.json(), { error: 'the query service did not answer in time', code: 'UPSTREAM_TIMEOUT' });
    assert.ok(Date.now() - t0 < 5_000, 'the timeout applies');
    assert.equal(slowQuery.received.length, 1);
    const rHang = await fetch(`${rude.url}/v1/datasets`, { headers: auth });
    assert.equal(rHang.status, 502);
    assert.equal(((await rHang.json()) as Record<string, unknown>).code, 'UPSTREAM_UNAVAILABLE');
  } finally {
    await down.close();
    await rude.close();
  }
});

test('Expect: 100-continue: 100 is sent only once the request passed every check, so refused clients never upload', async () => {
  const gw = await startTestGateway({ limits: { maxBodyBytes: 1024 } });
  /** Sends headers only, then (if 100 arrives) the body; returns every status line seen. */
  const send = (target: string, headers: Record<string, string>, body: string) =>
    new Promise<string[]>((resolve, reject) => {
      const s = connect(gw.port, '127.0.0.1');
      let text = '';
      let sentBody = false;
      s.on('connect', () => {
        s.write(`POST ${target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nExpect: 100-continue\r\n${Object.entries(headers).map(([k, v]) => `${k}: ${v}\r\n`).join('')}\r\n`);
      });
      s.on('data', (c: Buffer) => {
        text += c.toString('latin1');
        if (!sentBody && text.startsWith('HTTP/1.1 100')) {
          sentBody = true;
          s.write(body);
        }
      });
      s.on('error', reject);
      s.on('close', () => resolve(text.split('\r\n').filter((l) => l.startsWith('HTTP/1.1 '))));
    });
  try {
    const tok = await token('alice');
    const okBody = '{"ok":true}';
    const ok = await send('/v1/alerts', { Authorization: `Bearer ${tok}`, 'Content-Type': 'application/json', 'Content-Length': String(okBody.length) }, okBody);
    assert.deepEqual(ok, ['HTTP/1.1 100 Continue', 'HTTP/1.1 200 OK']);
    assert.equal(gw.dispatcher.received.at(-1)!.body, okBody);
    const big = await send('/v1/alerts', { Authorization: `Bearer ${tok}`, 'Content-Length': '5000' }, 'x'.repeat(5000));
    assert.deepEqual(big, ['HTTP/1.1 413 Payload Too Large']);
    const anon = await send('/v1/alerts', { 'Content-Length': '2' }, '{}');
    assert.deepEqual(anon, ['HTTP/1.1 401 Unauthorized']);
    const internal = await send('/internal/task-claim', { Authorization: `Bearer ${tok}`, 'Content-Length': '2' }, '{}');
    assert.deepEqual(internal, ['HTTP/1.1 404 Not Found']);
    assert.equal(gw.proxied(), 1);
  } finally {
    await gw.close();
  }
});

test('a client that goes away stops the backend call', async () => {
  let closedEarly: () => void = () => undefined;
  const closed = new Promise<void>((resolve) => (closedEarly = resolve));
  const stuck = await fakeBackend('query', (_r, res) => {
    res.on('close', () => {
      if (!res.writableFinished) closedEarly();
    });
  });
  const gw = await startTestGateway({ query: stuck, limits: { queryTimeoutMs: 60_000 } });
  try {
    const ac = new AbortController();
    const pending = fetch(`${gw.url}/v1/query`, { method: 'POST', headers: { authorization: `Bearer ${await token('alice')}`, 'content-type': 'application/json' }, body: '{}', signal: ac.signal });
    while (stuck.received.length === 0) await new Promise((r) => setTimeout(r, 10));
    ac.abort();
    await assert.rejects(pending);
    await closed; // the upstream connection was closed long before the 60 s timeout
  } finally {
    await gw.close();
  }
});

test('webhook deliveries pass without a user token, with their signature headers, and nothing else of the sender\'s', async () => {
  const gw = await startTestGateway();
  try {
    const body = '{"event":"x"}';
    const res = await rawRequest(gw.port, 'POST', '/v1/webhooks/hooks/my_feed', {
      'Content-Type': 'application/json',
      'X-Trace-Webhook-Id': 'evt_1',
      'X-Trace-Webhook-Timestamp': '1700000000',
      'X-Trace-Webhook-Signature': 'v1=abc',
      Authorization: 'Basic c2VuZGVyOnNlY3JldA==',
      'X-Trace-Worker-Token': 'stolen-worker-token',
      'X-Forwarded-For': '10.0.0.1',
    }, body);
    assert.equal(res.status, 200);
    const got = gw.dispatcher.received.at(-1)!;
    assert.equal(got.url, '/v1/webhooks/hooks/my_feed');
    assert.equal(got.body, body);
    assert.equal(got.headers['x-trace-webhook-id'], 'evt_1');
    assert.equal(got.headers['x-trace-webhook-timestamp'], '1700000000');
    assert.equal(got.headers['x-trace-webhook-signature'], 'v1=abc');
    for (const h of ['authorization', 'x-trace-worker-token', 'x-forwarded-for']) assert.equal(got.headers[h], undefined, h);
    // Only POST, only canonical paths; the webhook headers cross on webhook routes only.
    assert.equal((await rawRequest(gw.port, 'GET', '/v1/webhooks/hooks/my_feed', {}, '')).status, 405);
    assert.equal((await rawRequest(gw.port, 'POST', '/v1/webhooks', {}, '')).status, 404);
    assert.equal((await rawRequest(gw.port, 'POST', '/v1/webhooks/hooks/%2e%2e/x', {}, '')).status, 400);
    const tok = await token('alice');
    await rawRequest(gw.port, 'POST', '/v1/alerts', { Authorization: `Bearer ${tok}`, 'Content-Type': 'application/json', 'X-Trace-Webhook-Id': 'evt_2' }, '{}');
    assert.equal(gw.dispatcher.received.at(-1)!.headers['x-trace-webhook-id'], undefined);
  } finally {
    await gw.close();
  }
});
