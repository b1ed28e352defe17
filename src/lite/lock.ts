import { open, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { TraceError } from '../core/errors.js';

/**
 * One `trace lite up` per TRACE_HOME: the embedded databases under it belong to one process, and
 * two instances would run the same tasks twice. `$TRACE_HOME/lite.lock` holds the owner's pid,
 * created exclusively. A lock whose pid is no longer alive (a crash, a kill -9) is taken over.
 */
export interface HomeLock {
  path: string;
  release(): Promise<void>;
}

export const lockPath = (home: string) => join(home, 'lite.lock');

/** True while `pid` runs (EPERM: it runs under another user). */
export function pidAlive(pid: number): boolean {
  if (!Number.isSafeInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

async function tryCreate(path: string): Promise<boolean> {
  try {
    const fh = await open(path, 'wx', 0o600);
    try {
      await fh.writeFile(`${process.pid}\n`);
    } finally {
      await fh.close();
    }
    return true;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw e;
  }
}

export async function acquireHomeLock(home: string): Promise<HomeLock> {
  const path = lockPath(home);
  for (let tries = 0; tries < 2; tries++) {
    if (await tryCreate(path)) {
      let released = false;
      return {
        path,
        async release() {
          if (released) return;
          released = true;
          // Only our own lock: never remove one a later owner took over.
          const owner = Number((await readFile(path, 'utf8').catch(() => '')).trim());
          if (owner === process.pid) await rm(path, { force: true });
        },
      };
    }
    const owner = Number((await readFile(path, 'utf8').catch(() => '')).trim());
    if (pidAlive(owner) && owner !== process.pid) {
      throw new TraceError(409, 'HOME_LOCKED', `${home} is in use by another trace lite up (pid ${owner}); stop it with \`trace lite down --home ${home}\` or choose another --home`);
    }
    if (owner === process.pid) throw new TraceError(409, 'HOME_LOCKED', `${home} is already in use by this process`);
    // Stale: its owner is gone. Remove it and race once more for a fresh exclusive create.
    await rm(path, { force: true });
  }
  throw new TraceError(409, 'HOME_LOCKED', `${home} was locked by another trace lite up starting at the same time`);
}
