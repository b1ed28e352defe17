import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { TraceError } from '../../src/core/errors.js';
import { MAX_WEBHOOK_HEADERS, WEBHOOK_HEADERS_REFUSED, checkWebhookHeaders } from '../../src/delivery/net/index.js';

function refused(headers: Record<string, string>, pattern: RegExp): void {
  assert.throws(
    () => checkWebhookHeaders(headers),
    (e: unknown) => {
      assert.ok(e instanceof TraceError);
      assert.equal(e.code, WEBHOOK_HEADERS_REFUSED);
      assert.match(e.message, pattern);
      return true;
    },
  );
}

describe('checkWebhookHeaders', () => {
  const key = { 'Idempotency-Key': 'd-1' };

  it('accepts end-to-end headers with an Idempotency-Key', () => {
    const h = { ...key, Authorization: 'Bearer abc', 'X-Trace-Signature': 'v1=deadbeef', 'User-Agent': 'custom' };
    assert.deepEqual(checkWebhookHeaders(h), h);
  });

  it('requires a non-empty, bounded Idempotency-Key', () => {
    refused({}, /Idempotency-Key/);
    refused({ 'Idempotency-Key': '  ' }, /Idempotency-Key/);
    refused({ 'Idempotency-Key': 'x'.repeat(256) }, /Idempotency-Key/);
  });

  it('denies hop, framing, proxy and forwarding headers in any case', () => {
    for (const name of [
      'Host', 'host', 'Connection', 'Keep-Alive', 'Transfer-Encoding', 'TE', 'Trailer', 'Upgrade', 'Content-Length',
      'Content-Type', 'Expect', 'Proxy-Authorization', 'proxy-connection', 'X-Forwarded-For', 'X-Forwarded-Host',
      'Forwarded', 'X-Real-IP', 'Via',
    ]) refused({ ...key, [name]: 'x' }, /may not be set/);
  });

  it('refuses invalid names, duplicate names and unsafe values without echoing values', () => {
    refused({ ...key, 'Bad Name': 'x' }, /token/);
    refused({ ...key, 'x-a': '1', 'X-A': '2' }, /more than once/);
    refused({ ...key, 'X-Inject': 'a\r\nHost: evil' }, /printable ASCII/);
    refused({ ...key, 'X-Null': 'a\u0000b' }, /printable ASCII/);
    refused({ ...key, 'X-Utf': 'é' }, /printable ASCII/);
    try {
      checkWebhookHeaders({ ...key, 'X-Secret': 'TOPSECRET\n' });
      assert.fail('should refuse');
    } catch (e) {
      assert.ok(e instanceof TraceError);
      assert.doesNotMatch(e.message, /TOPSECRET/);
    }
  });

  it('caps header count, value length and total size', () => {
    const many: Record<string, string> = { ...key };
    for (let i = 0; i < MAX_WEBHOOK_HEADERS; i++) many[`X-H${i}`] = 'v';
    refused(many, /at most/);
    refused({ ...key, 'X-Long': 'v'.repeat(2049) }, /too long/);
    const big: Record<string, string> = { ...key };
    for (let i = 0; i < 5; i++) big[`X-Big${i}`] = 'v'.repeat(2000);
    refused(big, /bytes in total/);
  });
});
