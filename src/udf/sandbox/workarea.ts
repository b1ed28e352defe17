/**
 * Where runs keep their host-side files: `<workRoot>/<pid>-<starttime>-<rand>/<run>/`, one
 * directory per sandbox instance and one per run inside it. A run directory holds the extracted
 * bundle (bound read-only at `/bundle`) and the task channel socket (bound at `/run/trace`);
 * it is removed when the run ends. When a platform process dies without cleaning up, the next
 * start sweeps every instance directory whose process (pid and start time) is gone.
 */
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { chmod, lchown, lstat, mkdir, readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';

/** The longest path a Unix socket may have (sun_path is 108 bytes with the NUL). */
const MAX_SOCKET_PATH = 107;
/** A run directory name: 64 random bits in hex. */
const RUN_NAME_LEN = 16;
/** The channel socket, relative to a run directory. */
export const RUN_SOCKET = 'chan/task.sock';

const INSTANCE_RE = /^(\d+)-(\d+)-[0-9a-f]{6}$/;

function procStat(pid: number): string[] | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  } catch {
    return undefined;
  }
}

/** The process start time (clock ticks since boot) from /proc, or undefined when unknown. */
export function processStartTime(pid: number): string | undefined {
  return procStat(pid)?.[19];
}

function alive(pid: number, start: string): boolean {
  const fields = procStat(pid);
  // A zombie has exited: only its exit status waits for its parent.
  if (fields) return fields[19] === start && fields[0] !== 'Z' && fields[0] !== 'X';
  if (process.platform === 'linux') return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

export interface WorkArea {
  root: string;
  /** This instance's directory (removed by `close`). */
  dir: string;
  /** Instance directories of dead processes removed while opening. */
  swept: string[];
}

/** Owner of the run directories when the platform drops privileges (root only). */
export interface RunOwner {
  uid: number;
  gid: number;
}

/**
 * Creates (or checks) the work root, sweeps what dead processes left behind, and creates this
 * instance's directory. With `owner` (root dropping to another uid) the root and the instance
 * directory are 0711, so that uid can reach a run directory whose name it is given and nothing
 * else; otherwise everything is 0700.
 */
export async function openWorkArea(root: string, owner?: RunOwner): Promise<WorkArea> {
  const start = processStartTime(process.pid) ?? '0';
  const dir = join(root, `${process.pid}-${start}-${randomBytes(3).toString('hex')}`);
  const socketLen = dir.length + 1 + RUN_NAME_LEN + 1 + RUN_SOCKET.length;
  if (socketLen > MAX_SOCKET_PATH) {
    throw new Error(`the UDF work root ${root} is too long: run sockets under it would be ${socketLen} characters, over the ${MAX_SOCKET_PATH} a Unix socket path allows; choose a shorter TRACE_UDF_WORK_ROOT`);
  }
  const me = typeof process.getuid === 'function' ? process.getuid() : undefined;
  // A root platform's sandboxes run as another uid that must pass through the root (several
  // platform processes may share it); elsewhere nobody but this uid needs to.
  const rootMode = me === 0 ? 0o711 : 0o700;
  const mode = owner ? 0o711 : 0o700;
  await mkdir(root, { recursive: true, mode: rootMode });
  const st = await lstat(root);
  if (!st.isDirectory()) throw new Error(`the UDF work root ${root} is not a directory`);
  if (me !== undefined && st.uid !== me) throw new Error(`the UDF work root ${root} belongs to uid ${st.uid}, not to this process (uid ${me}); remove it or choose another TRACE_UDF_WORK_ROOT`);
  await chmod(root, rootMode);
  const swept: string[] = [];
  for (const name of await readdir(root)) {
    const m = INSTANCE_RE.exec(name);
    if (!m) continue;
    if (alive(Number(m[1]), m[2]!)) continue;
    await rm(join(root, name), { recursive: true, force: true });
    swept.push(name);
  }
  await mkdir(dir, { mode });
  await chmod(dir, mode);
  return { root, dir, swept };
}

/** A fresh, unguessable run directory (0700, owned by `owner` when given). */
export async function createRunDir(area: WorkArea, owner?: RunOwner): Promise<string> {
  const dir = join(area.dir, randomBytes(RUN_NAME_LEN / 2).toString('hex'));
  await mkdir(dir, { mode: 0o700 });
  if (owner) await lchown(dir, owner.uid, owner.gid);
  return dir;
}

/** Hands a tree to `owner` (no symlinks are followed; extracted bundles contain none). */
export async function chownTree(path: string, owner: RunOwner): Promise<void> {
  const st = await lstat(path);
  await lchown(path, owner.uid, owner.gid);
  if (!st.isDirectory()) return;
  for (const name of await readdir(path)) await chownTree(join(path, name), owner);
}

export async function removeDir(path: string): Promise<void> {
  await rm(path, { recursive: true, force: true, maxRetries: 3 });
}
