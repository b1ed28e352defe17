/**
 * Test helpers around the UDF sandbox: one real `UdfSandbox` per test file under its own work
 * root, and a scan of the host's process table for processes a UDF started (found by a unique
 * marker in their command line, since PIDs inside the sandbox mean nothing outside it).
 */
import { randomBytes } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Logger } from '../../../src/core/log.js';
import { defaultSandboxConfig, type SandboxConfig } from '../../../src/udf/sandbox/config.js';
import { UdfSandbox } from '../../../src/udf/sandbox/sandbox.js';

/** A fresh, short work root (Unix socket paths must stay under 108 characters). */
export function testWorkRoot(): string {
  return join(tmpdir(), `trace-udft-${randomBytes(4).toString('hex')}`);
}

export async function startTestSandbox(over: Partial<SandboxConfig> = {}, log?: Logger): Promise<UdfSandbox & { dispose(): Promise<void> }> {
  const workRoot = over.workRoot ?? testWorkRoot();
  const sb = await UdfSandbox.start({ config: defaultSandboxConfig({ ...over, workRoot }), ...(log ? { log } : {}) });
  return Object.assign(sb, {
    async dispose() {
      await sb.close();
      await rm(workRoot, { recursive: true, force: true });
    },
  });
}

/** Entries of the sandbox instance's directory: one per run still on disk. */
export function runDirs(sb: UdfSandbox): string[] {
  return readdirSync(sb.area.dir).filter((n) => n !== 'view');
}

/** PIDs of live (non-zombie) host processes whose command line contains `marker`. */
export function processesWith(marker: string): number[] {
  const out: number[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const cmd = readFileSync(`/proc/${name}/cmdline`, 'utf8');
      if (!cmd.includes(marker)) continue;
      const state = readFileSync(`/proc/${name}/stat`, 'utf8').replace(/^.*\) /s, '').charAt(0);
      if (state !== 'Z' && state !== 'X') out.push(Number(name));
    } catch {
      // gone while we looked
    }
  }
  return out;
}

/** Kills what a test (in unsafe mode) left behind on purpose. */
export function killAll(pids: number[]): void {
  for (const pid of pids) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
}

export const isRoot = typeof process.getuid === 'function' && process.getuid() === 0;
