import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { TraceError } from '../../src/core/errors.js';
import {
  WEBHOOK_URL_REFUSED,
  allowHttpLoopbackFromEnv,
  checkWebhookUrl,
  describeWebhookTarget,
  webhookUrlProblem,
  type WebhookUrlOptions,
} from '../../src/delivery/net/index.js';

function refused(raw: string, opts: WebhookUrlOptions = {}, pattern?: RegExp): void {
  assert.throws(
    () => checkWebhookUrl(raw, opts),
    (e: unknown) => {
      assert.ok(e instanceof TraceError, `${raw}: expected TraceError`);
      assert.equal(e.code, WEBHOOK_URL_REFUSED);
      assert.equal(e.status, 400);
      if (pattern) assert.match(e.message, pattern, `${raw}: ${e.message}`);
      return true;
    },
    `${JSON.stringify(raw)} should be refused`,
  );
}

describe('checkWebhookUrl: what WHATWG URL already normalizes', () => {
  it('rewrites IPv4 spellings and IPv6 forms before the policy sees them', () => {
    assert.equal(new URL('https://2130706433/').hostname, '127.0.0.1');
    assert.equal(new URL('https://0177.0.0.1/').hostname, '127.0.0.1');
    assert.equal(new URL('https://0x7f.1/').hostname, '127.0.0.1');
    assert.equal(new URL('https://127.1/').hostname, '127.0.0.1');
    assert.equal(new URL('https://%31%32%37.0.0.1/').hostname, '127.0.0.1');
    assert.equal(new URL('https://[0:0:0:0:0:ffff:7f00:1]/').hostname, '[::ffff:7f00:1]');
    assert.equal(new URL('https://[::ffff:127.0.0.1]/').hostname, '[::ffff:7f00:1]');
    assert.throws(() => new URL('https://[fe80::1%25eth0]/'));
  });
});

describe('checkWebhookUrl: refusals', () => {
  it('refuses schemes other than https', () => {
    for (const raw of ['http://hooks.example.com/x', 'ftp://hooks.example.com/', 'ws://hooks.example.com/', 'file:///etc/passwd', 'javascript:alert(1)', 'gopher://hooks.example.com/']) {
      refused(raw, {}, /https|valid|host/);
    }
  });

  it('refuses credentials in the URL', () => {
    refused('https://user:pass@hooks.example.com/x', {}, /credentials/);
    refused('https://user@hooks.example.com/x', {}, /credentials/);
    refused('https://:pass@hooks.example.com/x', {}, /credentials/);
  });

  it('refuses empty, malformed, oversized and control-character input', () => {
    refused('');
    refused('not a url');
    refused('hooks.example.com/x', {}, /valid/);
    refused('https:// hooks.example.com/', {}, /whitespace/);
    refused('https://hooks.example.com/\nx', {}, /whitespace/);
    refused(`https://hooks.example.com/${'a'.repeat(2100)}`, {}, /longer/);
    refused('https://hooks.example.com:0/', {}, /port/);
    refused('https://a..b.example.com/', {}, /label/);
    refused('https://hooks.example.com../', {}, /label/);
    refused('https://hooks*.example.com/', {}, /label/);
  });

  it('refuses localhost, local and internal names, and single-label names', () => {
    for (const raw of [
      'https://localhost/', 'https://LOCALHOST./', 'https://localhost:8443/x', 'https://api.localhost/',
      'https://metadata.google.internal/computeMetadata/v1/', 'https://ip-10-0-0-1.ec2.internal/',
      'https://printer.local/', 'https://router.home.arpa/', 'https://box.localdomain/',
    ]) refused(raw, {}, /local or internal/);
    refused('https://metadata/', {}, /fully qualified/);
    refused('https://kubernetes:443/', {}, /fully qualified/);
  });

  it('refuses forbidden IPv4 literals in every spelling', () => {
    for (const raw of [
      'https://127.0.0.1/', 'https://127.0.0.1./', 'https://2130706433/', 'https://0177.0.0.1/', 'https://0x7f.1/',
      'https://127.1/', 'https://0x7f000001/', 'https://%31%32%37.0.0.1/', 'https://169.254.169.254/latest/meta-data/',
      'https://0xa9fea9fe/', 'https://2852039166/', 'https://100.100.100.200/', 'https://0.0.0.0/', 'https://0/',
      'https://10.1.2.3:8443/', 'https://172.16.0.1/', 'https://192.168.0.1/', 'https://100.64.0.1/',
      'https://224.0.0.1/', 'https://255.255.255.255/', 'https://240.0.0.1/', 'https://192.0.2.1/',
      'https://198.18.0.1/', 'https://198.51.100.1/', 'https://203.0.113.1/', 'https://192.0.0.1/',
    ]) refused(raw, {}, /forbidden address range/);
  });

  it('refuses forbidden IPv6 literals in every spelling', () => {
    for (const raw of [
      'https://[::1]/', 'https://[0:0:0:0:0:0:0:1]/', 'https://[::]/', 'https://[::ffff:127.0.0.1]/',
      'https://[::ffff:7f00:1]/', 'https://[0:0:0:0:0:ffff:7f00:1]/', 'https://[::ffff:169.254.169.254]/',
      'https://[64:ff9b::a9fe:a9fe]/', 'https://[64:ff9b::169.254.169.254]/', 'https://[2002:a9fe:a9fe::]/',
      'https://[fe80::1]/', 'https://[fd00:ec2::254]/', 'https://[fc00::1]/', 'https://[fec0::1]/',
      'https://[ff02::1]/', 'https://[2001:db8::1]/', 'https://[100::1]/', 'https://[::127.0.0.1]/',
      'https://[2001:0:4136:e378::80ff:fffe]/',
    ]) refused(raw, {}, /forbidden address range/);
    // Zone ids are not valid in WHATWG URLs at all.
    refused('https://[fe80::1%25eth0]/', {}, /valid/);
    refused('https://[fe80::1%eth0]/', {}, /valid/);
  });

  it('never echoes the URL in its message', () => {
    try {
      checkWebhookUrl('https://127.0.0.1/hook/SECRETPATH?token=SECRETQUERY');
      assert.fail('should refuse');
    } catch (e) {
      assert.ok(e instanceof TraceError);
      assert.doesNotMatch(e.message, /SECRET|127\.0\.0\.1/);
    }
  });
});

describe('checkWebhookUrl: accepted URLs', () => {
  it('accepts public https URLs and normalizes them', () => {
    const a = checkWebhookUrl('https://Hooks.Example.COM/path/x?y=1#frag');
    assert.equal(a.host, 'hooks.example.com');
    assert.equal(a.port, 443);
    assert.equal(a.ip, null);
    assert.equal(a.family, null);
    assert.equal(a.protocol, 'https:');
    assert.equal(a.url.href, 'https://hooks.example.com/path/x?y=1');

    const b = checkWebhookUrl('https://hooks.example.com.:8443/p');
    assert.equal(b.host, 'hooks.example.com');
    assert.equal(b.port, 8443);
    assert.equal(b.url.href, 'https://hooks.example.com:8443/p');

    const c = checkWebhookUrl('https://93.184.216.34/x');
    assert.equal(c.ip, '93.184.216.34');
    assert.equal(c.family, 4);

    const d = checkWebhookUrl('https://[2606:4700:4700:0:0:0:0:1111]:65535/');
    assert.equal(d.ip, '2606:4700:4700::1111');
    assert.equal(d.host, '2606:4700:4700::1111');
    assert.equal(d.family, 6);
    assert.equal(d.port, 65535);

    const e = checkWebhookUrl('https://ΑΒΓ.example.com/');
    assert.equal(e.host, 'xn--mxacd.example.com');

    // Names that look harmless but may resolve anywhere are left to the send-time DNS check.
    assert.equal(checkWebhookUrl('https://127.0.0.1.nip.io/').host, '127.0.0.1.nip.io');
    assert.equal(checkWebhookUrl('https://my_hook.example.com/').host, 'my_hook.example.com');
  });

  it('webhookUrlProblem returns null or the refusal sentence', () => {
    assert.equal(webhookUrlProblem('https://hooks.example.com/'), null);
    assert.match(webhookUrlProblem('http://hooks.example.com/') ?? '', /https/);
  });

  it('describeWebhookTarget keeps scheme, host and port only', () => {
    assert.equal(describeWebhookTarget('https://u:p@hooks.example.com:8443/services/T1/B2/SECRET?token=abc'), 'https://hooks.example.com:8443');
    assert.equal(describeWebhookTarget(new URL('https://hooks.example.com/x?y')), 'https://hooks.example.com');
    assert.equal(describeWebhookTarget('::not a url'), '[invalid url]');
  });
});

describe('checkWebhookUrl: development loopback switch', () => {
  const dev = { allowHttpLoopback: true };

  it('allows http and https to loopback literals and localhost names', () => {
    assert.equal(checkWebhookUrl('http://localhost:3000/hook', dev).host, 'localhost');
    assert.equal(checkWebhookUrl('http://api.localhost/hook', dev).port, 80);
    assert.equal(checkWebhookUrl('http://127.0.0.1:8080/', dev).ip, '127.0.0.1');
    assert.equal(checkWebhookUrl('http://0x7f.1:8080/', dev).ip, '127.0.0.1');
    assert.equal(checkWebhookUrl('http://[::1]:8080/', dev).ip, '::1');
    assert.equal(checkWebhookUrl('https://localhost:8443/', dev).protocol, 'https:');
    assert.equal(checkWebhookUrl('https://hooks.example.com/', dev).host, 'hooks.example.com');
  });

  it('still refuses plain http elsewhere and every non-loopback private destination', () => {
    refused('http://hooks.example.com/', dev, /https/);
    refused('http://10.0.0.1/', dev, /forbidden/);
    refused('http://192.168.1.1/', dev, /forbidden/);
    refused('https://169.254.169.254/', dev, /forbidden/);
    refused('https://[fd00:ec2::254]/', dev, /forbidden/);
    refused('http://metadata.google.internal/', dev, /local or internal/);
    refused('http://printer.local/', dev, /local or internal/);
    refused('http://user:pw@localhost/', dev, /credentials/);
  });

  it('is read from TRACE_DELIVERY_ALLOW_HTTP_LOOPBACK and off by default', () => {
    assert.equal(allowHttpLoopbackFromEnv({}), false);
    assert.equal(allowHttpLoopbackFromEnv({ TRACE_DELIVERY_ALLOW_HTTP_LOOPBACK: '0' }), false);
    assert.equal(allowHttpLoopbackFromEnv({ TRACE_DELIVERY_ALLOW_HTTP_LOOPBACK: '' }), false);
    assert.equal(allowHttpLoopbackFromEnv({ TRACE_DELIVERY_ALLOW_HTTP_LOOPBACK: '1' }), true);
    assert.equal(allowHttpLoopbackFromEnv({ TRACE_DELIVERY_ALLOW_HTTP_LOOPBACK: 'true' }), true);
  });
});
