#!/usr/bin/env node
// Entry point of the `trace` binary. Runs the compiled CLI from dist/ (built by `npm install`'s
// prepare step or `npm run build`), or the TypeScript sources through tsx when there is no build
// or TRACE_FROM_SOURCE is set (development).
import { existsSync } from 'node:fs';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { dirname, join } from 'node:path';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const built = join(root, 'dist', 'cli', 'main.js');
if (existsSync(built) && !process.env.TRACE_FROM_SOURCE) {
  await import(pathToFileURL(built).href);
} else {
  let api;
  try {
    api = await import('tsx/esm/api');
  } catch {
    process.stderr.write(`trace: no build in ${join(root, 'dist')} and no tsx to run the sources: run \`npm install\` (or \`npm run build\`) in ${root}\n`);
    process.exit(1);
  }
  api.register();
  await import(pathToFileURL(join(root, 'src', 'cli', 'main.ts')).href);
}
