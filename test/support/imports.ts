/**
 * A small import scanner for boundary tests: which modules a TypeScript source loads, and the
 * repository file a relative specifier names. Used by tests that prove a folder cannot reach
 * code holding credentials (test/worker/import-boundary.test.ts, test/query/executor-boundary.test.ts).
 */
import { existsSync, readdirSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');

export interface Import {
  specifier: string;
  typeOnly: boolean;
}

/** Every module specifier in a TypeScript source: static, re-export, side-effect, dynamic, require. */
export function importsOf(source: string): Import[] {
  // Comments would otherwise produce false hits (boundary tests name the forbidden modules).
  const code = source.replace(/\/\*[\s\S]*?\*\//g, '').replace(/(^|[^:'"`])\/\/.*$/gm, '$1');
  const out: Import[] = [];
  const fromRe = /\b(import|export)\s+(type\s+)?([^;'"]*?)\s*from\s*['"]([^'"]+)['"]/g;
  for (const m of code.matchAll(fromRe)) {
    const clause = m[3] ?? '';
    const allTypes = /^\{[^}]*\}$/.test(clause.trim()) && clause.replace(/[{}]/g, '').split(',').map((s) => s.trim()).filter(Boolean).every((s) => s.startsWith('type '));
    out.push({ specifier: m[4]!, typeOnly: m[2] !== undefined || allTypes });
  }
  for (const m of code.matchAll(/\bimport\s*['"]([^'"]+)['"]/g)) out.push({ specifier: m[1]!, typeOnly: false });
  for (const m of code.matchAll(/\b(?:import|require)\s*\(\s*['"]([^'"]+)['"]\s*\)/g)) out.push({ specifier: m[1]!, typeOnly: false });
  return out;
}

/** Resolves a relative `.js` specifier to the `.ts` file it names (repo-relative), or undefined. */
export function resolveLocal(fromFile: string, spec: string): string | undefined {
  if (!spec.startsWith('.')) return undefined;
  const abs = resolve(ROOT, dirname(fromFile), spec);
  const candidates = [abs.replace(/\.js$/, '.ts'), abs, `${abs}.ts`, join(abs, 'index.ts')];
  const hit = candidates.find((c) => existsSync(c) && statSync(c).isFile());
  return relative(ROOT, hit ?? abs.replace(/\.js$/, '.ts'));
}

/** Every `.ts` file under a repo-relative directory. */
export function tsFilesUnder(dir: string): string[] {
  const abs = join(ROOT, dir);
  if (!existsSync(abs)) return [];
  const out: string[] = [];
  for (const name of readdirSync(abs)) {
    const rel = join(dir, name);
    if (statSync(join(ROOT, rel)).isDirectory()) out.push(...tsFilesUnder(rel));
    else if (name.endsWith('.ts')) out.push(rel);
  }
  return out;
}
