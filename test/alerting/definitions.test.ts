/**
 * Alert definitions over HTTP (`POST|GET /v1/alerts`, `GET|PUT|DELETE /v1/alerts/{id}`): org
 * scoped, visibility and ownership rules, soft delete, and channel URLs refused at create and
 * update when they are not https or name a forbidden host literal (nothing written).
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { BACKENDS } from '../support/db.js';
import { mintDevUserToken } from '../../src/auth/user.js';
import { ensureUser } from '../../src/dispatcher/identity.js';
import { normalizeDefinition, definitionBodySchema } from '../../src/alerting/index.js';
import { TraceError } from '../../src/core/errors.js';
import { buildUdfPlatform, TEST_SECRETS, type UdfPlatform } from '../udf-platform/support.js';

const good = (url = 'https://hooks.example.com/trace/abc', extra: Record<string, unknown> = {}) => ({
  name: 'big transfers', condition: { threshold: 1000 }, channels: [{ type: 'webhook', url, headers: { 'X-Receiver-Secret': 's3cr3t' } }], ...extra,
});

for (const backend of BACKENDS) {
  describe(`alert definitions API (${backend})`, () => {
    let p: UdfPlatform;
    let alice: string;
    let bob: string;
    before(async () => {
      p = await buildUdfPlatform(backend, { loopback: false, worker: false, sink: false, delivery: false, query: false });
      await ensureUser(p.dbs.state, p.orgId, 'alice', ['member']);
      await ensureUser(p.dbs.state, p.orgId, 'bob', ['member']);
      alice = await mintDevUserToken(TEST_SECRETS.user, 'alice');
      bob = await mintDevUserToken(TEST_SECRETS.user, 'bob');
    });
    after(async () => { await p.close(); });
    const rows = async () => Number((await p.dbs.data.query<{ n: number }>(`SELECT count(*)::int AS n FROM alert_definitions`)).rows[0]!.n);

    it('creates, reads, lists, updates and soft-deletes a definition', async () => {
      const c = await p.api('POST', '/v1/alerts', good(), alice);
      assert.equal(c.status, 201, JSON.stringify(c.body));
      assert.equal(c.body.name, 'big transfers');
      assert.deepEqual(c.body.channels, [{ name: 'webhook', type: 'webhook', url: 'https://hooks.example.com/trace/abc', header_names: ['X-Receiver-Secret'] }]);
      assert.ok(!JSON.stringify(c.body).includes('s3cr3t'), 'header values are never returned');
      assert.equal(c.body.visibility, 'org');
      const id = c.body.id;
      const row = (await p.dbs.data.query<{ org_id: string }>(`SELECT org_id FROM alert_definitions WHERE id = $1`, [id])).rows[0]!;
      assert.equal(row.org_id, p.orgId);

      assert.equal((await p.api('GET', `/v1/alerts/${id}`, undefined, bob)).status, 200, 'org visibility: any member reads');
      assert.ok((await p.api('GET', '/v1/alerts', undefined, bob)).body.alerts.some((a: { id: string }) => a.id === id));
      const forbidden = await p.api('PUT', `/v1/alerts/${id}`, good(), bob);
      assert.equal(forbidden.status, 403, 'only the creator or an admin changes it');

      const u = await p.api('PUT', `/v1/alerts/${id}`, { ...good('https://hooks.example.com/v2'), name: 'bigger', enabled: false }, alice);
      assert.equal(u.status, 200);
      assert.equal(u.body.name, 'bigger');
      assert.equal(u.body.enabled, false);
      assert.equal(u.body.channels[0].url, 'https://hooks.example.com/v2');

      const d = await p.api('DELETE', `/v1/alerts/${id}`, undefined, alice);
      assert.equal(d.status, 200);
      assert.equal((await p.api('GET', `/v1/alerts/${id}`, undefined, alice)).status, 404);
      assert.ok(!(await p.api('GET', '/v1/alerts', undefined, alice)).body.alerts.some((a: { id: string }) => a.id === id));
      assert.equal((await p.api('DELETE', `/v1/alerts/${id}`, undefined, alice)).status, 404);
      const kept = (await p.dbs.data.query<{ deleted_at: Date | null }>(`SELECT deleted_at FROM alert_definitions WHERE id = $1`, [id])).rows[0]!;
      assert.ok(kept.deleted_at, 'soft delete keeps the row for the audit trail');
    });

    it('keeps private definitions to their creator (and admins)', async () => {
      const c = await p.api('POST', '/v1/alerts', good(undefined, { visibility: 'private' }), alice);
      assert.equal(c.status, 201);
      assert.equal((await p.api('GET', `/v1/alerts/${c.body.id}`, undefined, bob)).status, 404);
      assert.ok(!(await p.api('GET', '/v1/alerts', undefined, bob)).body.alerts.some((a: { id: string }) => a.id === c.body.id));
      assert.equal((await p.api('GET', `/v1/alerts/${c.body.id}`)).status, 200, 'admin sees it');
      assert.equal((await p.api('GET', `/v1/alerts/${c.body.id}/deliveries`, undefined, bob)).status, 404);
    });

    const refused = [
      'http://127.0.0.1:9/hook', // loopback, and the dev switch is off here
      'https://127.0.0.1/hook',
      'https://169.254.169.254/latest/meta-data/',
      'https://10.1.2.3/hook',
      'https://192.168.0.10/hook',
      'https://172.16.5.4/hook',
      'https://[::1]/hook',
      'https://[fd00::1]/hook',
      'https://0x7f.1/hook',
      'https://localhost/hook',
      'https://metadata.google.internal/computeMetadata/v1/',
      'http://hooks.example.com/plain-http',
      'ftp://hooks.example.com/x',
      'https://user:pass@hooks.example.com/x',
    ];
    for (const url of refused) {
      it(`refuses channel URL ${url} at create and update, writing nothing`, async () => {
        const before = await rows();
        const c = await p.api('POST', '/v1/alerts', good(url), alice);
        assert.equal(c.status, 422, JSON.stringify(c.body));
        assert.equal(c.body.code, 'WEBHOOK_URL_REFUSED');
        assert.equal(c.body.problems[0].path, 'channels[0].url');
        assert.ok(!JSON.stringify(c.body).includes(url.slice(8)), 'the URL is not echoed');
        assert.equal(await rows(), before);
        const ok = await p.api('POST', '/v1/alerts', good(), alice);
        const u = await p.api('PUT', `/v1/alerts/${ok.body.id}`, good(url), alice);
        assert.equal(u.status, 422);
        const still = await p.api('GET', `/v1/alerts/${ok.body.id}`, undefined, alice);
        assert.equal(still.body.channels[0].url, 'https://hooks.example.com/trace/abc');
      });
    }

    it('refuses bad channels, headers and fields with every problem by path', async () => {
      const dupNames = await p.api('POST', '/v1/alerts', { name: 'x', channels: [{ type: 'webhook', url: 'https://a.example.com/1' }, { type: 'webhook', url: 'https://a.example.com/2' }] }, alice);
      assert.equal(dupNames.status, 422);
      assert.equal(dupNames.body.code, 'ALERT_INVALID');
      assert.deepEqual(dupNames.body.problems.map((x: { path: string }) => x.path), ['channels[0].name', 'channels[1].name', 'channels[1].name']);
      const idem = await p.api('POST', '/v1/alerts', { name: 'x', channels: [{ type: 'webhook', url: 'https://a.example.com/1', headers: { 'Idempotency-Key': 'mine' } }] }, alice);
      assert.equal(idem.status, 422);
      const host = await p.api('POST', '/v1/alerts', { name: 'x', channels: [{ type: 'webhook', url: 'https://a.example.com/1', headers: { Host: 'internal' } }] }, alice);
      assert.equal(host.status, 422);
      const unknown = await p.api('POST', '/v1/alerts', { ...good(), org_id: p.orgId }, alice);
      assert.equal(unknown.status, 400, 'org_id never comes from the request');
      const noChannels = await p.api('POST', '/v1/alerts', { name: 'x', channels: [] }, alice);
      assert.equal(noChannels.status, 400);
      const badSeverityType = await p.api('POST', '/v1/alerts', { name: 'x', channels: [{ type: 'email', url: 'https://a.example.com' }] }, alice);
      assert.equal(badSeverityType.status, 400);
      const anon = await fetch(`${p.url}/v1/alerts`);
      assert.equal(anon.status, 401);
      const two = await p.api('POST', '/v1/alerts', { name: 'two', channels: [{ name: 'ops', type: 'webhook', url: 'https://a.example.com/1' }, { name: 'pager', type: 'webhook', url: 'https://b.example.com/2' }] }, alice);
      assert.equal(two.status, 201);
      assert.deepEqual(two.body.channels.map((c: { name: string }) => c.name), ['ops', 'pager']);
    });
  });
}

describe('channel URL policy with the development loopback switch', () => {
  const body = (url: string) => definitionBodySchema.parse({ name: 'x', channels: [{ type: 'webhook', url }] });
  const code = (url: string, allow: boolean) => {
    try {
      normalizeDefinition(body(url), { allowHttpLoopback: allow });
      return 'OK';
    } catch (e) {
      return e instanceof TraceError ? e.code : 'THROW';
    }
  };
  it('allows http://127.0.0.1 only with the switch, and never metadata or private addresses', () => {
    assert.equal(code('http://127.0.0.1:8080/hook', true), 'OK');
    assert.equal(code('http://127.0.0.1:8080/hook', false), 'WEBHOOK_URL_REFUSED');
    assert.equal(code('http://169.254.169.254/', true), 'WEBHOOK_URL_REFUSED');
    assert.equal(code('http://10.0.0.1/', true), 'WEBHOOK_URL_REFUSED');
    assert.equal(code('http://hooks.example.com/', true), 'WEBHOOK_URL_REFUSED');
    assert.equal(code('https://hooks.example.com/', false), 'OK');
  });
});
