import { randomBytes } from 'node:crypto';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

/** Development secrets of one TRACE_HOME, generated on first start and kept (mode 0600). */
export interface LiteSecrets {
  worker_token: string;
  task_capability_secret: string;
  task_capability_kid: string;
  user_jwt_secret: string;
}

export async function loadOrCreateSecrets(home: string): Promise<LiteSecrets> {
  const path = join(home, 'secrets.json');
  try {
    return JSON.parse(await readFile(path, 'utf8')) as LiteSecrets;
  } catch {
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
}
