/**
 * The HTTP error contract every service shares: a wrong method on a known path is 405 with an
 * `Allow` header, a body of a content type the route does not take is 415, both in the stable
 * `{error, code}` shape and without touching state; an unknown path stays 404.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { BACKENDS } from '../support/db.js';
import { startPlatform, type TestPlatform } from '../support/platform.js';
import { startRpcGateway } from '../../src/rpc-gateway/gateway.js';

async function call(url: string, method: string, headers: Record<string, string> = {}, body?: string) {
  const res = await fetch(url, { method, headers, ...(body !== undefined ? { body } : {}) });
  const text = await res.text();
  let parsed: any = text;
  try { parsed = JSON.parse(text); } catch { /* not JSON */ }
  return { status: res.status, allow: res.headers.get('allow'), body: parsed };
}

function stable(r: { body: any }, code: string): void {
  assert.equal(typeof r.body.error, 'string', JSON.stringify(r.body));
  assert.equal(r.body.code, code, JSON.stringify(r.body));
}

const backend = BACKENDS.includes('postgres') ? 'postgres' : 'pglite';

describe(`HTTP method and content-type refusals (${backend})`, () => {
  let p: TestPlatform;
  let auth: Record<string, string>;
  before(async () => {
    p = await startPlatform(backend, { workers: 0 });
    auth = { authorization: `Bearer ${p.admin}` };
  });
  after(async () => { await p?.close(); });

  it('Dispatcher: 405 with Allow for a known path, 404 for an unknown one', async () => {
    const r = await call(`${p.url}/v1/tasks`, 'DELETE', auth);
    assert.equal(r.status, 405);
    stable(r, 'METHOD_NOT_ALLOWED');
    assert.deepEqual(r.allow!.split(', ').sort(), ['GET', 'HEAD']);
    const alert = await call(`${p.url}/v1/alerts/00000000-0000-4000-8000-000000000000`, 'POST', auth);
    assert.equal(alert.status, 405);
    assert.deepEqual(alert.allow!.split(', ').sort(), ['DELETE', 'GET', 'HEAD', 'PUT']);
    const trigger = await call(`${p.url}/v1/dags/d/jobs/j/trigger`, 'GET', auth);
    assert.equal(trigger.status, 405);
    assert.equal(trigger.allow, 'POST');
    const unknown = await call(`${p.url}/v1/nothing/here`, 'GET', auth);
    assert.equal(unknown.status, 404);
    stable(unknown, 'NOT_FOUND');
  });

  it('Query Service and Gateway answer 405 the same way; the Gateway still hides internal routes', async () => {
    const q = await call(`${p.info.query_url}/v1/query`, 'GET', auth);
    assert.equal(q.status, 405);
    stable(q, 'METHOD_NOT_ALLOWED');
    assert.equal(q.allow, 'POST');
    const g = await call(`${p.info.gateway_url}/v1/query`, 'GET', auth);
    assert.equal(g.status, 405);
    stable(g, 'METHOD_NOT_ALLOWED');
    assert.equal(g.allow, 'POST');
    const alerts = await call(`${p.info.gateway_url}/v1/alerts`, 'DELETE', auth);
    assert.equal(alerts.status, 405);
    assert.equal(alerts.allow, 'GET, POST');
    for (const path of ['/internal/task-claim', '/v1/task/heartbeat']) {
      const hidden = await call(`${p.info.gateway_url}${path}`, 'GET', auth);
      assert.equal(hidden.status, 404, `${path} is never revealed by a 405`);
    }
  });

  it('RPC gateway: 405 for GET on the JSON-RPC route, 415 for a non-JSON body', async () => {
    const gw = await startRpcGateway({ port: 0, pools: { dev: ['http://127.0.0.1:9'] } });
    try {
      const r = await call(`${gw.url}/rpc/dev`, 'GET');
      assert.equal(r.status, 405);
      stable(r, 'METHOD_NOT_ALLOWED');
      assert.equal(r.allow, 'POST');
      const t = await call(`${gw.url}/rpc/dev`, 'POST', { 'content-type': 'text/plain' }, '{"jsonrpc":"2.0","id":1,"method":"eth_chainId"}');
      assert.equal(t.status, 415);
      stable(t, 'UNSUPPORTED_MEDIA_TYPE');
    } finally {
      await gw.close();
    }
  });

  it('415 for a body the route does not take, and nothing is created', async () => {
    const before = (await p.api('GET', '/v1/alerts')).body.alerts.length;
    const body = JSON.stringify({ name: 'x', channels: [{ type: 'webhook', url: 'https://hooks.example.com/x' }] });
    for (const type of ['text/plain', 'application/yaml', 'application/xml', 'application/x-www-form-urlencoded']) {
      const r = await call(`${p.url}/v1/alerts`, 'POST', { ...auth, 'content-type': type }, body);
      assert.equal(r.status, 415, `${type}: ${JSON.stringify(r.body)}`);
      stable(r, 'UNSUPPORTED_MEDIA_TYPE');
      assert.match(r.body.error, /application\/json/);
    }
    const viaGateway = await call(`${p.info.gateway_url}/v1/alerts`, 'POST', { ...auth, 'content-type': 'text/plain' }, body);
    assert.equal(viaGateway.status, 415);
    assert.equal((await p.api('GET', '/v1/alerts')).body.alerts.length, before, 'no alert definition was created');
    const ok = await call(`${p.url}/v1/alerts`, 'POST', { ...auth, 'content-type': 'application/json; charset=utf-8' }, body);
    assert.equal(ok.status, 201, 'JSON is accepted');

    // YAML routes take YAML and JSON, and refuse the rest.
    const dag = 'name: shape\njobs:\n  - name: src\n    activation: source\n    runtime: dispatcher\n    operator: noop\n    source: { kind: manual }\n    outputs: 1\n';
    const xml = await call(`${p.url}/v1/dags/shape/versions`, 'POST', { ...auth, 'content-type': 'application/xml' }, dag);
    assert.equal(xml.status, 415);
    assert.deepEqual((await p.api('GET', '/v1/dags/shape/versions')).body.versions ?? [], [], 'no version was deployed');
    assert.equal((await call(`${p.url}/v1/dags/shape/versions`, 'POST', { ...auth, 'content-type': 'application/yaml' }, dag)).status, 201);
    assert.equal((await call(`${p.url}/v1/dags/shape/versions`, 'POST', { ...auth, 'content-type': 'application/json' }, JSON.stringify({ yaml: dag }))).status, 200);
  });
});
