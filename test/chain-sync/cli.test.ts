/** `trace chain-sync apply|status|pause|resume` against a running Dispatcher (no chain needed). */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BACKENDS, freshDbs } from '../support/db.js';
import { chainSyncApply, chainSyncPause, chainSyncResume, chainSyncStatus, renderStatus, runStatus } from '../../src/cli/commands/chain-sync.js';
import { fixedYaml, startStack, runCommand as run, waitFor } from './support.js';

const backend = BACKENDS.includes('pglite') ? 'pglite' : 'postgres';

test(`${backend}: the chain-sync CLI applies, shows progress bars, watches, pauses and resumes`, async () => {
  const dbs = await freshDbs(backend);
  const st = await startStack({ state: dbs.state, pools: { dev: ['http://127.0.0.1:9'] }, plannerIntervalMs: 100 });
  const dir = await mkdtemp(join(tmpdir(), 'trace-cs-cli-'));
  const saved = { url: process.env.TRACE_DISPATCHER_URL, token: process.env.TRACE_TOKEN, home: process.env.TRACE_HOME };
  process.env.TRACE_DISPATCHER_URL = st.url;
  process.env.TRACE_TOKEN = st.adminToken;
  process.env.TRACE_HOME = dir;
  try {
    const file = join(dir, 'job.yaml');
    await writeFile(file, fixedYaml('cli_job', 1337, 1000, { chunk: 100, inflight: 2, streams: ['blocks', 'logs'] }));
    const created = await run(chainSyncApply, ['--file', file]);
    assert.match(created, /^created chain sync cli_job \(job [0-9a-f-]{36}\)/);
    assert.match(created, /cli_job_blocks/);
    assert.match(await run(chainSyncApply, ['--file', file]), /^unchanged chain sync cli_job/);
    const asJson = JSON.parse(await run(chainSyncApply, ['--file', file, '--json']));
    assert.equal(asJson.changed, false);

    await waitFor('planned', async () => (await st.api('GET', '/v1/chain-sync/cli_job')).body.streams.every((s: any) => s.inflight.total === 2));
    const text = await run(chainSyncStatus, ['--job', 'cli_job']);
    assert.match(text, /^cli_job {2}chain 1337 {2}fixed_target \[0, 1,000\) {2}state: running/);
    assert.match(text, /blocks {2}\[\.{24}\] {3}0\.0% {2}0\/1,000 {2}next 200 {2}in flight 2\/2/);
    const json = JSON.parse(await run(chainSyncStatus, ['--json']));
    assert.equal(json.jobs[0].job_id, asJson.job_id);
    const byId = await run(chainSyncStatus, ['--job', asJson.job_id]);
    assert.match(byId, /cli_job/);

    // --watch redraws until stopped (Ctrl-C in a terminal; an abort signal here).
    const frames: string[] = [];
    const ac = new AbortController();
    const watching = runStatus({ watch: true, job: 'cli_job' }, { signal: ac.signal, intervalMs: 100, write: (s) => { frames.push(s); } });
    await waitFor('three frames', async () => frames.length >= 3, 5_000, 20);
    ac.abort();
    await watching;
    assert.ok(frames.every((f) => f.includes('cli_job')));

    assert.match(await run(chainSyncPause, ['--name', 'cli_job']), /^paused chain sync cli_job/);
    assert.match(await run(chainSyncStatus, []), /state: paused \(paused by an admin/);
    assert.match(await run(chainSyncResume, ['--name', 'cli_job']), /^resumed chain sync cli_job/);
    await assert.rejects(run(chainSyncStatus, ['--job', 'nope']), /no chain sync named nope/);
    assert.match(renderStatus([]), /no chain sync jobs/);
    const follow = {
      job_id: 'j', name: 'f', chain_id: 1, mode: { kind: 'follow_head', from_block: 0, tail_lag: 2 }, state: 'running', reason: null, paused: false, completed_at: null,
      head: [{ rpc_pool: 'dev', head_block: 120, age_seconds: 1, last_error: null }],
      streams: [{ dataset_key: 'blocks', cryo_dataset_name: 'blocks', rpc_pool: 'dev', dataset_name: 'f_blocks', dataset_uuid: 'u', active: true, state: 'caught_up',
        next_block: 119, target: 119, committed_through: 119, committed_blocks: 119, committed_ranges: 30, rows: 119, bytes: 1, max_inflight: 4,
        inflight: { total: 0, queued: 0, running: 0, retrying: 0, gave_up: 0 }, rate_blocks_per_second: 2, blocked_reason: null, last_error: null,
        compaction: { windows: 2, in_flight: 1, abandoned: 0 } }],
    };
    assert.match(renderStatus([follow]), /compacted windows 2, 1 compacting\n?/);
    assert.doesNotMatch(renderStatus([{ ...follow, streams: [{ ...follow.streams[0]!, compaction: { windows: 0, in_flight: 0, abandoned: 0 } }] }]), /compacted/);
  } finally {
    process.env.TRACE_DISPATCHER_URL = saved.url;
    process.env.TRACE_TOKEN = saved.token;
    process.env.TRACE_HOME = saved.home;
    for (const [k, v] of Object.entries({ TRACE_DISPATCHER_URL: saved.url, TRACE_TOKEN: saved.token, TRACE_HOME: saved.home })) if (v === undefined) delete process.env[k];
    await rm(dir, { recursive: true, force: true });
    await st.stop();
    await dbs.close();
  }
});
