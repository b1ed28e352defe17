/**
 * The failure drills of architecture/operations.md, on a deployment of separate processes
 * (`trace dispatcher`, `trace worker` x2, `trace sink`, `trace delivery`) on real Postgres, each
 * database behind a TCP proxy the test owns. Each drill triggers a known set of work items and/or
 * alerts, injects its failure, and checks at the end that every item completed exactly once (no
 * duplicate outputs or deliveries), that no service crashed, and that recovery needed no restart
 * by hand. It prints one JSON line with the time to recover.
 *
 * Knobs: TRACE_DRILL_STATE_CUT_SECONDS (default 30, above the 20 s the operations drill asks
 * for), TRACE_DRILL_DATA_CUT_SECONDS (default 30;
 * 200 reproduces the audit's long outage), TRACE_DRILL_QUEUE_CUT_SECONDS (default 30),
 * TRACE_DRILL_KEEP=1 keeps the logs under the printed home. Run them alone with `npm run drills`.
 */
import { after, afterEach, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFile, writeFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { BACKENDS } from '../support/db.js';
import { Cluster, SECRETS } from './support/cluster.js';
import { alertProblems, alertRows, terminalFailures, workProblems, workRows } from './support/checks.js';

const knob = (name: string, def: number) => {
  const v = Number(process.env[name] ?? def);
  if (!Number.isFinite(v) || v <= 0) throw new Error(`${name} must be a positive number of seconds`);
  return v;
};
const STATE_CUT_S = knob('TRACE_DRILL_STATE_CUT_SECONDS', 30);
const DATA_CUT_S = knob('TRACE_DRILL_DATA_CUT_SECONDS', 30);
const QUEUE_CUT_S = knob('TRACE_DRILL_QUEUE_CUT_SECONDS', 30);
const FLAP_S = 3;
const ROOT = new URL('../../', import.meta.url).pathname;
const POISON_CURSOR = 7001;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function report(drill: string, fields: Record<string, unknown>): void {
  process.stdout.write(`${JSON.stringify({ drill, ...fields })}\n`);
}

describe('failure drills: separate processes on real Postgres', { skip: !BACKENDS.includes('postgres') && 'needs real Postgres' }, () => {
  let c: Cluster;
  let cursor = 1000;
  const next = () => ++cursor;
  let failed = false;

  /** Waits until every work item and alert is done exactly once; returns how long it took. */
  async function allDone(work: string[], alerts: number[], timeoutMs: number): Promise<number> {
    const t0 = Date.now();
    let last: string[] = [];
    try {
      await c.until('every item done exactly once', async () => {
        last = [...await workProblems(c, work), ...await alertProblems(c, alerts)];
        return last.length === 0;
      }, timeoutMs, 200);
    } catch (e) {
      throw new Error(`${(e as Error).message}: ${last.slice(0, 10).join("; ")}`, { cause: e });
    }
    return Date.now() - t0;
  }

  async function running(ids: string[], atLeast: number, where = ''): Promise<void> {
    await c.until(`${atLeast} tasks running`, async () => {
      const r = await c.db.state.query<{ n: number }>(`SELECT count(*)::int AS n FROM tasks WHERE id = ANY ($1::uuid[]) AND status = 'Running' ${where}`, [ids]);
      return r.rows[0]!.n >= atLeast;
    }, 60_000, 50);
  }

  async function triggerMany(job: string, n: number): Promise<string[]> {
    const ids: string[] = [];
    for (let i = 0; i < n; i++) ids.push(await c.trigger(job, next()));
    return ids;
  }

  async function ticks(n: number): Promise<number[]> {
    const out: number[] = [];
    for (let i = 0; i < n; i++) {
      const x = next();
      await c.trigger('ticks', x);
      out.push(x);
    }
    return out;
  }

  async function readyz(): Promise<{ status: number; body: any }> {
    const r = await fetch(`${c.url}/readyz`, { signal: AbortSignal.timeout(5_000) });
    return { status: r.status, body: await r.json() };
  }

  before(async () => {
    c = await Cluster.start();
    await c.startDispatcher();
    c.startWorker('w1');
    c.startWorker('w2');
    c.startSink();
    c.startDelivery();
    await c.setUp();
    // Warm-up: one work item and one alert through every process.
    const w = await c.trigger('work', next());
    const a = next();
    await c.trigger('ticks', a);
    await allDone([w], [a], 180_000);
  });

  afterEach(() => {
    assert.deepEqual(c.unexpected, [], 'a service crashed');
  });

  after(async () => {
    if (c && (failed || c.unexpected.length > 0)) {
      for (const name of c.procs.keys()) process.stderr.write(`--- ${name} ---\n${await c.tail(name, 30)}\n`);
    }
    if (process.env.TRACE_DRILL_KEEP) process.stderr.write(`drill logs kept under ${c?.home}\n`);
    await c?.close();
  });

  const drill = (name: string, fn: () => Promise<void>) => it(name, { timeout: 600_000 }, async () => {
    try {
      await fn();
    } catch (e) {
      failed = true;
      throw e;
    }
  });

  drill('1. restart the Dispatcher under load: it stops leasing, drains, exits 0; the next one resumes', async () => {
    const work = await triggerMany('work', 12);
    const inproc = await triggerMany('inproc', 3);
    const long = await triggerMany('inproc_long', 2);
    const alerts = await ticks(2);
    await running(long, 2);
    const sigAt = Date.now();
    const code = await c.stopDispatcher('SIGTERM');
    const exitAt = Date.now();
    assert.equal(code, 0, `the Dispatcher exited with ${code}: ${await c.tail('dispatcher', 20)}`);
    // Nothing was leased after the signal: claims were refused while it drained.
    const leased = await c.db.state.query<{ n: number }>(
      `SELECT count(*)::int AS n FROM task_attempts WHERE started_at > to_timestamp($1 / 1000.0) AND started_at < to_timestamp($2 / 1000.0)`,
      [sigAt + 1_000, exitAt]);
    assert.equal(leased.rows[0]!.n, 0, 'the Dispatcher leased work while draining');
    // The next Dispatcher runs with short leases for drill 2.
    await c.startDispatcher({ TRACE_LEASE_SECONDS: '6' });
    const restartAt = Date.now();
    await allDone([...work, ...inproc, ...long], alerts, 180_000);
    // Runs longer than the grace period were released, not left to expire, and did not count.
    for (const r of await workRows(c, long)) {
      assert.deepEqual(r.history, ['Released', 'Completed'], `${r.job}#${r.cursor}`);
      assert.equal(r.attempt - r.uncounted_attempts, 1);
    }
    report('restart_dispatcher', { work_items: work.length + inproc.length + long.length, alerts: alerts.length, drain_ms: exitAt - sigAt, exit_code: code, recover_ms: Date.now() - restartAt });
  });

  drill('2. SIGKILL a worker mid-task: its lease expires, the task retries elsewhere, the dead attempt is fenced', async () => {
    const items = await triggerMany('work_long', 6);
    await running(items, 1, `AND worker_id = 'w1'`);
    const killAt = Date.now();
    await c.stop('worker:w1', 'SIGKILL');
    c.startWorker('w3');
    await allDone(items, [], 180_000);
    const rows = await workRows(c, items);
    const killed = rows.filter((r) => r.history.includes('TimedOut'));
    assert.ok(killed.length >= 1, 'no task was running on the killed worker');
    for (const r of killed) assert.equal(r.history.at(-1), 'Completed');
    report('sigkill_worker', { work_items: items.length, killed: killed.length, recover_ms: Date.now() - killAt });
    // Back to the default lease for the outage drills (a clean restart).
    assert.equal(await c.stopDispatcher('SIGTERM'), 0);
    await c.startDispatcher();
  });

  drill('3. duplicate wake-ups: only one attempt claims; duplicates are harmless', async () => {
    const t0 = Date.now();
    const items = await triggerMany('work', 10);
    await c.db.queue.query(`
      INSERT INTO queue_messages (queue, body)
      SELECT 'tasks', jsonb_build_object('task_id', x) FROM unnest($1::text[]) x, generate_series(1, 5)`, [items]);
    await c.db.queue.query(`SELECT pg_notify('trace_queue', 'tasks')`);
    await allDone(items, [], 120_000);
    for (const r of await workRows(c, items)) assert.deepEqual(r.history, ['Completed'], `${r.job}#${r.cursor} ran more than once`);
    report('duplicate_wakeups', { work_items: items.length, duplicates_per_item: 5, recover_ms: Date.now() - t0 });
  });

  drill(`4. state database unreachable for ${STATE_CUT_S} s under load: no finished work is lost`, async () => {
    const work = await triggerMany('work', 12);
    const inproc = await triggerMany('inproc', 3);
    const alerts = await ticks(2);
    await running([...work, ...inproc], 4);
    const cutAt = Date.now();
    c.proxies.state.cut();
    await sleep(Math.min(5_000, STATE_CUT_S * 500));
    const mid = await readyz();
    assert.equal(mid.status, 503);
    assert.match(mid.body.error, /state database/);
    assert.equal((await fetch(`${c.url}/healthz`)).status, 200);
    await sleep(Math.max(0, cutAt + STATE_CUT_S * 1000 - Date.now()));
    c.proxies.state.restore();
    const restoreAt = Date.now();
    assert.deepEqual(c.unexpected, [], 'a service died during the cut');
    await allDone([...work, ...inproc], alerts, 240_000);
    // Every attempt that ran finished once: none was thrown away and run again.
    for (const r of await workRows(c, [...work, ...inproc])) assert.deepEqual(r.history, ['Completed'], `${r.job}#${r.cursor}`);
    assert.deepEqual(await terminalFailures(c), []);
    report('state_db_unreachable', { cut_s: STATE_CUT_S, work_items: work.length + inproc.length, alerts: alerts.length, recover_ms: Date.now() - restoreAt });
  });

  drill(`5. data database unreachable for ${DATA_CUT_S} s: scheduling goes on, no alert is lost`, async () => {
    const alerts = await ticks(4);
    const cutAt = Date.now();
    c.proxies.data.cut();
    // Scheduling does not need the data database.
    const work = await triggerMany('work', 6);
    await allDone(work, [], Math.max(10_000, DATA_CUT_S * 1000 - 5_000));
    alerts.push(...await ticks(2));
    const mid = await readyz();
    assert.equal(mid.status, 503);
    assert.match(mid.body.error, /data database/);
    await sleep(Math.max(0, cutAt + DATA_CUT_S * 1000 - Date.now()));
    c.proxies.data.restore();
    const restoreAt = Date.now();
    await allDone(work, alerts, 240_000);
    // The outage was an infrastructure failure, named as such, and used up no attempt.
    const released = await c.db.state.query<{ error_message: string }>(
      `SELECT a.error_message FROM task_attempts a WHERE a.status = 'Released' AND a.started_at >= to_timestamp($1 / 1000.0)`, [cutAt - 1_000]);
    assert.ok(released.rows.length >= 1, 'no attempt waited for the data database');
    for (const r of released.rows) assert.match(r.error_message, /data_database unreachable/);
    const misleading = await c.db.state.query<{ n: number }>(`SELECT count(*)::int AS n FROM task_attempts WHERE error_message LIKE '%bundle_unavailable%'`);
    assert.equal(misleading.rows[0]!.n, 0);
    // The sink held its batches through the outage instead of spending their receives.
    assert.equal((await c.api('GET', '/v1/sink/dead-letters')).body.dead_letters.length, 0);
    assert.deepEqual(await terminalFailures(c), []);
    report('data_db_unreachable', { cut_s: DATA_CUT_S, alerts: alerts.length, work_items: work.length, released_attempts: released.rows.length, recover_ms: Date.now() - restoreAt });
  });

  drill(`6. queue database unreachable for ${QUEUE_CUT_S} s: wake-ups wait in the outbox, nothing is lost`, async () => {
    const work = await triggerMany('work', 8);
    const alerts = await ticks(2);
    const cutAt = Date.now();
    c.proxies.queue.cut();
    await sleep(2_000);
    work.push(...await triggerMany('work', 6));
    await c.until('outbox rows waiting for the queue', async () => {
      const r = await c.db.state.query<{ n: number; a: number }>(
        `SELECT count(*)::int AS n, coalesce(max(attempts), 0)::int AS a FROM outbox WHERE status = 'Pending' AND last_error LIKE '%queue is unreachable%'`);
      return r.rows[0]!.n >= 1 && r.rows[0]!.a === 0;
    }, 30_000, 200);
    await sleep(Math.max(0, cutAt + QUEUE_CUT_S * 1000 - Date.now()));
    c.proxies.queue.restore();
    const restoreAt = Date.now();
    await allDone(work, alerts, 240_000);
    for (const r of await workRows(c, work)) assert.deepEqual(r.history, ['Completed'], `${r.job}#${r.cursor}`);
    assert.deepEqual(await terminalFailures(c), []);
    assert.equal((await c.api('GET', '/v1/sink/dead-letters')).body.dead_letters.length, 0);
    report('queue_db_unreachable', { cut_s: QUEUE_CUT_S, work_items: work.length, alerts: alerts.length, recover_ms: Date.now() - restoreAt });
  });

  drill('7. poison buffer batch: dead-lettered, the sink goes on, a manual replay after repair delivers it once', async () => {
    const t0 = Date.now();
    const good = await ticks(2);
    await c.trigger('ticks', POISON_CURSOR);
    await allDone([], good, 120_000);
    const dlq = await c.until('the poison batch in the dead-letter queue', async () => {
      const r = await c.api('GET', '/v1/sink/dead-letters');
      return r.body.dead_letters?.length === 1 ? r.body.dead_letters[0] : undefined;
    }, 120_000, 500);
    const rejections = await c.db.data.query<{ n: number }>(`SELECT count(*)::int AS n FROM buffer_rejections WHERE publish_id = $1`, [dlq.message.publish_id]);
    assert.equal(rejections.rows[0]!.n, 3, 'rejected on each of its three receives');
    assert.equal((await alertRows(c, [POISON_CURSOR])).length, 0, 'nothing of the poison batch was written');
    // Repair the artifact in place (same size), then replay through the CLI.
    const file = fileURLToPath(String(dlq.message.batch_uri));
    const text = await readFile(file, 'utf8');
    assert.match(text, /"severity":"xnfo"/);
    await writeFile(file, text.replaceAll('"severity":"xnfo"', '"severity":"info"'));
    const replayAt = Date.now();
    const cli = spawn(process.execPath, [`${ROOT}bin/trace.mjs`, 'sink', 'dlq', 'replay', String(dlq.id)], {
      env: { PATH: process.env.PATH, TRACE_FROM_SOURCE: '1', TRACE_DISPATCHER_URL: c.url, TRACE_TOKEN: c.adminToken, TRACE_WORKER_TOKEN: SECRETS.worker, TRACE_HOME: c.home },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    cli.stdout.on('data', (b: Buffer) => { out += b.toString(); });
    cli.stderr.on('data', (b: Buffer) => { out += b.toString(); });
    const code = await new Promise<number | null>((r) => cli.on('exit', (x) => r(x)));
    assert.equal(code, 0, out);
    await allDone([], [...good, POISON_CURSOR], 120_000);
    assert.equal((await c.api('GET', '/v1/sink/dead-letters')).body.dead_letters.length, 0);
    report('poison_buffer_batch', { alerts: good.length + 1, receives_before_dlq: 3, recover_ms: Date.now() - replayAt, total_ms: Date.now() - t0 });
  });

  drill('8. webhook receiver failing then recovering: retried with backoff, delivered once each', async () => {
    c.receiver.failing = true;
    const alerts = await ticks(3);
    // Every alert was refused once, and at least one retry was refused too.
    await c.until('refused sends and a refused retry', async () => {
      const refusedIds = c.receiver.requests.filter((r) => r.status === 503).map((r) => r.deliveryId);
      return new Set(refusedIds).size >= alerts.length && refusedIds.length > alerts.length;
    }, 120_000, 200);
    const recoverAt = Date.now();
    c.receiver.failing = false;
    await allDone([], alerts, 180_000);
    const refused = c.receiver.requests.filter((r) => r.status === 503).length;
    assert.ok(refused >= alerts.length + 1, `only ${refused} refused sends`);
    const keys = new Set((await alertRows(c, alerts)).flatMap((r) => r.delivery_ids));
    for (const r of c.receiver.requests.filter((x) => keys.has(x.deliveryId))) assert.equal(r.key, r.deliveryId, 'Idempotency-Key is the delivery id');
    report('webhook_failing_then_recovering', { alerts: alerts.length, refused_sends: refused, recover_ms: Date.now() - recoverAt });
  });

  drill(`9. every database cut for ${FLAP_S} s, twice each, under load: every service stays up and catches up`, async () => {
    const work = await triggerMany('work', 12);
    const inproc = await triggerMany('inproc', 3);
    const alerts = await ticks(2);
    await running([...work, ...inproc], 3);
    const t0 = Date.now();
    for (let round = 0; round < 2; round++) {
      for (const name of ['state', 'data', 'queue'] as const) {
        await c.proxies[name].cutFor(FLAP_S * 1000);
        await sleep(1_500);
      }
    }
    const restoreAt = Date.now();
    assert.deepEqual(c.unexpected, []);
    await allDone([...work, ...inproc], [...alerts], 240_000);
    assert.deepEqual(await terminalFailures(c), []);
    report('connection_flaps', { cuts: 6, cut_s: FLAP_S, work_items: work.length + inproc.length, alerts: alerts.length, flapping_ms: restoreAt - t0, recover_ms: Date.now() - restoreAt });
    assert.deepEqual(c.running().sort(), ['delivery', 'dispatcher', 'sink', 'worker:w2', 'worker:w3']);
  });
});
