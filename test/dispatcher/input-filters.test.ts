/**
 * The deploy-time check of input `where` filters against the upstream schemas the registry
 * knows (src/dispatcher/input-filters.ts): Cryo's columns for chain-sync datasets, the snapshot
 * columns of buffered datasets, the recorded columns of registered ones; unknown schemas (job
 * outputs) are left to the read.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { upstreamColumns, whereSchemaProblems, type RegistryDataset } from '../../src/dispatcher/input-filters.js';
import type { DagSpec, InputEdge } from '../../src/dag/types.js';

const reader = (inputs: InputEdge[]): DagSpec => ({
  name: 'd',
  publish: [],
  jobs: [{ name: 'r', activation: 'reactive', runtime: 'lambda', operator: 'udf', outputs: 1, inputs, timeout_seconds: 60, heartbeat_timeout_seconds: 60, max_attempts: 3, config: {} }],
});

const registry = new Map<string, RegistryDataset>([
  ['monad_logs', { name: 'monad_logs', kind: 'job_output', storage: { kind: 'chain_sync', chain_id: 10143, dataset_key: 'logs', cryo_dataset_name: 'logs' } }],
  ['alert_events', { name: 'alert_events', kind: 'buffered', storage: { kind: 'postgres_table' } }],
  ['trades', { name: 'trades', kind: 'external', storage: { columns: [['id', 'BIGINT'], ['sym', 'VARCHAR']] } }],
  ['s3_trades', { name: 's3_trades', kind: 'external', storage: {} }],
  ['some_output', { name: 'some_output', kind: 'job_output', storage: {} }],
]);

test('known schemas: chain sync (Cryo), buffered, registered; unknown: job outputs and unread registrations', () => {
  assert.deepEqual(upstreamColumns(registry.get('monad_logs')!)?.find(([n]) => n === 'address'), ['address', 'BLOB']);
  assert.deepEqual(upstreamColumns(registry.get('alert_events')!)?.find(([n]) => n === 'severity'), ['severity', 'VARCHAR']);
  assert.deepEqual(upstreamColumns(registry.get('trades')!), [['id', 'BIGINT'], ['sym', 'VARCHAR']]);
  assert.equal(upstreamColumns(registry.get('s3_trades')!), undefined);
  assert.equal(upstreamColumns(registry.get('some_output')!), undefined);
});

test('columns and value types are checked where the schema is known, with the field paths', () => {
  const spec = reader([
    { from: { dataset: 'monad_logs' }, where: { address: '0xa0b8', topic0: ['0x12', 'nothex'], chain_id: 10143, adress: '0x00' } },
    { from: { dataset: 'alert_events' }, where: { severity: 'critical', label_type: 'cex', chain_id: 'one' } },
    { from: { dataset: 'trades' }, where: { sym: 5, id: ['1', 2] } },
    { from: { dataset: 's3_trades' }, where: { anything: 1 } },
    { from: { dataset: 'some_output' }, where: { anything: 1 } },
    { from: { job: 'x', output: 0 }, where: { anything: 1 } },
  ]);
  const got = whereSchemaProblems(spec, registry).map((p) => [p.path, p.message]);
  const at = (i: number, rest: string) => `jobs[0].inputs[${i}].where.${rest}`;
  assert.deepEqual(got.map(([p]) => p), [
    at(0, 'topic0[1]'), at(0, 'adress'),
    at(1, 'label_type'), at(1, 'chain_id'),
    at(2, 'sym'),
  ]);
  assert.match(got[0]![1]!, /0x-prefixed hex.*BLOB/);
  assert.match(got[1]![1]!, /has no column 'adress'; did you mean 'address'/);
  assert.match(got[2]![1]!, /"alert_events" has no column 'label_type'/);
  assert.match(got[3]![1]!, /integer.*BIGINT/);
  assert.match(got[4]![1]!, /must be a string/);
});
