/**
 * The worker wrapper must not be able to hold state-database credentials: no file under
 * src/worker/ or src/operators/ may import src/db, src/dispatcher, `pg` or
 * `@electric-sql/pglite`, and neither may anything they load at runtime (transitively).
 *
 * Excluded: src/worker/main.ts (process wiring: it opens the queue database for pgqueue) and
 * src/operators/cryo_ingest/ (a platform operator that writes Postgres data; owned elsewhere).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { join, sep } from 'node:path';
import { ROOT, importsOf, resolveLocal, tsFilesUnder as walk } from '../support/imports.js';

const EXCLUDED = [join('src', 'worker', 'main.ts'), join('src', 'operators', 'cryo_ingest') + sep];
const FORBIDDEN_DIRS = [join('src', 'db') + sep, join('src', 'dispatcher') + sep];
const FORBIDDEN_PACKAGES = ['pg', '@electric-sql/pglite'];

function isForbiddenPackage(spec: string): boolean {
  return FORBIDDEN_PACKAGES.some((p) => spec === p || spec.startsWith(`${p}/`));
}

function violation(fromFile: string, spec: string): string | undefined {
  if (isForbiddenPackage(spec)) return `${fromFile} imports ${spec}`;
  const local = resolveLocal(fromFile, spec);
  if (local && FORBIDDEN_DIRS.some((d) => local.startsWith(d))) return `${fromFile} imports ${spec} (${local})`;
  return undefined;
}

const scanned = [...walk(join('src', 'worker')), ...walk(join('src', 'operators'))].filter(
  (f) => !EXCLUDED.some((x) => (x.endsWith(sep) ? f.startsWith(x) : f === x)),
);

test('the scanner finds forbidden imports in every syntax (so the rule can fail)', () => {
  const planted = [
    `import { openDb } from '../db/open.js';`,
    `import type { Db } from '../db/db.js';`,
    `export { x } from '../dispatcher/tasks/claim.js';`,
    `import pg from 'pg';`,
    `import 'pg/lib/native';`,
    `const m = await import('@electric-sql/pglite');`,
    `const p = require('pg');`,
  ].join('\n');
  const found = importsOf(planted).map((i) => violation(join('src', 'worker', 'x.ts'), i.specifier)).filter(Boolean);
  assert.equal(found.length, 7, found.join('\n'));
  assert.deepEqual(importsOf(`// import pg from 'pg'\n/* import '../db/db.js' */`), []);
  assert.deepEqual(importsOf(`import type { A } from './a.js'; import { type B } from './b.js'; import { C } from './c.js';`).map((i) => i.typeOnly), [true, true, false]);
});

test('src/worker and src/operators (except main.ts and cryo_ingest) import nothing from src/db, src/dispatcher, pg or pglite', () => {
  assert.ok(scanned.includes(join('src', 'worker', 'worker.ts')), 'the wrapper itself is scanned');
  assert.ok(scanned.includes(join('src', 'worker', 'run-task.ts')));
  assert.ok(scanned.includes(join('src', 'operators', 'registry.ts')));
  assert.ok(!scanned.includes(join('src', 'worker', 'main.ts')), 'main.ts is process wiring, excluded');
  const problems: string[] = [];
  for (const f of scanned) {
    for (const imp of importsOf(readFileSync(join(ROOT, f), 'utf8'))) {
      const v = violation(f, imp.specifier);
      if (v) problems.push(v);
    }
  }
  assert.deepEqual(problems, []);
});

test('nothing the wrapper loads at runtime reaches src/db, src/dispatcher, pg or pglite (transitively)', () => {
  const problems: string[] = [];
  const seen = new Set<string>();
  const queue = [...scanned];
  while (queue.length > 0) {
    const f = queue.pop()!;
    if (seen.has(f)) continue;
    seen.add(f);
    if (!existsSync(join(ROOT, f))) continue;
    for (const imp of importsOf(readFileSync(join(ROOT, f), 'utf8'))) {
      if (imp.typeOnly) continue; // erased at compile time: cannot load anything
      const v = violation(f, imp.specifier);
      if (v) problems.push(v);
      const local = resolveLocal(f, imp.specifier);
      if (local && !seen.has(local)) queue.push(local);
    }
  }
  assert.ok(seen.size > scanned.length, 'followed imports outside the wrapper (src/core, ...)');
  assert.deepEqual(problems, []);
});
