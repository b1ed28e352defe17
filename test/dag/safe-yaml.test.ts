import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseYamlSafely } from '../../src/dag/safe-yaml.js';
import { parseDag } from '../../src/dag/index.js';
import { SPEC_EXAMPLE, assertProblem, catalog, problemsOf, traceErrorOf } from './fixtures.js';

function malformed(fn: () => unknown, re?: RegExp) {
  const e = traceErrorOf(fn);
  assert.equal(e.status, 400, `expected 400, got ${e.status} ${e.code}: ${e.message}`);
  assert.equal(e.code, 'YAML_MALFORMED');
  assert.ok(e.problems && e.problems.length > 0);
  if (re) assert.ok(e.problems.some((p) => re.test(p.message)), `no problem matching ${re}: ${JSON.stringify(e.problems)}`);
  return e;
}

function timed<T>(fn: () => T): { value: T; ms: number } {
  const t0 = performance.now();
  const value = fn();
  return { value, ms: performance.now() - t0 };
}

test('plain YAML becomes null-prototype objects, arrays and core-schema scalars', () => {
  const v = parseYamlSafely('a: 1\nb: [x, "y", true, null, 1.5]\nc:\n  d: ~\n  e: 0o17\n') as Record<string, unknown>;
  assert.equal(Object.getPrototypeOf(v), null);
  assert.equal(Object.getPrototypeOf(v.c), null);
  assert.deepEqual({ ...v, c: { ...(v.c as object) } }, { a: 1, b: ['x', 'y', true, null, 1.5], c: { d: null, e: 15 } });
  // YAML 1.1 spellings are plain strings under the 1.2 core schema
  const w = parseYamlSafely('a: yes\nb: on\nc: 2001-12-14\n') as Record<string, unknown>;
  assert.deepEqual({ ...w }, { a: 'yes', b: 'on', c: '2001-12-14' });
});

test('empty and comment-only documents yield null', () => {
  assert.equal(parseYamlSafely(''), null);
  assert.equal(parseYamlSafely('# nothing here\n'), null);
  assert.equal(parseYamlSafely('---\n...\n'), null);
});

test('a few aliases are fine and expand to copies', () => {
  const v = parseYamlSafely('base: &b { x: 1 }\none: *b\ntwo: *b\n') as Record<string, Record<string, unknown>>;
  assert.equal(v.one!.x, 1);
  assert.equal(v.two!.x, 1);
  assert.notEqual(v.one, v.two, 'each alias is expanded into its own value');
});

test('billion laughs fails fast with YAML_MALFORMED', () => {
  const lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]'];
  const names = 'abcdefghi';
  for (let i = 1; i < names.length; i++) {
    const prev = names[i - 1]!;
    lines.push(`${names[i]}: &${names[i]} [${Array(9).fill(`*${prev}`).join(',')}]`);
  }
  const bomb = lines.join('\n') + '\n';
  const { ms } = timed(() => malformed(() => parseYamlSafely(bomb), /alias/));
  assert.ok(ms < 1000, `took ${ms} ms`);
});

test('alias expansion is counted through nested anchors, not only by alias tokens', () => {
  // 15 alias tokens, but expanding c dereferences 10 + 10*5 = 60 aliases
  const yaml = 'a: &a [1]\nb: &b [*a, *a, *a, *a, *a]\nc: [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\n';
  malformed(() => parseYamlSafely(yaml), /alias expansions/);
  assert.ok(parseYamlSafely(yaml, { maxAliases: 100 }));
  malformed(() => parseYamlSafely('a: &a 1\nb: *a\n', { maxAliases: 0 }), /alias/);
});

test('a self-referencing alias cannot loop', () => {
  const e = traceErrorOf(() => parseYamlSafely('a: &a [*a]\n'));
  assert.ok(e.status === 400 || e.status === 422, `${e.status} ${e.message}`);
});

test('deep nesting fails before the composer runs', () => {
  const brackets = '['.repeat(100_000) + ']'.repeat(100_000);
  const r1 = timed(() => malformed(() => parseYamlSafely(brackets), /nesting deeper than 32/));
  assert.ok(r1.ms < 2000, `flow nesting took ${r1.ms} ms`);

  let block = '';
  for (let i = 0; i < 600; i++) block += `${' '.repeat(i)}k${i}:\n`;
  block += `${' '.repeat(600)}leaf: 1\n`;
  const r2 = timed(() => malformed(() => parseYamlSafely(block), /nesting deeper than 32/));
  assert.ok(r2.ms < 2000, `block nesting took ${r2.ms} ms`);

  malformed(() => parseYamlSafely('- '.repeat(5000) + 'x\n'), /nesting/);
});

test('the depth cap is exact on the parsed document', () => {
  const nest = (n: number) => '['.repeat(n) + ']'.repeat(n);
  assert.ok(parseYamlSafely(nest(32)));
  malformed(() => parseYamlSafely(nest(33)), /nesting deeper than 32/);
  let block = '';
  for (let i = 0; i < 32; i++) block += `${'  '.repeat(i)}k:\n`;
  block = block.replace(/k:\n$/, 'k: 1\n');
  assert.ok(parseYamlSafely(block), '32 nested block mappings are allowed');
  malformed(() => parseYamlSafely(`${'  '.repeat(32)}x: 1\n`.replace(/^/, block.replace(/k: 1\n$/, 'k:\n'))), /nesting/);
  // alias expansion cannot smuggle extra depth past the cap
  malformed(() => parseYamlSafely(`a: &a ${nest(20)}\nb: ${'['.repeat(20)}*a${']'.repeat(20)}\n`), /nesting deeper than 32/);
  assert.ok(parseYamlSafely('a:\n  b: [1, 2]\n', { maxDepth: 3 }));
  malformed(() => parseYamlSafely('a:\n  b: [1, [2]]\n', { maxDepth: 3 }), /nesting deeper than 3/);
});

test('oversize text is refused before parsing', () => {
  const big = `a: "${'x'.repeat(256 * 1024)}"\n`;
  malformed(() => parseYamlSafely(big), /limit is 262144/);
  malformed(() => parseYamlSafely('a: 1\n', { maxBytes: 4 }), /limit is 4/);
  // the cap counts UTF-8 bytes, not characters
  malformed(() => parseYamlSafely('a: ééé\n', { maxBytes: 8 }), /bytes/);
  malformed(() => parseDag(new Uint8Array(300 * 1024).fill(0x61), catalog), /limit/);
});

test('__proto__, constructor and prototype keys are refused and never pollute', () => {
  const yaml = [
    '__proto__:',
    '  polluted: yes',
    'jobs:',
    '  - constructor: { polluted: yes }',
    '    config:',
    '      prototype: { polluted: yes }',
    '      "__proto__": 1',
    '',
  ].join('\n');
  const problems = problemsOf(() => parseYamlSafely(yaml));
  assert.equal(assertProblem(problems, '__proto__', /not allowed/).line, 1);
  assert.equal(assertProblem(problems, 'jobs[0].constructor', /not allowed/).line, 4);
  assertProblem(problems, 'jobs[0].config.prototype', /not allowed/);
  assertProblem(problems, 'jobs[0].config.__proto__', /not allowed/);
  assert.equal(({} as Record<string, unknown>).polluted, undefined);
  assert.equal((Object.prototype as unknown as Record<string, unknown>).polluted, undefined);
  // the same through a flow mapping and an alias
  problemsOf(() => parseYamlSafely('a: &x { __proto__: { polluted: 1 } }\nb: *x\n'));
  assert.equal(({} as Record<string, unknown>).polluted, undefined);
});

test('merge keys are refused', () => {
  const problems = problemsOf(() => parseYamlSafely('base: &b { timeout_seconds: 60 }\njob:\n  <<: *b\n  name: x\n'));
  const p = assertProblem(problems, 'job.<<', /merge keys/);
  assert.equal(p.line, 3);
});

test('every explicit tag is refused, with its path', () => {
  const cases: Array<[string, string]> = [
    ['a: !foo x\n', 'a'],
    ['a: !!binary aGVsbG8=\n', 'a'],
    ['a: !!js/function "function () { return 1 }"\n', 'a'],
    ['a: !!python/object:os.system [ls]\n', 'a'],
    ['a: !!str 1\n', 'a'],
    ['a: !<tag:yaml.org,2002:str> x\n', 'a'],
    ['a: ! x\n', 'a'],
    ['a: !!map { b: 1 }\n', 'a'],
    ['jobs:\n  - !custom { name: x }\n', 'jobs[0]'],
    ['!k key: 1\n', 'key'],
    ['--- !foo\na: 1\n', '$'],
  ];
  for (const [yaml, path] of cases) {
    const problems = problemsOf(() => parseYamlSafely(yaml));
    assertProblem(problems, path, /tags are not allowed/);
  }
});

test('directives are refused', () => {
  assertProblem(problemsOf(() => parseYamlSafely('%YAML 1.2\n---\na: 1\n')), '$', /directives/);
  const p = assertProblem(problemsOf(() => parseYamlSafely('%TAG !e! tag:example.com,2000:\n---\na: !e!x 1\n')), '$', /directives/);
  assert.equal(p.line, 1);
});

test('multi-document streams are refused', () => {
  const p = assertProblem(problemsOf(() => parseYamlSafely('a: 1\n---\nb: 2\n')), '$', /exactly one YAML document/);
  assert.equal(p.line, 2);
  problemsOf(() => parseYamlSafely('---\na: 1\n...\n---\nb: 2\n'));
});

test('duplicate keys are refused with path and line', () => {
  const problems = problemsOf(() => parseYamlSafely('name: a\njobs:\n  - name: x\n    name: y\n'));
  const p = assertProblem(problems, 'jobs[0].name', /duplicate key/);
  assert.equal(p.line, 4);
  // numeric and string spellings of one key collide too
  assertProblem(problemsOf(() => parseYamlSafely('1: a\n"1": b\n')), '1', /duplicate key/);
});

test('many keys near the byte cap parse in linear time (no quadratic duplicate check)', () => {
  const many = Array.from({ length: 25_000 }, (_, i) => `k${i}: 1`).join('\n');
  const r = timed(() => parseYamlSafely(many) as Record<string, unknown>);
  assert.equal(Object.keys(r.value).length, 25_000);
  assert.ok(r.ms < 5000, `took ${r.ms} ms`);
  const dups = 'k: 1\n'.repeat(20_000);
  const e = traceErrorOf(() => parseYamlSafely(dups));
  assert.equal(e.code, 'DAG_INVALID');
  assert.ok(e.problems!.length <= 101, 'problem lists are capped');
  assert.match(e.problems!.at(-1)!.message, /more problem/);
});

test('syntax errors are YAML_MALFORMED with a line number', () => {
  const e = malformed(() => parseYamlSafely('a: [1, 2\nb: 3\n'));
  assert.ok(e.problems!.every((p) => typeof (p as { line?: number }).line === 'number'));
  malformed(() => parseYamlSafely('a: "unterminated\n'));
  malformed(() => parseYamlSafely('a:\n\t- tab\n'));
});

test('control characters are refused', () => {
  malformed(() => parseYamlSafely('a: 1\nb: x\u0000y\n'), /control characters/);
  malformed(() => parseYamlSafely('a: \u001b[31m\n'), /control characters/);
});

test('unsafe scalars and keys are refused', () => {
  assertProblem(problemsOf(() => parseYamlSafely('a: .inf\n')), 'a', /non-finite/);
  assertProblem(problemsOf(() => parseYamlSafely('a: .nan\n')), 'a', /non-finite/);
  assertProblem(problemsOf(() => parseYamlSafely('addr: 0xdeadbeefdeadbeefdeadbeefdeadbeefdeadbeef\n')), 'addr', /quote it/);
  assertProblem(problemsOf(() => parseYamlSafely('? [a, b]\n: 1\n')), '$', /keys must be plain strings/);
  assertProblem(problemsOf(() => parseYamlSafely('true: 1\n')), '$', /keys must be strings/);
  assertProblem(problemsOf(() => parseYamlSafely('~: 1\n')), '$', /keys must be strings/);
  assertProblem(problemsOf(() => parseYamlSafely('a: &k x\n*k : 1\n')), '$', /aliases may not be used as mapping keys/);
  assert.deepEqual({ ...(parseYamlSafely('10: a\n') as object) }, { '10': 'a' });
});

test('several refused features are reported together', () => {
  const yaml = 'a: !foo 1\nb: &x { c: 1 }\nd:\n  <<: *x\n__proto__: 2\ne: 1\ne: 2\n';
  const problems = problemsOf(() => parseYamlSafely(yaml));
  assertProblem(problems, 'a', /tags/);
  assertProblem(problems, 'd.<<', /merge keys/);
  assertProblem(problems, '__proto__', /not allowed/);
  assertProblem(problems, 'e', /duplicate key/);
});

test('parseDag accepts the spec example through the safe parser', () => {
  const { spec } = parseDag(SPEC_EXAMPLE, catalog);
  assert.equal(spec.name, 'monad_hot_to_parquet');
  // hostile features are caught before validation, whatever the schema would say
  const e = traceErrorOf(() => parseDag(SPEC_EXAMPLE.replace('kind: always_on', 'kind: !!python/name:os.system always_on'), catalog));
  assert.equal(e.code, 'DAG_INVALID');
  assertProblem(e.problems!, 'jobs[0].source.kind', /tags are not allowed/);
});
