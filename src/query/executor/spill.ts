/**
 * Where executors spill: one owned root, `<temp root>/trace-query-<uid>/` (mode 0700, owned by
 * this user; /dev/shm when writable, else the OS temp directory). Each executor process owns one
 * directory in it, named `<pid>-<process start time>`, and each DuckDB instance of that executor
 * spills into a `spill-*` directory inside that one.
 *
 * The Query Service removes an executor's directory when the executor exits (killed, crashed or
 * stopped), and when it starts it removes every directory whose process no longer runs: what
 * executors of a crashed run left behind. The start time in the name keeps a reused pid from
 * making a stale directory look alive. Pure file-system code, loaded by both sides.
 */
import { accessSync, constants as fsConstants, lstatSync, mkdirSync, readdirSync, readFileSync, rmSync, chmodSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** /dev/shm when it is a writable directory (memory-backed, gone at reboot), else the OS tmpdir. */
export function defaultTempRoot(): string {
  try {
    if (statSync('/dev/shm').isDirectory()) {
      accessSync('/dev/shm', fsConstants.W_OK);
      return '/dev/shm';
    }
  } catch {
    // fall through
  }
  return tmpdir();
}

const uid = () => (typeof process.getuid === 'function' ? process.getuid() : 0);

/**
 * Creates (or checks) the owned root under `tempRoot` and returns its path. Refuses a root that is
 * a symbolic link or belongs to another user; tightens its mode to 0700 when it is ours.
 */
export function ensureSpillRoot(tempRoot: string = defaultTempRoot()): string {
  const root = join(tempRoot, `trace-query-${uid()}`);
  try {
    mkdirSync(root, { mode: 0o700 });
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
  }
  const st = lstatSync(root);
  if (!st.isDirectory() || st.isSymbolicLink()) throw new Error(`the query spill root ${root} is not a directory`);
  if (typeof process.getuid === 'function' && st.uid !== process.getuid()) throw new Error(`the query spill root ${root} belongs to another user`);
  if ((st.mode & 0o077) !== 0) chmodSync(root, 0o700);
  return root;
}

/**
 * The start time of process `pid` (clock ticks since boot, from /proc/<pid>/stat), or undefined
 * when the process does not exist. '0' where there is no /proc (the pid alone is then used).
 */
export function processStartTime(pid: number): string | undefined {
  let stat: string;
  try {
    stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT' && !procAvailable()) return pidAlive(pid) ? '0' : undefined;
    return undefined;
  }
  // The command name may hold spaces and parentheses: the fields start after the last ')'.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  // Field 22 (starttime); fields[0] is field 3 (state).
  return fields[19];
}

let procChecked: boolean | undefined;
function procAvailable(): boolean {
  if (procChecked === undefined) {
    try {
      procChecked = statSync('/proc/self/stat').isFile();
    } catch {
      procChecked = false;
    }
  }
  return procChecked;
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** The directory name of the executor process `pid` started at `start`. */
export function executorDirName(pid: number, start: string): string {
  return `${pid}-${start}`;
}

/** Called by an executor: creates its own directory (0700) in the root and returns it. */
export function createExecutorDir(root: string): string {
  const start = processStartTime(process.pid) ?? '0';
  const dir = join(root, executorDirName(process.pid, start));
  mkdirSync(dir, { mode: 0o700 });
  return dir;
}

/** Removes a directory and everything in it; a missing one is fine. */
export function removeDir(dir: string): void {
  rmSync(dir, { recursive: true, force: true });
}

/**
 * Removes every entry of the root whose executor process is gone (or whose name is not an
 * executor's). Returns the names removed.
 */
export function removeStaleExecutorDirs(root: string): string[] {
  const removed: string[] = [];
  let names: string[];
  try {
    names = readdirSync(root);
  } catch {
    return removed;
  }
  for (const name of names) {
    const m = /^(\d+)-(\d+)$/.exec(name);
    const alive = m !== null && processStartTime(Number(m[1])) === m[2];
    if (!alive) {
      removeDir(join(root, name));
      removed.push(name);
    }
  }
  return removed;
}
