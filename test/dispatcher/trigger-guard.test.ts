/**
 * Manual triggers that would flood the platform are stopped before anything is created: a
 * source that would invent its cursor from the clock needs one (400 naming `cursor`), and a
 * trigger estimated to set off more tasks than the limit needs `confirm: true` (422
 * TRIGGER_NEEDS_CONFIRMATION with the estimate). The estimate follows the DAG: hello_ranges at
 * cursor 2499 is 1 source + 1 aggregator + 2 splitters + 8 sink tasks.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { BACKENDS } from '../support/db.js';
import { startPlatform, type TestPlatform } from '../support/platform.js';
import { dispatcherSettingsFromEnv as settingsFromEnv } from '../../src/dispatcher/settings.js';

const backend = BACKENDS.includes('postgres') ? 'postgres' : 'pglite';
const HELLO = new URL('../../examples/dags/hello_ranges.yaml', import.meta.url);

describe(`manual trigger guards (${backend})`, () => {
  let p: TestPlatform;
  const tasks = async () => (await p.api('GET', '/v1/tasks?dag=hello_ranges')).body.tasks.length as number;
  before(async () => {
    p = await startPlatform(backend, { workers: 0, settings: { triggerConfirmAbove: 10 } });
    const d = await p.api('POST', '/v1/dags/hello_ranges/versions?activate=true', await readFile(HELLO, 'utf8'));
    assert.equal(d.status, 201, JSON.stringify(d.body));
  });
  after(async () => { await p?.close(); });

  it('a cursor_emitter source without a cursor is refused, naming the field, and nothing is created', async () => {
    const r = await p.api('POST', '/v1/dags/hello_ranges/jobs/source/trigger', {});
    assert.equal(r.status, 400, JSON.stringify(r.body));
    assert.equal(r.body.code, 'CURSOR_REQUIRED');
    assert.match(r.body.error, /cursor is required.*Unix time/);
    assert.equal(r.body.problems[0].path, 'cursor');
    assert.equal(await tasks(), 0);
  });

  it('a trigger above the limit needs confirm, with the estimate; confirmed it goes ahead', async () => {
    const r = await p.api('POST', '/v1/dags/hello_ranges/jobs/source/trigger', { cursor: 2499 });
    assert.equal(r.status, 422, JSON.stringify(r.body));
    assert.equal(r.body.code, 'TRIGGER_NEEDS_CONFIRMATION');
    assert.equal(r.body.estimated_tasks, 12);
    assert.equal(r.body.limit, 10);
    assert.equal(await tasks(), 0, 'nothing was created');

    const clock = await p.api('POST', '/v1/dags/hello_ranges/jobs/source/trigger', { cursor: 1_764_000_000 });
    assert.equal(clock.status, 422);
    // 1 + 1 + 4,000 ranges (the aggregator's per-task cap) + 16,000 chunks
    assert.equal(clock.body.estimated_tasks, 20_002);

    const ok = await p.api('POST', '/v1/dags/hello_ranges/jobs/source/trigger', { cursor: 2499, confirm: true });
    assert.equal(ok.status, 201, JSON.stringify(ok.body));
    assert.equal(ok.body.estimated_tasks, 12);
    assert.equal(await tasks(), 1);
  });

  it('a reactive job triggered with a range is estimated from its fan-out', async () => {
    const small = await p.api('POST', '/v1/dags/hello_ranges/jobs/chunks/trigger', { start: 0, end: 1000 });
    assert.equal(small.status, 201, JSON.stringify(small.body));
    assert.equal(small.body.estimated_tasks, 5, '1 splitter + 4 sink tasks');
    const big = await p.api('POST', '/v1/dags/hello_ranges/jobs/chunks/trigger', { start: 0, end: 1_000_000 });
    assert.equal(big.status, 422);
    assert.equal(big.body.estimated_tasks, 4001);
  });

  it('the limit comes from TRACE_TRIGGER_CONFIRM_ABOVE', () => {
    assert.deepEqual(settingsFromEnv({ TRACE_TRIGGER_CONFIRM_ABOVE: '5000' }), { triggerConfirmAbove: 5000 });
    assert.deepEqual(settingsFromEnv({}), {});
    assert.throws(() => settingsFromEnv({ TRACE_TRIGGER_CONFIRM_ABOVE: '0' }), /TRACE_TRIGGER_CONFIRM_ABOVE must be an integer from 1/);
  });
});
