import type { FastifyInstance } from 'fastify';
import { createHttpServer, listen } from '../core/http.js';
import { DispatcherContext, type DispatcherDeps } from './service.js';
import type { CompletionHook } from './tasks/complete.js';
import { OutboxDrainer } from './outbox.js';
import { Loop } from './loops.js';
import { retryDueTasks } from './tasks/retry.js';
import { reapExpiredLeases, requeueStaleTasks } from './tasks/reap.js';
import { ensureAlwaysOnSources, fireDueSchedules } from './sources.js';
import { workerRoutes } from './http/worker-routes.js';
import { taskRoutes } from './http/task-routes.js';
import { userRoutes } from './http/user-routes.js';
import { adminRoutes } from './http/admin-routes.js';
import { datasetAdminRoutes } from './http/dataset-admin-routes.js';

/**
 * An optional part of the Dispatcher (chain sync planning, bundles, ...): routes mounted beside
 * the core ones and background loops started and stopped with the core loops.
 */
export interface DispatcherPlugin {
  name: string;
  routes?(app: FastifyInstance, ctx: DispatcherContext): void;
  /** Runs inside every Completed transition (see CompletionHook). */
  completionHook?: CompletionHook;
  /** Each loop step returns true when it should run again at once. */
  loops?(ctx: DispatcherContext): Array<{ name: string; intervalMs: number; step(): Promise<boolean> }>;
}

/**
 * One Dispatcher: the HTTP routes plus the loops that make the system restartable (outbox
 * drain, retry scheduler, lease reaper) and the cron source scheduler. Stateless: everything
 * durable is in Postgres state, so a restart resumes where the last process stopped.
 */
export class Dispatcher {
  readonly ctx: DispatcherContext;
  readonly app: FastifyInstance;
  readonly drainer: OutboxDrainer;
  private loops: Loop[] = [];
  private unkick: (() => void) | undefined;
  url: string | undefined;

  constructor(deps: DispatcherDeps, extraRoutes: Array<(app: FastifyInstance, ctx: DispatcherContext) => void> = [], private readonly plugins: DispatcherPlugin[] = []) {
    this.ctx = new DispatcherContext(deps);
    for (const p of plugins) if (p.completionHook) this.ctx.completionHooks.push(p.completionHook);
    this.app = createHttpServer({ log: deps.log, name: 'dispatcher' });
    this.app.get('/healthz', async () => ({ ok: true }));
    workerRoutes(this.app, this.ctx);
    taskRoutes(this.app, this.ctx);
    userRoutes(this.app, this.ctx);
    adminRoutes(this.app, this.ctx);
    datasetAdminRoutes(this.app, this.ctx);
    for (const r of extraRoutes) r(this.app, this.ctx);
    for (const p of plugins) p.routes?.(this.app, this.ctx);
    const s = deps.settings;
    this.drainer = new OutboxDrainer({
      db: deps.state,
      queue: deps.queue,
      ...(deps.sendInTx ? { sendInTx: deps.sendInTx } : {}),
      invoke: (id) => this.ctx.invoke(id),
      log: deps.log,
      batchSize: s.batchSize,
      maxAttempts: s.outboxMaxAttempts,
      backoffMs: this.ctx.outboxDelayMs,
    });
  }

  /** Starts the loops (and the HTTP listener when host/port are given). */
  async start(opts: { host?: string; port?: number; loops?: boolean } = {}): Promise<void> {
    const s = this.ctx.deps.settings;
    const log = this.ctx.deps.log;
    if (opts.loops !== false) {
      const outbox = new Loop('outbox', async () => (await this.drainer.drainOnce()) >= s.batchSize, s.loopIntervalMs, log);
      const retry = new Loop('retry', async () => {
        const n = await retryDueTasks(this.ctx.deps.state, s.batchSize);
        if (n > 0) outbox.kick();
        return n >= s.batchSize;
      }, s.loopIntervalMs, log);
      const reaper = new Loop('reaper', async () => {
        const n = await reapExpiredLeases(this.ctx.deps.state, s.batchSize, s.retryBaseMs, s.retryMaxMs);
        const m = await requeueStaleTasks(this.ctx.deps.state, s.batchSize, s.requeueAfterSeconds);
        if (n > 0) log.warn({ reaped: n }, 'reaped expired leases');
        if (n + m > 0) { outbox.kick(); retry.kick(); }
        return n >= s.batchSize;
      }, s.loopIntervalMs, log);
      const cron = new Loop('cron', async () => {
        const n = await fireDueSchedules(this.ctx.deps.state, 100);
        const m = await ensureAlwaysOnSources(this.ctx.deps.state, s.sourceRestartSeconds);
        if (n + m > 0) outbox.kick();
        return n >= 100;
      }, Math.min(s.loopIntervalMs, 1000), log);
      this.loops = [outbox, retry, reaper, cron];
      for (const p of this.plugins) {
        for (const l of p.loops?.(this.ctx) ?? []) this.loops.push(new Loop(`${p.name}:${l.name}`, l.step, l.intervalMs, log));
      }
      this.unkick = this.ctx.onKick(() => outbox.kick());
      for (const l of this.loops) l.start();
    }
    if (opts.port !== undefined) this.url = await listen(this.app, opts.host ?? '127.0.0.1', opts.port);
    else await this.app.ready();
  }

  async stop(): Promise<void> {
    this.unkick?.();
    await this.app.close();
    await Promise.all(this.loops.map((l) => l.stop()));
    this.loops = [];
  }
}
