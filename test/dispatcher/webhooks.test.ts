/**
 * Webhook sources end to end through the Gateway: a delivery signed with the source's secret
 * creates exactly one task whose trigger carries the body; every refused delivery (signature,
 * timestamp, replay, unknown path, size, rate) answers in the stable error shape and creates
 * nothing. Secrets are the platform's: generated at deploy, read and rotated by an admin only.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { BACKENDS } from '../support/db.js';
import { startPlatform, type TestPlatform } from '../support/platform.js';
import { replayRetentionSeconds, webhookSignature } from '../../src/dispatcher/webhooks.js';
import { dispatcherSettingsFromEnv } from '../../src/dispatcher/settings.js';
import { captureLogger } from '../support/log-capture.js';
import { claimOk } from '../support/drive.js';

const dag = (name: string, jobs: Array<{ job: string; path: string }>) => `name: ${name}
jobs:
${jobs.map((j) => `  - name: ${j.job}
    activation: source
    runtime: ecs_platform
    operator: test_sleep
    source: { kind: webhook, webhook_path: ${j.path} }
    outputs: 1
    config: { ms: 1 }
`).join('')}`;

const now = () => Math.floor(Date.now() / 1000);

for (const backend of BACKENDS) {
  describe(`webhook sources (${backend})`, () => {
    let p: TestPlatform;
    let gw: string;
    let secret: string;
    const logs = captureLogger('debug');
    const taskCount = async () => (await p.dbs.state.query<{ n: number }>(`SELECT count(*)::int AS n FROM tasks`)).rows[0]!.n;

    /** POST a delivery through the Gateway; signed with `key` unless headers say otherwise. */
    const deliver = async (path: string, body: string, o: { key?: string; id?: string; ts?: number; headers?: Record<string, string>; sign?: boolean } = {}) => {
      const id = o.id ?? `evt_${Math.random().toString(36).slice(2)}`;
      const ts = String(o.ts ?? now());
      const h: Record<string, string> = { 'content-type': 'application/json', 'x-trace-webhook-id': id, 'x-trace-webhook-timestamp': ts };
      if (o.sign !== false) h['x-trace-webhook-signature'] = webhookSignature(o.key ?? secret, ts, id, body);
      const res = await fetch(`${gw}/v1/webhooks/${path}`, { method: 'POST', headers: { ...h, ...o.headers }, body });
      const text = await res.text();
      let parsed: any = text;
      try { parsed = JSON.parse(text); } catch { /* not JSON */ }
      return { status: res.status, body: parsed, headers: res.headers, id };
    };
    /** Asserts a refusal in the stable shape that created no task. */
    const refused = async (status: number, code: string, send: () => Promise<{ status: number; body: any }>) => {
      const before = await taskCount();
      const r = await send();
      assert.equal(r.status, status, JSON.stringify(r.body));
      assert.equal(r.body.code, code, JSON.stringify(r.body));
      assert.equal(typeof r.body.error, 'string');
      assert.ok(!JSON.stringify(r.body).includes('whsec_'), 'no secret in a refusal');
      assert.equal(await taskCount(), before, 'no task was created');
      return r;
    };

    before(async () => {
      p = await startPlatform(backend, { workers: 0, log: logs.log, settings: { webhookMaxBodyBytes: 1024, webhookRatePerMinute: 30 } });
      gw = p.info.gateway_url;
      const d = await p.api('POST', '/v1/dags/hooked/versions?activate=true', dag('hooked', [{ job: 'ingest', path: '/hooks/feed' }, { job: 'flood', path: 'hooks/flood' }]));
      assert.equal(d.status, 201, JSON.stringify(d.body));
      assert.ok(!JSON.stringify(d.body).includes('whsec_'), 'the deploy answer carries no secret');
      const w = await p.api('GET', '/v1/dags/hooked/webhooks');
      assert.equal(w.status, 200, JSON.stringify(w.body));
      const ingest = w.body.webhooks.find((x: any) => x.job === 'ingest');
      assert.equal(ingest.webhook_path, 'hooks/feed');
      assert.equal(ingest.url, '/v1/webhooks/hooks/feed');
      assert.match(ingest.secret, /^whsec_[A-Za-z0-9_-]{43}$/);
      secret = ingest.secret;
      assert.notEqual(w.body.webhooks.find((x: any) => x.job === 'flood').secret, secret, 'one secret per source');
    });
    after(async () => { await p?.close(); });

    it('a signed delivery creates exactly one task whose trigger carries the body', async () => {
      const before = await taskCount();
      const body = JSON.stringify({ hello: 'world', n: 1 });
      const r = await deliver('hooks/feed', body);
      assert.equal(r.status, 202, JSON.stringify(r.body));
      assert.equal(r.body.event_id, r.id);
      assert.equal(await taskCount(), before + 1);
      const t = (await p.dbs.state.query<{ trigger: any; status: string; dedupe_key: string }>(`SELECT trigger, status, dedupe_key FROM tasks WHERE id = $1`, [r.body.task_id])).rows[0]!;
      assert.equal(t.status, 'Queued');
      assert.equal(t.trigger.kind, 'webhook');
      assert.equal(t.trigger.body, body);
      assert.equal(t.trigger.event_id, r.id);
      assert.equal(t.trigger.webhook_path, 'hooks/feed');
      assert.equal(t.trigger.content_type, 'application/json');
      const row = await p.dbs.state.query(`SELECT task_id FROM webhook_deliveries WHERE event_id = $1`, [r.id]);
      assert.equal((row.rows[0] as any).task_id, r.body.task_id, 'the replay row points at the task');
      // The job gets the body in its task payload.
      const lease = await claimOk(p, r.body.task_id);
      assert.equal(lease.task.trigger.kind, 'webhook');
      assert.equal(lease.task.trigger.body, body);
      assert.equal(lease.task.trigger.event_id, r.id);
    });

    it('a body that is not UTF-8 travels as base64', async () => {
      const raw = Buffer.from([0xff, 0x00, 0xfe, 0x41]);
      const ts = String(now());
      const res = await fetch(`${gw}/v1/webhooks/hooks/feed`, {
        method: 'POST',
        headers: { 'content-type': 'application/octet-stream', 'x-trace-webhook-id': 'evt_bin', 'x-trace-webhook-timestamp': ts, 'x-trace-webhook-signature': webhookSignature(secret, ts, 'evt_bin', raw) },
        body: raw,
      });
      const b = await res.json() as { task_id: string };
      assert.equal(res.status, 202, JSON.stringify(b));
      const t = (await p.dbs.state.query<{ trigger: any }>(`SELECT trigger FROM tasks WHERE id = $1`, [b.task_id])).rows[0]!;
      assert.equal(t.trigger.body, undefined);
      assert.deepEqual(Buffer.from(t.trigger.body_base64, 'base64'), raw);
    });

    it('a wrong signature is refused (the HMAC is checked)', async () => {
      await refused(401, 'WEBHOOK_SIGNATURE_INVALID', () => deliver('hooks/feed', '{"a":1}', { key: 'whsec_not_the_secret' }));
      // Signed over another body: a tampered payload.
      await refused(401, 'WEBHOOK_SIGNATURE_INVALID', () => deliver('hooks/feed', '{"a":2}', { headers: { 'x-trace-webhook-signature': webhookSignature(secret, String(now()), 'other', '{"a":2}') } }));
      // A raw hex digest without the version prefix, and garbage.
      const ts = String(now());
      const hex = createHmac('sha256', secret).update(`${ts}.x1.{}`).digest('hex');
      await refused(401, 'WEBHOOK_SIGNATURE_INVALID', () => deliver('hooks/feed', '{}', { id: 'x1', ts: Number(ts), headers: { 'x-trace-webhook-signature': hex } }));
      await refused(401, 'WEBHOOK_SIGNATURE_MISSING', () => deliver('hooks/feed', '{}', { sign: false }));
      await refused(400, 'WEBHOOK_ID_INVALID', () => deliver('hooks/feed', '{}', { id: 'has space' }));
    });

    it('a timestamp outside the tolerance is refused, in the past and in the future', async () => {
      await refused(401, 'WEBHOOK_TIMESTAMP_OUT_OF_TOLERANCE', () => deliver('hooks/feed', '{}', { ts: now() - 3600 }));
      await refused(401, 'WEBHOOK_TIMESTAMP_OUT_OF_TOLERANCE', () => deliver('hooks/feed', '{}', { ts: now() + 3600 }));
      await refused(401, 'WEBHOOK_TIMESTAMP_INVALID', () => deliver('hooks/feed', '{}', { headers: { 'x-trace-webhook-timestamp': 'yesterday' } }));
    });

    it('a replayed event id is refused with 409', async () => {
      const first = await deliver('hooks/feed', '{"k":"v"}', { id: 'evt_replay' });
      assert.equal(first.status, 202);
      await refused(409, 'WEBHOOK_REPLAYED', () => deliver('hooks/feed', '{"k":"v"}', { id: 'evt_replay' }));
      // A fresh signature over another body does not get past the id either.
      await refused(409, 'WEBHOOK_REPLAYED', () => deliver('hooks/feed', '{"k":"other"}', { id: 'evt_replay' }));
    });

    it('the same event id sent twice at once creates one task', async () => {
      const before = await taskCount();
      const rs = await Promise.all([1, 2, 3].map(() => deliver('hooks/feed', '{"race":true}', { id: 'evt_race' })));
      assert.deepEqual(rs.map((r) => r.status).sort(), [202, 409, 409], JSON.stringify(rs.map((r) => r.body)));
      assert.equal(await taskCount(), before + 1);
    });

    it('unknown paths, oversized bodies and inactive DAGs are refused', async () => {
      await refused(404, 'WEBHOOK_NOT_FOUND', () => deliver('hooks/nothing', '{}'));
      await refused(413, 'PAYLOAD_TOO_LARGE', () => deliver('hooks/feed', JSON.stringify({ pad: 'x'.repeat(2000) })));
      const d = await p.api('POST', '/v1/dags/dormant/versions', dag('dormant', [{ job: 'j', path: 'hooks/dormant' }]));
      assert.equal(d.status, 201, JSON.stringify(d.body));
      await refused(404, 'WEBHOOK_NOT_FOUND', () => deliver('hooks/dormant', '{}'));
      assert.equal((await p.api('GET', '/v1/dags/dormant/webhooks')).status, 404);
    });

    it('activating a version whose webhook_path another active DAG took since is refused with 409', async () => {
      // dormant (inactive, deployed above) has hooks/dormant; an active DAG may take it meanwhile.
      const thief = await p.api('POST', '/v1/dags/thief/versions?activate=true', dag('thief', [{ job: 'j', path: 'hooks/dormant' }]));
      assert.equal(thief.status, 201, JSON.stringify(thief.body));
      const versions = await p.api('GET', '/v1/dags/dormant/versions');
      const r = await p.api('PUT', '/v1/dags/dormant/active', { dag_version_id: versions.body.versions[0].dag_version_id });
      assert.equal(r.status, 409, JSON.stringify(r.body));
      assert.equal(r.body.code, 'WEBHOOK_PATH_TAKEN');
      assert.match(r.body.error, /thief\.j/);
      assert.equal((await p.api('GET', '/v1/dags/dormant/webhooks')).status, 404, 'still inactive');
    });

    it('after a rotation the old secret is refused and the new one works', async () => {
      const old = secret;
      const r = await p.api('POST', '/v1/dags/hooked/webhooks/ingest/rotate');
      assert.equal(r.status, 200, JSON.stringify(r.body));
      assert.notEqual(r.body.secret, old);
      assert.ok(r.body.rotated_at);
      secret = r.body.secret;
      await refused(401, 'WEBHOOK_SIGNATURE_INVALID', () => deliver('hooks/feed', '{}', { key: old }));
      assert.equal((await deliver('hooks/feed', '{}')).status, 202);
      assert.equal((await p.api('POST', '/v1/dags/hooked/webhooks/nope/rotate')).status, 404);
      // Redeploying the same DAG keeps the secret.
      const again = await p.api('POST', '/v1/dags/hooked/versions?activate=true', dag('hooked', [{ job: 'ingest', path: 'hooks/feed' }, { job: 'flood', path: 'hooks/flood' }]));
      assert.equal(again.status, 201, JSON.stringify(again.body));
      const w = await p.api('GET', '/v1/dags/hooked/webhooks');
      assert.equal(w.body.webhooks.find((x: any) => x.job === 'ingest').secret, secret);
    });

    it('a webhook_path is unique in the org: another DAG using it is refused at deploy, naming the field', async () => {
      const r = await p.api('POST', '/v1/dags/copycat/versions', dag('copycat', [{ job: 'a', path: 'hooks/other' }, { job: 'b', path: 'hooks/feed' }]));
      assert.equal(r.status, 422, JSON.stringify(r.body));
      assert.equal(r.body.code, 'DAG_INVALID');
      assert.equal(r.body.problems[0].path, 'jobs[1].source.webhook_path');
      assert.match(r.body.problems[0].message, /hooked\.ingest/);
      const twice = await p.api('POST', '/v1/dags/twice/versions', dag('twice', [{ job: 'a', path: 'hooks/t' }, { job: 'b', path: '/hooks/t' }]));
      assert.equal(twice.status, 422);
      assert.equal(twice.body.problems[0].path, 'jobs[1].source.webhook_path');
    });

    it('a flood on one source answers 429 with Retry-After; other sources are not affected', async () => {
      let limited: Awaited<ReturnType<typeof deliver>> | undefined;
      for (let i = 0; i < 200 && !limited; i++) {
        const r = await deliver('hooks/flood', '{}', { key: 'whsec_wrong' });
        if (r.status === 429) limited = r;
        else assert.equal(r.status, 401);
      }
      assert.ok(limited, 'the bucket ran dry');
      assert.equal(limited.body.code, 'RATE_LIMITED');
      assert.ok(Number(limited.headers.get('retry-after')) >= 1);
      assert.equal((await deliver('hooks/feed', '{}')).status, 202, 'another source has its own bucket');
    });

    it('event ids are remembered for a week (more than twice the tolerance), then forgotten', async () => {
      const { rows } = await p.dbs.state.query<{ org_id: string; task_id: string }>(`SELECT org_id, task_id FROM webhook_deliveries WHERE event_id = 'evt_replay'`);
      const ins = `INSERT INTO webhook_deliveries (org_id, dag_name, job_name, event_id, task_id, received_at) VALUES ($1, 'hooked', 'ingest', $2, $3, now() - make_interval(secs => $4))`;
      await p.dbs.state.query(ins, [rows[0]!.org_id, 'evt_ancient', rows[0]!.task_id, 8 * 86_400]);
      await p.dbs.state.query(ins, [rows[0]!.org_id, 'evt_recent', rows[0]!.task_id, 6 * 86_400]);
      assert.equal((await deliver('hooks/feed', '{}')).status, 202);
      const left = (await p.dbs.state.query<{ event_id: string }>(`SELECT event_id FROM webhook_deliveries WHERE event_id IN ('evt_ancient', 'evt_recent')`)).rows.map((r) => r.event_id);
      assert.deepEqual(left, ['evt_recent']);
      await refused(409, 'WEBHOOK_REPLAYED', () => deliver('hooks/feed', '{}', { id: 'evt_recent' }));
    });

    it('no secret is ever logged', () => {
      assert.ok(logs.lines.length > 50, 'the platform logged');
      const all = JSON.stringify(logs.lines);
      assert.ok(!all.includes('whsec_'), 'no signing secret in any log line');
      assert.ok(all.includes('webhook accepted') && all.includes('webhook refused'));
    });

    it('webhook routes need the admin role for secrets, and the settings come from the environment', async () => {
      const noAuth = await fetch(`${gw}/v1/dags/hooked/webhooks`);
      assert.equal(noAuth.status, 401);
      assert.equal(replayRetentionSeconds(300), 7 * 86_400);
      assert.equal(replayRetentionSeconds(400_000), 800_060);
      assert.deepEqual(dispatcherSettingsFromEnv({ TRACE_WEBHOOK_TOLERANCE_SECONDS: '60', TRACE_WEBHOOK_MAX_BODY_BYTES: '2048', TRACE_WEBHOOK_RATE_PER_MINUTE: '5' }),
        { webhookToleranceSeconds: 60, webhookMaxBodyBytes: 2048, webhookRatePerMinute: 5 });
    });
  });
}
