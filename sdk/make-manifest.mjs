#!/usr/bin/env node
// Writes bundle_manifest.json for a UDF bundle directory (dependency-free, Node.js 18+).
//
//   node make-manifest.mjs <dir> --runtime node|python --entrypoint <path> [--env NAME ...]
//
// Lists every regular file under <dir> (except bundle_manifest.json) with its SHA-256 and size,
// refuses symlinks and other special files (the runner would refuse them too), and writes
// <dir>/bundle_manifest.json. Then zip the directory's contents, e.g.
//   (cd <dir> && zip -r -X ../bundle.zip .)     or     python3 -m zipfile -c bundle.zip <dir>/*
import { createHash } from 'node:crypto';
import { lstatSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join, relative, sep } from 'node:path';

function usage(msg) {
  if (msg) console.error(`make-manifest: ${msg}`);
  console.error('usage: make-manifest.mjs <dir> --runtime node|python --entrypoint <path> [--env NAME ...]');
  process.exit(2);
}

const args = process.argv.slice(2);
let dir;
let runtime;
let entrypoint;
const env = [];
for (let i = 0; i < args.length; i++) {
  const a = args[i];
  if (a === '--runtime') runtime = args[++i];
  else if (a === '--entrypoint') entrypoint = args[++i];
  else if (a === '--env') env.push(args[++i]);
  else if (a === '--help' || a === '-h') usage();
  else if (a.startsWith('-')) usage(`unknown option ${a}`);
  else if (dir === undefined) dir = a;
  else usage('only one directory');
}
if (!dir || !runtime || !entrypoint) usage('missing arguments');
if (runtime !== 'node' && runtime !== 'python') usage('runtime must be node or python');

const files = [];
(function walk(d) {
  for (const name of readdirSync(d).sort()) {
    const p = join(d, name);
    const st = lstatSync(p);
    const rel = relative(dir, p).split(sep).join('/');
    if (st.isSymbolicLink()) usage(`${rel} is a symlink; copy the real file instead`);
    if (st.isDirectory()) walk(p);
    else if (st.isFile()) {
      if (rel === 'bundle_manifest.json') continue;
      const data = readFileSync(p);
      files.push({ path: rel, sha256: createHash('sha256').update(data).digest('hex'), bytes: data.length });
    } else usage(`${rel} is not a regular file`);
  }
})(dir);

if (!files.some((f) => f.path === entrypoint)) usage(`entrypoint ${entrypoint} is not a file under ${dir}`);
const manifest = { schema_version: 1, runtime, entrypoint, files };
if (env.length > 0) manifest.env_allowlist = env;
writeFileSync(join(dir, 'bundle_manifest.json'), `${JSON.stringify(manifest, null, 2)}\n`);
console.error(`wrote ${join(dir, 'bundle_manifest.json')} (${files.length} files)`);
