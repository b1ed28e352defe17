/**
 * The query executor is a trust boundary (src/query/executor/README.md): the process that runs
 * untrusted SQL must not be able to hold credentials. Two proofs:
 * - by the code it can load: nothing under src/query/executor/, nor anything it loads at runtime
 *   (transitively), imports a database client, the Dispatcher, the auth keys, the platform
 *   wiring, the rest of the Query Service or a cloud SDK;
 * - by the process it is: a running executor's environment and command line carry none of the
 *   service's variables (a secret planted in the service's environment does not reach it).
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join, sep } from 'node:path';
import { ROOT, importsOf, resolveLocal, tsFilesUnder } from '../support/imports.js';
import { ExecutorPool } from '../../src/query/executors.js';
import { tempDir, type TempDir } from './support.js';

const EXECUTOR_DIR = join('src', 'query', 'executor') + sep;
const FORBIDDEN_DIRS = [
  join('src', 'db') + sep,
  join('src', 'dispatcher') + sep,
  join('src', 'auth') + sep,
  join('src', 'lite') + sep,
  join('src', 'objectstore') + sep,
  join('src', 'worker') + sep,
];
const FORBIDDEN_PACKAGES = ['pg', '@electric-sql/pglite', 'jose', '@aws-sdk/'];

function violation(fromFile: string, spec: string): string | undefined {
  if (FORBIDDEN_PACKAGES.some((p) => spec === p || spec.startsWith(p.endsWith('/') ? p : `${p}/`))) return `${fromFile} imports ${spec}`;
  const local = resolveLocal(fromFile, spec);
  if (!local) return undefined;
  if (FORBIDDEN_DIRS.some((d) => local.startsWith(d))) return `${fromFile} imports ${spec} (${local})`;
  // The rest of the Query Service (routes, wiring, audit, lease checks) stays outside.
  if (local.startsWith(join('src', 'query') + sep) && !local.startsWith(EXECUTOR_DIR)) return `${fromFile} imports ${spec} (${local})`;
  return undefined;
}

function scan(files: string[]): { problems: string[]; seen: Set<string> } {
  const problems: string[] = [];
  const seen = new Set<string>();
  const queue = [...files];
  while (queue.length > 0) {
    const f = queue.pop()!;
    if (seen.has(f)) continue;
    seen.add(f);
    for (const imp of importsOf(readFileSync(join(ROOT, f), 'utf8'))) {
      if (imp.typeOnly) continue; // erased at compile time
      const v = violation(f, imp.specifier);
      if (v) problems.push(v);
      const local = resolveLocal(f, imp.specifier);
      if (local && !seen.has(local)) queue.push(local);
    }
  }
  return { problems, seen };
}

describe('query executor boundary: code', () => {
  const files = tsFilesUnder(join('src', 'query', 'executor'));

  it('the rule finds forbidden imports (so it can fail)', () => {
    const from = join('src', 'query', 'executor', 'x.ts');
    const planted = [
      `import { openDb } from '../../db/open.js';`,
      `import { lockFenced } from '../../dispatcher/tasks/fence.js';`,
      `import { createCapabilityVerifier } from '../../auth/capability.js';`,
      `import { recordTaskQuery } from '../audit.js';`,
      `import { queryDepsFromState } from '../wiring.js';`,
      `const pg = await import('pg');`,
      `import { S3Client } from '@aws-sdk/client-s3';`,
    ];
    const found = planted.flatMap((line) => importsOf(line).map((i) => violation(from, i.specifier))).filter(Boolean);
    assert.equal(found.length, planted.length, found.join('\n'));
    assert.equal(violation(from, './engine.js'), undefined);
    assert.equal(violation(from, '../../core/errors.js'), undefined);
  });

  it('nothing the executor loads reaches credentials (transitively)', () => {
    assert.ok(files.includes(join('src', 'query', 'executor', 'main.ts')), 'the entry point is scanned');
    const { problems, seen } = scan(files);
    assert.ok(seen.has(join('src', 'core', 'errors.ts')), 'imports outside the folder are followed');
    assert.deepEqual(problems, []);
  });
});

describe('query executor boundary: process', () => {
  let tmp: TempDir;
  let pool: ExecutorPool;
  const planted = {
    TRACE_STATE_DATABASE_URL: 'postgres://trace:planted-secret-1@db/trace_state',
    TRACE_DATA_DATABASE_URL: 'postgres://trace:planted-secret-2@db/trace_data',
    TRACE_WORKER_TOKEN: 'planted-secret-3',
    TRACE_TASK_CAPABILITY_SECRET: 'planted-secret-4'.repeat(3),
    AWS_SECRET_ACCESS_KEY: 'planted-secret-5',
  };
  const saved: Record<string, string | undefined> = {};

  before(async () => {
    tmp = tempDir('trace-qexec-env-');
    for (const [k, v] of Object.entries(planted)) {
      saved[k] = process.env[k];
      process.env[k] = v;
    }
    pool = new ExecutorPool({ size: 1, tempRoot: tmp.dir, memoryCapBytes: 512 * 1024 ** 2 });
    await pool.ready();
  });
  after(async () => {
    await pool.close();
    for (const [k, v] of Object.entries(saved)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
    tmp.cleanup();
  });

  it("a running executor's environment and command line hold none of the service's secrets", () => {
    const [pid] = pool.pids();
    assert.ok(pid, 'an executor is running');
    // The service's environment, which a spawned child would inherit by default, does hold them.
    assert.equal(process.env.TRACE_STATE_DATABASE_URL, planted.TRACE_STATE_DATABASE_URL);
    const environ = readFileSync(`/proc/${pid}/environ`, 'latin1').split('\0').filter(Boolean);
    const cmdline = readFileSync(`/proc/${pid}/cmdline`, 'latin1');
    for (const text of [environ.join('\n'), cmdline]) assert.ok(!text.includes('planted-secret'), text);
    const names = environ.map((e) => e.slice(0, e.indexOf('=')));
    assert.deepEqual(names.filter((n) => n.startsWith('TRACE_') || n.startsWith('AWS_') || n.includes('DATABASE')), []);
  });
});
