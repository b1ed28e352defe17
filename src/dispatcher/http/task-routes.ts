import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { z } from 'zod';
import { bindTaskRequest } from '../../auth/capability.js';
import type { CapabilityClaims } from '../../auth/capability-claims.js';
import { TraceError, notFound } from '../../core/errors.js';
import { header, parseInput } from '../../core/http.js';
import type { DispatcherContext } from '../service.js';
import { heartbeatTask } from '../tasks/heartbeat.js';
import { completePlain, completeTask, type Completion, type PublishedRefCheck } from '../tasks/complete.js';
import { lockFenced } from '../tasks/fence.js';
import { recordEvents } from '../tasks/events.js';
import { publishBuffer } from '../tasks/buffer-publish.js';
import { checkPublishedRef } from '../publication.js';
import { bufferPublishBody, completeBody, eventsBody, heartbeatBody, leaseCheckBody } from './schemas.js';

/** The completion a `/v1/task/complete` body (or a complete-batch item) asks for. */
export function completionOf(body: z.output<typeof completeBody>): Completion {
  return {
    status: body.status,
    events: body.events,
    outputs: body.outputs,
    datasets_published: body.datasets_published,
    error_message: body.error_message,
    operator_state: body.operator_state,
  };
}

/** How completions check that the platform can read a published storage ref. */
export function publishedRefCheck(ctx: DispatcherContext): PublishedRefCheck {
  return (field, ref, t) => checkPublishedRef(field, ref, t, ctx.deps.datasetStorage?.store);
}

/**
 * Task-scoped routes: `X-Trace-Task-Capability` plus `{task_id, attempt, lease_token}`, bound
 * to the token claims and fenced against the current lease. A refused call changes nothing.
 */
export function taskRoutes(app: FastifyInstance, ctx: DispatcherContext): void {
  const { deps } = ctx;

  async function authorize(req: FastifyRequest): Promise<CapabilityClaims> {
    return deps.capabilityVerifier.verify(header(req, 'x-trace-task-capability'));
  }

  app.post('/v1/task/heartbeat', async (req) => {
    const claims = await authorize(req);
    const body = parseInput(heartbeatBody, req.body);
    bindTaskRequest(claims, body);
    const r = await heartbeatTask(deps.state, body, deps.settings.leaseSeconds);
    return { ok: true, lease_expires_at: new Date(r.lease_expires_at).toISOString() };
  });

  /**
   * Read only: whether `{task_id, attempt, lease_token?}` is the task's live lease, for verifiers
   * that hold no state-database credentials (the Query Service, before every task query). 200
   * while the attempt is current and Running (under that lease token, when given); otherwise 403
   * STALE_ATTEMPT (a newer attempt exists), LEASE_MISMATCH, or ATTEMPT_NOT_LIVE (the attempt
   * completed, failed, timed out or was canceled).
   */
  app.post('/v1/task/lease-check', async (req) => {
    const claims = await authorize(req);
    const body = parseInput(leaseCheckBody, req.body);
    bindTaskRequest(claims, body);
    const r = await deps.state.query<{ status: string; attempt: number; lease_token: string | null; lease_expires_at: Date | null }>(
      `SELECT status, attempt, lease_token, lease_expires_at FROM tasks WHERE id = $1`, [body.task_id]);
    const t = r.rows[0];
    if (!t) throw notFound('task not found', 'TASK_NOT_FOUND');
    if (t.attempt !== body.attempt) throw new TraceError(403, 'STALE_ATTEMPT', `attempt ${body.attempt} is not the current attempt of this task`);
    if (body.lease_token !== undefined && t.lease_token !== body.lease_token) throw new TraceError(403, 'LEASE_MISMATCH', 'lease token does not match the current lease');
    if (t.status !== 'Running') throw new TraceError(403, 'ATTEMPT_NOT_LIVE', `the attempt is over (the task is ${t.status})`);
    return { ok: true, live: true, lease_expires_at: t.lease_expires_at ? new Date(t.lease_expires_at).toISOString() : null };
  });

  app.post('/v1/task/events', async (req) => {
    const claims = await authorize(req);
    const body = parseInput(eventsBody, req.body);
    bindTaskRequest(claims, body);
    const r = await deps.state.tx(async (q) => {
      const { task, mode } = await lockFenced(q, body);
      if (mode === 'finished') throw new TraceError(409, 'TASK_NOT_RUNNING', `the task is ${task.status}; the attempt is over`);
      const job = await ctx.jobs.require(task.job_id);
      return recordEvents(q, task, job, body.events);
    });
    if (r.routed > 0) ctx.kickOutbox();
    return { ok: true, accepted: r.accepted, routed: r.routed };
  });

  const checkRef = publishedRefCheck(ctx);
  app.post('/v1/task/complete', async (req) => {
    const claims = await authorize(req);
    const body = parseInput(completeBody, req.body);
    bindTaskRequest(claims, body);
    const completion = completionOf(body);
    const r = (await completePlain(deps.state, body, completion))
      ?? await deps.state.tx((q) => completeTask(q, body, completion, (id) => ctx.jobs.require(id), ctx.retryDelayMs, ctx.completionHooks, checkRef));
    if (r.woke) ctx.kickOutbox();
    if (r.applied) req.log.info({ task_id: body.task_id, attempt: body.attempt, status: r.status }, 'task finished');
    return { ok: true, status: r.status, ...(r.retry_at ? { retry_at: r.retry_at.toISOString() } : {}) };
  });

  app.post('/v1/task/buffer-publish', async (req) => {
    const claims = await authorize(req);
    const body = parseInput(bufferPublishBody, req.body);
    bindTaskRequest(claims, body);
    const r = await deps.state.tx((q) => publishBuffer(q, body, body));
    ctx.kickOutbox();
    return { ok: true, publish_id: r.publish_id };
  });
}
