/**
 * chain_sync inside the Dispatcher, as a DispatcherPlugin: admin routes, the completion guard,
 * the planner loop (commit completed ranges, then top up every stream), and the head observer
 * loop. See README.md for the design (task mapping, range -> version mapping, hooks).
 *
 * ```ts
 * const cs = chainSyncPlugin({ objectStore, rpcGatewayUrl: 'http://127.0.0.1:8083' });
 * const d = new Dispatcher(deps, [], [cs]);
 * ```
 */
import type { FastifyInstance } from 'fastify';
import type { Queryable } from '../../db/db.js';
import type { DispatcherPlugin } from '../dispatcher.js';
import type { GcCollector } from '../gc.js';
import type { DispatcherContext } from '../service.js';
import { openObjectStore } from '../../objectstore/open.js';
import { readEnv } from '../../core/config.js';
import type { ObjectStore } from '../../operators/cryo_ingest/store.js';
import { chainSyncRoutes } from './routes.js';
import { markCompleted, planAll, planStream } from './planner.js';
import { chainSyncCompletionHook, commitCompletedRanges, type ChainSyncJobLike, type ChainSyncTaskLike, type PublicationLike } from './commit.js';
import { observeHeads } from './head.js';
import { chainSyncGcCollector } from './gc.js';
import { checkBeforePlanning, checkJobChain } from './identity.js';

export { applyChainSync, pauseChainSync, resumeChainSync, type ApplyResult } from './apply.js';
export { chainSyncStatus, type JobStatus, type StreamStatus } from './status.js';
export { parseChainSyncYaml, validateChainSync, type ChainSyncSpec } from './spec.js';
export { verifyChainSyncCompletion, chainSyncCompletionHook, commitCompletedRanges, isChainSyncJob, type VerifiedRange } from './commit.js';
export { planAll, planStream } from './planner.js';
export { observeHeads } from './head.js';
export { checkJobChain, checkRangeChain, CHAIN_CHECK_CODES, type ChainCheck } from './identity.js';
export { chainSyncDatasetUuid, chainSyncJobId } from './ids.js';

export interface ChainSyncPluginOptions {
  /** Where range outputs live. Default: openObjectStore(TRACE_OBJECT_STORE_URL, TRACE_HOME). */
  objectStore?: ObjectStore;
  /** RPC egress gateway base URL for head observations (default TRACE_RPC_GATEWAY_URL). */
  rpcGatewayUrl?: string | (() => string | undefined);
  /** Planner pass interval (commit + top up). Default 1000 ms. */
  plannerIntervalMs?: number;
  /** Head observer tick (each pool is observed at its own head_poll_interval_seconds). Default 250 ms. */
  headTickMs?: number;
  headTimeoutMs?: number;
  /** Timeout of the chain identity check of a planning round or a resume. Default 5000 ms. */
  chainCheckTimeoutMs?: number;
}

export type CompletionHook = (q: Queryable, task: ChainSyncTaskLike, job: ChainSyncJobLike, c: { status: string; datasets_published: readonly PublicationLike[] }) => Promise<boolean>;

export interface ChainSyncPlugin extends DispatcherPlugin {
  gcCollector: GcCollector;
  /** Verify + commit inside the completion transaction (for `completeTask`, see README.md). */
  completionHook: CompletionHook;
  /** The object store the plugin verifies and publishes in. */
  store(): ObjectStore;
  /** Runs one commit + planning pass now (tests, CLI-less drivers). */
  tick(): Promise<void>;
}

export function chainSyncPlugin(opts: ChainSyncPluginOptions = {}): ChainSyncPlugin {
  let store: ObjectStore | undefined = opts.objectStore;
  const getStore = (): ObjectStore => {
    if (!store) {
      const env = readEnv();
      store = openObjectStore(env.objectStoreUrl, env.home);
    }
    return store;
  };
  const gatewayUrl = (): string | undefined =>
    typeof opts.rpcGatewayUrl === 'function' ? opts.rpcGatewayUrl() : (opts.rpcGatewayUrl ?? (process.env.TRACE_RPC_GATEWAY_URL?.trim() || undefined));
  let ctx: DispatcherContext | undefined;
  let stopped = false;

  // Immediate work after an apply, resume or completion, serialized in this process (other
  // processes are serialized by the row locks).
  const pendingStreams = new Map<string, { job_id: string; dataset_key: string }>();
  let pendingAll = false;
  let draining: Promise<void> | undefined;

  const recordError = async (jobId: string, datasetKey: string, e: unknown) => {
    const msg = e instanceof Error ? e.message : String(e);
    ctx?.deps.log.error({ chain_sync_job_id: jobId, dataset_key: datasetKey, err: msg }, 'chain sync planning failed');
    await ctx?.deps.state.query(`UPDATE chain_sync_streams SET last_error = $3, last_error_at = now() WHERE job_id = $1 AND dataset_key = $2`,
      [jobId, datasetKey, `planning: ${msg}`.slice(0, 1000)]).catch(() => undefined);
  };

  // Each planning round first checks the chain behind the job's pools (identity.ts); a mismatch
  // halts the job, so the planner below skips it. A wake-up after a completion reuses a check
  // that passed less than one planner interval ago (every commit is checked on its own).
  const passedAt = new Map<string, number>();
  const checkJob = async (c: DispatcherContext, jobId: string, reuseMs = 0): Promise<void> => {
    if (reuseMs > 0 && Date.now() - (passedAt.get(jobId) ?? 0) < reuseMs) return;
    passedAt.delete(jobId);
    const r = await checkBeforePlanning(c.deps.state, jobId, gatewayUrl(), opts.chainCheckTimeoutMs);
    if (r.status === 'ok') passedAt.set(jobId, Date.now());
    if (r.status === 'mismatch') c.deps.log.error({ chain_sync_job_id: jobId, code: r.code, err: r.message }, 'chain sync halted');
    else if (r.status === 'unavailable') c.deps.log.debug({ chain_sync_job_id: jobId, err: r.message }, 'chain check skipped this round');
  };
  const PLANNABLE_JOBS = `SELECT job_id FROM chain_sync_jobs WHERE enabled AND completed_at IS NULL AND halt_code IS NULL AND genesis_hash IS NOT NULL ORDER BY name`;

  async function passAll(c: DispatcherContext): Promise<number> {
    const db = c.deps.state;
    await commitCompletedRanges(db, getStore(), (id) => c.jobs.get(id), { log: c.deps.log });
    for (const j of (await db.query<{ job_id: string }>(PLANNABLE_JOBS)).rows) await checkJob(c, j.job_id);
    const planned = await planAll(db, recordError);
    if (planned > 0) c.kickOutbox();
    return planned;
  }

  async function passStream(c: DispatcherContext, s: { job_id: string; dataset_key: string }): Promise<void> {
    const db = c.deps.state;
    await commitCompletedRanges(db, getStore(), (id) => c.jobs.get(id), { stream: s, log: c.deps.log });
    try {
      await checkJob(c, s.job_id, opts.plannerIntervalMs ?? 1000);
      const r = await planStream(db, s.job_id, s.dataset_key);
      if (r.planned + r.compactions > 0) c.kickOutbox();
    } catch (e) {
      await recordError(s.job_id, s.dataset_key, e);
    }
    await markCompleted(db, s.job_id);
  }

  async function drain(): Promise<void> {
    while (!stopped && ctx && (pendingAll || pendingStreams.size > 0)) {
      const c = ctx;
      try {
        if (pendingAll) {
          pendingAll = false;
          pendingStreams.clear();
          await passAll(c);
        } else {
          const [k, s] = pendingStreams.entries().next().value as [string, { job_id: string; dataset_key: string }];
          pendingStreams.delete(k);
          await passStream(c, s);
        }
      } catch (e) {
        if (!stopped) c.deps.log.error({ err: e instanceof Error ? e.message : String(e) }, 'chain sync pass failed');
      }
    }
  }

  function wake(s?: { job_id: string; dataset_key: string }): void {
    if (stopped) return;
    if (s) pendingStreams.set(`${s.job_id}\u0000${s.dataset_key}`, s);
    else pendingAll = true;
    draining ??= drain().finally(() => {
      draining = undefined;
      if (!stopped && (pendingAll || pendingStreams.size > 0)) wake();
    });
  }

  /** A full pass through the same queue as the wake-ups: one planner at a time in this process. */
  async function passAllSerialized(): Promise<void> {
    if (!ctx) return;
    wake();
    while (draining) await draining;
  }

  return {
    name: 'chain_sync',
    completionHook: (q, task, job, c) => chainSyncCompletionHook(getStore())(q, task, job, c),
    store: getStore,
    gcCollector: chainSyncGcCollector(getStore),
    async tick() {
      await passAllSerialized();
    },
    routes(app: FastifyInstance, c: DispatcherContext) {
      ctx = c;
      stopped = false;
      chainSyncRoutes(app, c, { store: getStore, wake, checkChain: (jobId) => checkJobChain(c.deps.state, jobId, gatewayUrl(), opts.chainCheckTimeoutMs) });
      app.addHook('onClose', async () => {
        stopped = true;
        await draining;
      });
    },
    loops(c: DispatcherContext) {
      ctx = c;
      return [
        {
          name: 'planner',
          intervalMs: opts.plannerIntervalMs ?? 1000,
          step: async () => {
            await passAllSerialized();
            return false;
          },
        },
        {
          name: 'heads',
          intervalMs: opts.headTickMs ?? 250,
          step: async () => {
            const ok = await observeHeads(c.deps.state, { rpcGatewayUrl: gatewayUrl, ...(opts.headTimeoutMs !== undefined ? { timeoutMs: opts.headTimeoutMs } : {}), log: c.deps.log });
            if (ok > 0) wake();
            return false;
          },
        },
      ];
    },
  };
}
