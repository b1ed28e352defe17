import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { TraceError } from '../../src/core/errors.js';
import { parseManifestBytes, pathProblem, validateManifest } from '../../src/udf/manifest.js';

const H = 'a'.repeat(64);
const base = () => ({
  schema_version: 1,
  runtime: 'node',
  entrypoint: 'index.js',
  files: [
    { path: 'index.js', sha256: H, bytes: 10 },
    { path: 'lib/util.js', sha256: H, bytes: 20 },
  ],
});

function problemsOf(fn: () => unknown): Array<{ path: string; message: string }> {
  try {
    fn();
  } catch (e) {
    assert.ok(e instanceof TraceError, `expected TraceError, got ${String(e)}`);
    assert.equal(e.status, 422);
    assert.equal(e.code, 'BUNDLE_INVALID');
    assert.ok(e.problems && e.problems.length > 0);
    return e.problems;
  }
  assert.fail('expected the manifest to be refused');
}

function refusedAt(value: unknown, path: string, message?: RegExp, caps?: Parameters<typeof validateManifest>[1]): void {
  const problems = problemsOf(() => validateManifest(value, caps));
  const hit = problems.find((p) => p.path === path && (!message || message.test(p.message)));
  assert.ok(hit, `no problem at ${path} matching ${message}: ${JSON.stringify(problems)}`);
}

describe('bundle manifest', () => {
  it('accepts a valid manifest and returns it typed', () => {
    const m = validateManifest({ ...base(), env_allowlist: ['MY_API_MODE', '_X1'] });
    assert.equal(m.runtime, 'node');
    assert.equal(m.files.length, 2);
    assert.deepEqual(m.env_allowlist, ['MY_API_MODE', '_X1']);
    assert.equal(validateManifest({ ...base(), runtime: 'python', entrypoint: 'lib/util.js' }).runtime, 'python');
  });

  it('refuses unknown fields at every level', () => {
    refusedAt({ ...base(), extra: true }, '$', /unrecognized|unknown/i);
    const m = base();
    (m.files[0] as Record<string, unknown>).mode = 0o755;
    refusedAt(m, 'files[0]', /unrecognized|unknown/i);
  });

  it('refuses a wrong schema_version, runtime, or missing fields', () => {
    refusedAt({ ...base(), schema_version: 2 }, 'schema_version');
    refusedAt({ ...base(), runtime: 'ruby' }, 'runtime');
    refusedAt({ ...base(), runtime: 'rust' }, 'runtime', /planned/);
    const { entrypoint: _e, ...noEntry } = base();
    refusedAt(noEntry, 'entrypoint');
    refusedAt({ ...base(), files: [] }, 'files');
    refusedAt([], '$');
    refusedAt(null, '$');
  });

  it('checks sha256 and bytes', () => {
    const m = base();
    m.files[0]!.sha256 = H.toUpperCase();
    refusedAt(m, 'files[0].sha256', /lowercase hex/);
    const m2 = base();
    m2.files[1]!.bytes = -1;
    refusedAt(m2, 'files[1].bytes');
    const m3 = base();
    m3.files[1]!.bytes = 1.5;
    refusedAt(m3, 'files[1].bytes');
  });

  it('refuses every unsafe path form', () => {
    const cases: Array<[string, RegExp]> = [
      ['../x.js', /"\.\."/],
      ['lib/../../x.js', /"\.\."/],
      ['/etc/passwd', /absolute/],
      ['C:/x.js', /drive letter/],
      ['c:x.js', /drive letter/],
      ['lib\\x.js', /backslash/],
      ['lib/x.js/', /end with/],
      ['lib//x.js', /empty segments/],
      ['./x.js', /"\." segments/],
      ['lib/./x.js', /"\." segments/],
      ['a\u0000b.js', /NUL/],
      ['a\nb.js', /control/],
      ['a\u202eb.js', /control or format/],
      ['lib/x:y.js', /":"/],
      ['', /empty/],
      ['cafe\u0301.js', /normalization form C/],
    ];
    for (const [path, re] of cases) {
      const m = base();
      m.files[1]!.path = path;
      refusedAt(m, 'files[1].path', re);
    }
  });

  it('pathProblem accepts ordinary relative paths', () => {
    for (const p of ['index.js', 'node_modules/left-pad/index.js', 'pkg/__init__.py', 'caf\u00e9.txt', '.hidden', 'a..b']) {
      assert.equal(pathProblem(p), null, p);
    }
  });

  it('refuses duplicate, case-fold duplicate and file/directory clashing paths', () => {
    const dup = base();
    dup.files.push({ path: 'index.js', sha256: H, bytes: 1 });
    refusedAt(dup, 'files[2].path', /duplicates files\[0\]/);
    const fold = base();
    fold.files.push({ path: 'LIB/Util.js', sha256: H, bytes: 1 });
    refusedAt(fold, 'files[2].path', /letter case/);
    const clash = base();
    clash.files.push({ path: 'index.js/x.js', sha256: H, bytes: 1 });
    refusedAt(clash, 'files[2].path', /which is a file/);
  });

  it('reserves bundle_manifest.json and refuses nested archives', () => {
    const m = base();
    m.files.push({ path: 'bundle_manifest.json', sha256: H, bytes: 1 });
    refusedAt(m, 'files[2].path', /reserved/);
    for (const p of ['vendor/dep.zip', 'x.jar', 'data.tar', 'data.tar.gz', 'x.whl', 'LIB.ZIP']) {
      const a = base();
      a.files[1]!.path = p;
      refusedAt(a, 'files[1].path', /nested archives/);
    }
  });

  it('requires the entrypoint to be a safe declared file', () => {
    refusedAt({ ...base(), entrypoint: 'main.js' }, 'entrypoint', /listed in files/);
    refusedAt({ ...base(), entrypoint: '../index.js' }, 'entrypoint', /"\.\."/);
    refusedAt({ ...base(), entrypoint: 'lib' }, 'entrypoint', /listed in files/);
  });

  it('checks env_allowlist names', () => {
    refusedAt({ ...base(), env_allowlist: ['lower'] }, 'env_allowlist[0]', /A-Z/);
    refusedAt({ ...base(), env_allowlist: ['1ABC'] }, 'env_allowlist[0]', /A-Z/);
    refusedAt({ ...base(), env_allowlist: ['OK', 'OK'] }, 'env_allowlist[1]', /twice/);
    for (const name of ['PATH', 'HOME', 'TRACE_WORKER_TOKEN', 'NODE_OPTIONS', 'PYTHONPATH', 'LD_PRELOAD', 'PGPASSWORD', 'AWS_SECRET_ACCESS_KEY']) {
      refusedAt({ ...base(), env_allowlist: [name] }, 'env_allowlist[0]', /reserved/);
    }
  });

  it('applies the caps', () => {
    const caps = { maxFiles: 2, maxFileBytes: 15, maxTotalBytes: 25, maxPathLength: 20, maxPathDepth: 3 };
    const many = base();
    many.files.push({ path: 'c.js', sha256: H, bytes: 1 });
    refusedAt(many, 'files', /at most 2 files/, caps);
    refusedAt(base(), 'files[1].bytes', /at most 15/, caps);
    refusedAt(base(), 'files', /add up to 30 bytes/, { maxTotalBytes: 25 });
    const long = base();
    long.files[1]!.path = `${'x'.repeat(30)}.js`;
    refusedAt(long, 'files[1].path', /at most 20 characters/, { maxPathLength: 20 });
    const deep = base();
    deep.files[1]!.path = 'a/b/c/d.js';
    refusedAt(deep, 'files[1].path', /at most 3 segments/, { maxPathDepth: 3 });
  });

  it('parses manifest bytes strictly', () => {
    const good = Buffer.from(JSON.stringify(base()));
    assert.equal(parseManifestBytes(good).entrypoint, 'index.js');
    assert.equal(problemsOf(() => parseManifestBytes(good, { maxManifestBytes: 10 }))[0]!.path, 'bundle_manifest.json');
    assert.match(problemsOf(() => parseManifestBytes(Buffer.from('{not json')))[0]!.message, /valid JSON/);
    assert.match(problemsOf(() => parseManifestBytes(Buffer.from([0x7b, 0xff, 0x7d])))[0]!.message, /UTF-8/);
    assert.match(problemsOf(() => parseManifestBytes(Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), good])))[0]!.message, /valid JSON/);
  });

  it('lists every problem at once', () => {
    const m = base();
    m.files[0]!.path = '../a.js';
    m.files[1]!.path = '/b.js';
    const problems = problemsOf(() => validateManifest({ ...m, env_allowlist: ['bad'] }));
    const paths = problems.map((p) => p.path);
    for (const p of ['files[0].path', 'files[1].path', 'entrypoint', 'env_allowlist[0]']) assert.ok(paths.includes(p), `${p} in ${paths}`);
  });
});
