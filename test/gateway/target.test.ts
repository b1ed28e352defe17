import { test } from 'node:test';
import assert from 'node:assert/strict';
import { TraceError } from '../../src/core/errors.js';
import { canonicalTarget } from '../../src/gateway/target.js';
import { RouteTable } from '../../src/gateway/routes.js';

const refusal = (raw: string): { status: number; code: string } => {
  try {
    canonicalTarget(raw, 4096);
  } catch (e) {
    assert.ok(e instanceof TraceError);
    return { status: e.status, code: e.code };
  }
  return { status: 0, code: 'ACCEPTED' };
};

test('canonical targets: segments are decoded once and re-encoded; the query is kept as sent', () => {
  assert.deepEqual(canonicalTarget('/v1/datasets', 4096), { segments: ['v1', 'datasets'], path: '/v1/datasets', query: '' });
  assert.deepEqual(canonicalTarget('/v1/d%61tasets?a=%2F&b', 4096), { segments: ['v1', 'datasets'], path: '/v1/datasets', query: 'a=%2F&b' });
  assert.deepEqual(canonicalTarget('/v1/alerts/a:b', 4096).path, '/v1/alerts/a%3Ab');
  assert.deepEqual(canonicalTarget('/v1/alerts/a%3ab', 4096).segments, ['v1', 'alerts', 'a:b']);
  assert.deepEqual(canonicalTarget('/', 4096), { segments: [], path: '/', query: '' });
  assert.deepEqual(canonicalTarget('/v1/x?', 4096).query, '');
});

test('ambiguous or hostile spellings are refused with 400 (414 when too long)', () => {
  const cases: Array<[string, number]> = [
    ['v1/datasets', 400],
    ['http://h/v1/datasets', 400],
    ['*', 400],
    ['/v1/datasets#x', 400],
    ['/v1//datasets', 400],
    ['/v1/datasets/', 400],
    ['//v1/datasets', 400],
    ['/v1/./datasets', 400],
    ['/v1/../v1/datasets', 400],
    ['/v1/%2e/datasets', 400],
    ['/v1/%2E%2E/datasets', 400],
    ['/v1/.%2e/datasets', 400],
    ['/v1%2fdatasets', 400],
    ['/v1/data%5Csets', 400],
    ['/v1\\datasets', 400],
    ['/v1/%252e%252e', 400],
    ['/v1/%00', 400],
    ['/v1/a%20b', 400],
    ['/v1/a;b', 400],
    ['/v1/a@b', 400],
    ['/v1/%C3%A9', 400],
    ['/v1/%C0%AE', 400],
    ['/v1/%E0%A4%A', 400],
    ['/v1/%zz', 400],
    ['/v1/%', 400],
    ['/v1/%u002e', 400],
    [`/v1/${'a'.repeat(4093)}`, 414],
  ];
  for (const [raw, status] of cases) assert.equal(refusal(raw).status, status, raw.slice(0, 60));
  assert.equal(refusal(`/v1/${'a'.repeat(4092)}`).status, 0, 'exactly at the limit is fine');
});

test('route matching is exact and case-sensitive on decoded segments', () => {
  const t = new RouteTable();
  const m = (p: string) => t.matchPath(canonicalTarget(p, 4096).segments).map((x) => `${x.rule.methods.join('|')} ${x.rule.pattern} ${JSON.stringify(x.params)}`);
  assert.deepEqual(m('/v1/datasets/eth_blocks'), ['GET /v1/datasets/{name} {"name":"eth_blocks"}']);
  assert.deepEqual(m('/v1/dags/d1/jobs/j1/trigger'), ['POST /v1/dags/{dag}/jobs/{job}/trigger {"dag":"d1","job":"j1"}']);
  assert.deepEqual(m('/v1/query'), ['POST /v1/query {}']);
  for (const p of ['/v1/task/complete', '/v1/%74ask/complete', '/internal/task-claim', '/V1/datasets', '/v1/Datasets', '/v1/datasets/-x', '/v1/datasets/.x', '/v1/datasets/a/b', '/v1', '/', '/v1/tasks/x/y/z', `/v1/datasets/${'a'.repeat(257)}`]) {
    assert.deepEqual(m(p), [], p);
  }
});
