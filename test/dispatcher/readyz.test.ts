/**
 * Readiness against liveness, and bounded requests, with real pools behind a TCP proxy the test
 * owns: `/readyz` of the Dispatcher and of the Query Service answers 503 naming the database
 * that is cut and 200 again once it is back, while `/healthz` stays alive-only; a request that
 * needs a frozen state database is answered 503 within its cap instead of hanging.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { BACKENDS, createPgDatabase } from '../support/db.js';
import { buildDispatcher, TEST_SECRETS } from '../support/dispatcher.js';
import { pgTarget, startTcpProxy } from '../support/tcp-proxy.js';
import { PostgresDb } from '../../src/db/postgres.js';
import { migrate } from '../../src/db/migrate.js';
import { pingDb } from '../../src/db/db.js';
import { startQueryService } from '../../src/lite/query.js';
import { createUserVerifier } from '../../src/auth/user.js';
import { createCapabilityIssuer } from '../../src/auth/capability.js';
import { silentLogger } from '../../src/core/log.js';

if (BACKENDS.includes('postgres')) {
  test('postgres: /readyz follows the databases through a cut, /healthz stays alive, requests stay within their cap', async () => {
    const s = await createPgDatabase('trace_rz');
    const d = await createPgDatabase('trace_rz');
    const ps = await startTcpProxy(pgTarget(s.url));
    const pd = await startTcpProxy(pgTarget(d.url));
    const timeouts = { connectTimeoutMs: 800, statementTimeoutMs: 1_500 };
    const state = new PostgresDb(ps.urlFor(s.url), { role: 'state', timeouts });
    const data = new PostgresDb(pd.urlFor(d.url), { role: 'data', timeouts });
    await migrate(state, 'state');
    await migrate(data, 'data');
    const disp = await buildDispatcher(state, { probes: { data_database: (ms) => pingDb(data, ms) } });
    const url = await disp.start();
    const issuer = await createCapabilityIssuer({ alg: 'HS256', current: { kid: 'test', secret: TEST_SECRETS.capability } });
    const qs = await startQueryService({
      state, data, orgId: disp.orgId, userVerifier: createUserVerifier({ mode: 'dev', secret: TEST_SECRETS.user }),
      capabilityVerifier: issuer.verifier(), dispatcherUrl: url, host: '127.0.0.1', port: 0, log: silentLogger,
    });
    const get = async (base: string, path: string, headers: Record<string, string> = {}) => {
      const r = await fetch(`${base}${path}`, { headers, signal: AbortSignal.timeout(10_000) });
      return { status: r.status, body: await r.json() as any };
    };
    try {
      for (const base of [url, qs.url]) {
        const ok = await get(base, '/readyz');
        assert.equal(ok.status, 200, JSON.stringify(ok.body));
        assert.equal(ok.body.checks.data_database, 'ok');
      }
      pd.cut();
      for (const base of [url, qs.url]) {
        const t0 = Date.now();
        const r = await get(base, '/readyz');
        assert.ok(Date.now() - t0 < 3_000, 'the readiness probe is short');
        assert.equal(r.status, 503);
        assert.equal(r.body.code, 'NOT_READY');
        assert.match(r.body.error, /data database unreachable/);
        assert.equal(r.body.checks.state_database, 'ok');
        assert.equal((await get(base, '/healthz')).status, 200, 'healthz is alive-only');
      }
      pd.restore();
      for (const base of [url, qs.url]) assert.equal((await get(base, '/readyz')).status, 200);

      // A frozen state database: the request is answered, 503 naming it, within its cap.
      ps.freeze();
      const t1 = Date.now();
      const r = await get(url, '/v1/tasks', { authorization: `Bearer ${disp.adminToken}` });
      const took = Date.now() - t1;
      assert.equal(r.status, 503, JSON.stringify(r.body));
      assert.equal(r.body.code, 'STATE_DATABASE_UNAVAILABLE');
      assert.match(r.body.error, /^the state database is unreachable/);
      assert.ok(took < 1_500 + 2_000 + 2_000, `answered after ${took} ms`);
      const rz = await get(url, '/readyz');
      assert.equal(rz.status, 503);
      assert.match(rz.body.error, /state database unreachable/);
      ps.restore();
      await get(url, '/readyz').then((x) => assert.equal(x.status, 200));
    } finally {
      await qs.stop();
      await disp.stop();
      await state.close();
      await data.close();
      await ps.close();
      await pd.close();
      await s.drop();
      await d.drop();
    }
  });
}
