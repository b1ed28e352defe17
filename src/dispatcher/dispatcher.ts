import type { FastifyInstance } from 'fastify';
import { createHttpServer, listen } from '../core/http.js';
import { installOps, serviceRegistry } from '../core/ops.js';
import { dispatcherGauges } from './metrics.js';
import { DispatcherContext, type DispatcherDeps } from './service.js';
import type { CompletionHook } from './tasks/complete.js';
import { OutboxDrainer } from './outbox.js';
import { Loop } from './loops.js';
import { retryDueTasks } from './tasks/retry.js';
import { reapExpiredLeases, requeueStaleTasks } from './tasks/reap.js';
import { ensureAlwaysOnSources, fireDueSchedules } from './sources.js';
import { reconcileEvents } from './reconcile.js';
import { workerRoutes } from './http/worker-routes.js';
import { taskRoutes } from './http/task-routes.js';
import { batchRoutes } from './http/batch-routes.js';
import { userRoutes } from './http/user-routes.js';
import { adminRoutes } from './http/admin-routes.js';
import { webhookRoutes } from './http/webhook-routes.js';
import { datasetAdminRoutes } from './http/dataset-admin-routes.js';
import { exportRoutes } from './http/export-routes.js';
import { gcRoutes } from './http/gc-routes.js';
import { orgRoutes } from './http/org-routes.js';
import { runGc, scratchGcCollector, type GcCollector } from './gc.js';
import { invalidationCompletionHook, processInvalidations } from './invalidations.js';
import { invalidationRoutes } from './http/invalidation-routes.js';

/** How long a readiness probe waits for each dependency. */
const READY_TIMEOUT_MS = 1_000;

/**
 * An optional part of the Dispatcher (chain sync planning, bundles, ...): routes mounted beside
 * the core ones and background loops started and stopped with the core loops.
 */
export interface DispatcherPlugin {
  name: string;
  routes?(app: FastifyInstance, ctx: DispatcherContext): void;
  /** Runs inside every Completed transition (see CompletionHook). */
  completionHook?: CompletionHook;
  /** Its part of a garbage collection pass (gc.ts). */
  gcCollector?: GcCollector;
  /** Each loop step returns true when it should run again at once. */
  loops?(ctx: DispatcherContext): Array<{ name: string; intervalMs: number; step(): Promise<boolean> }>;
}

/**
 * One Dispatcher: the HTTP routes plus the loops that make the system restartable (outbox
 * drain, retry scheduler, lease reaper, event reconcile) and the cron source scheduler.
 * Stateless: everything durable is in Postgres state, so a restart resumes where the last
 * process stopped.
 */
export class Dispatcher {
  readonly ctx: DispatcherContext;
  readonly app: FastifyInstance;
  readonly drainer: OutboxDrainer;
  /** This Dispatcher's Prometheus registry (served at /metrics). */
  readonly metrics = serviceRegistry('dispatcher');
  private loops: Loop[] = [];
  private unkick: (() => void) | undefined;
  private unkickRetry: (() => void) | undefined;
  url: string | undefined;

  constructor(deps: DispatcherDeps, extraRoutes: Array<(app: FastifyInstance, ctx: DispatcherContext) => void> = [], private readonly plugins: DispatcherPlugin[] = []) {
    this.ctx = new DispatcherContext(deps);
    for (const p of plugins) if (p.completionHook) this.ctx.completionHooks.push(p.completionHook);
    this.ctx.completionHooks.push(invalidationCompletionHook);
    this.ctx.gcCollectors.push(scratchGcCollector(() => deps.datasetStorage?.store));
    for (const p of plugins) if (p.gcCollector) this.ctx.gcCollectors.push(p.gcCollector);
    this.app = createHttpServer({ log: deps.log, name: 'dispatcher' });
    // A request that failed on an unreachable dependency tells the monitor at once.
    this.app.addHook('onError', async (_req, _reply, err) => {
      this.ctx.monitor.observe(err);
    });
    // /healthz (alive), /readyz (the databases and the queue answer within a short timeout, and
    // the Dispatcher is not draining) and /metrics (core/ops.ts, metrics.ts).
    installOps(this.app, {
      service: 'dispatcher',
      registry: this.metrics,
      ready: async () => {
        const r = await this.ctx.monitor.probeAll(READY_TIMEOUT_MS);
        const draining = this.ctx.isDraining;
        const checks = r.checks as Record<string, string>;
        return { ready: r.ready && !draining, checks, extra: draining || !r.ready ? { draining } : {}, ...(draining ? { reason: 'the Dispatcher is shutting down' } : {}) };
      },
    });
    dispatcherGauges(this.metrics, { state: deps.state, queue: deps.queue });
    workerRoutes(this.app, this.ctx);
    taskRoutes(this.app, this.ctx);
    batchRoutes(this.app, this.ctx);
    userRoutes(this.app, this.ctx);
    adminRoutes(this.app, this.ctx);
    datasetAdminRoutes(this.app, this.ctx);
    exportRoutes(this.app, this.ctx);
    gcRoutes(this.app, this.ctx);
    invalidationRoutes(this.app, this.ctx);
    orgRoutes(this.app, this.ctx);
    webhookRoutes(this.app, this.ctx);
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

  /**
   * Binds the HTTP listener when host/port are given (first, so a taken port fails before
   * anything runs, and a run the outbox starts at once after a restart finds its Dispatcher's
   * URL), then starts the loops unless `loops: false` (then call startLoops()).
   */
  async start(opts: { host?: string; port?: number; loops?: boolean } = {}): Promise<void> {
    if (opts.port !== undefined) this.url = await listen(this.app, opts.host ?? '127.0.0.1', opts.port);
    else await this.app.ready();
    if (opts.loops !== false) this.startLoops();
  }

  /** Starts the outbox, retry, reaper, cron, dependency and reconcile loops and the plugins' loops (once). */
  startLoops(): void {
    if (this.loops.length > 0) return;
    const s = this.ctx.deps.settings;
    const log = this.ctx.deps.log;
    const outbox = new Loop('outbox', async () => (await this.drainer.drainOnce()) >= s.batchSize, s.loopIntervalMs, log);
    const retry = new Loop('retry', async () => {
      const n = await retryDueTasks(this.ctx.deps.state, s.batchSize, this.ctx.monitor.down());
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
    const deps = new Loop('dependencies', async () => {
      await this.ctx.monitor.probeAll(READY_TIMEOUT_MS);
      return false;
    }, s.dependencyProbeMs, log);
    // Events recorded but never routed (a crash, a lost outbox row): routed again, idempotently.
    const reconcile = new Loop('reconcile', async () => {
      const r = await reconcileEvents(this.ctx.deps.state, {
        graceSeconds: s.reconcileGraceSeconds, lookbackSeconds: s.reconcileLookbackSeconds, batchSize: s.batchSize,
      }, log);
      if (r.tasks > 0) outbox.kick();
      return false;
    }, s.reconcileIntervalMs, log);
    this.unkickRetry = this.ctx.onRetryKick(() => retry.kick());
    this.loops = [outbox, retry, reaper, cron, deps, reconcile];
    if (s.gcIntervalMs > 0) {
      this.loops.push(new Loop('gc', async () => {
        const r = await runGc(this.ctx.deps.state, s, this.ctx.gcCollectors, { dryRun: false, log });
        return r.truncated;
      }, s.gcIntervalMs, log));
    }
    // Unprocessed data invalidations become re-runs (invalidations.ts).
    this.loops.push(new Loop('invalidations', async () => {
      const n = await processInvalidations(this.ctx.deps.state, s.batchSize);
      if (n > 0) outbox.kick();
      return n >= s.batchSize;
    }, s.loopIntervalMs, log));
    for (const p of this.plugins) {
      for (const l of p.loops?.(this.ctx) ?? []) this.loops.push(new Loop(`${p.name}:${l.name}`, l.step, l.intervalMs, log));
    }
    this.unkick = this.ctx.onKick(() => outbox.kick());
    for (const l of this.loops) l.start();
  }

  /**
   * Stop leasing: claims answer 503 DISPATCHER_DRAINING, and the loops stop (no more invocations
   * of the Dispatcher's own runtimes, retries or reaping). The HTTP routes stay up, so work that
   * is already running can still heartbeat, publish and complete.
   */
  async stopLeasing(): Promise<void> {
    this.ctx.beginDrain();
    this.unkick?.();
    this.unkickRetry?.();
    await Promise.all(this.loops.map((l) => l.stop()));
    this.loops = [];
    await this.ctx.dagParser.close();
  }

  /**
   * Drains and stops: stop leasing, let the Dispatcher's own runs finish within `graceMs`,
   * release the leases of the rest, then close the listener. Default grace 0 (tests, startup
   * failures); `trace dispatcher` passes TRACE_SHUTDOWN_GRACE_SECONDS.
   */
  async stop(opts: { graceMs?: number } = {}): Promise<void> {
    await this.stopLeasing();
    await this.ctx.drainRuns(opts.graceMs ?? 0);
    await this.app.close();
  }
}
