/**
 * Admin routes of chain_sync (Bearer token, admin role), and the completion guard.
 *
 * - `POST /v1/chain-sync`: apply a YAML (body `application/yaml` text or JSON `{yaml}`); 201
 *   created, 200 updated or unchanged; 400 malformed YAML, 422 invalid (every problem by path).
 * - `GET /v1/chain-sync`: status of every job (`?job=` name or job_id narrows it).
 * - `GET /v1/chain-sync/{name}`: one job (name or job_id); 404 `CHAIN_SYNC_NOT_FOUND`.
 * - `POST /v1/chain-sync/{name}/pause`, `/resume`.
 *
 * The completion guard is a `preHandler` on `POST /v1/task/complete`: for an authenticated,
 * current attempt of a chain_sync range task completing as Completed, it runs
 * `verifyChainSyncCompletion` before the core transition, so a completion with zero or several
 * publications, a foreign dataset_uuid or range, or no `_SUCCESS` marker is refused (422) and
 * changes nothing. After a successful completion it asks the runtime to commit the range.
 */
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { z } from 'zod';
import { notFound, payloadTooLarge, badRequest } from '../../core/errors.js';
import { header, parseInput, withYamlBodies } from '../../core/http.js';
import { bindTaskRequest } from '../../auth/capability.js';
import type { DispatcherContext } from '../service.js';
import { requireAdmin, type Principal } from '../identity.js';
import { userAuth } from '../http/user-routes.js';
import { completeBody } from '../http/schemas.js';
import type { ObjectStore } from '../../operators/cryo_ingest/store.js';
import { applyChainSync, pauseChainSync, resumeChainSync } from './apply.js';
import { chainSyncStatus } from './status.js';
import { CHAIN_SYNC_LIMITS } from './spec.js';
import { isChainSyncJob, verifyChainSyncCompletion } from './commit.js';
import { checkRangeChain, haltJob, isChainCheckError, type ChainCheck } from './identity.js';

export interface RouteRuntime {
  store(): ObjectStore;
  /** Something changed for this stream (or for everything): commit and plan now. */
  wake(stream?: { job_id: string; dataset_key: string }): void;
  /** The live chain check of a job (identity.ts), as resume runs it on a halted job. */
  checkChain(jobId: string): Promise<ChainCheck>;
}

/** `POST /v1/chain-sync`: the YAML itself, or JSON `{yaml}`. */
export const chainSyncJsonBody = z.strictObject({ yaml: z.string() });

const nameParam = z.union([
  z.string().regex(/^[a-z][a-z0-9_]{0,63}$/, 'must be a chain sync name or job_id'),
  z.uuid(),
]);

export function chainSyncRoutes(app: FastifyInstance, ctx: DispatcherContext, rt: RouteRuntime): void {
  const { deps } = ctx;
  const auth = userAuth(ctx);
  const admin = async (req: FastifyRequest): Promise<Principal> => {
    const p = await auth(req);
    requireAdmin(p);
    return p;
  };

  // YAML (or JSON {yaml}) bodies.
  withYamlBodies(app, (scope) => {
    scope.post('/v1/chain-sync', async (req, reply) => {
      const p = await admin(req);
      let yaml: string;
      if (typeof req.body === 'string') yaml = req.body;
      else yaml = parseInput(chainSyncJsonBody, req.body).yaml;
      if (Buffer.byteLength(yaml) > CHAIN_SYNC_LIMITS.maxYamlBytes) throw payloadTooLarge(`chain sync YAML is larger than ${CHAIN_SYNC_LIMITS.maxYamlBytes} bytes`);
      if (yaml.trim() === '') throw badRequest('chain sync YAML is empty', 'YAML_MALFORMED');
      const r = await applyChainSync(deps.state, p.org_id, p.user_id, yaml);
      req.log.info({ org_id: p.org_id, chain_sync: r.name, job_id: r.job_id, created: r.created, changed: r.changed }, 'chain sync applied');
      if (r.changed) rt.wake();
      return reply.status(r.created ? 201 : 200).send(r);
    });
  });

  app.get('/v1/chain-sync', async (req) => {
    const p = await admin(req);
    const { job } = parseInput(z.strictObject({ job: nameParam.optional() }), req.query, 'query string');
    return { jobs: await chainSyncStatus(deps.state, p.org_id, job) };
  });

  app.get('/v1/chain-sync/:name', async (req) => {
    const p = await admin(req);
    const { name } = parseInput(z.strictObject({ name: nameParam }), req.params, 'route');
    const s = (await chainSyncStatus(deps.state, p.org_id, name))[0];
    if (!s) throw notFound(`no chain sync named ${name}`, 'CHAIN_SYNC_NOT_FOUND');
    return s;
  });

  app.post('/v1/chain-sync/:name/pause', async (req) => {
    const p = await admin(req);
    const { name } = parseInput(z.strictObject({ name: nameParam }), req.params, 'route');
    const r = await pauseChainSync(deps.state, p.org_id, name);
    req.log.info({ org_id: p.org_id, chain_sync: r.name, by: p.sub }, 'chain sync paused');
    return r;
  });

  app.post('/v1/chain-sync/:name/resume', async (req) => {
    const p = await admin(req);
    const { name } = parseInput(z.strictObject({ name: nameParam }), req.params, 'route');
    const r = await resumeChainSync(deps.state, p.org_id, name, { checkChain: rt.checkChain });
    req.log.info({ org_id: p.org_id, chain_sync: r.name, by: p.sub, redriven: r.redriven }, 'chain sync resumed');
    rt.wake();
    if (r.redriven > 0) ctx.kickOutbox();
    return r;
  });

  // --- completion guard ---
  const verified = new WeakMap<FastifyRequest, { job_id: string; dataset_key: string }>();

  app.addHook('preHandler', async (req) => {
    if (req.method !== 'POST' || req.routeOptions.url !== '/v1/task/complete') return;
    const raw = req.body as { status?: unknown } | null | undefined;
    if (!raw || typeof raw !== 'object' || raw.status !== 'Completed') return;
    // Only an authenticated, current attempt is checked here; everything else is left to the
    // route, which answers with the standard errors.
    let body: z.infer<typeof completeBody>;
    try {
      body = completeBody.parse(raw);
      bindTaskRequest(await deps.capabilityVerifier.verify(header(req, 'x-trace-task-capability')), body);
    } catch {
      return;
    }
    const t = (await deps.state.query<{ job_id: string; attempt: number; lease_token: string | null; status: string; timed_out_at: Date | null }>(
      `SELECT job_id, attempt, lease_token, status, timed_out_at FROM tasks WHERE id = $1`, [body.task_id])).rows[0];
    if (!t || t.attempt !== body.attempt || t.lease_token !== body.lease_token) return;
    if (!(t.status === 'Running' || (t.status === 'Failed' && t.timed_out_at !== null))) return;
    const job = await ctx.jobs.get(t.job_id);
    if (!job || !isChainSyncJob(job)) return;
    const v = await verifyChainSyncCompletion(deps.state, rt.store(), { id: body.task_id, attempt: body.attempt }, job, body);
    if (!v) return;
    try {
      await checkRangeChain(deps.state, v);
    } catch (e) {
      // The range was read from another chain: the job halts and the completion is refused.
      if (isChainCheckError(e) && await haltJob(deps.state, v.job_id, e.code, e.message)) {
        req.log.error({ chain_sync_job_id: v.job_id, dataset_key: v.dataset_key, task_id: body.task_id, code: e.code, err: e.message }, 'chain sync halted');
      }
      throw e;
    }
    verified.set(req, { job_id: v.job_id, dataset_key: v.dataset_key });
  });

  app.addHook('onResponse', async (req, reply) => {
    const v = verified.get(req);
    if (v && reply.statusCode === 200) rt.wake(v);
  });
}
