/**
 * `GET /v1/openapi.json` on a running platform: an OpenAPI 3.1 document whose operations are
 * exactly the routes the Gateway forwards (its ROUTES table, and the requests it lets through),
 * each of which a backend really serves, with request schemas generated from the handlers' zod
 * schemas.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BACKENDS, createPgDatabase } from '../support/db.js';
import { startLite } from '../../src/lite/lite.js';
import { silentLogger } from '../../src/core/log.js';
import { ROUTES } from '../../src/gateway/routes.js';

if (BACKENDS.includes('postgres')) {
  test('postgres: the OpenAPI document lists every forwarded route and nothing else, each served by a backend', { timeout: 180_000 }, async () => {
    const home = await mkdtemp(join(tmpdir(), 'trace-openapi-'));
    const s = await createPgDatabase('trace_oapi_s');
    const d = await createPgDatabase('trace_oapi_d');
    const lite = await startLite({
      home, workers: 0, log: silentLogger, ports: { dispatcher: 0, query: 0, gateway: 0 },
      env: { TRACE_HOME: home, TRACE_STATE_DATABASE_URL: s.url, TRACE_DATA_DATABASE_URL: d.url },
    });
    try {
      const gw = lite.info.gateway_url;
      const r = await fetch(`${gw}/v1/openapi.json`);
      assert.equal(r.status, 200, 'served without a token');
      const doc = await r.json() as { openapi: string; paths: Record<string, Record<string, any>> };
      assert.equal(doc.openapi, '3.1.0');

      const documented = new Set(Object.entries(doc.paths).flatMap(([p, ops]) => Object.keys(ops).map((m) => `${m.toUpperCase()} ${p}`)));
      const registered = new Set(ROUTES.flatMap((rule) => rule.methods.map((m) => `${m} ${rule.pattern.replace('+}', '}')}`)));
      assert.deepEqual([...documented].sort(), [...registered].sort(), 'the document and the Gateway route table agree');

      // Every documented operation goes through the Gateway to a backend that has the route;
      // a path the document does not have is refused by the Gateway itself.
      const auth = { authorization: `Bearer ${lite.info.admin_token}` };
      for (const op of documented) {
        const [method, pattern] = op.split(' ') as [string, string];
        const path = pattern.replace(/\{[a-z]+\}/g, 'x1');
        const res = await fetch(`${gw}${path}`, {
          method, headers: { ...auth, ...(method === 'GET' || method === 'DELETE' ? {} : { 'content-type': 'application/json' }) },
          ...(method === 'GET' || method === 'DELETE' ? {} : { body: '{}' }),
        });
        const body = await res.json() as { error?: string; code?: string };
        assert.notEqual(res.status, 405, `${op}: ${JSON.stringify(body)}`);
        assert.ok(!(res.status === 404 && body.error === 'no such route'), `${op} is served: ${JSON.stringify(body)}`);
        assert.notEqual(res.status, 401, `${op}: the admin token is accepted`);
      }
      for (const [method, path] of [['GET', '/internal/jwks/task'], ['POST', '/v1/task/heartbeat'], ['GET', '/v1/nothing']] as const) {
        assert.equal(documented.has(`${method} ${path}`), false);
        assert.equal((await fetch(`${gw}${path}`, { method, headers: auth })).status, 404, path);
      }

      // Request schemas are the handlers' zod schemas, as JSON Schema.
      const query = doc.paths['/v1/query']!.post;
      const qs = query.requestBody.content['application/json'].schema;
      assert.deepEqual(Object.keys(qs.properties).sort(), ['dataset', 'datasets', 'limit', 'mode', 'sql', 'version', 'versions']);
      assert.deepEqual(qs.required, ['sql']);
      assert.equal(qs.properties.dataset.pattern, '^[a-z][a-z0-9_]{0,127}$');
      const deploy = doc.paths['/v1/dags/{dag}/versions']!.post;
      assert.ok(deploy.requestBody.content['application/yaml'], 'YAML bodies are documented');
      assert.deepEqual(deploy.parameters.map((p: { name: string; in: string }) => `${p.in}:${p.name}`), ['path:dag', 'query:activate']);
      const tasks = doc.paths['/v1/tasks']!.get;
      assert.deepEqual(tasks.parameters.map((p: { name: string }) => p.name).sort(), ['dag', 'job', 'limit', 'status']);
      assert.deepEqual(doc.paths['/v1/alerts']!.post.requestBody.content['application/json'].schema.additionalProperties, false);
    } finally {
      await lite.stop();
      await rm(home, { recursive: true, force: true });
      await s.drop();
      await d.drop();
    }
  });
}
