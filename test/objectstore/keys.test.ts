import { test } from 'node:test';
import assert from 'node:assert/strict';
import { isTraceError } from '../../src/core/errors.js';
import {
  canonicalKey, canonicalNonEmptyPrefix, canonicalPrefix, canonicalPrefixUrl, compareKeys, isUrlWithin, isValidKey, isWithin, joinKey,
  parseObjectUrl,
} from '../../src/objectstore/keys.js';

const VALID_KEYS = [
  'a',
  '_SUCCESS',
  '.hidden',
  'a..b',
  '...',
  'datasets/6b1d3c1e/v1/blocks_0_1000.parquet',
  'k=v/part-0.parquet',
  'a b/c%20d',
  'ünï/cødé/日本',
  'emoji/😀',
  'x'.repeat(255),
  `${'x'.repeat(255)}/${'y'.repeat(255)}/${'z'.repeat(255)}/${'w'.repeat(255)}`, // 1023 bytes
  'é'.repeat(127), // 254 bytes in one segment
];

const HOSTILE_KEYS: Array<[string, unknown]> = [
  ['empty', ''],
  ['slash only', '/'],
  ['absolute', '/etc/passwd'],
  ['trailing slash', 'a/'],
  ['empty segment', 'a//b'],
  ['dot', '.'],
  ['dotdot', '..'],
  ['dot segment', 'a/./b'],
  ['dotdot segment', 'a/../b'],
  ['leading dotdot', '../a'],
  ['trailing dotdot', 'a/..'],
  ['traversal deep', 'a/b/../../../etc/passwd'],
  ['backslash', 'a\\b'],
  ['backslash traversal', '..\\..\\etc'],
  ['NUL', 'a\u0000b'],
  ['newline', 'a\nb'],
  ['carriage return', 'a\rb'],
  ['tab', 'a\tb'],
  ['escape', 'a\u001b[31m'],
  ['DEL', 'a\u007f'],
  ['C1 control', 'a\u0085'],
  ['line separator', 'a\u2028b'],
  ['star wildcard', 'a/*'],
  ['question wildcard', 'a?b'],
  ['lone high surrogate', 'a\uD800'],
  ['lone low surrogate', '\uDC00a'],
  ['segment too long', 'x'.repeat(256)],
  ['segment too long in bytes', 'é'.repeat(128)],
  ['key too long', `${'x'.repeat(255)}/${'y'.repeat(255)}/${'z'.repeat(255)}/${'w'.repeat(255)}/q`],
  ['key too long in bytes', Array.from({ length: 5 }, () => 'é'.repeat(110)).join('/')],
  ['reserved temp name', '.trace-tmp-deadbeef'],
  ['reserved temp name nested', 'a/.trace-tmp-x'],
  ['number', 42],
  ['null', null],
  ['undefined', undefined],
  ['object', { toString: () => 'a' }],
];

function refusedAsKey(fn: () => unknown): boolean {
  try {
    fn();
    return false;
  } catch (e) {
    return isTraceError(e) && e.status === 400 && e.code === 'INVALID_OBJECT_KEY';
  }
}

test('valid keys pass unchanged', () => {
  for (const k of VALID_KEYS) {
    assert.equal(canonicalKey(k), k, k);
    assert.ok(isValidKey(k), k);
  }
});

test('hostile keys are refused with 400 INVALID_OBJECT_KEY and the message does not echo them', () => {
  for (const [label, k] of HOSTILE_KEYS) {
    assert.ok(refusedAsKey(() => canonicalKey(k)), label);
    assert.equal(isValidKey(k), false, label);
    try {
      canonicalKey(k);
    } catch (e) {
      if (typeof k === 'string' && k.length > 3) assert.ok(!(e as Error).message.includes(k), `${label}: message echoes the key`);
    }
  }
});

test('canonicalPrefix: a directory ending in /, root stays empty, hostile prefixes refused', () => {
  assert.equal(canonicalPrefix(''), '');
  assert.equal(canonicalPrefix('a'), 'a/');
  assert.equal(canonicalPrefix('a/b'), 'a/b/');
  assert.equal(canonicalPrefix('a/b/'), 'a/b/');
  for (const p of ['/', '//', 'a//', 'a//b/', '../', 'a/../', './a/', '/a/', 'a\\b/', 'a/*/', 'a?/', '\u0000/', 'x'.repeat(256) + '/']) {
    assert.ok(refusedAsKey(() => canonicalPrefix(p)), JSON.stringify(p));
  }
  assert.ok(refusedAsKey(() => canonicalNonEmptyPrefix('')));
  assert.equal(canonicalNonEmptyPrefix('x'), 'x/');
});

test('isWithin is segment-aware and fails closed', () => {
  const table: Array<[string, string, boolean]> = [
    ['a/b/c', 'a/b', true],
    ['a/b/c', 'a/b/', true],
    ['a/b/c/d.parquet', 'a/', true],
    ['a/bc', 'a/b/', false],
    ['a/bc', 'a/b', false],
    ['a/b', 'a/b/', false], // a prefix is not inside itself
    ['a/b', 'a/b', false],
    ['A/b/c', 'a/', false],
    ['a/b/c', '', false], // the root is never granted implicitly
    ['../a/b', 'a/', false],
    ['a/b/../../x', 'a/b/', false],
    ['a/b/c', 'a/b/../', false],
    ['a/b/c', 'a/*', false],
    ['a/b\\..\\..\\x', 'a/b/', false],
    ['a//b', 'a/', false],
  ];
  for (const [key, prefix, want] of table) assert.equal(isWithin(key, prefix), want, `${key} within ${prefix}`);
});

test('joinKey validates both parts and bounds the total', () => {
  assert.equal(joinKey('a/b', 'c'), 'a/b/c');
  assert.equal(joinKey('', 'c'), 'c');
  assert.ok(refusedAsKey(() => joinKey('a', '../b')));
  assert.ok(refusedAsKey(() => joinKey('a/..', 'b')));
  assert.equal(joinKey('x'.repeat(255) + '/' + 'y'.repeat(255) + '/' + 'z'.repeat(255), 'w'.repeat(255)).length, 1023);
  assert.ok(refusedAsKey(() => joinKey(['x', 'y', 'z'].map((c) => c.repeat(255)).join('/') + '/' + 'w'.repeat(200), 'v'.repeat(100))));
});

test('compareKeys orders by UTF-8 bytes (as S3 lists)', () => {
  const keys = ['é', 'b', 'B', 'a/b', 'a', '😀', '\uFF5E', 'a-b'];
  keys.sort(compareKeys);
  assert.deepEqual(keys, ['B', 'a', 'a-b', 'a/b', 'b', 'é', '\uFF5E', '😀']);
});

test('object URLs: s3 and file parse strictly; canonical prefix URLs for credential scoping', () => {
  assert.deepEqual(parseObjectUrl('s3://trace-data/prefix/x'), { scheme: 's3', bucket: 'trace-data', prefix: 'prefix/x/' });
  assert.deepEqual(parseObjectUrl('s3://trace-data'), { scheme: 's3', bucket: 'trace-data', prefix: '' });
  assert.deepEqual(parseObjectUrl('s3://trace-data/'), { scheme: 's3', bucket: 'trace-data', prefix: '' });
  assert.deepEqual(parseObjectUrl('file:///var/lib/trace'), { scheme: 'file', path: '/var/lib/trace' });
  assert.deepEqual(parseObjectUrl('file:///var/lib/my%20objects/'), { scheme: 'file', path: '/var/lib/my objects' });

  assert.equal(canonicalPrefixUrl('s3://trace-data/scratch/task'), 's3://trace-data/scratch/task/');
  assert.equal(canonicalPrefixUrl('s3://trace-data/scratch/task/'), 's3://trace-data/scratch/task/');
  assert.equal(canonicalPrefixUrl('file:///tmp/my objects'), 'file:///tmp/my%20objects/');

  const bad = [
    's3://trace-data', // empty prefix
    's3://trace-data/',
    's3:///prefix', // no bucket
    's3://Trace-Data/p', // bucket case
    's3://ab/p', // bucket too short
    's3://a..b/p',
    's3://192.168.0.1/p',
    's3://trace-data/../other/',
    's3://trace-data/a/../../b/',
    's3://trace-data//a/',
    's3://trace-data/a/*',
    's3://trace-data/a?/',
    's3://trace-data/a\\b/',
    'file:///',
    'file:///tmp/../etc',
    'file:///tmp/%2e%2e/etc',
    'file:///tmp/./x',
    'file:///tmp//x',
    'file://host/tmp',
    'file:tmp/x',
    'file:///tmp/x?q=1',
    'file:///tmp/x#f',
    'file:///tmp/%00x',
    'http://example.com/x',
    'S3://trace-data/p/',
    '',
  ];
  for (const u of bad) {
    assert.throws(() => canonicalPrefixUrl(u), (e: unknown) => isTraceError(e) && e.status === 400 && e.code === 'INVALID_OBJECT_URL', u);
  }
});

test('isUrlWithin: same scheme and bucket, segment-aware, fails closed', () => {
  const table: Array<[string, string, boolean]> = [
    ['s3://trace-data/scratch/t1/out.parquet', 's3://trace-data/scratch/t1/', true],
    ['s3://trace-data/scratch/t1/out.parquet', 's3://trace-data/scratch/t1', true],
    ['s3://trace-data/scratch/t10/out.parquet', 's3://trace-data/scratch/t1/', false],
    ['s3://other-bucket/scratch/t1/out.parquet', 's3://trace-data/scratch/t1/', false],
    ['s3://trace-data/scratch/t1/../t2/x', 's3://trace-data/scratch/t1/', false],
    ['s3://trace-data/scratch/t1/x', 's3://trace-data/', false],
    ['file:///srv/objects/a/b.parquet', 'file:///srv/objects/a/', true],
    ['file:///srv/objects/ab.parquet', 'file:///srv/objects/a/', false],
    ['file:///srv/objects/a/../b/x', 'file:///srv/objects/a/', false],
    ['file:///srv/objects/a/x', 's3://trace-data/srv/objects/a/', false],
    ['not a url', 'file:///srv/', false],
  ];
  for (const [url, prefix, want] of table) assert.equal(isUrlWithin(url, prefix), want, `${url} within ${prefix}`);
});
