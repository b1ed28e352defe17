/**
 * The buffer sink end to end over the real Dispatcher routes: fenced buffer-publish -> outbox ->
 * `buffers` queue -> sink -> alert_events (one transaction, ON CONFLICT on the dedupe key,
 * attribution from the trusted message) -> dataset event through `/internal/dataset-events` ->
 * routed to a reactive consumer like a task event. Hostile and broken batches change nothing;
 * drill 7: a poison message ends in the DLQ while the sink keeps draining, and the DLQ replay
 * path works.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { BACKENDS } from '../support/db.js';
import { bufferedDatasetUuid } from '../../src/sink/ids.js';
import { alertEventId } from '../../src/alerting/alert-events.js';
import { buildUdfPlatform, deployDag, triggerJob, waitFor, TEST_SECRETS, type UdfPlatform } from '../udf-platform/support.js';

interface Lease { task_id: string; attempt: number; lease_token: string; capability_token: string }

const DEF = randomUUID();
const now = new Date().toISOString();
const row = (key: string, extra: Record<string, unknown> = {}) => JSON.stringify({
  alert_definition_id: DEF, dedupe_key: key, event_time: now, severity: 'critical', payload: { chain_id: 1, block_number: 7, tx_hash: `0x${'ab'.repeat(32)}` }, ...extra,
});

for (const backend of BACKENDS) {
  describe(`buffer sink (${backend})`, () => {
    let p: UdfPlatform;
    before(async () => {
      p = await buildUdfPlatform(backend, { worker: false, delivery: false, query: false, sink: { maxReceives: 3 }, settings: { leaseSeconds: 60 } });
      await deployDag(p, `name: sinkt
jobs:
  - name: producer
    activation: source
    runtime: ecs_platform
    operator: noop
    source: { kind: manual }
    outputs: 1
    max_attempts: 3
  - name: consumer
    activation: reactive
    runtime: ecs_platform
    operator: alert_route
    execution_strategy: PerUpdate
    inputs:
      - from: { dataset: alert_events }
        where: { severity: critical }
    outputs: 1
    update_strategy: replace
`);
    });
    after(async () => { await p.close(); });

    const post = async (path: string, body: unknown, headers: Record<string, string>) => {
      const r = await fetch(`${p.url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: JSON.stringify(body) });
      return { status: r.status, body: await r.json() as any };
    };
    const claim = async (taskId: string): Promise<Lease> => {
      const r = await post('/internal/task-claim', { task_id: taskId, worker_id: 'sink-test' }, { 'x-trace-worker-token': TEST_SECRETS.worker });
      assert.equal(r.body.status, 'Claimed');
      return { task_id: taskId, attempt: r.body.attempt, lease_token: r.body.lease_token, capability_token: r.body.capability_token };
    };
    const newLease = async () => claim(await triggerJob(p, 'sinkt', 'producer', {}));
    /** Writes the artifact into the attempt's buffer prefix and publishes its pointer. */
    const publish = async (l: Lease, text: string, opts: { key?: string; uri?: string; size?: number } = {}) => {
      const key = opts.key ?? `buffers/${l.task_id}/${l.attempt}/${randomUUID()}.jsonl`;
      await p.store.put(key, text);
      return post('/v1/task/buffer-publish', {
        task_id: l.task_id, attempt: l.attempt, lease_token: l.lease_token,
        batch_uri: opts.uri ?? p.store.url(key), content_type: 'application/jsonl', batch_size_bytes: opts.size ?? Buffer.byteLength(text), dedupe_scope: 'alert_events',
      }, { 'x-trace-task-capability': l.capability_token });
    };
    const count = async (sql: string, params: unknown[] = []) => Number((await p.dbs.data.query<{ n: number }>(sql, params)).rows[0]!.n);
    const events = () => count(`SELECT count(*)::int AS n FROM alert_events`);
    const rejections = (publishId: string) => count(`SELECT count(*)::int AS n FROM buffer_rejections WHERE publish_id = $1`, [publishId]);
    const committed = (publishId: string) => count(`SELECT count(*)::int AS n FROM buffer_batches WHERE publish_id = $1`, [publishId]);

    it('registers alert_events as a buffered, multi-writer dataset', async () => {
      const ds = (await p.dbs.state.query<{ id: string; kind: string; current_version: string | null }>(`SELECT id, kind, current_version FROM datasets WHERE name = 'alert_events'`)).rows;
      assert.equal(ds.length, 1);
      assert.equal(ds[0]!.kind, 'buffered');
      assert.equal(ds[0]!.id, bufferedDatasetUuid(p.orgId, 'alert_events'));
      assert.ok(ds[0]!.current_version);
    });

    it('writes a valid batch once, attributed from the trusted message, and routes its dataset event', async () => {
      const l = await newLease();
      const before = await events();
      const pub = await publish(l, `${row('k1')}\n${row('k2', { severity: 'info' })}\n${row('k3')}\n`);
      assert.equal(pub.status, 200, JSON.stringify(pub.body));
      const publishId = pub.body.publish_id;
      await waitFor('the batch to commit', async () => (await committed(publishId)) === 1);
      assert.equal(await events(), before + 3);
      const rows = (await p.dbs.data.query<any>(`SELECT * FROM alert_events WHERE publish_id = $1 ORDER BY seq`, [publishId])).rows;
      const job = (await p.dbs.state.query<{ job_id: string }>(`SELECT job_id FROM tasks WHERE id = $1`, [l.task_id])).rows[0]!.job_id;
      for (const r of rows) {
        assert.equal(r.org_id, p.orgId);
        assert.equal(r.producer_task_id, l.task_id);
        assert.equal(r.producer_attempt, 1);
        assert.equal(r.producer_job_id, job);
        assert.equal(r.id, alertEventId(p.orgId, r.dedupe_key));
        assert.equal(Number(r.chain_id), 1);
        assert.equal(Number(r.block_number), 7);
        assert.equal(r.tx_hash, `0x${'ab'.repeat(32)}`);
      }
      // The event: a partition over the seq range of the new rows, recorded once, routed to the consumer.
      // The sink reports it to the Dispatcher after the batch commits, so wait for it.
      const ev = await waitFor('the batch\'s dataset event', async () => {
        const r = (await p.dbs.state.query<any>(`SELECT event, publish_id, producer_task_id FROM dataset_events WHERE publish_id = $1`, [publishId])).rows;
        return r.length > 0 ? r : undefined;
      });
      assert.equal(ev.length, 1);
      const seqs = rows.map((r: any) => Number(r.seq));
      assert.equal(ev[0].event.start, Math.min(...seqs));
      assert.equal(ev[0].event.end, Math.max(...seqs) + 1);
      assert.equal(ev[0].producer_task_id, l.task_id);
      const consumer = await waitFor('the consumer task', async () => (await p.dbs.state.query<any>(
        `SELECT t.inputs FROM tasks t JOIN jobs j ON j.id = t.job_id WHERE j.name = 'consumer' AND t.dedupe_key LIKE $1`, [`%p:${ev[0].event.start}-${ev[0].event.end}`])).rows[0]);
      assert.deepEqual(consumer.inputs[0].where, { severity: 'critical' });
      assert.equal(consumer.inputs[0].dataset_uuid, bufferedDatasetUuid(p.orgId, 'alert_events'));
    });

    it('adds nothing for a duplicate publish, a retried attempt or a redelivered message', async () => {
      const l = await newLease();
      const text = `${row('dup-1')}\n${row('dup-2')}\n`;
      const first = await publish(l, text);
      await waitFor('commit', async () => (await committed(first.body.publish_id)) === 1);
      // The sink reports the batch's dataset event after the batch commits: wait for it too.
      await waitFor('the first dataset event', async () => (await p.dbs.state.query(`SELECT 1 FROM dataset_events WHERE publish_id = $1`, [first.body.publish_id])).rows.length === 1);
      const after1 = await events();
      const eventsBefore = Number((await p.dbs.state.query<{ n: number }>(`SELECT count(*)::int AS n FROM dataset_events`)).rows[0]!.n);
      // The same rows again from another artifact of the same attempt.
      const second = await publish(l, text);
      await waitFor('commit', async () => (await committed(second.body.publish_id)) === 1);
      // The very same message redelivered (at-least-once queue).
      const msg = (await p.dbs.state.query<any>(`SELECT payload FROM outbox WHERE kind = 'buffer_publish' AND payload->>'publish_id' = $1`, [first.body.publish_id])).rows[0].payload;
      await p.queue.send('buffers', msg);
      await waitFor('the redelivery to drain', async () => (await p.queue.depth('buffers')) === 0);
      assert.equal(await events(), after1, 'no new alert_events rows');
      const inserted = (await p.dbs.data.query<{ rows_inserted: number }>(`SELECT rows_inserted FROM buffer_batches WHERE publish_id = $1`, [second.body.publish_id])).rows[0]!;
      assert.equal(inserted.rows_inserted, 0);
      const eventsAfter = Number((await p.dbs.state.query<{ n: number }>(`SELECT count(*)::int AS n FROM dataset_events`)).rows[0]!.n);
      assert.equal(eventsAfter, eventsBefore, 'no second dataset event');
      // The same publish call repeated is the same record (idempotent by task, attempt, uri).
      const key = `buffers/${l.task_id}/${l.attempt}/same.jsonl`;
      const a = await publish(l, text, { key });
      const b = await publish(l, text, { key });
      assert.equal(a.body.publish_id, b.body.publish_id);
    });

    it('rejects a whole batch with one malformed row (nothing written), dead-letters it, keeps draining, and replays it after repair', async () => {
      const l = await newLease();
      const key = `buffers/${l.task_id}/${l.attempt}/poison.jsonl`;
      const before = await events();
      const bad = await publish(l, `${row('p-1')}\n${row('p-2', { severity: 'urgent' })}\n${row('p-3')}\n`, { key });
      const publishId = bad.body.publish_id;
      // Meanwhile a good batch from another task still goes through.
      const l2 = await newLease();
      const good = await publish(l2, `${row('after-poison')}\n`);
      await waitFor('the good batch', async () => (await committed(good.body.publish_id)) === 1);
      await waitFor('the poison message to be dead-lettered', async () => (await p.queue.listDeadLetters('buffers')).some((d) => (d.body as any).publish_id === publishId), 20_000);
      assert.equal(await committed(publishId), 0);
      assert.equal(await count(`SELECT count(*)::int AS n FROM alert_events WHERE dedupe_key IN ('p-1', 'p-3')`), 0, 'no partial write');
      assert.equal(await events(), before + 1);
      assert.equal(await rejections(publishId), 3, 'one rejection per receive, maxReceives 3');
      const reason = (await p.dbs.data.query<{ code: string; reason: string }>(`SELECT code, reason FROM buffer_rejections WHERE publish_id = $1 LIMIT 1`, [publishId])).rows[0]!;
      assert.equal(reason.code, 'BATCH_INVALID');
      assert.match(reason.reason, /line\[2\]\.severity/);
      // Admin DLQ routes (what `trace sink dlq list|replay` calls).
      const list = await p.api('GET', '/v1/sink/dead-letters');
      const dl = list.body.dead_letters.find((d: any) => d.message.publish_id === publishId);
      assert.ok(dl);
      const member = await p.api('GET', '/v1/sink/dead-letters', undefined, await (await import('../../src/auth/user.js')).mintDevUserToken(TEST_SECRETS.user, 'nobody'));
      assert.equal(member.status, 403);
      // Repair the artifact in place (same size), then replay: it commits.
      // 'info' is two bytes shorter than 'urgent': pad with JSON whitespace to keep the published size.
      const fixed = `${row('p-1')}\n${row('p-2', { severity: 'info' })}\n${row('p-3')}\n`.replace('"info"', '"info"  ');
      assert.equal(Buffer.byteLength(fixed), Buffer.byteLength(Buffer.from(await p.store.get(key))));
      await p.store.put(key, fixed);
      const replay = await p.api('POST', `/v1/sink/dead-letters/${dl.id}/replay`);
      assert.equal(replay.status, 200);
      await waitFor('the replayed batch to commit', async () => (await committed(publishId)) === 1);
      assert.equal(await count(`SELECT count(*)::int AS n FROM alert_events WHERE dedupe_key IN ('p-1', 'p-2', 'p-3')`), 3);
      assert.equal((await p.api('POST', `/v1/sink/dead-letters/${dl.id}/replay`)).status, 404);
    });

    const refusals: Array<[string, (l: Lease) => Promise<{ body: any }>, string]> = [
      ['an object outside the attempt buffer prefix', async (l) => publish(l, `${row('o-1')}\n`, { key: `scratch/${l.task_id}/${l.attempt}/x.jsonl` }), 'BATCH_URI_OUTSIDE_PREFIX'],
      ['another task\'s buffer prefix', async (l) => publish(l, `${row('o-2')}\n`, { key: `buffers/${randomUUID()}/1/x.jsonl` }), 'BATCH_URI_OUTSIDE_PREFIX'],
      ['a file outside the object store', async (l) => publish(l, `${row('o-3')}\n`, { uri: 'file:///etc/passwd' }), 'BATCH_URI_OUTSIDE_PREFIX'],
      ['a traversal in the batch URI', async (l) => publish(l, `${row('o-4')}\n`, { uri: `${p.store.url(`buffers/${l.task_id}/${l.attempt}/a.jsonl`)}/../../../../x.jsonl` }), 'BATCH_URI_OUTSIDE_PREFIX'],
      ['a size that differs from the published one', async (l) => publish(l, `${row('o-5')}\n`, { size: 3 }), 'BATCH_SIZE_MISMATCH'],
      ['a row claiming its own org_id', async (l) => publish(l, `${row('o-6', { org_id: randomUUID() })}\n`), 'BATCH_INVALID'],
      ['invalid JSON', async (l) => publish(l, `${row('o-7')}\n{not json\n`), 'BATCH_INVALID'],
    ];
    for (const [what, act, code] of refusals) {
      it(`refuses ${what}, writing nothing`, async () => {
        const l = await newLease();
        const before = await events();
        const r = await act(l);
        if (!r.body.publish_id) return; // refused by the Dispatcher itself (also fine)
        await waitFor('a rejection', async () => (await rejections(r.body.publish_id)) >= 1);
        const c = (await p.dbs.data.query<{ code: string }>(`SELECT code FROM buffer_rejections WHERE publish_id = $1 LIMIT 1`, [r.body.publish_id])).rows[0]!.code;
        assert.equal(c, code);
        assert.equal(await events(), before);
        assert.equal(await committed(r.body.publish_id), 0);
      });
    }

    it('refuses a finished attempt publishing a buffer (409, nothing recorded)', async () => {
      const l = await newLease();
      // Completed is terminal: no retry can move the attempt on while we look.
      const done = await post('/v1/task/complete', { task_id: l.task_id, attempt: l.attempt, lease_token: l.lease_token, status: 'Completed' }, { 'x-trace-task-capability': l.capability_token });
      assert.equal(done.status, 200);
      const late = await publish(l, `${row('finished-0')}\n`);
      assert.equal(late.status, 409);
      assert.equal(late.body.code, 'TASK_NOT_RUNNING');
      const recs = await p.dbs.state.query(`SELECT 1 FROM buffer_publishes WHERE task_id = $1`, [l.task_id]);
      assert.equal(recs.rows.length, 0);
    });

    it('refuses a stale attempt publishing a buffer once a newer attempt runs (403, nothing recorded, nothing queued)', async () => {
      const l = await newLease();
      const done = await post('/v1/task/complete', { task_id: l.task_id, attempt: l.attempt, lease_token: l.lease_token, status: 'Failed', error_message: 'boom' }, { 'x-trace-task-capability': l.capability_token });
      assert.equal(done.status, 200);
      // Whether the retry has happened yet or not, the old lease may not publish.
      const late = await publish(l, `${row('stale-0')}\n`);
      assert.ok(late.status === 409 || late.status === 403, `finished or stale, got ${late.status}`);
      // Wait for the retry scheduler to queue attempt 2, then claim it.
      const l2 = await waitFor('attempt 2 to be claimable', async () => {
        const r = await post('/internal/task-claim', { task_id: l.task_id, worker_id: 'sink-test' }, { 'x-trace-worker-token': TEST_SECRETS.worker });
        return r.body.status === 'Claimed' ? r.body : undefined;
      });
      assert.equal(l2.attempt, 2);
      const stale = await publish(l, `${row('stale-1')}\n`);
      assert.equal(stale.status, 403);
      assert.equal(stale.body.code, 'STALE_ATTEMPT');
      const recs = await p.dbs.state.query(`SELECT 1 FROM buffer_publishes WHERE task_id = $1`, [l.task_id]);
      assert.equal(recs.rows.length, 0);
      assert.equal(await count(`SELECT count(*)::int AS n FROM alert_events WHERE dedupe_key LIKE 'stale-%'`), 0);
    });

    it('the dataset-events route needs the worker token and a buffered dataset', async () => {
      const body = { org_id: p.orgId, dataset: 'alert_events', publish_id: randomUUID(), start: 1, end: 2 };
      assert.equal((await post('/internal/dataset-events', body, {})).status, 401);
      assert.equal((await post('/internal/dataset-events', body, { 'x-trace-worker-token': 'wrong' })).status, 401);
      const notBuffered = await post('/internal/dataset-events', { ...body, dataset: 'nope' }, { 'x-trace-worker-token': TEST_SECRETS.worker });
      assert.equal(notBuffered.status, 404);
      const backwards = await post('/internal/dataset-events', { ...body, start: 5, end: 5 }, { 'x-trace-worker-token': TEST_SECRETS.worker });
      assert.equal(backwards.status, 400);
    });
  });
}
