import { test } from 'node:test';
import assert from 'node:assert/strict';
import { DEFAULTS } from '../../src/core/config.js';
import { silentLogger } from '../../src/core/log.js';
import { operatorCatalog, operatorRegistry } from '../../src/operators/registry.js';
import { MAX_RANGES_PER_TASK, stateKeyFor } from '../../src/operators/range_aggregator/index.js';
import { MAX_SUBRANGES_PER_TASK } from '../../src/operators/range_splitter/index.js';
import type { OperatorEvent, OperatorResult } from '../../src/operators/types.js';
import type { TaskPayload } from '../../src/worker/payload.js';
import { toWireEvents } from '../../src/worker/events.js';
import { makeTask } from './fake-dispatcher.js';

const registry = operatorRegistry({ includeTestOperators: true });
const IN = { dataset_uuid: '55555555-5555-4555-8555-555555555555', dataset_version: '66666666-6666-4666-8666-666666666666' };
const IN2 = { dataset_uuid: '77777777-7777-4777-8777-777777777777', dataset_version: '88888888-8888-4888-8888-888888888888' };

async function run(task: TaskPayload): Promise<OperatorResult & { emitted: OperatorEvent[] }> {
  const emitted: OperatorEvent[] = [];
  const op = registry.get(task.operator);
  assert.ok(op, `operator ${task.operator} registered`);
  const r = await op.run({
    task,
    signal: new AbortController().signal,
    log: silentLogger,
    capabilityToken: 'cap',
    emit: async (events) => {
      emitted.push(...events);
    },
  });
  return { ...r, emitted };
}

const ranges = (r: OperatorResult) => (r.events ?? []).map((e) => ('start' in e ? `${e.start}-${e.end}` : `c${String(e.cursor)}`));

// --- range_aggregator ---------------------------------------------------------------------

function agg(inputs: TaskPayload['inputs'], config: Record<string, unknown>, state: TaskPayload['operator_state'] = []): TaskPayload {
  return makeTask({ operator: 'range_aggregator', config: { cursor_column: 'block_number', ...config }, inputs, operator_state: state });
}

test('range_aggregator: emits every full range up to the cursor, with state for CAS', async () => {
  const r = await run(agg([{ ...IN, cursor: 34 }], { range_size: 10 }));
  assert.deepEqual(ranges(r), ['0-10', '10-20', '20-30']);
  assert.deepEqual(r.operator_state, [{ state_key: stateKeyFor(IN.dataset_uuid), expected_version: null, state: { last_emitted_end: 30 } }]);

  // cursor 39 completes [30, 40): block 39 is the last block of that range
  const next = await run(agg([{ ...IN, cursor: 39 }], { range_size: 10 }, [{ state_key: stateKeyFor(IN.dataset_uuid), state: { last_emitted_end: 30 }, version: 1 }]));
  assert.deepEqual(ranges(next), ['30-40']);
  assert.deepEqual(next.operator_state, [{ state_key: stateKeyFor(IN.dataset_uuid), expected_version: 1, state: { last_emitted_end: 40 } }]);
  // every range is [start, end) and ends are exclusive
  for (const e of next.events ?? []) assert.ok('start' in e && e.end - e.start === 10);
});

test('range_aggregator: duplicates and out-of-order cursors emit nothing and write no state', async () => {
  const state = [{ state_key: stateKeyFor(IN.dataset_uuid), state: { last_emitted_end: 40 }, version: 7 }];
  for (const cursor of [39, 20, 0, 48]) {
    const r = await run(agg([{ ...IN, cursor }], { range_size: 10 }, state));
    assert.deepEqual(r.events, [], `cursor ${cursor}`);
    assert.equal(r.operator_state, undefined, `cursor ${cursor} writes no state`);
  }
  // a task carrying a stale cursor after a fresh one in the same batch
  const r = await run(agg([{ ...IN, cursor: 59 }, { ...IN, cursor: 45 }, { ...IN, cursor: 59 }], { range_size: 10 }, state));
  assert.deepEqual(ranges(r), ['40-50', '50-60']);
  assert.deepEqual(r.operator_state, [{ state_key: stateKeyFor(IN.dataset_uuid), expected_version: 7, state: { last_emitted_end: 60 } }]);
});

test('range_aggregator: start offset, string cursors, range inputs and independent streams', async () => {
  const r = await run(agg([{ ...IN, cursor: '1025' }, { ...IN2, start: 0, end: 7, partition_key: '0-7' }], { range_size: 5, start: 1000 }));
  assert.deepEqual(ranges(r), ['1000-1005', '1005-1010', '1010-1015', '1015-1020', '1020-1025']);
  // IN2's range [0, 7) is cursor 6, below start 1000: nothing for that stream
  assert.deepEqual(r.operator_state?.map((s) => s.state_key), [stateKeyFor(IN.dataset_uuid)]);

  const two = await run(agg([{ ...IN, cursor: 9 }, { ...IN2, start: 0, end: 20 }], { range_size: 10 }));
  assert.deepEqual(ranges(two), ['0-10', '0-10', '10-20']);
  assert.deepEqual(two.operator_state?.map((s) => [s.state_key, s.state.last_emitted_end]), [
    [stateKeyFor(IN.dataset_uuid), 10],
    [stateKeyFor(IN2.dataset_uuid), 20],
  ]);
});

test('range_aggregator: caps ranges per task and catches up on the next event; the capped completion fits one request', async () => {
  const key = stateKeyFor(IN.dataset_uuid);
  const big = 9_000_000_000_000_000 - 9_000_000_000_000_000 % 10; // 16-digit bounds: the worst case for body size
  const first = await run(agg([{ ...IN, cursor: big + 10 * MAX_RANGES_PER_TASK + 10 * 1_500 - 1 }], { range_size: 10, start: big }));
  assert.equal(first.events!.length, MAX_RANGES_PER_TASK);
  const last = first.events!.at(-1)!;
  assert.ok('end' in last);
  assert.equal(last.end, big + 10 * MAX_RANGES_PER_TASK);
  assert.deepEqual(first.operator_state, [{ state_key: key, expected_version: null, state: { last_emitted_end: big + 10 * MAX_RANGES_PER_TASK } }]);

  const wire = toWireEvents(makeTask(), first.events!);
  const body = JSON.stringify({ task_id: IN.dataset_uuid, attempt: 1, lease_token: IN.dataset_uuid, status: 'Completed', events: wire, operator_state: first.operator_state });
  assert.ok(Buffer.byteLength(body) < DEFAULTS.maxBodyBytes, `capped completion is ${Buffer.byteLength(body)} bytes`);

  // the next cursor event of the stream (here the same cursor again) emits the remaining 1,500
  const top = big + 10 * MAX_RANGES_PER_TASK + 10 * 1_500 - 1;
  const second = await run(agg([{ ...IN, cursor: top }], { range_size: 10, start: big }, [{ state_key: key, state: first.operator_state![0]!.state, version: 1 }]));
  assert.equal(second.events!.length, 1_500);
  assert.deepEqual(second.events![0], { output_index: 0, start: big + 10 * MAX_RANGES_PER_TASK, end: big + 10 * MAX_RANGES_PER_TASK + 10 });
  assert.deepEqual(second.operator_state, [{ state_key: key, expected_version: 1, state: { last_emitted_end: top + 1 } }]);
});

test('range_aggregator: rejects bad config, non-integer cursors and corrupt state', async () => {
  const info = registry.get('range_aggregator')!.info;
  assert.deepEqual(info.validateConfig!({ range_size: 10, cursor_column: 'block_number' }), []);
  assert.deepEqual(info.validateConfig!({}).map((p) => p.path), ['range_size']);
  assert.deepEqual(info.validateConfig!({ range_size: 0, start: -1, extra: 1 }).map((p) => p.path).sort(), ['$', 'range_size', 'start']);
  assert.deepEqual(info.validateConfig!({ range_size: 1.5 }).map((p) => p.path), ['range_size']);
  await assert.rejects(run(agg([{ ...IN, cursor: 'abc' }], { range_size: 10 })), /inputs\[0\]\.cursor is not a non-negative integer/);
  await assert.rejects(run(agg([{ ...IN, cursor: -1 }], { range_size: 10 })), /not a non-negative integer/);
  await assert.rejects(run(agg([{ ...IN, cursor: 5 }], { range_size: 10 }, [{ state_key: stateKeyFor(IN.dataset_uuid), state: { x: 1 }, version: 1 }])), /last_emitted_end/);
});

// --- range_splitter -----------------------------------------------------------------------

const split = (inputs: TaskPayload['inputs'], config: Record<string, unknown> = {}, trigger: TaskPayload['trigger'] = { kind: 'event' }) =>
  makeTask({ operator: 'range_splitter', config, inputs, trigger });

test('range_splitter: deterministic subranges, last one cut at end', async () => {
  const t = split([{ ...IN, start: 1_000_000, end: 1_002_500, partition_key: '1000000-1002500' }], { chunk_size: 1000 });
  const a = await run(t);
  const b = await run(t);
  assert.deepEqual(ranges(a), ['1000000-1001000', '1001000-1002000', '1002000-1002500']);
  assert.deepEqual(a.events, b.events, 'same input, same events');
  assert.ok((a.events ?? []).every((e) => e.output_index === 0));
});

test('range_splitter: parses partition_key when start/end are absent; prefers start/end; no chunk_size re-emits whole', async () => {
  assert.deepEqual(ranges(await run(split([{ ...IN, partition_key: '10-40' }], { chunk_size: 10 }))), ['10-20', '20-30', '30-40']);
  assert.deepEqual(ranges(await run(split([{ ...IN, start: 0, end: 3, partition_key: '100-200' }], { chunk_size: 1 }))), ['0-1', '1-2', '2-3']);
  assert.deepEqual(ranges(await run(split([{ ...IN, partition_key: '5-9' }]))), ['5-9']);
  assert.deepEqual(ranges(await run(split([], { chunk_size: 2 }, { kind: 'manual', start: 0, end: 5 }))), ['0-2', '2-4', '4-5']);
});

test('range_splitter: rejects malformed ranges, missing ranges and oversized fan-out', async () => {
  await assert.rejects(run(split([{ ...IN, partition_key: 'abc' }])), /not "start-end"/);
  await assert.rejects(run(split([{ ...IN, partition_key: '9-5' }])), /0 <= start < end/);
  await assert.rejects(run(split([{ ...IN, start: 5 }])), /both start and end/);
  await assert.rejects(run(split([{ ...IN, cursor: 5 }])), /needs range events/);
  await assert.rejects(run(split([{ ...IN, start: 0, end: MAX_SUBRANGES_PER_TASK + 1 }], { chunk_size: 1 })), /raise chunk_size/);
  assert.deepEqual(registry.get('range_splitter')!.info.validateConfig!({ chunk_size: 0 }).map((p) => p.path), ['chunk_size']);
});

// --- cursor_emitter -----------------------------------------------------------------------

const emitter = (trigger: TaskPayload['trigger'], config: Record<string, unknown> = {}, state: TaskPayload['operator_state'] = []) =>
  makeTask({ operator: 'cursor_emitter', config, trigger, operator_state: state });

test('cursor_emitter: manual --cursor and --range', async () => {
  assert.deepEqual((await run(emitter({ kind: 'manual', cursor: 123 }))).events, [{ output_index: 0, cursor: 123 }]);
  assert.deepEqual((await run(emitter({ kind: 'manual', start: 10, end: 20, partition_key: '10-20' }))).events, [{ output_index: 0, start: 10, end: 20 }]);
  assert.deepEqual((await run(emitter({ kind: 'manual', partition_key: '7-9' }))).events, [{ output_index: 0, start: 7, end: 9 }]);
  const r = await run(emitter({ kind: 'manual', cursor: 5 }, { cursor_from: 'counter' }));
  assert.equal(r.operator_state, undefined, 'an explicit cursor does not touch the counter');
});

test('cursor_emitter: cron ticks emit the tick unix seconds, stable across retries', async () => {
  const t = emitter({ kind: 'cron', fired_at: '2025-06-01T12:00:30.900Z' });
  const a = await run(t);
  assert.deepEqual(a.events, [{ output_index: 0, cursor: Date.UTC(2025, 5, 1, 12, 0, 30) / 1000 }]);
  assert.deepEqual((await run(t)).events, a.events);
  assert.equal(a.operator_state, undefined);
});

test('cursor_emitter: counter mode keeps a durable counter (start, then + step)', async () => {
  const tick = { kind: 'cron' as const, fired_at: new Date().toISOString() };
  const first = await run(emitter(tick, { cursor_from: 'counter', start: 100, step: 5 }));
  assert.deepEqual(first.events, [{ output_index: 0, cursor: 100 }]);
  assert.deepEqual(first.operator_state, [{ state_key: 'counter', expected_version: null, state: { value: 100 } }]);
  const second = await run(emitter(tick, { cursor_from: 'counter', start: 100, step: 5 }, [{ state_key: 'counter', state: { value: 100 }, version: 1 }]));
  assert.deepEqual(second.events, [{ output_index: 0, cursor: 105 }]);
  assert.deepEqual(second.operator_state, [{ state_key: 'counter', expected_version: 1, state: { value: 105 } }]);
  const dflt = await run(emitter(tick, { cursor_from: 'counter' }));
  assert.deepEqual(dflt.events, [{ output_index: 0, cursor: 0 }]);
});

test('cursor_emitter: config validation reports paths', () => {
  const v = registry.get('cursor_emitter')!.info.validateConfig!;
  assert.deepEqual(v({}), []);
  assert.deepEqual(v({ cursor_from: 'counter', start: 0, step: 2 }), []);
  assert.deepEqual(v({ cursor_from: 'sometimes' }).map((p) => p.path), ['cursor_from']);
  assert.deepEqual(v({ cursor_from: 'counter', step: 0 }).map((p) => p.path), ['step']);
  assert.deepEqual(v({ step: 2 }).map((p) => p.path), ['step']);
  assert.deepEqual(v({ nope: 1 }).map((p) => p.path), ['$']);
});

// --- registry, catalog, event mapping -----------------------------------------------------

test('registry: public operators only by default; test operators hidden and opt-in', () => {
  assert.deepEqual([...operatorRegistry().keys()].sort(), ['alert_evaluate', 'cryo_ingest', 'cursor_emitter', 'noop', 'range_aggregator', 'range_splitter', 'udf']);
  const all = operatorCatalog({ includeTestOperators: true });
  for (const name of ['test_sleep', 'test_fail', 'test_flaky', 'test_emit', 'test_incremental']) assert.equal(all.get(name)?.hidden, true, name);
  const noop = all.get('noop')!;
  assert.deepEqual(noop.activations.sort(), ['reactive', 'source']);
  assert.deepEqual(noop.runtimes.sort(), ['dispatcher', 'ecs_platform', 'lambda']);
  assert.deepEqual(all.get('cursor_emitter')!.activations, ['source']);
  assert.deepEqual(all.get('range_aggregator')!.activations, ['reactive']);
  for (const info of all.values()) if (!['alert_evaluate', 'udf'].includes(info.name)) assert.equal(info.udf, 'forbidden', info.name);
  assert.equal(all.get('alert_evaluate')!.udf, 'required');
});

test('toWireEvents: maps output_index to the output dataset and validates each event', () => {
  const task = makeTask();
  const [o0, o1] = task.outputs;
  assert.deepEqual(toWireEvents(task, [{ cursor: 1 }, { output_index: 1, start: 2, end: 4 }]), [
    { dataset_uuid: o0!.dataset_uuid, dataset_version: o0!.dataset_version, cursor: 1 },
    { dataset_uuid: o1!.dataset_uuid, dataset_version: o1!.dataset_version, partition_key: '2-4', start: 2, end: 4 },
  ]);
  const bad = (e: unknown) => () => toWireEvents(task, [e as OperatorEvent]);
  assert.throws(bad({ output_index: 2, cursor: 1 }), /events\[0\]: output_index 2/);
  assert.throws(bad({ cursor: 1, start: 0, end: 1 }), /either a cursor or a start\/end/);
  assert.throws(bad({}), /either a cursor or a start\/end/);
  assert.throws(bad({ start: 4, end: 4 }), /0 <= start < end/);
  assert.throws(bad({ start: 0.5, end: 4 }), /0 <= start < end/);
  assert.throws(bad({ cursor: '' }), /cursor must be/);
  assert.throws(bad({ cursor: Number.NaN }), /cursor must be/);
});

test('test operators: sleep honours abort; emit and flaky behave as configured', async () => {
  const ac = new AbortController();
  const op = registry.get('test_sleep')!;
  const p = op.run({ task: makeTask({ operator: 'test_sleep', config: { ms: 10_000 } }), signal: ac.signal, log: silentLogger, capabilityToken: 'c', emit: async () => {} });
  setTimeout(() => ac.abort(new Error('stop now')), 20);
  await assert.rejects(p, /stop now/);
  const e = await run(makeTask({ operator: 'test_emit', config: { events: [{ cursor: 1 }], mid_task: true } }));
  assert.deepEqual(e.emitted, [{ cursor: 1 }]);
  await assert.rejects(run(makeTask({ operator: 'test_flaky', attempt: 2, config: { fail_attempts: 2 } })), /test_flaky fails attempt 2/);
  assert.deepEqual(await run(makeTask({ operator: 'test_flaky', attempt: 3, config: { fail_attempts: 2 } })), { emitted: [] });
  await assert.rejects(run(makeTask({ operator: 'test_fail', config: { message: 'nope' } })), /^Error: nope$/);
});
