import type { FastifyInstance } from 'fastify';
import { z } from 'zod';
import { TraceError, badRequest, notFound, unprocessable } from '../../core/errors.js';
import { estimateTriggerTasks } from '../trigger-estimate.js';
import { newId } from '../../core/ids.js';
import { parseInput } from '../../core/http.js';
import type { DispatcherContext } from '../service.js';
import { requireAdmin } from '../identity.js';
import { activeJobByName } from '../jobs.js';
import { createTasks } from '../tasks/create.js';
import { cancelTasks } from '../tasks/cancel.js';
import { listTasks, getTask } from '../task-status.js';
import { dagNameParam, jobNameParam, triggerBody, uuid } from './schemas.js';
import { userAuth } from './user-routes.js';

/** Admin routes beside the user routes: manual trigger and task status. Require the admin role. */
/** `GET /v1/tasks` filters. */
export const tasksQuery = z.strictObject({
  // chain sync tasks live under the hidden DAG `chain_sync:<name>`
  dag: z.string().regex(/^(chain_sync:)?[a-z][a-z0-9_]{0,63}$/, 'must be a DAG name or chain_sync:<name>').optional(),
  job: jobNameParam.optional(),
  status: z.enum(['Queued', 'Running', 'Completed', 'Failed', 'Canceled']).optional(),
  limit: z.coerce.number().int().min(1).max(1000).default(100),
});

export function adminRoutes(app: FastifyInstance, ctx: DispatcherContext): void {
  const { deps } = ctx;
  const auth = userAuth(ctx);

  app.post('/v1/dags/:dag/jobs/:job/trigger', async (req, reply) => {
    const p = await auth(req);
    requireAdmin(p);
    const { dag, job } = parseInput(z.strictObject({ dag: dagNameParam, job: jobNameParam }), req.params, 'route');
    const body = parseInput(triggerBody, req.body ?? {});
    const j = await activeJobByName(deps.state, p.org_id, dag, job);
    if (!j) throw notFound(`the active version of DAG ${dag} has no job ${job}`, 'JOB_NOT_FOUND');
    const trigger: Record<string, unknown> = { kind: 'manual', by: p.sub };
    if ('cursor' in body) trigger.cursor = body.cursor;
    if ('start' in body) Object.assign(trigger, { start: body.start, end: body.end, partition_key: `${body.start}-${body.end}` });
    const hasCursor = 'cursor' in body || 'start' in body;
    if (j.activation === 'reactive' && !hasCursor) {
      throw unprocessable('a reactive job needs --cursor or --range to trigger', [{ path: 'cursor', message: 'required for a reactive job' }]);
    }
    if (j.activation === 'source' && !hasCursor && deps.catalog.get(j.operator)?.triggerNeedsCursor?.(j.config ?? {})) {
      throw badRequest(`cursor is required: ${j.operator} would otherwise use the current Unix time as the cursor; give cursor (or start and end)`, 'CURSOR_REQUIRED',
        [{ path: 'cursor', message: `required to trigger ${dag}.${job} (operator ${j.operator})` }]);
    }
    // What the trigger sets off, before anything is created.
    const limit = deps.settings.triggerConfirmAbove;
    const flow = 'cursor' in body
      ? { events: 1, ...(typeof body.cursor === 'number' ? { cursor: body.cursor } : {}) }
      : 'start' in body ? { events: 1, span: body.end - body.start } : { events: 1 };
    const estimated = await estimateTriggerTasks(deps.state, deps.catalog, j, flow, 1_000_000_000);
    if (estimated > limit && body.confirm !== true) {
      throw new TraceError(422, 'TRIGGER_NEEDS_CONFIRMATION',
        `this trigger would set off about ${estimated} tasks, more than the limit of ${limit}; check the cursor or range, and send confirm: true to go ahead`,
        { extra: { estimated_tasks: estimated, limit } });
    }
    // A manual trigger of a reactive job acts as an upstream event on its first input.
    const inputs: unknown[] = [];
    if (j.activation === 'reactive') {
      const first = j.inputs[0]!;
      const cur = await deps.state.query<{ current_version: string | null }>(`SELECT current_version FROM datasets WHERE id = $1`, [first.dataset_uuid]);
      const ev: Record<string, unknown> = { dataset_uuid: first.dataset_uuid, dataset_version: cur.rows[0]?.current_version };
      if ('cursor' in body) ev.cursor = body.cursor;
      else if ('start' in body) Object.assign(ev, { partition_key: `${body.start}-${body.end}`, start: body.start, end: body.end });
      if (first.where) ev.where = first.where;
      inputs.push(ev);
    }
    const key = `manual:${body.idempotency_key ?? newId()}`;
    const created = await deps.state.tx((q) => createTasks(q, [{ job_id: j.id, dedupe_key: key, inputs, trigger }]));
    ctx.kickOutbox();
    let taskId = created[0]?.id;
    if (!taskId) {
      const r = await deps.state.query<{ id: string }>(`SELECT id FROM tasks WHERE job_id = $1 AND dedupe_key = $2`, [j.id, key]);
      taskId = r.rows[0]!.id;
    }
    req.log.info({ org_id: p.org_id, dag, job, task_id: taskId, estimated_tasks: estimated }, 'manual trigger');
    return reply.status(created.length > 0 ? 201 : 200).send({ task_id: taskId, created: created.length > 0, estimated_tasks: estimated });
  });

  app.get('/v1/tasks', async (req) => {
    const p = await auth(req);
    requireAdmin(p);
    const f = parseInput(tasksQuery, req.query, 'query string');
    return { tasks: await listTasks(deps.state, p.org_id, f) };
  });

  app.get('/v1/tasks/:id', async (req) => {
    const p = await auth(req);
    requireAdmin(p);
    const { id } = parseInput(z.strictObject({ id: uuid }), req.params, 'route');
    const t = await getTask(deps.state, p.org_id, id);
    if (!t) throw notFound('task not found', 'TASK_NOT_FOUND');
    return t;
  });

  app.post('/v1/tasks/:id/cancel', async (req) => {
    const p = await auth(req);
    requireAdmin(p);
    const { id } = parseInput(z.strictObject({ id: uuid }), req.params, 'route');
    const t = await getTask(deps.state, p.org_id, id);
    if (!t) throw notFound('task not found', 'TASK_NOT_FOUND');
    const canceled = await deps.state.tx((q) => cancelTasks(q, [id], `canceled by ${p.sub}`));
    return { task_id: id, canceled: canceled.length > 0 };
  });
}
