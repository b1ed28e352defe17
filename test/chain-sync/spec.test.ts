import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseChainSyncYaml, looksSecret } from '../../src/dispatcher/chain-sync/spec.js';
import { TraceError } from '../../src/core/errors.js';

function refused(yaml: string): TraceError {
  try {
    parseChainSyncYaml(yaml);
  } catch (e) {
    assert.ok(e instanceof TraceError, String(e));
    return e;
  }
  assert.fail('expected the YAML to be refused');
}

const paths = (e: TraceError) => (e.problems ?? []).map((p) => p.path);

test('the spec examples parse, with defaults and end-exclusive ranges', () => {
  const { spec, yamlHash } = parseChainSyncYaml(`kind: chain_sync
name: monad_mainnet_bootstrap
chain_id: 143
mode:
  kind: fixed_target
  from_block: 0
  # to_block is end exclusive
  to_block: 46000000
streams:
  blocks: { cryo_dataset_name: blocks, rpc_pool: standard, chunk_size: 5000, max_inflight: 20 }
  geth_calls: { cryo_dataset_name: geth_calls, rpc_pool: traces }
`);
  assert.equal(spec.chain_id, 143);
  assert.deepEqual(spec.mode, { kind: 'fixed_target', from_block: 0, to_block: 46_000_000 });
  assert.deepEqual(spec.streams.map((s) => [s.dataset_key, s.rpc_pool, s.chunk_size, s.max_inflight, s.publish_name]), [
    ['blocks', 'standard', 5000, 20, 'monad_mainnet_bootstrap_blocks'],
    ['geth_calls', 'traces', 1000, 8, 'monad_mainnet_bootstrap_geth_calls'],
  ]);
  assert.match(yamlHash, /^[0-9a-f]{64}$/);
  // comments and formatting are not changes
  const again = parseChainSyncYaml(`kind: chain_sync\nname: monad_mainnet_bootstrap\nchain_id: 143\nmode: {kind: fixed_target, from_block: 0, to_block: 46000000}\nstreams:\n  geth_calls: {rpc_pool: traces, cryo_dataset_name: geth_calls}\n  blocks: {cryo_dataset_name: blocks, rpc_pool: standard, chunk_size: 5000, max_inflight: 20}\n`);
  assert.equal(again.yamlHash, yamlHash);

  const follow = parseChainSyncYaml(`kind: chain_sync
name: mainnet_follow
chain_id: 1
mode: { kind: follow_head, from_block: 0, tail_lag: 64, head_poll_interval_seconds: 5, max_head_age_seconds: 30 }
streams:
  blocks: { cryo_dataset_name: blocks, rpc_pool: standard, chunk_size: 2000, max_inflight: 40, publish_name: eth_blocks }
`);
  assert.deepEqual(follow.spec.mode, { kind: 'follow_head', from_block: 0, tail_lag: 64, head_poll_interval_seconds: 5, max_head_age_seconds: 30 });
  assert.equal(follow.spec.streams[0]!.publish_name, 'eth_blocks');
});

test('every problem is reported at once, by path', () => {
  const e = refused(`kind: chainsync
name: Bad-Name
chain_id: 0
mode:
  kind: fixed_target
  from_block: 100
  to_block: 100
  tail_lag: 3
streams:
  Blocks:
    cryo_dataset_name: blocks
    rpc_pool: standard
  logs:
    cryo_dataset_name: logs
    chunk_size: 0
    max_inflight: 100000
    extra: 1
  txs: 7
colour: blue
`);
  assert.equal(e.status, 422);
  assert.equal(e.code, 'CHAIN_SYNC_INVALID');
  const p = paths(e);
  for (const want of ['kind', 'name', 'chain_id', 'mode.to_block', 'mode.tail_lag', 'streams.Blocks', 'streams.logs.rpc_pool',
    'streams.logs.chunk_size', 'streams.logs.max_inflight', 'streams.logs.extra', 'streams.txs', 'colour']) {
    assert.ok(p.includes(want), `missing problem at ${want}: ${JSON.stringify(e.problems)}`);
  }
  assert.match(e.problems!.find((x) => x.path === 'mode.to_block')!.message, /greater than from_block/);
});

test('follow_head needs its fields and a max age above the poll interval; fixed fields are refused there', () => {
  const e = refused(`kind: chain_sync
name: f
chain_id: 1
mode: { kind: follow_head, from_block: 0, head_poll_interval_seconds: 10, max_head_age_seconds: 10, to_block: 5 }
streams: { blocks: { cryo_dataset_name: blocks, rpc_pool: standard } }
`);
  assert.deepEqual(paths(e).sort(), ['mode.max_head_age_seconds', 'mode.tail_lag', 'mode.to_block']);
  const m = refused(`kind: chain_sync\nname: f\nchain_id: 1\nstreams: {}\n`);
  assert.deepEqual(paths(m).sort(), ['mode', 'streams']);
});

test('URLs, keys and credentials are refused anywhere without being echoed', () => {
  const secret = 'https://eth-mainnet.example.com/v2/AbCdEf0123456789AbCdEf0123';
  const key = '9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08';
  const e = refused(`kind: chain_sync
name: leak
chain_id: 1
mode: { kind: fixed_target, from_block: 0, to_block: 10 }
streams:
  blocks:
    cryo_dataset_name: blocks
    rpc_pool: "${secret}"
  logs:
    cryo_dataset_name: logs
    rpc_pool: "${key}"
    rpc_url: http://10.0.0.1:8545
  "${secret}":
    cryo_dataset_name: blocks
    rpc_pool: standard
api_key: hunter2
`);
  const text = JSON.stringify(e.toJSON());
  assert.ok(!text.includes('eth-mainnet.example.com'), text);
  assert.ok(!text.includes(key), text);
  assert.ok(!text.includes('10.0.0.1'), text);
  assert.ok(!text.includes('hunter2'), text);
  const p = paths(e);
  for (const want of ['streams.blocks.rpc_pool', 'streams.logs.rpc_pool', 'streams.logs.rpc_url', 'streams.<redacted>', 'api_key']) {
    assert.ok(p.includes(want), `missing ${want}: ${JSON.stringify(e.problems)}`);
  }
  assert.ok(e.problems!.some((x) => /TRACE_RPC_POOL_<NAME>_URL/.test(x.message)));
  // a stream named after tokens is a name, not a secret
  const ok = parseChainSyncYaml(`kind: chain_sync\nname: t\nchain_id: 1\nmode: {kind: fixed_target, from_block: 0, to_block: 9}\nstreams:\n  token_transfers: {cryo_dataset_name: erc20_transfers, rpc_pool: standard}\n`);
  assert.equal(ok.spec.streams[0]!.dataset_key, 'token_transfers');
  assert.equal(looksSecret('standard'), false);
  assert.equal(looksSecret('monad_mainnet_bootstrap_20260111_v2'), false);
  assert.equal(looksSecret('AbCdEf0123456789AbCdEf0123456789'), true);
  assert.equal(looksSecret('wss://node'), true);
  assert.equal(looksSecret('user:pass@host'), true);
});

test('duplicate keys, dataset name collisions, anchors and bad YAML are refused', () => {
  const dup = refused(`kind: chain_sync\nname: d\nchain_id: 1\nmode: {kind: fixed_target, from_block: 0, to_block: 9}\nstreams:\n  blocks: {cryo_dataset_name: blocks, rpc_pool: a}\n  blocks: {cryo_dataset_name: logs, rpc_pool: a}\n`);
  assert.equal(dup.code, 'CHAIN_SYNC_INVALID');
  assert.match(JSON.stringify(dup.problems), /duplicate key/);
  const names = refused(`kind: chain_sync\nname: d\nchain_id: 1\nmode: {kind: fixed_target, from_block: 0, to_block: 9}\nstreams:\n  a: {cryo_dataset_name: blocks, rpc_pool: a, publish_name: same}\n  b: {cryo_dataset_name: logs, rpc_pool: a, publish_name: same}\n`);
  assert.deepEqual(paths(names), ['streams.b.publish_name']);
  const alias = refused(`kind: chain_sync\nname: d\nchain_id: 1\nmode: &m {kind: fixed_target, from_block: 0, to_block: 9}\nstreams:\n  a: {cryo_dataset_name: blocks, rpc_pool: *m}\n`);
  assert.equal(alias.status, 400);
  const bad = refused('kind: [unclosed');
  assert.equal(bad.status, 400);
  assert.equal(bad.code, 'YAML_MALFORMED');
  assert.equal(refused('').code, 'YAML_MALFORMED');
  assert.equal(refused('- a\n- b\n').code, 'CHAIN_SYNC_INVALID');
  const big = refused(`kind: chain_sync\nname: d\nchain_id: 1\nmode: {kind: fixed_target, from_block: 0, to_block: 4294967297}\nstreams: {a: {cryo_dataset_name: blocks, rpc_pool: a}}\n`);
  assert.deepEqual(paths(big), ['mode.to_block']);
});

test('the examples in examples/chain_sync parse', async () => {
  const { readdir, readFile } = await import('node:fs/promises');
  const dir = new URL('../../examples/chain_sync/', import.meta.url);
  const files = (await readdir(dir)).filter((f) => f.endsWith('.yaml'));
  assert.ok(files.length >= 3);
  for (const f of files) {
    const { spec } = parseChainSyncYaml(await readFile(new URL(f, dir), 'utf8'));
    assert.equal(`${spec.name}.yaml`, f);
  }
});
