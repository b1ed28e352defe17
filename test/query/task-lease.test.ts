/**
 * Task queries only while the attempt holds its lease.
 * 1. The lease check the Query Service uses (src/query/lease.ts) against a stand-in Dispatcher
 *    over real HTTP: what it sends, how it maps answers, and that only live answers are kept,
 *    for at most 1 s.
 * 2. The whole path on the one-process platform (real Postgres and PGlite): the real Dispatcher
 *    route `/v1/task/lease-check` and the real Query Service. A live attempt's token reads; once
 *    the attempt fails and a retry starts, the old token is refused (STALE_ATTEMPT) while the new
 *    attempt's reads; a canceled task's token is refused (ATTEMPT_NOT_LIVE).
 */
import { after, before, describe, it, mock } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { randomUUID } from 'node:crypto';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { TraceError } from '../../src/core/errors.js';
import { dispatcherLeaseCheck } from '../../src/query/lease.js';
import { BACKENDS } from '../support/db.js';
import { startPlatform, type TestPlatform } from '../support/platform.js';
import { claim, claimOk, deploy, post, taskCall, trigger, twoJobDag, type Lease } from '../support/drive.js';
import { tempDir, writeThreeRows, type TempDir } from './support.js';

describe('the lease check (stand-in Dispatcher)', () => {
  let server: http.Server;
  let url: string;
  const seen: Array<{ token: string | undefined; body: Record<string, unknown> }> = [];
  let answer: { status: number; body: unknown } = { status: 200, body: { ok: true, live: true } };

  before(async () => {
    server = http.createServer((req, res) => {
      let text = '';
      req.on('data', (c: Buffer) => { text += c.toString('utf8'); });
      req.on('end', () => {
        seen.push({ token: req.headers['x-trace-task-capability'] as string | undefined, body: JSON.parse(text) as Record<string, unknown> });
        res.writeHead(answer.status, { 'content-type': 'application/json' });
        res.end(typeof answer.body === 'string' ? answer.body : JSON.stringify(answer.body));
      });
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const addr = server.address() as { port: number };
    url = `http://127.0.0.1:${addr.port}`;
  });
  after(() => new Promise<void>((r) => server.close(() => r())));

  const ref = (over: Record<string, unknown> = {}) => ({ task_id: randomUUID(), attempt: 1, ...over });
  async function refusal(p: Promise<void>): Promise<TraceError> {
    try {
      await p;
    } catch (e) {
      assert.ok(e instanceof TraceError);
      return e;
    }
    assert.fail('expected a refusal');
  }

  it('sends the caller token and the attempt; keeps a live answer for at most 1 s', async () => {
    answer = { status: 200, body: { ok: true, live: true } };
    mock.timers.enable({ apis: ['Date'], now: 1_000_000 });
    try {
      const check = dispatcherLeaseCheck({ dispatcherUrl: url, cacheMs: 60_000 });
      const r = ref({ lease_token: randomUUID() });
      seen.length = 0;
      await check('tok-1', r);
      assert.deepEqual(seen, [{ token: 'tok-1', body: r }]);
      await check('tok-1', r);
      mock.timers.tick(999);
      await check('tok-1', r);
      assert.equal(seen.length, 1, 'answered from the cache within the second');
      mock.timers.tick(2);
      await check('tok-1', r);
      assert.equal(seen.length, 2, 'asked again after 1 s although 60 s were configured');
      // Another attempt, or the same one without a lease token, is its own question.
      await check('tok-1', { ...r, attempt: 2 });
      await check('tok-1', { task_id: r.task_id, attempt: 1 });
      assert.equal(seen.length, 4);
      assert.deepEqual(seen[3]!.body, { task_id: r.task_id, attempt: 1 });
    } finally {
      mock.timers.reset();
    }
  });

  it('refusals pass through and are never kept', async () => {
    const check = dispatcherLeaseCheck({ dispatcherUrl: url });
    const r = ref();
    answer = { status: 403, body: { error: 'attempt 1 is not the current attempt of this task', code: 'STALE_ATTEMPT' } };
    seen.length = 0;
    for (let i = 0; i < 2; i++) {
      const e = await refusal(check('t', r));
      assert.equal(e.status, 403);
      assert.equal(e.code, 'STALE_ATTEMPT');
    }
    assert.equal(seen.length, 2);
    answer = { status: 404, body: { error: 'task not found', code: 'TASK_NOT_FOUND' } };
    assert.equal((await refusal(check('t', r))).code, 'ATTEMPT_NOT_LIVE');
    answer = { status: 401, body: { error: 'bad token', code: 'UNAUTHORIZED' } };
    assert.equal((await refusal(check('t', r))).status, 401);
    answer = { status: 500, body: 'oops' };
    const e = await refusal(check('t', r));
    assert.equal(e.status, 503);
    assert.equal(e.code, 'LEASE_CHECK_UNAVAILABLE');
    answer = { status: 200, body: { ok: true } };
    await check('t', r);
  });

  it('fails closed when the Dispatcher cannot be reached', async () => {
    const closed = http.createServer();
    await new Promise<void>((r) => closed.listen(0, '127.0.0.1', r));
    const port = (closed.address() as { port: number }).port;
    await new Promise<void>((r) => closed.close(() => r()));
    const e = await refusal(dispatcherLeaseCheck({ dispatcherUrl: `http://127.0.0.1:${port}` })('t', ref()));
    assert.equal(e.status, 503);
    assert.equal(e.code, 'LEASE_CHECK_UNAVAILABLE');
  });
});

for (const backend of BACKENDS) {
  describe(`task queries follow the lease on the platform (${backend})`, () => {
    let p: TestPlatform;
    let tmp: TempDir;
    let grant: { dataset_uuid: string; dataset_version: string; storage_ref: any };

    before(async () => {
      tmp = tempDir('trace-qlease-');
      await writeThreeRows(join(tmp.dir, 'trades'));
      // Leases are held by hand without heartbeats: long enough to outlive each step under load.
      p = await startPlatform(backend, { workers: 0, query: { maxConcurrent: 1 }, settings: { leaseSeconds: 120 } });
      const reg = await p.api('POST', '/v1/datasets/trades/register', { from: `${pathToFileURL(join(tmp.dir, 'trades')).href}/` });
      assert.equal(reg.status, 201, JSON.stringify(reg.body));
      const v = (await p.dbs.state.query<{ storage_ref: unknown }>(`SELECT storage_ref FROM dataset_versions WHERE id = $1`, [reg.body.dataset_version])).rows[0]!;
      grant = { dataset_uuid: reg.body.dataset_uuid, dataset_version: reg.body.dataset_version, storage_ref: v.storage_ref };
      await deploy(p, twoJobDag({ name: 'leased' }));
    });
    after(async () => {
      await p?.close();
      tmp?.cleanup();
    });

    /** A capability token of this attempt that grants the registered dataset. */
    const tokenFor = (lease: Lease) => p.dispatcher.ctx.deps.issuer.sign({
      org_id: p.info.org_id, task_id: lease.task_id, attempt: lease.attempt, datasets: [grant], s3: { read_prefixes: [], write_prefixes: [] },
    }, 600);
    const query = (lease: Lease, token: string, extra: Record<string, unknown> = {}) =>
      post({ url: p.info.query_url }, '/v1/task/query', { task_id: lease.task_id, attempt: lease.attempt, sql: 'SELECT count(*) AS n FROM dataset', ...extra }, { 'x-trace-task-capability': token });
    const refused = (r: { status: number; body: any }, code: string) => {
      assert.equal(r.status, 403, JSON.stringify(r.body));
      assert.equal(r.body.code, code, JSON.stringify(r.body));
    };

    it('a live attempt reads; a superseded attempt is refused; the retry reads; a canceled one is refused', async () => {
      const taskId = await trigger(p, 'leased', 'src');
      const first = await claimOk(p, taskId);
      const token1 = await tokenFor(first);
      const ok = await query(first, token1, { lease_token: first.lease_token });
      assert.equal(ok.status, 200, JSON.stringify(ok.body));
      assert.deepEqual(ok.body.rows, [['3']]);
      refused(await query(first, token1, { lease_token: randomUUID() }), 'LEASE_MISMATCH');

      // The attempt fails; the retry loop queues attempt 2, which is claimed.
      assert.equal((await taskCall(p, 'complete', first, { status: 'Failed', error_message: 'try again' })).status, 200);
      let second: Lease | undefined;
      for (const until = Date.now() + 20_000; !second && Date.now() < until;) {
        const r = await claim(p, taskId);
        if (r.body.status === 'Claimed') second = { task_id: taskId, attempt: r.body.attempt, lease_token: r.body.lease_token, capability_token: r.body.capability_token, task: r.body.task };
        else await new Promise((res) => setTimeout(res, 25));
      }
      assert.ok(second, 'attempt 2 was claimed');
      assert.equal(second.attempt, 2);
      refused(await query(first, token1), 'STALE_ATTEMPT');
      const token2 = await tokenFor(second);
      assert.equal((await query(second, token2, { lease_token: second.lease_token })).status, 200);

      // Canceled by an admin: the attempt is over.
      assert.equal((await p.api('POST', `/v1/tasks/${taskId}/cancel`)).status, 200);
      refused(await query(second, token2), 'ATTEMPT_NOT_LIVE');
      const audit = await p.dbs.data.query<{ attempt: number }>(`SELECT attempt FROM query_audit WHERE task_id = $1 ORDER BY attempt`, [taskId]);
      assert.deepEqual(audit.rows.map((r) => r.attempt), [1, 2], 'refused queries leave no audit rows');
    });

    it('the Dispatcher route itself: bound to the token, fenced, read only; the Gateway does not expose it', async () => {
      const taskId = await trigger(p, 'leased', 'src');
      const lease = await claimOk(p, taskId);
      const h = { 'x-trace-task-capability': lease.capability_token };
      const live = await post(p, '/v1/task/lease-check', { task_id: taskId, attempt: lease.attempt, lease_token: lease.lease_token }, h);
      assert.equal(live.status, 200, JSON.stringify(live.body));
      assert.equal(live.body.live, true);
      assert.equal((await post(p, '/v1/task/lease-check', { task_id: taskId, attempt: lease.attempt }, h)).status, 200);
      assert.equal((await post(p, '/v1/task/lease-check', { task_id: taskId, attempt: lease.attempt })).status, 401);
      const mismatch = await post(p, '/v1/task/lease-check', { task_id: randomUUID(), attempt: lease.attempt }, h);
      assert.equal(mismatch.body.code, 'CAPABILITY_MISMATCH');
      const bad = await post(p, '/v1/task/lease-check', { task_id: taskId, attempt: lease.attempt, extra: 1 }, h);
      assert.equal(bad.status, 400);
      const row = (await p.dbs.state.query<{ status: string; lease_expires_at: Date }>(`SELECT status, lease_expires_at FROM tasks WHERE id = $1`, [taskId])).rows[0]!;
      assert.equal(row.status, 'Running');
      assert.equal((await taskCall(p, 'complete', lease, { status: 'Completed' })).status, 200);
      const over = await post(p, '/v1/task/lease-check', { task_id: taskId, attempt: lease.attempt, lease_token: lease.lease_token }, h);
      assert.equal(over.status, 403);
      assert.equal(over.body.code, 'ATTEMPT_NOT_LIVE');
      const gw = await post({ url: p.info.gateway_url }, '/v1/task/lease-check', { task_id: taskId, attempt: lease.attempt }, h);
      assert.equal(gw.status, 404);
    });
  });
}
