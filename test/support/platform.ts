import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startLite, type LiteHandle, type LiteOptions } from '../../src/lite/lite.js';
import { createPgDatabase } from './db.js';

export interface TestPlatform extends LiteHandle {
  backend: 'postgres' | 'pglite';
  url: string;
  admin: string;
  stateUrl: string | undefined;
  /** Authenticated JSON request against the Dispatcher. */
  api<T = any>(method: string, path: string, body?: unknown, headers?: Record<string, string>): Promise<{ status: number; body: T }>;
  close(): Promise<void>;
}

/** Fast timings so lifecycle tests finish in seconds. */
export const FAST = {
  leaseSeconds: 2,
  retryBaseMs: 50,
  retryMaxMs: 200,
  outboxBaseMs: 50,
  outboxMaxMs: 200,
  loopIntervalMs: 50,
  requeueAfterSeconds: 30,
};

/**
 * Starts the one-process platform on a fresh database: real Postgres (two new databases) or
 * embedded PGlite under a temporary TRACE_HOME. Test operators are enabled.
 */
export async function startPlatform(backend: 'postgres' | 'pglite', opts: Partial<LiteOptions> = {}): Promise<TestPlatform> {
  const home = await mkdtemp(join(tmpdir(), 'trace-test-'));
  // Tests register Parquet they write in their own temp folders.
  const env: NodeJS.ProcessEnv = { TRACE_HOME: home, TRACE_DATASET_ROOTS: tmpdir() };
  const drops: Array<() => Promise<void>> = [];
  if (backend === 'postgres') {
    const s = await createPgDatabase('trace_ps');
    const d = await createPgDatabase('trace_pd');
    drops.push(s.drop, d.drop);
    env.TRACE_STATE_DATABASE_URL = s.url;
    env.TRACE_DATA_DATABASE_URL = d.url;
  }
  const lite = await startLite({
    home,
    workers: 1,
    ports: { dispatcher: 0, query: 0, gateway: 0, rpcGateway: 0 },
    includeTestOperators: true,
    heartbeatMs: 300,
    shutdownGraceMs: 5_000,
    ...opts,
    env: { ...env, ...opts.env },
    settings: { ...FAST, ...opts.settings },
  });
  const url = lite.info.dispatcher_url;
  const admin = lite.info.admin_token;
  return {
    ...lite,
    backend,
    url,
    admin,
    stateUrl: env.TRACE_STATE_DATABASE_URL,
    async api(method, path, body, headers = {}) {
      const h: Record<string, string> = { authorization: `Bearer ${admin}`, ...headers };
      let payload: string | undefined;
      if (body !== undefined) {
        if (typeof body === 'string') { payload = body; h['content-type'] ??= 'application/yaml'; } else { payload = JSON.stringify(body); h['content-type'] ??= 'application/json'; }
      }
      const res = await fetch(`${url}${path}`, { method, headers: h, ...(payload !== undefined ? { body: payload } : {}) });
      const text = await res.text();
      let parsed: unknown = text;
      try { parsed = JSON.parse(text); } catch { /* not JSON */ }
      return { status: res.status, body: parsed as any };
    },
    async close() {
      await lite.stop();
      for (const d of drops) await d();
      await rm(home, { recursive: true, force: true });
    },
  };
}

export async function waitFor<T>(what: string, fn: () => Promise<T | undefined | null | false>, timeoutMs = 20_000, everyMs = 50): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}
