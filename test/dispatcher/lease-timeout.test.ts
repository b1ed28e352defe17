/**
 * A job's `heartbeat_timeout_seconds` is its lease: the claim grants that long, each heartbeat
 * extends it by that much, so a worker that stops heartbeating loses the task about that long
 * after its last beat, while one that keeps beating keeps it. The Dispatcher's lease setting
 * only caps it.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { BACKENDS } from '../support/db.js';
import { startPlatform, waitFor } from '../support/platform.js';
import { claim, claimOk, deploy, taskCall, trigger } from '../support/drive.js';

const source = (name: string, hb: number) => `
  - name: ${name}
    activation: source
    runtime: ecs_platform
    operator: test_emit
    source: { kind: manual }
    outputs: 1
    heartbeat_timeout_seconds: ${hb}
    max_attempts: 3
    config: { events: [] }`;

const DAG = `name: hb
jobs:${source('dead', 5)}${source('alive', 5)}${source('slow', 600)}
`;

/** Seconds from now until an ISO timestamp. */
const secondsUntil = (iso: string) => (Date.parse(iso) - Date.now()) / 1000;

for (const backend of BACKENDS) {
  test(`${backend}: the lease is the job's heartbeat timeout; a dead worker's task is re-leased after it`, async () => {
    // The ceiling (60 s) is far above the 5 s jobs, so only their own timeout can explain a 5 s lease.
    const p = await startPlatform(backend, { workers: 0, settings: { leaseSeconds: 60 } });
    try {
      await deploy(p, DAG);
      const deadId = await trigger(p, 'hb', 'dead');
      const aliveId = await trigger(p, 'hb', 'alive');
      const slowId = await trigger(p, 'hb', 'slow');

      // A job above the ceiling gets the ceiling.
      const slow = await claimOk(p, slowId, 'w-slow');
      assert.equal(slow.attempt, 1);
      const slowLease = secondsUntil(await leaseOf(p, slowId));
      assert.ok(slowLease > 50 && slowLease <= 60.5, `a 600 s job under a 60 s ceiling got a ${slowLease} s lease`);
      const slowDone = await taskCall(p, 'complete', slow, { status: 'Completed' });
      assert.equal(slowDone.status, 200, JSON.stringify(slowDone.body));

      const dead = await claimOk(p, deadId, 'w-dead');
      const claimedAt = Date.now();
      const deadLease = secondsUntil(await leaseOf(p, deadId));
      assert.ok(deadLease > 3.5 && deadLease <= 5.5, `a 5 s job got a ${deadLease} s lease`);
      assert.equal(dead.attempt, 1);

      const alive = await claimOk(p, aliveId, 'w-alive');
      // The live worker beats every second, each beat extending the lease by 5 s from now.
      let beating = true;
      let beats = 0;
      const beater = (async () => {
        while (beating) {
          const r = await taskCall(p, 'heartbeat', alive);
          assert.equal(r.status, 200, JSON.stringify(r.body));
          const left = secondsUntil(r.body.lease_expires_at);
          assert.ok(left > 3.5 && left <= 5.5, `a heartbeat extended the lease to ${left} s`);
          beats++;
          await new Promise((res) => setTimeout(res, 1_000));
        }
      })();

      // The dead worker never beats: the reaper fails its attempt once the 5 s lease is out and
      // the task is claimable again, as attempt 2, by another worker.
      const again = await waitFor('the dead attempt re-leased', async () => {
        const r = await claim(p, deadId, 'w-rescue');
        return r.body.status === 'Claimed'
          ? { task_id: deadId, attempt: r.body.attempt as number, lease_token: r.body.lease_token as string, capability_token: r.body.capability_token as string, task: r.body.task }
          : undefined;
      }, 20_000, 100);
      const relet = (Date.now() - claimedAt) / 1000;
      assert.equal(again.attempt, 2);
      assert.ok(relet >= 4.5 && relet < 12, `re-leased ${relet} s after the claim (heartbeat timeout 5 s)`);
      const hist = await p.dbs.state.query<{ status: string; error_message: string }>(
        `SELECT status, error_message FROM task_attempts WHERE task_id = $1 AND attempt = 1`, [deadId]);
      assert.equal(hist.rows[0]!.status, 'TimedOut');
      assert.match(hist.rows[0]!.error_message, /lease expired/);
      // The rescuing attempt has a 5 s lease of its own and nobody beats for it: complete it now.
      const rescued = await taskCall(p, 'complete', again, { status: 'Completed' });
      assert.equal(rescued.status, 200, JSON.stringify(rescued.body));

      // By now the live task has run past several 5 s windows on heartbeats alone.
      await waitFor('the live worker past two lease windows', async () => (Date.now() - claimedAt > 10_000 ? true : undefined), 20_000, 200);
      beating = false;
      await beater;
      assert.ok(beats >= 8, `only ${beats} heartbeats`);
      const row = await p.dbs.state.query<{ status: string; attempt: number }>(`SELECT status, attempt FROM tasks WHERE id = $1`, [aliveId]);
      assert.deepEqual([row.rows[0]!.status, row.rows[0]!.attempt], ['Running', 1]);
      const done = await taskCall(p, 'complete', alive, { status: 'Completed' });
      assert.equal(done.status, 200, JSON.stringify(done.body));
    } finally {
      await p.close();
    }
  });
}

async function leaseOf(p: { dbs: { state: { query<T>(sql: string, args: unknown[]): Promise<{ rows: T[] }> } } }, id: string): Promise<string> {
  const r = await p.dbs.state.query<{ lease_expires_at: Date }>(`SELECT lease_expires_at FROM tasks WHERE id = $1`, [id]);
  return new Date(r.rows[0]!.lease_expires_at).toISOString();
}
