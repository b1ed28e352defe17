/**
 * The web console in a real headless Chromium (Debian `chromium`, driven over the DevTools pipe),
 * served by the Gateway of the one-process platform on real Postgres:
 * - unauthenticated pages redirect to the login page; signing in with a user token sets an
 *   HttpOnly, SameSite=Strict session cookie; a user of another org cannot sign in;
 * - every page renders its data (overview, DAGs with versions and the active one, tasks with
 *   attempts and errors and a status filter, datasets with versions, partitions and lineage,
 *   chain sync, alerts with deliveries, dead letters), under a CSP that allows no script;
 * - names and messages with markup render as text;
 * - a member sees no admin data or actions and no other org's data;
 * - a replay needs the session's CSRF token and this origin; refused posts change nothing.
 * Screenshots of each page go to test-output/console/.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { startPlatform, type TestPlatform } from '../support/platform.js';
import { claimOk, deploy, taskCall, trigger } from '../support/drive.js';
import { newId } from '../../src/core/ids.js';
import { mintDevUserToken } from '../../src/auth/user.js';
import { ensureUser } from '../../src/dispatcher/identity.js';
import { liteSummary } from '../../src/lite/summary.js';
import { Browser, chromiumPath, type Page } from './cdp.js';
import { TEST_USER_SECRET, addOtherOrg } from './support.js';

const SHOTS = join(process.cwd(), 'test-output', 'console');
const XSS_DATASET = '<script>window.__xss=1</script>';
const XSS_ALERT = '<img src=x onerror="window.__xss=2">alert';
const XSS_ERROR = '<script>window.__xss=3</script> disk full';
const DEAD_LETTER_ID = '900001';

const DAG = (extra = '') => `name: console_demo
jobs:
  - name: src
    activation: source
    runtime: ecs_platform
    operator: noop
    source: { kind: manual }
    outputs: 1
    max_attempts: 1${extra}
publish:
  console_src:
    from: { job: src, output: 0 }
`;

const CHAIN_SYNC = `kind: chain_sync
name: console_sync
chain_id: 31337
mode:
  kind: follow_head
  from_block: 0
  tail_lag: 1
  head_poll_interval_seconds: 1
  max_head_age_seconds: 3600
streams:
  blocks:
    cryo_dataset_name: blocks
    rpc_pool: local
    chunk_size: 100
    max_inflight: 4
`;

describe('web console in headless Chromium', { skip: chromiumPath() ? false : 'chromium is not installed' }, () => {
  let p: TestPlatform;
  let browser: Browser;
  let gw: string;
  let member: string;
  let failedTask: string;
  let activeVersion: string;
  let alertId: string;

  /** A signed-in tab for this token (its own cookie jar), via the login form. */
  const signIn = async (token: string): Promise<Page> => {
    const page = await browser.newPage();
    await page.goto(`${gw}/console`);
    assert.equal(await page.url(), `${gw}/console/login`);
    await page.waitForLoad(() => page.eval(`(() => { document.querySelector('#token').value = ${JSON.stringify(token)}; document.querySelector('form[action="/console/login"]').submit(); })()`));
    return page;
  };
  const shot = (page: Page, name: string) => page.screenshot(join(SHOTS, `${name}.png`));
  const dlqCount = async () => Number((await p.dbs.queue.query<{ n: string }>(`SELECT count(*) AS n FROM queue_dead_letters WHERE id = $1`, [DEAD_LETTER_ID])).rows[0]!.n);
  const cookieOf = (r: Response) => (r.headers.get('set-cookie') ?? '').split(';')[0]!;
  const login = async (token: string) => cookieOf(await fetch(`${gw}/console/login`, { method: 'POST', redirect: 'manual', body: new URLSearchParams({ token }) }));
  const csrfIn = (pageHtml: string) => /name="csrf" value="([^"]+)"/.exec(pageHtml)?.[1];

  before(async () => {
    // The RPC pool points nowhere: the chain sync's head comes from the observation inserted below.
    p = await startPlatform('postgres', { workers: 0, settings: { leaseSeconds: 60 }, env: { TRACE_USER_JWT_SECRET: TEST_USER_SECRET, TRACE_RPC_POOL_LOCAL_URL: 'http://127.0.0.1:9' } });
    gw = p.info.gateway_url;
    await ensureUser(p.dbs.state, p.info.org_id, 'member1', ['member']);
    member = await mintDevUserToken(TEST_USER_SECRET, 'member1');
    await deploy(p, DAG());
    const v2 = await deploy(p, DAG('\n    timeout_seconds: 90'));
    activeVersion = v2.dag_version_id;
    assert.equal((await p.api('PUT', '/v1/dags/console_demo/active', { dag_version_id: activeVersion })).status, 200);
    // A task that failed its first attempt with a message full of markup.
    const lease = await claimOk(p, await trigger(p, 'console_demo', 'src'));
    failedTask = lease.task_id;
    assert.equal((await taskCall(p, 'complete', lease, { status: 'Failed', error_message: XSS_ERROR })).status, 200);
    // A dataset whose name is markup (names are checked on every write path, so it goes in directly).
    await p.dbs.state.query(`INSERT INTO datasets (id, org_id, name, kind) VALUES ($1, $2, $3, 'external')`, [newId(), p.info.org_id, XSS_DATASET]);
    const alert = await p.api('POST', '/v1/alerts', { name: XSS_ALERT, channels: [{ type: 'webhook', url: 'https://hooks.example.com/trace' }] });
    assert.equal(alert.status, 201, JSON.stringify(alert.body));
    alertId = alert.body.id;
    const ev = newId();
    await p.dbs.data.query(`INSERT INTO alert_events (id, org_id, alert_definition_id, severity, payload, dedupe_key, event_time) VALUES ($1, $2, $3, 'warning', '{}', 'transfer-42', now())`, [ev, p.info.org_id, alertId]);
    await p.dbs.data.query(`INSERT INTO alert_deliveries (id, org_id, alert_event_id, alert_definition_id, channel, status, attempt, last_status_code, delivered_at)
                            VALUES ($1, $2, $3, $4, 'webhook', 'Delivered', 1, 204, now())`, [newId(), p.info.org_id, ev, alertId]);
    await p.dbs.queue.query(`INSERT INTO queue_dead_letters (id, queue, body, receive_count, created_at, last_error) VALUES ($1, 'buffers', '{"batch_uri":"file:///nowhere/batch.jsonl"}', 5, now(), 'batch unreadable')`, [DEAD_LETTER_ID]);
    const sync = await p.api('POST', '/v1/chain-sync', CHAIN_SYNC, { 'content-type': 'application/yaml' });
    assert.equal(sync.status, 201, JSON.stringify(sync.body));
    await p.dbs.state.query(`INSERT INTO chain_head_observations (org_id, chain_id, rpc_pool, head_block, observed_at, source, last_attempt_at)
                             VALUES ($1, 31337, 'local', 1234, now(), 'test', now())
                             ON CONFLICT (org_id, chain_id, rpc_pool) DO UPDATE SET head_block = 1234, observed_at = now()`, [p.info.org_id]);
    await addOtherOrg(p.dbs.state);
    browser = await Browser.launch();
  });
  after(async () => {
    await browser?.close();
    await p?.close();
  });

  it('redirects unauthenticated pages to the login page, and signs in with a user token into an HttpOnly SameSite=Strict cookie', async () => {
    for (const path of ['/console', '/console/tasks', '/console/datasets/console_src', '/console/dead-letters']) {
      const r = await fetch(`${gw}${path}`, { redirect: 'manual' });
      assert.equal(r.status, 303, path);
      assert.equal(r.headers.get('location'), '/console/login');
    }
    const bad = await fetch(`${gw}/console`, { redirect: 'manual', headers: { cookie: 'trace_console=not.a.token' } });
    assert.equal(bad.status, 303);
    const page = await browser.newPage();
    await page.goto(`${gw}/console/dags`);
    assert.equal(await page.url(), `${gw}/console/login`);
    assert.match(await page.text(), /Sign in/);
    await shot(page, 'login');
    await page.waitForLoad(() => page.eval(`(() => { document.querySelector('#token').value = 'nonsense.token.here'; document.querySelector('form').submit(); })()`));
    assert.match(await page.text(), /not accepted/);
    assert.equal((await page.cookies()).length, 0);

    const admin = await signIn(p.admin);
    assert.equal(await admin.url(), `${gw}/console`);
    const cookies = await admin.cookies();
    assert.equal(cookies.length, 1);
    assert.equal(cookies[0]!.name, 'trace_console');
    assert.equal(cookies[0]!.httpOnly, true);
    assert.equal(cookies[0]!.sameSite, 'Strict');
    assert.equal(cookies[0]!.secure, false);
    assert.equal(cookies[0]!.path, '/console');
  });

  it('a user of another org cannot sign in and gets no cookie', async () => {
    const r = await fetch(`${gw}/console/login`, { method: 'POST', redirect: 'manual', body: new URLSearchParams({ token: await mintDevUserToken(TEST_USER_SECRET, 'outsider') }) });
    assert.equal(r.status, 403);
    assert.equal(r.headers.get('set-cookie'), null);
    assert.match(await r.text(), /not a member/);
  });

  it('renders every page for an admin, with a CSP that allows no script', async () => {
    const page = await signIn(p.admin);
    const pages: Array<[name: string, path: string, expect: RegExp[]]> = [
      ['overview', '/console', [/Overview/, /DAGs/, /Failed/, /Chain sync/]],
      ['dags', '/console/dags', [/console_demo/, new RegExp(activeVersion), /active/]],
      ['tasks', '/console/tasks', [/console_demo\.src/, /disk full/, /1\/1/]],
      ['tasks-failed', '/console/tasks?status=Failed', [/Tasks \(Failed\)/, /console_demo\.src/]],
      ['task', `/console/tasks/${failedTask}`, [/Attempts/, /disk full/, /test-worker/]],
      ['datasets', '/console/datasets', [/console_src/, /alert_events/]],
      ['dataset', '/console/datasets/console_src', [/Dataset console_src/]],
      ['chain-sync', '/console/chain-sync', [/console_sync/, /chain 31337/, /Head: 1,234/, /console_sync_blocks\t\w+\t0\t1,234\t/]],
      ['alerts', '/console/alerts', [/hooks|webhook/]],
      ['alert', `/console/alerts/${alertId}`, [/Deliveries/, /transfer-42/, /Delivered/, /204/]],
      ['dead-letters', '/console/dead-letters', [new RegExp(DEAD_LETTER_ID), /batch unreadable/, /Replay/]],
    ];
    for (const [name, path, expect] of pages) {
      await page.goto(`${gw}${path}`);
      assert.equal(await page.url(), `${gw}${path}`, `${name} did not redirect`);
      const text = await page.text();
      for (const re of expect) assert.match(text, re, `${name}: ${re}`);
      assert.equal(await page.eval('document.querySelectorAll("script").length'), 0, name);
      assert.ok(await page.eval<boolean>(`getComputedStyle(document.querySelector('header')).display === 'flex'`), `${name}: the style sheet applies`);
      await shot(page, name);
    }
    const r = await fetch(`${gw}/console`, { headers: { cookie: await login(p.admin) } });
    const csp = r.headers.get('content-security-policy') ?? '';
    assert.match(csp, /default-src 'none'/);
    assert.match(csp, /style-src 'self'/);
    assert.doesNotMatch(csp, /script-src|unsafe-inline/);
    assert.equal(r.headers.get('x-frame-options'), 'DENY');
  });

  it('renders names and messages with markup as text', async () => {
    const page = await signIn(p.admin);
    for (const [path, literal] of [['/console/datasets', XSS_DATASET], ['/console/alerts', XSS_ALERT], ['/console/tasks', XSS_ERROR], [`/console/tasks/${failedTask}`, XSS_ERROR]] as const) {
      await page.goto(`${gw}${path}`);
      assert.ok((await page.text()).includes(literal), `${path} shows ${literal} as text`);
      assert.equal(await page.eval('document.querySelectorAll("main script, main img").length'), 0, path);
      assert.equal(await page.eval('typeof window.__xss'), 'undefined', path);
    }
    await shot(page, 'xss-tasks');
    const raw = await (await fetch(`${gw}/console/datasets`, { headers: { cookie: await login(p.admin) } })).text();
    assert.ok(raw.includes('&lt;script&gt;window.__xss=1&lt;/script&gt;'));
    assert.ok(!raw.includes('<script'));
    assert.ok(page.consoleMessages.length === 0, page.consoleMessages.join('\n'));
  });

  it('a member sees no admin data or actions and nothing of another org', async () => {
    const page = await signIn(member);
    await page.goto(`${gw}/console/dead-letters`);
    let text = await page.text();
    assert.match(text, /Not available to you/);
    assert.match(text, /ADMIN_REQUIRED/);
    assert.doesNotMatch(text, new RegExp(DEAD_LETTER_ID));
    assert.equal(await page.eval('document.querySelectorAll("form[action*=replay]").length'), 0);
    await shot(page, 'member-dead-letters');
    await page.goto(`${gw}/console/tasks`);
    text = await page.text();
    assert.match(text, /ADMIN_REQUIRED/);
    assert.doesNotMatch(text, /disk full/);
    await page.goto(`${gw}/console/datasets`);
    text = await page.text();
    assert.match(text, /console_src/);
    assert.doesNotMatch(text, /other_org_secret/);
    await page.goto(`${gw}/console/dags`);
    assert.doesNotMatch(await page.text(), /other_dag/);
    await page.goto(`${gw}/console/datasets/other_org_secret`);
    assert.match(await page.text(), /DATASET_NOT_FOUND/);

    // Even a well-formed replay post from a member's own session is refused by the API.
    const cookie = await login(member);
    const html = await (await fetch(`${gw}/console`, { headers: { cookie } })).text();
    const r = await fetch(`${gw}/console/dead-letters/${DEAD_LETTER_ID}/replay`, { method: 'POST', redirect: 'manual', headers: { cookie }, body: new URLSearchParams({ csrf: csrfIn(html)! }) });
    assert.equal(r.status, 403);
    assert.match(await r.text(), /ADMIN_REQUIRED/);
    assert.equal(await dlqCount(), 1);
  });

  it('refuses replay posts without the session\'s CSRF token, from another origin, or without a session', async () => {
    const admin = await login(p.admin);
    const memberCookie = await login(member);
    const memberCsrf = csrfIn(await (await fetch(`${gw}/console`, { headers: { cookie: memberCookie } })).text())!;
    const adminCsrf = csrfIn(await (await fetch(`${gw}/console/dead-letters`, { headers: { cookie: admin } })).text())!;
    assert.notEqual(memberCsrf, adminCsrf);
    const url = `${gw}/console/dead-letters/${DEAD_LETTER_ID}/replay`;
    const post = (headers: Record<string, string>, form: Record<string, string>) => fetch(url, { method: 'POST', redirect: 'manual', headers, body: new URLSearchParams(form) });
    assert.equal((await post({ cookie: admin }, {})).status, 403, 'no CSRF token');
    assert.equal((await post({ cookie: admin }, { csrf: memberCsrf })).status, 403, 'another session\'s token');
    assert.equal((await post({ cookie: admin, origin: 'https://evil.example' }, { csrf: adminCsrf })).status, 403, 'another origin');
    assert.equal((await post({ cookie: admin, 'sec-fetch-site': 'cross-site' }, { csrf: adminCsrf })).status, 403, 'a cross-site form');
    const anonymous = await post({}, { csrf: adminCsrf });
    assert.equal(anonymous.status, 303, 'no session');
    assert.equal(anonymous.headers.get('location'), '/console/login');
    assert.equal((await fetch(url, { headers: { cookie: admin }, redirect: 'manual' })).status, 405);
    assert.equal(await dlqCount(), 1, 'nothing was replayed');
  });

  it('an admin replays a dead letter with the form', async () => {
    const page = await signIn(p.admin);
    await page.goto(`${gw}/console/dead-letters`);
    await page.waitForLoad(() => page.eval(`document.querySelector('form[action="/console/dead-letters/${DEAD_LETTER_ID}/replay"] button').click()`));
    assert.equal(await page.url(), `${gw}/console/dead-letters?replayed=${DEAD_LETTER_ID}`);
    assert.match(await page.text(), /was put back on the queue/);
    await shot(page, 'replayed');
    assert.equal(await dlqCount(), 0);
  });

  it('signing out clears the session', async () => {
    const page = await signIn(member);
    await page.waitForLoad(() => page.eval(`document.querySelector('form[action="/console/logout"]').submit()`));
    assert.equal(await page.url(), `${gw}/console/login`);
    assert.equal((await page.cookies()).length, 0);
  });

  it('trace lite up prints the console address', () => {
    assert.match(liteSummary(p.info), new RegExp(`console +${gw.replace(/[.]/g, '\\.')}/console`));
  });
});
