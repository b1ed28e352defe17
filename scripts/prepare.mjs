#!/usr/bin/env node
// `prepare`: runs on every `npm install` / `npm ci` of the checkout, so the README's install is
// one command. Builds dist/ with TypeScript when it is installed (a development install). A
// production install (`--omit=dev`) has no TypeScript: it keeps the dist/ already built, or says
// how to get one, and never fails the install.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';

const root = join(dirname(new URL(import.meta.url).pathname), '..');
let tsc;
try {
  tsc = join(dirname(createRequire(join(root, 'package.json')).resolve('typescript/package.json')), 'bin', 'tsc');
} catch {
  tsc = undefined;
}
if (tsc) {
  const r = spawnSync(process.execPath, [tsc, '-p', join(root, 'tsconfig.build.json')], { stdio: 'inherit', cwd: root });
  process.exit(r.status ?? 1);
}
if (!existsSync(join(root, 'dist', 'cli', 'main.js'))) {
  process.stderr.write('trace: no TypeScript here (a production install) and no dist/ build yet: run `npm install && npm run build` once, then `npm prune --omit=dev`\n');
}
