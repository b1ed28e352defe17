import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runGatewayProcess, startGateway, gatewaySettingsFromEnv } from '../../src/gateway/main.js';
import { createUserVerifier, mintDevUserToken } from '../../src/auth/user.js';
import { silentLogger } from '../../src/core/log.js';
import { startLite } from '../../src/lite/lite.js';
import { USER_SECRET, fakeBackend, token } from './support.js';

test('runGatewayProcess: backends and limits from the environment; user token settings are required', async () => {
  await assert.rejects(runGatewayProcess({}, { port: 0, log: silentLogger }), /TRACE_USER_JWT_SECRET/);
  const base = { TRACE_USER_JWT_SECRET: USER_SECRET };
  await assert.rejects(runGatewayProcess({ ...base, TRACE_GATEWAY_CORS_ORIGINS: '*' }, { port: 0, log: silentLogger }), /wildcards/);
  await assert.rejects(runGatewayProcess({ ...base, TRACE_GATEWAY_MAX_BODY_BYTES: '1mb' }, { port: 0, log: silentLogger }), /TRACE_GATEWAY_MAX_BODY_BYTES/);
  await assert.rejects(runGatewayProcess({ ...base, TRACE_OIDC_ISSUER: 'https://idp.example' }, { port: 0, log: silentLogger }), /TRACE_OIDC/);

  const dispatcher = await fakeBackend('dispatcher');
  const query = await fakeBackend('query');
  const gw = await runGatewayProcess(
    { ...base, TRACE_DISPATCHER_URL: dispatcher.url, TRACE_QUERY_URL: query.url, TRACE_GATEWAY_RATE_QUERY_PER_MINUTE: '1', TRACE_GATEWAY_CORS_ORIGINS: 'http://localhost:5173' },
    { port: 0, log: silentLogger },
  );
  try {
    assert.match(gw.url, /^http:\/\/127\.0\.0\.1:\d+$/);
    const auth = { authorization: `Bearer ${await token('alice')}`, 'content-type': 'application/json' };
    assert.equal((await fetch(`${gw.url}/v1/datasets`, { headers: auth })).status, 200);
    assert.equal((await fetch(`${gw.url}/v1/query`, { method: 'POST', headers: auth, body: '{}' })).status, 200);
    assert.equal((await fetch(`${gw.url}/v1/query`, { method: 'POST', headers: auth, body: '{}' })).status, 429);
    const pre = await fetch(`${gw.url}/v1/datasets`, { method: 'OPTIONS', headers: { origin: 'http://localhost:5173', 'access-control-request-method': 'GET' } });
    assert.equal(pre.status, 204);
    assert.equal(dispatcher.received.length, 1);
    assert.equal(query.received.length, 1);
  } finally {
    await gw.stop();
    await dispatcher.close();
    await query.close();
  }
});

test('gatewaySettingsFromEnv: defaults match operations.md', () => {
  const s = gatewaySettingsFromEnv({});
  assert.equal(s.limits.userPerMinute, 100);
  assert.equal(s.limits.orgPerMinute, 1000);
  assert.equal(s.limits.queryPerUserPerMinute, 10);
  assert.equal(s.limits.maxBodyBytes, 1024 * 1024);
  assert.deepEqual(s.corsOrigins, []);
  assert.throws(() => gatewaySettingsFromEnv({ TRACE_GATEWAY_RATE_USER_PER_MINUTE: '0' }), /TRACE_GATEWAY_RATE_USER_PER_MINUTE/);
});

test('in front of the real Dispatcher: user routes pass and are re-verified there; worker and task routes stay unreachable', async () => {
  const home = await mkdtemp(join(tmpdir(), 'trace-gw-'));
  const lite = await startLite({ home, workers: 0, ports: { dispatcher: 0, query: 0, gateway: 0, rpcGateway: 0 }, env: { TRACE_USER_JWT_SECRET: USER_SECRET }, log: silentLogger });
  const gw = await startGateway({
    dispatcherUrl: lite.info.dispatcher_url,
    queryUrl: 'http://127.0.0.1:9',
    userVerifier: createUserVerifier({ mode: 'dev', secret: USER_SECRET }),
    port: 0,
    log: silentLogger,
  });
  try {
    const admin = { authorization: `Bearer ${lite.info.admin_token}` };
    const datasets = await fetch(`${gw.url}/v1/datasets`, { headers: admin });
    assert.equal(datasets.status, 200);
    assert.ok(Array.isArray(((await datasets.json()) as { datasets: unknown[] }).datasets));
    const tasks = await fetch(`${gw.url}/v1/tasks?limit=5`, { headers: admin });
    assert.equal(tasks.status, 200);

    // A real validation error comes back whole, in the backend's own shape.
    const bad = await fetch(`${gw.url}/v1/dags/hello/versions`, { method: 'POST', headers: { ...admin, 'content-type': 'application/yaml' }, body: 'name: hello\njobs: []\nbogus_field: 1\n' });
    assert.ok(bad.status === 400 || bad.status === 422, String(bad.status));
    const badBody = (await bad.json()) as Record<string, unknown>;
    assert.equal(typeof badBody.code, 'string');

    // The worker route exists on the Dispatcher (a wrong worker token is a 401 there), but not through the Gateway.
    const direct = await fetch(`${lite.info.dispatcher_url}/internal/task-claim`, { method: 'POST', headers: { 'x-trace-worker-token': 'wrong', 'content-type': 'application/json' }, body: '{}' });
    assert.notEqual(direct.status, 404);
    for (const path of ['/internal/task-claim', '/v1/task/complete', '/v1/task/heartbeat']) {
      const viaGw = await fetch(`${gw.url}${path}`, { method: 'POST', headers: { ...admin, 'x-trace-worker-token': lite.info.worker_token, 'content-type': 'application/json' }, body: '{}' });
      assert.equal(viaGw.status, 404, path);
    }

    // Forwarded identity headers carry no weight: a non-member is refused by the Dispatcher
    // even when claiming to be the admin.
    const mallory = await mintDevUserToken(USER_SECRET, 'mallory');
    const spoof = await fetch(`${gw.url}/v1/tasks`, { headers: { authorization: `Bearer ${mallory}`, 'x-forwarded-user': 'admin', 'x-user-id': 'admin', 'x-trace-user': 'admin' } });
    assert.ok(spoof.status === 401 || spoof.status === 403, String(spoof.status));

    // The query service is not running: 502 in the stable shape.
    const q = await fetch(`${gw.url}/v1/query`, { method: 'POST', headers: { ...admin, 'content-type': 'application/json' }, body: '{}' });
    assert.equal(q.status, 502);
    assert.equal(((await q.json()) as Record<string, unknown>).code, 'UPSTREAM_UNAVAILABLE');
  } finally {
    await gw.stop();
    await lite.stop();
    await rm(home, { recursive: true, force: true });
  }
});
