/**
 * Operations surface of every service, with real pools behind TCP proxies the test owns (the
 * shared Postgres is never stopped): each of the Dispatcher, Gateway, Query Service, RPC egress
 * gateway, worker, sink and Delivery Service answers `/healthz` (alive, names itself), `/readyz`
 * (200, then 503 naming the database that was cut while `/healthz` stays 200, then 200 again)
 * and `/metrics` (Prometheus text with the design's signals, gauges filled from the databases at
 * scrape time, and a scrape that stays bounded when the state database is frozen).
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
import { startGateway } from '../../src/gateway/main.js';
import { startRpcGateway } from '../../src/rpc-gateway/gateway.js';
import { runSinkProcess } from '../../src/sink/main.js';
import { runDeliveryProcess } from '../../src/delivery/service/main.js';
import { runWorkerProcess } from '../../src/worker/main.js';
import { createUserVerifier, mintDevUserToken } from '../../src/auth/user.js';
import { createCapabilityIssuer } from '../../src/auth/capability.js';
import { PgQueue } from '../../src/queue/pgqueue.js';
import { BUFFER_QUEUE } from '../../src/queue/queue.js';
import { parseListen, resolveListen } from '../../src/core/ops.js';
import { silentLogger } from '../../src/core/log.js';

const get = async (base: string, path: string, init: RequestInit = {}) => {
  const r = await fetch(`${base}${path}`, { ...init, signal: AbortSignal.timeout(15_000) });
  const text = await r.text();
  let body: any = text;
  try { body = JSON.parse(text); } catch { /* metrics are text */ }
  return { status: r.status, body, text, type: r.headers.get('content-type') ?? '' };
};

/** The value of the series `name` whose labels include `labels`, or undefined. */
function series(text: string, name: string, labels: Record<string, string> = {}): number | undefined {
  for (const line of text.split('\n')) {
    const m = /^([a-z_]+)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const have = Object.fromEntries([...(m[2] ?? '').matchAll(/([a-z_]+)="([^"]*)"/g)].map((x) => [x[1], x[2]]));
    if (Object.entries(labels).every(([k, v]) => have[k] === v)) return Number(m[3]);
  }
  return undefined;
}

async function until(what: string, fn: () => Promise<boolean>, ms = 30_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await fn())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

test('listen addresses: host:port, :port, port, [v6]:port, 0; flags over the variable; bad values name their source', () => {
  assert.deepEqual(parseListen('0.0.0.0:9000', 'x'), { host: '0.0.0.0', port: 9000 });
  assert.deepEqual(parseListen(':0', 'x'), { host: '127.0.0.1', port: 0 });
  assert.deepEqual(parseListen('0', 'x'), { host: '127.0.0.1', port: 0 });
  assert.deepEqual(parseListen('[::1]:81', 'x'), { host: '::1', port: 81 });
  assert.throws(() => parseListen('host:99999', 'TRACE_SINK_LISTEN'), /TRACE_SINK_LISTEN must be host:port/);
  assert.throws(() => parseListen('a b:1', '--listen'), /--listen must be/);
  const env = { TRACE_GATEWAY_LISTEN: '10.0.0.1:7000' };
  assert.deepEqual(resolveListen('gateway', env, {}, { host: '127.0.0.1', port: 8080 }), { host: '10.0.0.1', port: 7000 });
  assert.deepEqual(resolveListen('gateway', env, { listen: ':7001' }, undefined), { host: '127.0.0.1', port: 7001 });
  assert.deepEqual(resolveListen('gateway', env, { port: 7002 }, undefined), { host: '10.0.0.1', port: 7002 });
  assert.equal(resolveListen('worker', {}, {}, undefined), undefined, 'ops listeners are off unless asked for');
});

if (BACKENDS.includes('postgres')) {
  test('postgres: every service answers healthz, readyz (503 naming a cut database) and metrics', { timeout: 240_000 }, async () => {
    const s = await createPgDatabase('trace_ops');
    const d = await createPgDatabase('trace_ops');
    const ps = await startTcpProxy(pgTarget(s.url));
    const pd = await startTcpProxy(pgTarget(d.url));
    const timeouts = { connectTimeoutMs: 800, statementTimeoutMs: 1_500 };
    const state = new PostgresDb(ps.urlFor(s.url), { role: 'state', timeouts });
    const data = new PostgresDb(pd.urlFor(d.url), { role: 'data', timeouts });
    const stops: Array<() => Promise<unknown>> = [];
    const workerAbort = new AbortController();
    try {
      await migrate(state, 'state');
      await migrate(data, 'data');
      const disp = await buildDispatcher(state, { probes: { data_database: (ms) => pingDb(data, ms) } });
      const dispatcherUrl = await disp.start({ loops: false });
      stops.push(() => disp.stop());
      const issuer = await createCapabilityIssuer({ alg: 'HS256', current: { kid: 'test', secret: TEST_SECRETS.capability } });
      const userVerifier = createUserVerifier({ mode: 'dev', secret: TEST_SECRETS.user });
      const qs = await startQueryService({
        state, data, orgId: disp.orgId, userVerifier, capabilityVerifier: issuer.verifier(), dispatcherUrl, host: '127.0.0.1', port: 0, log: silentLogger,
      });
      stops.push(() => qs.stop());
      const gw = await startGateway({ dispatcherUrl, queryUrl: qs.url, userVerifier, port: 0, log: silentLogger });
      stops.push(() => gw.stop());
      const rpc = await startRpcGateway({ port: 0, pools: { standard: ['http://127.0.0.1:9'] }, log: silentLogger });
      stops.push(() => rpc.close());

      // A buffer message waits before any sink runs: the Dispatcher's queue gauge counts it.
      const q = new PgQueue(state);
      await q.send(BUFFER_QUEUE, { publish_id: '00000000-0000-4000-8000-000000000000' });
      await q.close();
      const dm = await get(dispatcherUrl, '/metrics');
      assert.equal(dm.status, 200);
      assert.match(dm.type, /^text\/plain/);
      assert.equal(series(dm.text, 'trace_queue_depth', { queue: 'buffers', service: 'dispatcher' }), 1);
      for (const name of ['trace_tasks', 'trace_task_lease_age_seconds', 'trace_task_leases_expiring', 'trace_outbox_lag_seconds', 'trace_outbox_rows', 'trace_chain_sync_lag_blocks', 'trace_queue_dead_letters']) {
        assert.match(dm.text, new RegExp(`^# TYPE ${name} gauge$`, 'm'), name);
      }
      assert.equal(series(dm.text, 'trace_tasks', { status: 'queued' }), 0);

      const penv = {
        TRACE_DATA_DATABASE_URL: pd.urlFor(d.url), TRACE_QUEUE_DATABASE_URL: ps.urlFor(s.url), TRACE_DISPATCHER_URL: dispatcherUrl,
        TRACE_WORKER_TOKEN: TEST_SECRETS.worker, TRACE_DB_CONNECT_TIMEOUT_MS: '800', TRACE_DB_STATEMENT_TIMEOUT_MS: '1500',
        TRACE_LOG_LEVEL: 'silent', TRACE_SINK_LISTEN: '127.0.0.1:0',
      };
      const sink = await runSinkProcess(penv, { log: silentLogger });
      stops.push(() => sink.stop());
      const delivery = await runDeliveryProcess(penv, { log: silentLogger, listen: '127.0.0.1:0' });
      stops.push(() => delivery.stop());
      let workerOps: string | undefined;
      const worker = runWorkerProcess(penv, ['--listen', '127.0.0.1:0'], { signal: workerAbort.signal, stopGraceMs: 1_000, onOpsListening: (u) => { workerOps = u; } });
      worker.catch(() => undefined);
      await until('the worker ops listener', async () => workerOps !== undefined);
      assert.ok(sink.opsUrl && delivery.opsUrl);

      const services: Record<string, string> = {
        dispatcher: dispatcherUrl, gateway: gw.url, query: qs.url, 'rpc-gateway': rpc.url,
        worker: workerOps!, sink: sink.opsUrl!, delivery: delivery.opsUrl!,
      };
      for (const [service, base] of Object.entries(services)) {
        const h = await get(base, '/healthz');
        assert.equal(h.status, 200, service);
        assert.deepEqual(h.body, { ok: true, service });
        const r = await get(base, '/readyz');
        assert.equal(r.status, 200, `${service}: ${r.text}`);
        assert.equal(r.body.service, service);
        const m = await get(base, '/metrics');
        assert.equal(m.status, 200, service);
        assert.match(m.text, new RegExp(`service="${service}"`), `${service} labels its metrics`);
      }

      // Each service's own signals.
      const token = await mintDevUserToken(TEST_SECRETS.user, 'admin');
      const refused = await get(qs.url, '/v1/query', { method: 'POST', headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' }, body: JSON.stringify({ dataset: 'no_such_dataset', sql: 'SELECT 1' }) });
      assert.ok(refused.status >= 400, refused.text);
      const qm = await get(qs.url, '/metrics');
      assert.equal(series(qm.text, 'trace_query_rejections_total', { route: '/v1/query', code: refused.body.code }), 1);
      assert.equal(series(qm.text, 'trace_query_duration_seconds_count', { route: '/v1/query', status: '4xx' }), 1);
      const gm = await get(gw.url, '/metrics');
      assert.match(gm.text, /# TYPE trace_gateway_requests_total counter/);
      await until('the sink to take the buffer message', async () => {
        const t = (await get(sink.opsUrl!, '/metrics')).text;
        return (series(t, 'trace_sink_batches_total', { outcome: 'rejected' }) ?? 0) + (series(t, 'trace_sink_batches_total', { outcome: 'failed' }) ?? 0) > 0;
      });
      const sm = (await get(sink.opsUrl!, '/metrics')).text;
      assert.ok(Number.isFinite(series(sm, 'trace_sink_lag_seconds')), 'sink lag is read from the queue');
      assert.ok(series(sm, 'trace_queue_depth', { queue: 'buffers' }) !== undefined);
      const delm = (await get(delivery.opsUrl!, '/metrics')).text;
      assert.equal(series(delm, 'trace_delivery_outcomes_total', { outcome: 'failed' }), 0);
      assert.equal(series(delm, 'trace_delivery_pending'), 0);
      assert.equal(series((await get(workerOps!, '/metrics')).text, 'trace_worker_tasks_in_flight'), 0);

      // The data database is cut: every service that needs it says so; the others stay ready.
      pd.cut();
      for (const [service, base] of Object.entries(services)) {
        const r = await get(base, '/readyz');
        const needsData = ['dispatcher', 'query', 'sink', 'delivery', 'worker'].includes(service); // this worker was given the data database (alert_route)
        assert.equal(r.status, needsData ? 503 : 200, `${service}: ${r.text}`);
        if (needsData) {
          assert.equal(r.body.code, 'NOT_READY');
          assert.match(r.body.error, /data database unreachable/);
          assert.notEqual(r.body.checks.data_database, 'ok');
        }
        assert.equal((await get(base, '/healthz')).status, 200, `${service}: healthz is alive-only`);
      }
      pd.restore();
      for (const [service, base] of Object.entries(services)) {
        await until(`${service} ready again`, async () => (await get(base, '/readyz')).status === 200);
      }

      // The state database (which also holds the queue) freezes: readiness and the scrape stay bounded.
      ps.freeze();
      for (const [service, base] of Object.entries({ dispatcher: dispatcherUrl, worker: workerOps!, sink: sink.opsUrl! })) {
        const r = await get(base, '/readyz');
        assert.equal(r.status, 503, `${service}: ${r.text}`);
        assert.match(r.body.error, service === 'dispatcher' ? /state database unreachable/ : /queue unreachable/);
      }
      const first = await get(dispatcherUrl, '/metrics');
      assert.equal(first.status, 200);
      assert.equal(series(first.text, 'trace_tasks', { status: 'queued' }), undefined, 'a failed read publishes no stale value');
      // The failures of one scrape are counted by the time of the next.
      const frozen = await get(dispatcherUrl, '/metrics');
      assert.ok((series(frozen.text, 'trace_metrics_collect_errors_total', { collector: 'trace_tasks' }) ?? 0) >= 1, frozen.text);
      assert.equal(series(frozen.text, 'trace_tasks', { status: 'queued' }), undefined, 'a failed read publishes no stale value');
      ps.restore();
      await until('the Dispatcher ready again', async () => (await get(dispatcherUrl, '/readyz')).status === 200);

      // A Gateway whose backends are gone is alive but not ready, naming them.
      const lonely = await startGateway({ dispatcherUrl: 'http://127.0.0.1:9', queryUrl: qs.url, userVerifier, port: 0, log: silentLogger });
      try {
        const r = await get(lonely.url, '/readyz');
        assert.equal(r.status, 503);
        assert.match(r.body.error, /^not ready: dispatcher unreachable$/);
        assert.equal(r.body.checks.query_service, 'ok');
        assert.equal((await get(lonely.url, '/healthz')).status, 200);
      } finally {
        await lonely.stop();
      }
    } finally {
      workerAbort.abort();
      for (const stop of stops.reverse()) await stop().catch(() => undefined);
      await state.close();
      await data.close();
      await ps.close();
      await pd.close();
      await s.drop();
      await d.drop();
    }
  });
}
