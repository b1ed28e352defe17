/**
 * End to end against a real dev chain: anvil over HTTP -> a proxy -> the RPC egress gateway
 * -> cryo_ingest workers -> Parquet, planned and committed by the Dispatcher on real Postgres.
 * A fixed_target sync of 2,000 blocks survives a child worker process SIGKILLed mid-range, an
 * in-process worker aborted mid-range and a Dispatcher restart, and ends with every block,
 * transaction and log present exactly once in the committed files.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { BACKENDS, freshDbs, type TestDbs } from '../support/db.js';
import { TEST_SECRETS } from '../support/dispatcher.js';
import { startQueryService } from '../../src/lite/query.js';
import { createUserVerifier } from '../../src/auth/user.js';
import { createCapabilityIssuer } from '../../src/auth/capability.js';
import { silentLogger } from '../../src/core/log.js';
import {
  buildHistory, chainTruth, committedRows, count, fixedYaml, rpcProxy, sleep, startDevChain, startStack, waitFor,
  type DevChain, type Stack,
} from './support.js';

const ROOT = new URL('../../', import.meta.url).pathname;
const BLOCKS = 2000;

let chain: DevChain;
let proxy: Awaited<ReturnType<typeof rpcProxy>>;

before(async () => {
  chain = await startDevChain(1337);
  await buildHistory(chain, BLOCKS, 24, 3);
  proxy = await rpcProxy(chain.url);
});

after(async () => {
  await proxy?.close();
  await chain?.close();
});

async function runningOn(st: Stack, workerId: string): Promise<string | undefined> {
  const r = await st.state.query<{ id: string }>(`SELECT id FROM tasks WHERE status = 'Running' AND worker_id = $1 LIMIT 1`, [workerId]);
  return r.rows[0]?.id;
}

test('postgres: fixed_target syncs every block, transaction and log exactly once through kills and a Dispatcher restart', { timeout: 120_000 }, async () => {
  if (!BACKENDS.includes('postgres')) return;
  const dbs: TestDbs = await freshDbs('postgres');
  const st = await startStack({ state: dbs.state, pools: { dev: [proxy.url] }, workers: 0 });
  const children: ChildProcess[] = [];
  try {
    const child = spawn(process.execPath, ['--import', 'tsx', `${ROOT}test/chain-sync/worker-child.ts`], {
      env: { PATH: process.env.PATH, NODE_ENV: 'test', TRACE_DISPATCHER_URL: st.url, TRACE_WORKER_TOKEN: st.workerToken, TRACE_QUEUE_DATABASE_URL: dbs.stateUrl,
        OBJECT_ROOT: st.objectRoot, TRACE_RPC_GATEWAY_URL: st.gateway.url, WORKER_ID: 'doomed-child' },
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    children.push(child);
    await once(child.stdout!, 'data');
    st.startWorkers(1, 2, 'aborted');

    // Slow the node down so ranges are reliably mid-flight when the workers die.
    proxy.delayMs = 400;
    const yaml = fixedYaml('dev_fixed', 1337, BLOCKS, { chunk: 250, inflight: 4 });
    const applied = await st.api('POST', '/v1/chain-sync', yaml);
    assert.equal(applied.status, 201, JSON.stringify(applied.body));
    const uuids = Object.fromEntries(applied.body.streams.map((s: any) => [s.dataset_key, s.dataset_uuid])) as { blocks: string; transactions: string; logs: string };

    const killedChild = await waitFor('a range running in the child', () => runningOn(st, 'doomed-child'), 30_000, 50);
    child.kill('SIGKILL');
    const aborted = await waitFor('a range running in the in-process worker', () => runningOn(st, 'aborted0'), 30_000, 50);
    await st.workers[0]!.stop({ graceMs: 0 });
    st.startWorkers(2, 2, 'survivor');

    await waitFor('some ranges committed', async () => (await count(st.state, `SELECT count(*)::int AS n FROM chain_sync_scheduled_ranges WHERE status = 'completed'`)) >= 3, 60_000);
    await st.restartDispatcher();
    proxy.delayMs = 0;

    const done = await waitFor('the sync completed', async () => {
      const s = await st.api('GET', '/v1/chain-sync/dev_fixed');
      return s.body.state === 'completed' ? s.body : undefined;
    }, 90_000, 250);
    assert.ok(done.completed_at);
    for (const s of done.streams) {
      assert.equal(s.next_block, BLOCKS);
      assert.equal(s.committed_blocks, BLOCKS);
      assert.equal(s.committed_through, BLOCKS);
      assert.equal(s.committed_ranges, 8);
      assert.equal(s.inflight.total, 0);
    }

    // The killed ranges were retried on a new attempt; the dead attempts are fenced history: the
    // SIGKILLed one timed out, the one stopped without grace was released by its worker.
    for (const [id, first] of [[killedChild, 'TimedOut'], [aborted, 'Released']] as const) {
      const t = (await st.api('GET', `/v1/tasks/${id}`)).body;
      assert.equal(t.status, 'Completed');
      assert.ok(t.attempt >= 2, `task ${id} finished on attempt ${t.attempt}`);
      assert.equal(t.attempts[0].status, first);
    }

    // Exactly once: what the committed files hold is exactly what the chain reports.
    const truth = await chainTruth(chain, BLOCKS);
    const got = await committedRows(st.state, uuids);
    assert.equal(got.blocks.length, BLOCKS);
    assert.deepEqual(got.blocks.map((b) => b.n).sort((a, b) => a - b), [...truth.blocks.keys()].sort((a, b) => a - b));
    for (const b of got.blocks) assert.equal(b.h, truth.blocks.get(b.n));
    assert.ok(truth.txs.size >= 70);
    assert.equal(got.txs.length, truth.txs.size);
    assert.deepEqual(new Set(got.txs), truth.txs);
    assert.equal(got.logs.length, truth.logs.size);
    assert.deepEqual(new Set(got.logs), truth.logs);
    // Only committed attempts are listed (never the killed attempts' prefixes).
    assert.equal(got.files.blocks.length, 8);
    assert.ok(got.files.blocks.every((f) => !f.includes(`/${killedChild}/1/`) && !f.includes(`/${aborted}/1/`)));

    // One publication per range: one range version and one partition row each.
    for (const uuid of Object.values(uuids)) {
      assert.equal(await count(st.state, `SELECT count(*)::int AS n FROM partition_versions WHERE dataset_uuid = $1`, [uuid]), 8);
      assert.equal(await count(st.state, `SELECT count(*)::int AS n FROM dataset_versions WHERE dataset_uuid = $1 AND config_hash NOT LIKE 'view:%'`, [uuid]), 8);
    }

    // The Query Service resolves the datasets by name to the current view and reads the same rows.
    const qs = await startQueryService({
      state: dbs.state, data: dbs.data, orgId: st.orgId, host: '127.0.0.1', port: 0, log: silentLogger,
      userVerifier: createUserVerifier({ mode: 'dev', secret: TEST_SECRETS.user }),
      capabilityVerifier: (await createCapabilityIssuer({ alg: 'HS256', current: { kid: 'test', secret: TEST_SECRETS.capability } })).verifier(),
      // Only user queries here: task queries would ask this (absent) Dispatcher about leases.
      dispatcherUrl: 'http://127.0.0.1:9',
      config: { maxConcurrent: 1 },
    });
    try {
      const query = async (dataset: string, sql: string) => {
        const res = await fetch(`${qs.url}/v1/query`, { method: 'POST', headers: { authorization: `Bearer ${st.adminToken}`, 'content-type': 'application/json' }, body: JSON.stringify({ dataset, sql }) });
        const body = (await res.json()) as any;
        assert.equal(res.status, 200, JSON.stringify(body));
        return Object.fromEntries(body.columns.map((c: any, i: number) => [typeof c === 'string' ? c : c.name, body.rows[0][i]]));
      };
      const b = await query('dev_fixed_blocks', 'SELECT count(*) AS n, count(DISTINCT block_number) AS d, min(block_number) AS lo, max(block_number) AS hi FROM dataset');
      assert.deepEqual([Number(b.n), Number(b.d), Number(b.lo), Number(b.hi)], [BLOCKS, BLOCKS, 0, BLOCKS - 1]);
      const tx = await query('dev_fixed_transactions', 'SELECT count(*) AS n, count(DISTINCT transaction_hash) AS d FROM dataset');
      assert.deepEqual([Number(tx.n), Number(tx.d)], [truth.txs.size, truth.txs.size]);
      const lg = await query('dev_fixed_logs', 'SELECT count(*) AS n FROM dataset');
      assert.equal(Number(lg.n), truth.logs.size);
    } finally {
      await qs.stop();
    }

    // Re-applying the same YAML plans nothing new.
    const tasks = await count(st.state, `SELECT count(*)::int AS n FROM tasks`);
    const again = await st.api('POST', '/v1/chain-sync', yaml);
    assert.equal(again.status, 200);
    assert.equal(again.body.changed, false);
    await st.plugin.tick();
    await sleep(300);
    assert.equal(await count(st.state, `SELECT count(*)::int AS n FROM tasks`), tasks);
    assert.equal((await st.api('GET', '/v1/chain-sync/dev_fixed')).body.state, 'completed');
  } finally {
    for (const c of children) c.kill('SIGKILL');
    await st.stop();
    await dbs.close();
  }
});
