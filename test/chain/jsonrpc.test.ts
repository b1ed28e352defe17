import { test } from 'node:test';
import assert from 'node:assert/strict';
import { isJsonRpcRequest, jsonRpcRequestSchema } from '../../src/chain/jsonrpc.js';

// The gateway's fast check must accept exactly what the schema accepts: a looser check would
// forward requests the schema refuses, a stricter one would answer 400 with no problem listed.
const CASES: unknown[] = [
  { jsonrpc: '2.0', id: 1, method: 'eth_blockNumber' },
  { jsonrpc: '2.0', id: 'a', method: 'eth_getLogs', params: [{ fromBlock: '0x1' }] },
  { jsonrpc: '2.0', id: null, method: 'eth_call', params: { to: '0x0' } },
  { jsonrpc: '2.0', method: 'eth_chainId' },
  { jsonrpc: '2.0', id: 1, method: 'eth_chainId', extra: true },
  { jsonrpc: '2.0', id: 'x'.repeat(256), method: 'm' },
  { jsonrpc: '2.0', id: 'x'.repeat(257), method: 'm' },
  { jsonrpc: '1.0', id: 1, method: 'm' },
  { id: 1, method: 'm' },
  { jsonrpc: '2.0', id: 1 },
  { jsonrpc: '2.0', id: 1, method: '' },
  { jsonrpc: '2.0', id: 1, method: '1abc' },
  { jsonrpc: '2.0', id: 1, method: 'eth call' },
  { jsonrpc: '2.0', id: 1, method: 'a'.repeat(128) },
  { jsonrpc: '2.0', id: 1, method: 'a'.repeat(129) },
  { jsonrpc: '2.0', id: 1, method: 7 },
  { jsonrpc: '2.0', id: true, method: 'm' },
  { jsonrpc: '2.0', id: {}, method: 'm' },
  { jsonrpc: '2.0', id: [], method: 'm' },
  { jsonrpc: '2.0', id: 1, method: 'm', params: null },
  { jsonrpc: '2.0', id: 1, method: 'm', params: 'x' },
  { jsonrpc: '2.0', id: 1, method: 'm', params: 3 },
  { jsonrpc: '2.0', id: 1, method: 'm', params: [] },
  { jsonrpc: '2.0', id: 1, method: 'm', params: {} },
  JSON.parse('{"jsonrpc":"2.0","id":1,"method":"m","__proto__":{"x":1}}'),
  null,
  [],
  'eth_blockNumber',
  42,
];

test('isJsonRpcRequest accepts exactly what jsonRpcRequestSchema accepts', () => {
  for (const c of CASES) {
    assert.equal(isJsonRpcRequest(c), jsonRpcRequestSchema.safeParse(c).success, JSON.stringify(c)?.slice(0, 80));
  }
});
