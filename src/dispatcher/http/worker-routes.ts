import type { FastifyInstance } from 'fastify';
import { checkWorkerToken } from '../../auth/worker-token.js';
import { header, parseInput } from '../../core/http.js';
import { notFound } from '../../core/errors.js';
import { z } from 'zod';
import type { DispatcherContext } from '../service.js';
import { taskPayload, type TaskCore } from '../payload.js';
import { INPUT_CURSORS } from '../tasks/claim.js';
import { claimBody, releaseBody, uuid } from './schemas.js';
import { releaseTask } from '../tasks/release.js';

// A task as it is now, with this job's operator state and its committed cursors on the inputs.
const FETCH_TASK = `
SELECT t.id, t.org_id, t.job_id, t.status, t.attempt, t.inputs, t.trigger, t.timeout_seconds,
       (SELECT coalesce(json_agg(json_build_object('state_key', s.state_key, 'state', s.state, 'version', s.version)), '[]'::json)
          FROM operator_state s WHERE s.job_id = t.job_id) AS operator_state,
       ${INPUT_CURSORS('t')} AS cursors
FROM tasks t WHERE t.id = $1`;

/** Worker-only routes (`X-Trace-Worker-Token`): claim, fetch, task JWKS. */
export function workerRoutes(app: FastifyInstance, ctx: DispatcherContext): void {
  const { deps } = ctx;
  app.addHook('onRequest', async (req) => {
    if (req.url.startsWith('/internal/')) checkWorkerToken(deps.workerToken, header(req, 'x-trace-worker-token'));
  });

  app.post('/internal/task-claim', async (req) => {
    const body = parseInput(claimBody, req.body);
    const r = await ctx.claim(body.task_id, body.worker_id);
    if (r.status === 'NotClaimed') return { status: 'NotClaimed', reason: r.reason };
    req.log.info({ task_id: body.task_id, attempt: r.claimed.attempt, job: r.claimed.task.job.name, worker_id: body.worker_id }, 'task claimed');
    return { status: 'Claimed', ...r.claimed };
  });

  app.get('/internal/task-fetch', async (req) => {
    const { task_id } = parseInput(z.strictObject({ task_id: uuid }), req.query, 'query string');
    const r = await deps.state.query<TaskCore & { job_id: string; status: string }>(FETCH_TASK, [task_id]);
    const t = r.rows[0];
    if (!t) throw notFound('task not found', 'TASK_NOT_FOUND');
    const job = await ctx.jobs.require(t.job_id);
    return { task_id: t.id, status: t.status, attempt: t.attempt, task: taskPayload(t, job) };
  });

  // Fenced release (worker token + the lease's fencing triple): give the lease back without
  // finishing the attempt and without using up max_attempts (shutdown, unreachable dependency).
  app.post('/internal/task-release', async (req) => {
    const body = parseInput(releaseBody, req.body);
    const r = await deps.state.tx((q) => releaseTask(q, body, {
      reason: body.reason,
      ...(body.dependency ? { dependency: body.dependency } : {}),
      ...(body.error_message ? { error_message: body.error_message } : {}),
    }, (id) => ctx.jobs.require(id), ctx.releasePolicy()));
    if (r.woke) ctx.kickOutbox();
    if (r.applied) req.log.info({ task_id: body.task_id, attempt: body.attempt, reason: body.reason, dependency: body.dependency, status: r.status }, 'lease released');
    return { ok: true, status: r.status, ...(r.retry_at ? { retry_at: r.retry_at.toISOString() } : {}) };
  });

  app.get('/internal/jwks/task', async () => deps.issuer.jwks());
}
