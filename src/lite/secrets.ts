import { randomBytes } from 'node:crypto';
import { chmod, mkdir, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

/**
 * Development secrets of one TRACE_HOME, generated on first start and kept with mode 0600 (a
 * looser mode found on an existing file is tightened). UDF sandboxes never see TRACE_HOME at all.
 */
export interface LiteSecrets {
  worker_token: string;
  task_capability_secret: string;
  task_capability_kid: string;
  user_jwt_secret: string;
}

export async function loadOrCreateSecrets(home: string): Promise<LiteSecrets> {
  const path = join(home, 'secrets.json');
  let existing: LiteSecrets | undefined;
  try {
    existing = JSON.parse(await readFile(path, 'utf8')) as LiteSecrets;
  } catch {
    existing = undefined;
  }
  if (existing) {
    if (((await stat(path)).mode & 0o077) !== 0) await chmod(path, 0o600);
    return existing;
  }
  await mkdir(home, { recursive: true });
  const s: LiteSecrets = {
    worker_token: randomBytes(32).toString('base64url'),
    task_capability_secret: randomBytes(48).toString('base64url'),
    task_capability_kid: `lite-${randomBytes(4).toString('hex')}`,
    user_jwt_secret: randomBytes(48).toString('base64url'),
  };
  await writeFile(path, JSON.stringify(s, null, 2), { mode: 0o600 });
  return s;
}
