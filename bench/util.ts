import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';

/** One benchmark figure as one JSON line on stdout. */
export function report(fig: Record<string, unknown>): void {
  process.stdout.write(`${JSON.stringify({ ...fig, at: new Date().toISOString() })}\n`);
}

export function percentile(values: number[], p: number): number {
  const s = [...values].sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]!;
}

export const round = (x: number, d = 2) => Math.round(x * 10 ** d) / 10 ** d;

export async function until(what: string, fn: () => Promise<boolean>, timeoutMs: number, everyMs = 20): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await fn())) {
    if (Date.now() > deadline) throw new Error(`benchmark timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/** Spawns a child whose stdout is JSON lines; `onLine` sees each parsed object. */
export function spawnJsonChild(cmd: string, args: string[], env: NodeJS.ProcessEnv, onLine: (o: Record<string, unknown>) => void): ChildProcess {
  const c = spawn(cmd, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
  createInterface({ input: c.stdout! }).on('line', (l) => {
    try { onLine(JSON.parse(l) as Record<string, unknown>); } catch { /* not ours */ }
  });
  c.stderr!.on('data', () => undefined);
  return c;
}
