/**
 * What a sandbox must contain for one language runtime: the interpreter binary (its real path,
 * never a shim), the runtime's own library tree (Python's standard library), every shared
 * library the dynamic loader needs for them (from `ldd`), and the same for `prlimit`, which
 * applies the resource limits inside the sandbox. Each is bound read-only at the path the host
 * uses, so the loader and the interpreter find them where they expect.
 */
import { execFile } from 'node:child_process';
import { constants } from 'node:fs';
import { access, readdir, realpath, stat } from 'node:fs/promises';
import { delimiter, isAbsolute, join, sep } from 'node:path';

/** One read-only bind: host `src` appears at `dest` inside the sandbox. */
export interface RoMount {
  src: string;
  dest: string;
}

export interface ResolvedRuntime {
  kind: 'node' | 'python';
  /** The interpreter's real path (bound at the same path). */
  exe: string;
  version: string;
  /** Everything the runtime needs, read-only (includes `exe`). */
  mounts: RoMount[];
}

export interface ResolvedHelper {
  exe: string;
  mounts: RoMount[];
}

function run(file: string, args: string[], timeoutMs = 20_000, env: NodeJS.ProcessEnv = { PATH: process.env.PATH ?? '/usr/bin:/bin' }): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((res) => {
    execFile(file, args, { env, timeout: timeoutMs, maxBuffer: 16 * 1024 * 1024 }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : 127) : 0;
      res({ code, stdout: String(stdout), stderr: String(stderr) });
    });
  });
}

/** The first executable `name` on `path` (or `name` itself when it has a slash). */
export async function which(name: string, path = process.env.PATH ?? ''): Promise<string | undefined> {
  const candidates = name.includes('/') ? [name] : path.split(delimiter).filter((d) => isAbsolute(d)).map((d) => join(d, name));
  for (const c of candidates) {
    try {
      const st = await stat(c);
      if (!st.isFile()) continue;
      await access(c, constants.X_OK);
      return c;
    } catch {
      // next
    }
  }
  return undefined;
}

const within = (p: string, dir: string) => p === dir || p.startsWith(dir.endsWith(sep) ? dir : dir + sep);

function parseLddOutput(text: string, into: Set<string>): void {
  for (const line of text.split('\n')) {
    const arrow = /=>\s*(\/\S+)\s*\(0x[0-9a-f]+\)/.exec(line);
    if (arrow) {
      into.add(arrow[1]!);
      continue;
    }
    const direct = /^\s+(\/\S+)\s*\(0x[0-9a-f]+\)/.exec(line);
    if (direct) into.add(direct[1]!);
  }
}

/**
 * Shared libraries (and the dynamic loader) the given ELF files need, as the paths `ldd`
 * reports. `ldd` describes the first file (and names the loader); the others are listed by the
 * loader itself (`ld.so --list`, what ldd runs underneath, without its per-file shell work).
 * Statically linked files need none.
 */
export async function sharedLibraries(files: string[]): Promise<string[]> {
  if (files.length === 0) return [];
  const ldd = await which('ldd', '/usr/bin:/bin:/usr/sbin:/sbin');
  if (!ldd) throw new Error('ldd (glibc or musl tools) is not installed; it lists the shared libraries the sandbox must contain');
  const out = new Set<string>();
  const first = await run(ldd, [files[0]!]);
  parseLddOutput(first.stdout, out);
  const loader = [...out].find((p) => /\/ld-[^/]*\.so[^/]*$/.test(p));
  const rest = files.slice(1);
  let next = 0;
  const worker = async () => {
    while (next < rest.length) {
      const f = rest[next++]!;
      const r = loader ? await run(loader, ['--list', f]) : { code: 1, stdout: '', stderr: '' };
      if (r.code === 0) parseLddOutput(r.stdout, out);
      else parseLddOutput((await run(ldd, [f])).stdout, out);
    }
  };
  await Promise.all([worker(), worker(), worker(), worker()]);
  return [...out];
}

/** Mounts for `roots` (dirs or files bound at their own path) plus the libraries of `elfs` that lie outside them. */
async function mountsFor(roots: string[], elfs: string[]): Promise<RoMount[]> {
  const mounts: RoMount[] = [];
  const seen = new Set<string>();
  const add = (src: string, dest: string) => {
    if (seen.has(dest)) return;
    seen.add(dest);
    mounts.push({ src, dest });
  };
  for (const r of roots) add(r, r);
  for (const lib of await sharedLibraries(elfs)) {
    if (roots.some((r) => within(lib, r))) continue;
    add(await realpath(lib), lib);
  }
  return mounts;
}

/** Resolutions are memoised per process: the files they describe do not move while it runs. */
const memo = new Map<string, Promise<unknown>>();
function once<T>(key: string, fn: () => Promise<T>): Promise<T> {
  let p = memo.get(key) as Promise<T> | undefined;
  if (!p) {
    p = fn();
    memo.set(key, p);
    p.catch(() => memo.delete(key));
  }
  return p;
}

/** The Node.js running this process: its binary and libraries (no npm, no global modules). */
export function resolveNode(): Promise<ResolvedRuntime> {
  return once('node', async () => {
    const exe = await realpath(process.execPath);
    return { kind: 'node', exe, version: process.version, mounts: await mountsFor([exe], [exe]) };
  });
}

const PY_INFO = [
  'import sys, sysconfig, json',
  "p = sysconfig.get_paths()",
  "print(json.dumps({'executable': sys.executable, 'stdlib': p['stdlib'], 'platstdlib': p['platstdlib'], 'version': '%d.%d.%d' % sys.version_info[:3]}))",
].join('\n');

/**
 * Asks the interpreter `pythonPath` (a path or a name on PATH, e.g. a pyenv shim) where its real
 * binary and standard library are, then lists what the sandbox needs: the binary, the standard
 * library (with lib-dynload) and the shared libraries of both.
 */
export function resolvePython(pythonPath = 'python3'): Promise<ResolvedRuntime> {
  return once(`python:${pythonPath}:${process.env.PATH ?? ''}`, () => resolvePythonNow(pythonPath));
}

async function resolvePythonNow(pythonPath: string): Promise<ResolvedRuntime> {
  const found = await which(pythonPath);
  if (!found) throw new Error(`the Python interpreter ${JSON.stringify(pythonPath)} was not found${pythonPath.includes('/') ? '' : ' on PATH'}`);
  const r = await run(found, ['-I', '-S', '-c', PY_INFO], 20_000, { PATH: process.env.PATH ?? '/usr/bin:/bin', ...(process.env.HOME ? { HOME: process.env.HOME } : {}) });
  if (r.code !== 0) throw new Error(`${found} did not start (exit ${r.code}): ${r.stderr.trim().split('\n').pop()?.slice(0, 200) ?? ''}`);
  let info: { executable: string; stdlib: string; platstdlib: string; version: string };
  try {
    info = JSON.parse(r.stdout.trim()) as typeof info;
  } catch {
    throw new Error(`${found} did not describe itself`);
  }
  if (!isAbsolute(info.executable) || !isAbsolute(info.stdlib)) throw new Error(`${found} reported no absolute executable or standard library path`);
  const exe = await realpath(info.executable);
  const libs = [...new Set([await realpath(info.stdlib), await realpath(info.platstdlib)])];
  const elfs = [exe];
  for (const lib of libs) {
    const dyn = join(lib, 'lib-dynload');
    try {
      for (const f of await readdir(dyn)) if (f.endsWith('.so')) elfs.push(join(dyn, f));
    } catch {
      // no lib-dynload (everything built in)
    }
  }
  return { kind: 'python', exe, version: info.version, mounts: await mountsFor([exe, ...libs], elfs) };
}

/** `prlimit` (util-linux): applies the limits inside the sandbox, then execs the runtime. */
export function resolvePrlimit(): Promise<ResolvedHelper> {
  return once('prlimit', async () => {
    const found = await which('prlimit', '/usr/bin:/bin:/usr/sbin:/sbin');
    if (!found) throw new Error('prlimit (util-linux) is not installed; it applies the resource limits inside the sandbox');
    const exe = await realpath(found);
    return { exe, mounts: await mountsFor([exe], [exe]) };
  });
}

/** True when `uid`/`gid` (with no supplementary groups) may search every ancestor of `p` and read `p`. */
/** True when `uid`/`gid` may traverse every directory from `/` down to and including `dir`. */
export async function traversableBy(dir: string, uid: number, gid: number): Promise<boolean> {
  try {
    let cur = '/';
    for (const part of ['', ...dir.split('/').filter(Boolean)]) {
      cur = join(cur, part);
      const st = await stat(cur);
      const bits = st.uid === uid ? st.mode >> 6 : st.gid === gid ? st.mode >> 3 : st.mode;
      if ((bits & 1) !== 1) return false;
    }
    return true;
  } catch {
    return false;
  }
}

export async function reachableBy(p: string, uid: number, gid: number): Promise<boolean> {
  const allowed = (mode: number, owner: number, group: number, bits: number) => {
    if (owner === uid) return ((mode >> 6) & bits) === bits;
    if (group === gid) return ((mode >> 3) & bits) === bits;
    return (mode & bits) === bits;
  };
  try {
    const parts = p.split('/').filter(Boolean);
    let cur = '/';
    for (let i = 0; i < parts.length; i++) {
      const st = await stat(cur);
      if (!allowed(st.mode, st.uid, st.gid, 1)) return false;
      cur = join(cur, parts[i]!);
    }
    const st = await stat(p);
    return allowed(st.mode, st.uid, st.gid, st.isDirectory() ? 5 : 4);
  } catch {
    return false;
  }
}

