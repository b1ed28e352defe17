import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { BlockList } from 'node:net';
import {
  IPV4_RULES,
  canonicalAddress,
  isForbiddenAddress,
  isLoopbackAddress,
  type ForbiddenCategory,
} from '../../src/delivery/net/index.js';

type Row = [input: string, category: ForbiddenCategory];

function expectForbidden(rows: Row[]): void {
  for (const [input, category] of rows) {
    const v = isForbiddenAddress(input);
    assert.equal(v.forbidden, true, `${input} should be forbidden`);
    assert.equal(v.category, category, `${input}: category ${String(v.category)} (${String(v.reason)})`);
    assert.ok(v.reason && v.reason.length > 0, `${input} should carry a reason`);
  }
}

function expectAllowed(inputs: string[]): void {
  for (const input of inputs) {
    const v = isForbiddenAddress(input);
    assert.equal(v.forbidden, false, `${input} should be allowed, got ${String(v.reason)}`);
    assert.equal(v.reason, undefined);
  }
}

describe('isForbiddenAddress: IPv4', () => {
  it('unspecified and "this network"', () => {
    expectForbidden([
      ['0.0.0.0', 'unspecified'],
      ['0', 'unspecified'],
      ['0x0', 'unspecified'],
      ['00.0.0.0', 'unspecified'],
      ['0.1.2.3', 'reserved'],
      ['0.255.255.255', 'reserved'],
    ]);
  });

  it('loopback 127/8 in decimal, octal, hex and short spellings', () => {
    expectForbidden([
      ['127.0.0.1', 'loopback'],
      ['127.255.255.254', 'loopback'],
      ['127.1', 'loopback'],
      ['127.0.1', 'loopback'],
      ['2130706433', 'loopback'],
      ['0177.0.0.1', 'loopback'],
      ['0177.1', 'loopback'],
      ['017700000001', 'loopback'],
      ['0x7f.1', 'loopback'],
      ['0x7f.0.0.1', 'loopback'],
      ['0x7F000001', 'loopback'],
      ['0x7f.0x0.0x0.0x1', 'loopback'],
      ['127.0.0.1.', 'loopback'],
      [' 127.0.0.1 ', 'loopback'],
    ]);
  });

  it('private ranges 10/8, 172.16/12, 192.168/16', () => {
    expectForbidden([
      ['10.0.0.1', 'private'],
      ['10.255.255.255', 'private'],
      ['167772161', 'private'],
      ['012.0.0.1', 'private'],
      ['0xa.0.0.1', 'private'],
      ['172.16.0.1', 'private'],
      ['172.31.255.255', 'private'],
      ['192.168.1.1', 'private'],
      ['0xc0a80101', 'private'],
      ['3232235777', 'private'],
    ]);
  });

  it('a leading-zero spelling is refused when either its octal or decimal reading is forbidden', () => {
    // 010.0.0.1 is 8.0.0.1 to inet_aton but 10.0.0.1 to a decimal reader.
    expectForbidden([['010.0.0.1', 'private']]);
  });

  it('link-local, CGNAT, metadata', () => {
    expectForbidden([
      ['169.254.0.1', 'link-local'],
      ['169.254.255.255', 'link-local'],
      ['169.254.169.254', 'metadata'],
      ['0xa9fea9fe', 'metadata'],
      ['2852039166', 'metadata'],
      ['0251.0376.0251.0376', 'metadata'],
      ['169.254.170.2', 'metadata'],
      ['100.100.100.200', 'metadata'],
      ['100.64.0.1', 'shared'],
      ['100.127.255.255', 'shared'],
    ]);
  });

  it('multicast, broadcast, reserved and documentation ranges', () => {
    expectForbidden([
      ['224.0.0.1', 'multicast'],
      ['239.255.255.250', 'multicast'],
      ['255.255.255.255', 'broadcast'],
      ['4294967295', 'broadcast'],
      ['240.0.0.1', 'reserved'],
      ['254.1.2.3', 'reserved'],
      ['192.0.0.8', 'reserved'],
      ['192.0.2.1', 'documentation'],
      ['198.18.0.1', 'reserved'],
      ['198.19.255.255', 'reserved'],
      ['198.51.100.7', 'documentation'],
      ['203.0.113.9', 'documentation'],
      ['192.88.99.1', 'reserved'],
    ]);
  });

  it('public addresses, including those just outside the ranges, are allowed', () => {
    expectAllowed([
      '8.8.8.8', '1.1.1.1', '93.184.216.34', '0x08080808', '134744072', '11.0.0.1', '9.255.255.255',
      '172.15.255.255', '172.32.0.1', '192.167.255.255', '192.169.0.0', '100.63.255.255', '100.128.0.0',
      '169.253.255.255', '169.255.0.0', '198.17.255.255', '198.20.0.0', '223.255.255.255', '126.255.255.255',
      '128.0.0.0', '192.0.1.255', '192.0.3.0', '1.0.0.0',
    ]);
  });

  it('the IPv4 deny list agrees with node:net BlockList built from the same rules', () => {
    const list = new BlockList();
    for (const r of IPV4_RULES) list.addSubnet(r.network, r.prefix, 'ipv4');
    const samples: string[] = [];
    const toText = (n: number) => [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join('.');
    for (const r of IPV4_RULES) {
      const base = r.network.split('.').reduce((a, b) => a * 256 + Number(b), 0);
      const size = 2 ** (32 - r.prefix);
      for (const n of [base - 1, base, base + size - 1, base + size]) if (n >= 0 && n < 2 ** 32) samples.push(toText(n));
    }
    let seed = 12345;
    for (let i = 0; i < 3000; i++) {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      samples.push(toText((seed * 2 + (i & 1)) >>> 0));
    }
    for (const s of samples) {
      assert.equal(isForbiddenAddress(s).forbidden, list.check(s, 'ipv4'), s);
    }
  });
});

describe('isForbiddenAddress: IPv6', () => {
  it('unspecified and loopback in several spellings', () => {
    expectForbidden([
      ['::', 'unspecified'],
      ['0:0:0:0:0:0:0:0', 'unspecified'],
      ['[::]', 'unspecified'],
      ['::1', 'loopback'],
      ['0:0:0:0:0:0:0:1', 'loopback'],
      ['0::0001', 'loopback'],
      ['[::1]', 'loopback'],
      ['::1%lo', 'loopback'],
    ]);
  });

  it('IPv4-mapped addresses are judged by the IPv4 address they carry', () => {
    expectForbidden([
      ['::ffff:127.0.0.1', 'loopback'],
      ['::ffff:7f00:1', 'loopback'],
      ['0:0:0:0:0:ffff:7f00:1', 'loopback'],
      ['[::FFFF:7F00:0001]', 'loopback'],
      ['::ffff:169.254.169.254', 'metadata'],
      ['::ffff:a9fe:a9fe', 'metadata'],
      ['::ffff:10.0.0.1', 'private'],
      ['::ffff:0.0.0.0', 'unspecified'],
      ['::ffff:100.100.100.200', 'metadata'],
    ]);
    expectAllowed(['::ffff:8.8.8.8', '::ffff:808:808']);
  });

  it('IPv4-compatible ::/96 and IPv4-translated forms are refused outright', () => {
    expectForbidden([
      ['::127.0.0.1', 'ipv4-compatible'],
      ['::7f00:1', 'ipv4-compatible'],
      ['::8.8.8.8', 'ipv4-compatible'],
      ['::ffff:0:7f00:1', 'reserved'],
    ]);
  });

  it('NAT64: the well-known prefix checks the embedded address, the local-use prefix is refused', () => {
    expectForbidden([
      ['64:ff9b::a9fe:a9fe', 'metadata'],
      ['64:ff9b::169.254.169.254', 'metadata'],
      ['64:ff9b::7f00:1', 'loopback'],
      ['64:ff9b:0:0:0:0:a00:1', 'private'],
      ['64:ff9b:1::1', 'nat64-local'],
      ['64:ff9b:1:abcd::8.8.8.8', 'nat64-local'],
    ]);
    expectAllowed(['64:ff9b::808:808', '64:ff9b::8.8.8.8']);
  });

  it('6to4 2002::/16 checks the embedded IPv4 address', () => {
    expectForbidden([
      ['2002:a9fe:a9fe::', 'metadata'],
      ['2002:a9fe:a9fe::1', 'metadata'],
      ['2002:7f00:1::1', 'loopback'],
      ['2002:0a00:0001:1234::1', 'private'],
      ['2002:c0a8:101::', 'private'],
    ]);
    expectAllowed(['2002:808:808::1']);
  });

  it('Teredo 2001::/32 checks the server and the bit-inverted client address', () => {
    // RFC 4380 example: server 65.54.227.120, client 192.0.2.45 (documentation range).
    expectForbidden([
      ['2001:0:4136:e378:8000:63bf:3fff:fdd2', 'documentation'],
      ['2001:0:4136:e378::80ff:fffe', 'loopback'], // client 127.0.0.1
      ['2001:0:4136:e378::5601:5601', 'metadata'], // client 169.254.169.254
      ['2001:0:a00:1::f7f7:f7f7', 'private'], // server 10.0.0.1
    ]);
    expectAllowed(['2001:0:4136:e378:8000:63bf:f7f7:f7f7']); // client 8.8.8.8
  });

  it('unique-local, link-local with zone ids, site-local, multicast, metadata', () => {
    expectForbidden([
      ['fc00::1', 'unique-local'],
      ['fd12:3456:789a::1', 'unique-local'],
      ['fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff', 'unique-local'],
      ['fd00:ec2::254', 'metadata'],
      ['fd00:ec2:0:0:0:0:0:254', 'metadata'],
      ['[fd00:ec2::254]', 'metadata'],
      ['fe80::1', 'link-local'],
      ['fe80::1%eth0', 'link-local'],
      ['[fe80::1%25eth0]', 'link-local'],
      ['FE80::abcd:1%25en0', 'link-local'],
      ['febf:ffff::1', 'link-local'],
      ['fec0::1', 'site-local'],
      ['feff::1', 'site-local'],
      ['ff02::1', 'multicast'],
      ['ff05::1:3', 'multicast'],
      ['ff0e::101', 'multicast'],
    ]);
  });

  it('documentation, discard, benchmarking and everything outside 2000::/3', () => {
    expectForbidden([
      ['2001:db8::1', 'documentation'],
      ['2001:DB8:0:0:0:0:0:1', 'documentation'],
      ['2001:db8:ffff:ffff:ffff:ffff:ffff:ffff', 'documentation'],
      ['3fff::1', 'documentation'],
      ['100::1', 'discard'],
      ['100::ffff:ffff:ffff:ffff', 'discard'],
      ['100:0:0:1::1', 'reserved'],
      ['2001:2::1', 'reserved'],
      ['2001:10::1', 'reserved'],
      ['2001:20::1', 'reserved'],
      ['4000::1', 'reserved'],
      ['1::1', 'reserved'],
      ['e000::1', 'reserved'],
    ]);
  });

  it('global unicast addresses are allowed', () => {
    expectAllowed([
      '2606:4700:4700::1111',
      '2001:4860:4860::8888',
      '2a00:1450:4001:80b::200e',
      '[2606:4700:4700::1111]',
      '2606:4700:4700:0:0:0:0:1111',
      '2001:db9::1',
      '2001:1::1',
    ]);
  });
});

describe('isForbiddenAddress: malformed input is refused', () => {
  it('refuses anything that is not an address', () => {
    for (const input of [
      '', ' ', 'example.com', 'localhost', '1.2.3.4.5', '256.0.0.0', '1.2.3.256', '1.2.3.-1', '127.0.0.1/8',
      '::ffff:1.2.3', '1::2::3', '12345::1', '1:2:3:4:5:6:7:8:9', '1:2:3:4:5:6:7', '[::1', '::1]', 'fe80::1%',
      'fe80::1%25', 'g::1', '::ffff:127.0.0.1:1', '1.2.3.4:80', '99999999999999999999',
    ]) {
      const v = isForbiddenAddress(input);
      assert.equal(v.forbidden, true, `${JSON.stringify(input)} should be refused`);
      assert.equal(v.category, 'invalid', `${JSON.stringify(input)} category ${String(v.category)}`);
    }
  });
});

describe('helpers', () => {
  it('isLoopbackAddress', () => {
    for (const s of ['127.0.0.1', '127.9.9.9', '::1', '::ffff:127.0.0.1', '0x7f.1']) assert.equal(isLoopbackAddress(s), true, s);
    for (const s of ['10.0.0.1', '8.8.8.8', '::', 'fe80::1', '::127.0.0.1', 'localhost']) assert.equal(isLoopbackAddress(s), false, s);
  });

  it('canonicalAddress', () => {
    assert.deepEqual(canonicalAddress('0x7f.1'), { address: '127.0.0.1', family: 4 });
    assert.deepEqual(canonicalAddress('2130706433'), { address: '127.0.0.1', family: 4 });
    assert.deepEqual(canonicalAddress('0:0:0:0:0:ffff:7f00:1'), { address: '::ffff:7f00:1', family: 6 });
    assert.deepEqual(canonicalAddress('::ffff:127.0.0.1'), { address: '::ffff:7f00:1', family: 6 });
    assert.deepEqual(canonicalAddress('[FE80::1%25eth0]'), { address: 'fe80::1', family: 6 });
    assert.deepEqual(canonicalAddress('2001:db8:0:0:1:0:0:1'), { address: '2001:db8::1:0:0:1', family: 6 });
    assert.deepEqual(canonicalAddress('1:0:0:2:0:0:0:3'), { address: '1:0:0:2::3', family: 6 });
    assert.deepEqual(canonicalAddress('1:2:3:4:5:6:7:0'), { address: '1:2:3:4:5:6:7:0', family: 6 });
    assert.equal(canonicalAddress('010.0.0.1'), null); // ambiguous octal/decimal
    assert.equal(canonicalAddress('example.com'), null);
  });
});
