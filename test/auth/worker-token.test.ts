import { test } from 'node:test';
import assert from 'node:assert/strict';
import { checkWorkerToken, WORKER_TOKEN_HEADER } from '../../src/auth/index.js';
import { TraceError } from '../../src/core/errors.js';

const TOKEN = 'wt_3f9a1c0e7b2d4a6f8e1c3b5d7f9a0c2e';
const isCode = (status: number, code: string) => (e: unknown) => e instanceof TraceError && e.status === status && e.code === code;
const refused = isCode(401, 'INVALID_WORKER_TOKEN');

test('accepts exactly the configured token', () => {
  assert.equal(WORKER_TOKEN_HEADER, 'x-trace-worker-token');
  assert.doesNotThrow(() => checkWorkerToken(TOKEN, TOKEN));
  assert.doesNotThrow(() => checkWorkerToken(TOKEN, `${TOKEN}`.slice(0)));
});

test('refuses missing, empty, different, prefixed, longer, case-changed and repeated headers', () => {
  const bad: Array<string | string[] | undefined | null> = [
    undefined,
    null,
    '',
    'x',
    TOKEN.slice(0, -1),
    `${TOKEN}x`,
    `${TOKEN.slice(0, -1)}f`,
    TOKEN.toUpperCase(),
    ` ${TOKEN}`,
    `Bearer ${TOKEN}`,
    [TOKEN],
    [TOKEN, TOKEN],
  ];
  for (const h of bad) assert.throws(() => checkWorkerToken(TOKEN, h), refused, `header ${JSON.stringify(h)}`);
  try {
    checkWorkerToken(TOKEN, 'nope');
  } catch (e) {
    assert.ok(e instanceof TraceError && !e.message.includes(TOKEN) && !e.message.includes('nope'));
  }
});

test('rotation overlap: old and new tokens both accepted while both are configured', () => {
  const next = 'wt_next_9b8a7c6d5e4f3a2b1c0d9e8f7a6b5c4d';
  checkWorkerToken([TOKEN, next], TOKEN);
  checkWorkerToken([TOKEN, next], next);
  assert.throws(() => checkWorkerToken([TOKEN, next], 'wt_other'), refused);
  assert.throws(() => checkWorkerToken([next], TOKEN), refused, 'retired token refused after rotation');
});

test('an unconfigured expected token refuses everything with a 500', () => {
  for (const expected of ['', [], ['']]) {
    assert.throws(() => checkWorkerToken(expected, ''), isCode(500, 'WORKER_TOKEN_NOT_CONFIGURED'));
    assert.throws(() => checkWorkerToken(expected, 'anything'), isCode(500, 'WORKER_TOKEN_NOT_CONFIGURED'));
  }
});
