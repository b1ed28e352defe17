import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MethodSupport, RpcCallError, RpcClient, classifyRpcError, rpcClientForPool } from '../../src/operators/cryo_ingest/rpc.js';
import { fetchLogs } from '../../src/operators/cryo_ingest/fetch.js';
import { hexToNumber, toQuantity } from '../../src/chain/hex.js';
import { jsonRpcServer, sendJson } from './support.js';

const fastBackoff = { baseMs: 5, maxMs: 40 };

test('AIMD: 429s halve concurrency and batch size, successes grow them back', async () => {
  let rejectFirst = 3;
  const holder: { rpc?: RpcClient } = {};
  const samples: Array<{ concurrency: number; batchSize: number }> = [];
  const server = await jsonRpcServer({
    before: async (_reqs, res) => {
      const st = holder.rpc!.stats();
      samples.push({ concurrency: st.concurrency, batchSize: st.batchSize });
      if (rejectFirst > 0) {
        rejectFirst--;
        sendJson(res, 429, { error: 'slow down', code: 'RPC_UPSTREAM_RATE_LIMITED' });
        return true;
      }
      await new Promise((r) => setTimeout(r, 2));
      return false;
    },
    answer: (_m, params) => ({ result: params[0] }),
  });
  const rpc = new RpcClient({ url: server.url, maxConcurrency: 8, maxBatchSize: 20, backoff: fastBackoff });
  holder.rpc = rpc;
  try {
    const out = await rpc.callMany(Array.from({ length: 400 }, (_, i) => ({ method: 'echo', params: [i] })));
    assert.deepEqual(out, Array.from({ length: 400 }, (_, i) => i), 'every call answered, in order');
    const st = rpc.stats();
    assert.ok(st.rateLimited >= 3);
    assert.equal(st.decreases, 1, 'one burst of 429s from one generation of requests is one decrease');
    assert.ok(st.retries >= 60, JSON.stringify({ st, batches: server.batches.slice(0, 20), samples: samples.slice(0, 12) }));
    assert.equal(samples[0]!.concurrency, 8);
    assert.equal(samples[0]!.batchSize, 20);
    assert.equal(Math.min(...samples.map((x) => x.concurrency)), 4, 'concurrency halved');
    assert.equal(Math.min(...samples.map((x) => x.batchSize)), 10, 'batch size halved');
    assert.ok(Math.max(...server.batches) <= 20);
    assert.ok(server.batches.some((b) => b <= 10), 'smaller batches went out after the 429s');
    assert.ok(st.increases >= 1, 'grew back after successes');
    assert.ok(st.concurrency > 4 || st.batchSize > 10);
  } finally {
    rpc.close();
    await server.close();
  }
});

test('AIMD: timeouts shrink too, and the request is retried', async () => {
  let hangs = 1;
  const server = await jsonRpcServer({
    before: async (_reqs, res) => {
      if (hangs-- > 0) {
        await new Promise((r) => setTimeout(r, 400));
        sendJson(res, 200, []);
        return true;
      }
      return false;
    },
    answer: () => ({ result: '0x1' }),
  });
  const rpc = new RpcClient({ url: server.url, maxConcurrency: 4, timeoutMs: 100, backoff: fastBackoff });
  try {
    assert.equal(await rpc.call('eth_blockNumber'), '0x1');
    const st = rpc.stats();
    assert.equal(st.timeouts, 1);
    assert.equal(st.concurrency, 2);
  } finally {
    rpc.close();
    await server.close();
  }
});

test('per-item rate-limit errors are retried; other RPC errors reject without retry', async () => {
  let limited = 2;
  const server = await jsonRpcServer({
    answer: (method) => {
      if (method === 'flaky' && limited-- > 0) return { error: { code: -32005, message: 'request rate exceeded, slow down' } };
      if (method === 'broken') return { error: { code: -32000, message: 'execution reverted' } };
      return { result: 'ok' };
    },
  });
  const rpc = new RpcClient({ url: server.url, backoff: fastBackoff });
  try {
    assert.equal(await rpc.call('flaky'), 'ok');
    await assert.rejects(rpc.call('broken'), (e: unknown) => e instanceof RpcCallError && e.kind === 'rpc' && e.rpcCode === -32000);
    assert.equal(server.calls.filter((c) => c.method === 'broken').length, 1, 'not retried');
    assert.equal(server.calls.filter((c) => c.method === 'flaky').length, 3);
  } finally {
    rpc.close();
    await server.close();
  }
});

test('retries give up after maxRetries with a classified error', async () => {
  const server = await jsonRpcServer({
    before: (_r, res) => {
      sendJson(res, 503, { error: 'down', code: 'RPC_UPSTREAM_UNAVAILABLE' });
      return true;
    },
    answer: () => ({ result: null }),
  });
  const rpc = new RpcClient({ url: server.url, maxRetries: 2, backoff: fastBackoff });
  try {
    await assert.rejects(rpc.call('eth_blockNumber'), (e: unknown) => e instanceof RpcCallError && e.kind === 'rate_limited');
    assert.equal(rpc.stats().requests, 3, 'one try plus two retries');
  } finally {
    rpc.close();
    await server.close();
  }
});

test('gateway errors that are not retryable (unknown pool) reject at once', async () => {
  const server = await jsonRpcServer({
    before: (_r, res) => {
      sendJson(res, 404, { error: 'unknown RPC pool', code: 'RPC_POOL_NOT_FOUND' });
      return true;
    },
    answer: () => ({ result: null }),
  });
  const rpc = rpcClientForPool(server.url, 'missing', { backoff: fastBackoff });
  try {
    await assert.rejects(rpc.call('eth_blockNumber'), (e: unknown) => e instanceof RpcCallError && e.kind === 'http' && /RPC_POOL_NOT_FOUND/.test(e.message));
    assert.equal(rpc.stats().requests, 1);
    assert.throws(() => rpcClientForPool(server.url, 'Bad/Pool'), /rpc_pool/);
  } finally {
    rpc.close();
    await server.close();
  }
});

test('a missing method is detected once per client and remembered', async () => {
  const server = await jsonRpcServer({
    answer: (method) =>
      method === 'eth_getBlockReceipts'
        ? // ganache's real answer: wrong code, telling message
          { error: { code: -32700, message: 'The method eth_getBlockReceipts does not exist/is not available' } }
        : { result: [] },
  });
  const rpc = new RpcClient({ url: server.url, backoff: fastBackoff });
  try {
    const results = await Promise.all(Array.from({ length: 10 }, (_, i) => rpc.callOptional('eth_getBlockReceipts', [toQuantity(i)])));
    assert.ok(results.every((r) => !r.supported));
    assert.equal((await rpc.callOptional('eth_getBlockReceipts', ['0x1'])).supported, false);
    assert.equal(server.calls.filter((c) => c.method === 'eth_getBlockReceipts').length, 1, 'probed exactly once');
    assert.equal(rpc.methodSupport('eth_getBlockReceipts'), false);
    const supported = await rpc.callOptional('eth_getLogs', [{}]);
    assert.deepEqual(supported, { supported: true, result: [] });
    assert.equal(rpc.methodSupport('eth_getLogs'), true);
    // a new client probes again
    const rpc2 = new RpcClient({ url: server.url });
    assert.equal((await rpc2.callOptional('eth_getBlockReceipts', ['0x1'])).supported, false);
    assert.equal(server.calls.filter((c) => c.method === 'eth_getBlockReceipts').length, 2);
    rpc2.close();
  } finally {
    rpc.close();
    await server.close();
  }
});

test('clients of one pool share what they learned about a method; it expires, and a lost method falls back', async () => {
  let receipts = false; // the node lacks eth_getBlockReceipts until told otherwise
  const server = await jsonRpcServer({
    answer: (method) =>
      method === 'eth_getBlockReceipts' && !receipts
        ? { error: { code: -32601, message: 'the method eth_getBlockReceipts does not exist/is not available' } }
        : { result: [] },
  });
  const probes = () => server.calls.filter((c) => c.method === 'eth_getBlockReceipts').length;
  // One client per task, as the operator makes them: the pool's support is shared.
  const a = rpcClientForPool(server.url, 'shared_pool', { backoff: fastBackoff });
  const b = rpcClientForPool(server.url, 'shared_pool', { backoff: fastBackoff });
  try {
    assert.equal((await a.callOptional('eth_getBlockReceipts', ['0x1'])).supported, false);
    assert.equal((await b.callOptional('eth_getBlockReceipts', ['0x1'])).supported, false);
    assert.equal(probes(), 1, 'the second task did not probe again');
  } finally {
    a.close();
    b.close();
  }
  // The memory expires: a provider that gained the method is found again.
  let now = 0;
  const support = new MethodSupport(1000, () => now);
  const c = new RpcClient({ url: server.url, backoff: fastBackoff, methodSupport: support });
  try {
    assert.equal((await c.callOptional('eth_getBlockReceipts', ['0x1'])).supported, false);
    receipts = true;
    assert.equal((await c.callOptional('eth_getBlockReceipts', ['0x1'])).supported, false, 'remembered');
    now = 1001;
    assert.deepEqual(await c.callOptional('eth_getBlockReceipts', ['0x1']), { supported: true, result: [] });
    // ... and one that loses it again falls back instead of failing the range.
    receipts = false;
    assert.equal((await c.callOptional('eth_getBlockReceipts', ['0x1'])).supported, false);
    assert.equal(support.get('eth_getBlockReceipts'), false);
  } finally {
    c.close();
    await server.close();
  }
});

test('an answer too large for the gateway: a batch is retried in smaller batches, a single call is "too many results"', async () => {
  // The gateway refuses answers over its cap with 502 RPC_RESPONSE_TOO_LARGE; here any batch of
  // more than 5 calls is "too large".
  const server = await jsonRpcServer({
    before: async (reqs, res) => {
      if (reqs.length > 5 || reqs.some((r) => r.method === 'huge')) {
        sendJson(res, 502, { error: 'the upstream response exceeded 1024 bytes', code: 'RPC_RESPONSE_TOO_LARGE' });
        return true;
      }
      return false;
    },
    answer: (_m, params) => ({ result: params[0] }),
  });
  const rpc = new RpcClient({ url: server.url, maxBatchSize: 40, maxConcurrency: 2, backoff: fastBackoff });
  try {
    const out = await rpc.callMany(Array.from({ length: 40 }, (_, i) => ({ method: 'echo', params: [i] })));
    assert.deepEqual(out, Array.from({ length: 40 }, (_, i) => i), 'every call answered after the batches shrank');
    assert.ok(rpc.stats().decreases >= 3, 'halved 40 -> 20 -> 10 -> 5');
    assert.ok(server.batches.some((n) => n <= 5), JSON.stringify(server.batches));
    await assert.rejects(rpc.call('huge', [1]), (e: unknown) => e instanceof RpcCallError && e.kind === 'too_many_results');
  } finally {
    rpc.close();
    await server.close();
  }
});

test('error classification', () => {
  assert.equal(classifyRpcError({ code: -32601, message: 'Method not found' }), 'method_not_found');
  assert.equal(classifyRpcError({ code: -32005, message: 'query returned more than 10000 results' }), 'too_many_results');
  assert.equal(classifyRpcError({ code: -32000, message: 'block range is too wide' }), 'too_many_results');
  assert.equal(classifyRpcError({ code: -32602, message: 'Log response size exceeded. You can make eth_getLogs requests with up to a 2K block range' }), 'too_many_results');
  assert.equal(classifyRpcError({ code: -32005, message: 'limit exceeded' }), 'rate_limited');
  assert.equal(classifyRpcError({ code: 429, message: 'Too Many Requests' }), 'rate_limited');
  assert.equal(classifyRpcError({ code: -32000, message: 'header not found' }), 'server');
  assert.equal(classifyRpcError({ code: 3, message: 'execution reverted' }), 'rpc');
});

test('eth_getLogs ranges that are "too large" are split until the node accepts them', async () => {
  const logFor = (b: number, i: number) => ({
    address: `0x${'11'.repeat(20)}`,
    topics: [`0x${b.toString(16).padStart(64, '0')}`],
    data: '0x',
    blockNumber: toQuantity(b),
    blockHash: `0x${(b + 1).toString(16).padStart(64, '0')}`,
    transactionHash: `0x${(1000 + b).toString(16).padStart(64, '0')}`,
    transactionIndex: '0x0',
    logIndex: toQuantity(i),
    removed: false,
  });
  const server = await jsonRpcServer({
    answer: (_m, params) => {
      const f = params[0] as { fromBlock: string; toBlock: string };
      const from = hexToNumber(f.fromBlock);
      const to = hexToNumber(f.toBlock);
      if (to - from + 1 > 4) return { error: { code: -32005, message: 'query returned more than 10000 results' } };
      const out = [];
      for (let b = from; b <= to; b++) for (let i = 0; i < 2; i++) out.push(logFor(b, i));
      return { result: out.reverse() };
    },
  });
  const rpc = new RpcClient({ url: server.url, backoff: fastBackoff });
  try {
    const logs = await fetchLogs(rpc, 3, 23);
    assert.equal(logs.length, 40);
    assert.deepEqual(
      logs.map((l) => [hexToNumber(l.blockNumber), hexToNumber(l.logIndex)]),
      Array.from({ length: 40 }, (_, k) => [3 + Math.floor(k / 2), k % 2]),
    );
    for (const c of server.calls) {
      const f = c.params[0] as { fromBlock: string; toBlock: string };
      assert.ok(hexToNumber(f.fromBlock) >= 3 && hexToNumber(f.toBlock) <= 22, 'never asks outside the range');
    }
  } finally {
    rpc.close();
    await server.close();
  }
});
