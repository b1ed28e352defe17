/**
 * Reuse of locked sandbox instances, per grant, inside one executor process. Opening and locking
 * a DuckDB instance costs about 10 ms, far more than a small query; this pool keeps one locked
 * instance per exact grant (relation names and their file lists, dataset versions as resolved at
 * query start) and gives every query its own fresh connection with its own TEMP VIEWs (one per
 * relation), closed when the query ends. The next query's connection is opened when the previous
 * one ends, off the request's critical path.
 *
 * What a reused instance shares between queries, and why that is safe:
 * - Settings are instance-wide and locked (allowed_paths = exactly this file list, no external
 *   access, no extensions); they are read back on a connection opened after the lockdown, so
 *   every later connection is proven to inherit them. A key is the exact grant (names and file
 *   lists), so two grants never share an instance.
 * - Temp objects (the relation views, anything else) belong to the connection and die with it;
 *   the trusted temp views shadow any main-schema object, and gated SQL can only name the granted
 *   relations and its own CTEs, so nothing one query could leave behind is visible to the next.
 * - DuckDB's file cache holds bytes of this grant's files only (validated against mtime).
 * - The memory limit and spill directory are per instance, shared by concurrent queries on one
 *   grant.
 * An instance is retired (closed once idle) after any failure that is not a plain user error
 * (timeouts, engine or setup failures), when idle longer than `idleMs`, and least recently used
 * first beyond `maxInstances`. S3 grants are not pooled (their credentials may be per task):
 * they get a fresh instance per query.
 */
import { rmSync } from 'node:fs';
import type { DuckDBConnection, DuckDBInstance } from '@duckdb/node-api';
import { TraceError } from '../../core/errors.js';
import {
  applyLockdown,
  attachDataset,
  createInstance,
  normalizeGrant,
  executeOn,
  makeSpillDir,
  verifyLockdown,
  type EngineGrant,
  type QueryResultSet,
  type RelationGrant,
  type SandboxLease,
  type SandboxOptions,
  type SandboxProvider,
} from './engine.js';

export interface SandboxPoolOptions {
  /** Idle instances kept at most (instances in use are never closed). Default 4. */
  maxInstances?: number;
  /** An instance unused this long is closed. Default 60 s. */
  idleMs?: number;
}

interface Entry {
  key: string;
  relations: readonly RelationGrant[];
  /** Every file of every relation (sorted, distinct): the allowed paths. */
  files: readonly string[];
  instance: DuckDBInstance;
  tempDir: string;
  active: number;
  lastUsed: number;
  retired: boolean;
  closed: boolean;
  /** The next query's connection, opened (with its view) ahead of time. */
  spare: Promise<DuckDBConnection> | undefined;
}

const fail = (what: string, e?: unknown): never => {
  throw new TraceError(500, 'QUERY_SANDBOX_FAILED', `query sandbox setup failed (${what})`, e === undefined ? {} : { cause: e });
};

export class SandboxPool implements SandboxProvider {
  private readonly byKey = new Map<string, Entry>();
  private readonly opening = new Map<string, Promise<Entry>>();
  private readonly live = new Set<Entry>();
  private readonly maxInstances: number;
  private readonly idleMs: number;
  private readonly timer: NodeJS.Timeout;
  private closed = false;

  constructor(
    private readonly sandbox: SandboxOptions = {},
    opts: SandboxPoolOptions = {},
  ) {
    this.maxInstances = Math.max(0, opts.maxInstances ?? 4);
    this.idleMs = Math.max(1, opts.idleMs ?? 60_000);
    this.timer = setInterval(() => this.sweep(), Math.min(this.idleMs, 30_000));
    this.timer.unref();
  }

  /** Instances currently open (in use or idle). */
  get size(): number {
    return this.live.size;
  }

  async lease(grant: EngineGrant): Promise<SandboxLease | null> {
    if (this.closed) return null;
    const { relations, files } = normalizeGrant(grant);
    if (files.some((f) => f.startsWith('s3://'))) return null;
    const key = JSON.stringify(relations);
    let entry = this.byKey.get(key);
    if (!entry) {
      let pending = this.opening.get(key);
      if (!pending) {
        pending = this.open(key, relations, files).finally(() => this.opening.delete(key));
        this.opening.set(key, pending);
      }
      entry = await pending;
    }
    if (entry.retired) return this.lease(grant);
    entry.active++;
    entry.lastUsed = Date.now();
    let conn: DuckDBConnection | undefined;
    try {
      const spare = entry.spare;
      entry.spare = undefined;
      if (spare) conn = await spare.catch(() => undefined);
      // No spare, or it failed: open one now, which reports the real error if there is one.
      conn ??= await this.freshConnection(entry);
    } catch (e) {
      entry.active--;
      this.retire(entry);
      throw e;
    }
    const held = entry;
    const c = conn!;
    return new PooledLease(c, held.files, (discard) => {
      try { c.closeSync(); } catch { /* ignore */ }
      held.active--;
      held.lastUsed = Date.now();
      if (discard || this.closed) {
        this.retire(held);
      } else {
        // The next query's connection is opened now, after this one ran, not beside it.
        this.prewarm(held);
        this.sweep();
      }
    });
  }

  /**
   * A new connection with its own TEMP VIEWs (one per relation), used by exactly one query and
   * closed after it. Views re-bind at query time, so one opened ahead of time reads the files as they
   * are when the query runs.
   */
  private async freshConnection(entry: Entry): Promise<DuckDBConnection> {
    let conn: DuckDBConnection | undefined;
    try {
      conn = await entry.instance.connect();
    } catch (e) {
      fail('connect', e);
    }
    try {
      await attachDataset(conn!, entry.relations);
    } catch (e) {
      try { conn!.closeSync(); } catch { /* ignore */ }
      throw e;
    }
    return conn!;
  }

  /** Opens the next query's connection in the background, off the request's critical path. */
  private prewarm(entry: Entry): void {
    if (entry.retired || entry.spare) return;
    const p = this.freshConnection(entry);
    entry.spare = p;
    // A spare that fails is dropped; the next query opens its own and sees the real error.
    // (A spare still held when the instance closes is closed with it, in retire.)
    p.catch(() => {
      if (entry.spare === p) entry.spare = undefined;
    });
  }

  /** Closes idle instances beyond the idle time or the size cap. */
  sweep(): void {
    const now = Date.now();
    const idle = [...this.live].filter((e) => e.active === 0 && !e.retired).sort((a, b) => a.lastUsed - b.lastUsed);
    let excess = idle.length - this.maxInstances;
    for (const e of idle) {
      if (excess > 0 || now - e.lastUsed >= this.idleMs) this.retire(e);
      excess--;
    }
  }

  /** Closes every idle instance now; instances in use close when their query ends. */
  close(): void {
    this.closed = true;
    clearInterval(this.timer);
    for (const e of [...this.live]) this.retire(e);
  }

  private retire(entry: Entry): void {
    entry.retired = true;
    if (this.byKey.get(entry.key) === entry) this.byKey.delete(entry.key);
    if (entry.active === 0 && !entry.closed) {
      entry.closed = true;
      this.live.delete(entry);
      const spare = entry.spare;
      entry.spare = undefined;
      const finish = () => {
        try { entry.instance.closeSync(); } catch { /* ignore */ }
        rmSync(entry.tempDir, { recursive: true, force: true });
      };
      if (!spare) finish();
      else void spare.then((c) => { try { c.closeSync(); } catch { /* ignore */ } }, () => undefined).finally(finish);
    }
  }

  private async open(key: string, relations: readonly RelationGrant[], files: readonly string[]): Promise<Entry> {
    const tempDir = makeSpillDir(this.sandbox);
    let instance: DuckDBInstance | undefined;
    try {
      const made = await createInstance(this.sandbox, tempDir);
      instance = made.instance;
      try {
        await applyLockdown(made.conn, files);
      } catch (e) {
        fail('lockdown', e);
      } finally {
        made.conn.closeSync();
      }
      const check = await instance.connect();
      try {
        await verifyLockdown(check, files, tempDir);
      } catch (e) {
        fail('lockdown', e);
      } finally {
        check.closeSync();
      }
      const entry: Entry = { key, relations, files, instance, tempDir, active: 0, lastUsed: Date.now(), retired: false, closed: false, spare: undefined };
      this.live.add(entry);
      this.byKey.set(key, entry);
      if (this.closed) this.retire(entry);
      return entry;
    } catch (e) {
      try { instance?.closeSync(); } catch { /* ignore */ }
      rmSync(tempDir, { recursive: true, force: true });
      throw e;
    }
  }
}

class PooledLease implements SandboxLease {
  private released = false;

  constructor(
    private readonly conn: DuckDBConnection,
    private readonly files: readonly string[],
    private readonly done: (discard: boolean) => void,
  ) {}

  execute(sql: string, opts: { limit?: number; maxBytes?: number } = {}): Promise<QueryResultSet> {
    if (this.released) return Promise.reject(new TraceError(500, 'QUERY_SANDBOX_FAILED', 'the sandbox was released'));
    return executeOn(this.conn, this.files, sql, opts);
  }

  interrupt(): void {
    if (!this.released) this.conn.interrupt();
  }

  release(discard: boolean): void {
    if (this.released) return;
    this.released = true;
    this.done(discard);
  }
}
