/**
 * The alerting user API on the Dispatcher (user_api_contracts.md "Alerts"), Bearer, org scoped:
 * `POST|GET /v1/alerts`, `GET|PUT|DELETE /v1/alerts/{id}`, `GET /v1/alerts/{id}/deliveries`.
 * Identity (org, user, roles) comes from Postgres state through the Dispatcher's `authenticate`;
 * the definitions, events and deliveries live in Postgres data.
 */
import type { FastifyInstance } from 'fastify';
import { z } from 'zod';
import type { Db } from '../db/db.js';
import { forbidden, notFound } from '../core/errors.js';
import { parseInput } from '../core/http.js';
import type { DispatcherPlugin } from '../dispatcher/dispatcher.js';
import type { DispatcherContext } from '../dispatcher/service.js';
import { userAuth } from '../dispatcher/http/user-routes.js';
import { uuid } from '../dispatcher/http/schemas.js';
import { allowHttpLoopbackFromEnv } from '../delivery/net/index.js';
import { definitionBodySchema, normalizeDefinition } from './schemas.js';
import {
  canModify, canView, createDefinition, definitionView, deleteDefinition, getDefinition, listDefinitions, listDeliveries, updateDefinition,
  type Viewer,
} from './definitions.js';

export interface AlertingPluginOptions {
  /** Postgres data. */
  data: Db;
  /** Development switch: allow http:// loopback channel URLs (default: TRACE_DELIVERY_ALLOW_HTTP_LOOPBACK). */
  allowHttpLoopback?: boolean;
}

export function alertingPlugin(opts: AlertingPluginOptions): DispatcherPlugin {
  return { name: 'alerting', routes: (app, ctx) => alertRoutes(app, ctx, opts) };
}

/** `GET /v1/alerts/{id}/deliveries` filters. */
export const deliveriesQuery = z.strictObject({
  status: z.enum(['Pending', 'Delivered', 'Failed', 'Canceled']).optional(),
  limit: z.coerce.number().int().min(1).max(1000).optional(),
});
const idParams = z.strictObject({ id: uuid });

export function alertRoutes(app: FastifyInstance, ctx: DispatcherContext, opts: AlertingPluginOptions): void {
  const auth = userAuth(ctx);
  const { data } = opts;
  const loopback = opts.allowHttpLoopback ?? allowHttpLoopbackFromEnv();
  const viewer = async (req: Parameters<typeof auth>[0]): Promise<Viewer> => {
    const p = await auth(req);
    return { org_id: p.org_id, user_id: p.user_id, roles: p.roles };
  };
  const visible = async (v: Viewer, id: string) => {
    const d = await getDefinition(data, v.org_id, id);
    if (!d || !canView(v, d)) throw notFound('no such alert definition', 'ALERT_NOT_FOUND');
    return d;
  };

  app.post('/v1/alerts', async (req, reply) => {
    const v = await viewer(req);
    const body = normalizeDefinition(parseInput(definitionBodySchema, req.body), { allowHttpLoopback: loopback });
    const d = await createDefinition(data, v, body);
    req.log.info({ org_id: v.org_id, alert_definition_id: d.id, channels: d.channels.length }, 'alert definition created');
    return reply.status(201).send(definitionView(d));
  });

  app.get('/v1/alerts', async (req) => {
    const v = await viewer(req);
    return { alerts: (await listDefinitions(data, v)).map(definitionView) };
  });

  app.get('/v1/alerts/:id', async (req) => {
    const v = await viewer(req);
    const { id } = parseInput(idParams, req.params, 'route');
    return definitionView(await visible(v, id));
  });

  app.put('/v1/alerts/:id', async (req) => {
    const v = await viewer(req);
    const { id } = parseInput(idParams, req.params, 'route');
    const d = await visible(v, id);
    if (!canModify(v, d)) throw forbidden('only its creator or an admin may change this alert definition', 'ALERT_FORBIDDEN');
    const body = normalizeDefinition(parseInput(definitionBodySchema, req.body), { allowHttpLoopback: loopback });
    const u = await updateDefinition(data, v.org_id, id, body);
    if (!u) throw notFound('no such alert definition', 'ALERT_NOT_FOUND');
    req.log.info({ org_id: v.org_id, alert_definition_id: id }, 'alert definition updated');
    return definitionView(u);
  });

  app.delete('/v1/alerts/:id', async (req) => {
    const v = await viewer(req);
    const { id } = parseInput(idParams, req.params, 'route');
    const d = await visible(v, id);
    if (!canModify(v, d)) throw forbidden('only its creator or an admin may delete this alert definition', 'ALERT_FORBIDDEN');
    const r = await deleteDefinition(data, v.org_id, id);
    if (!r.deleted) throw notFound('no such alert definition', 'ALERT_NOT_FOUND');
    req.log.info({ org_id: v.org_id, alert_definition_id: id, canceled_deliveries: r.canceled_deliveries }, 'alert definition deleted');
    return { id, deleted: true, canceled_deliveries: r.canceled_deliveries };
  });

  app.get('/v1/alerts/:id/deliveries', async (req) => {
    const v = await viewer(req);
    const { id } = parseInput(idParams, req.params, 'route');
    const q = parseInput(deliveriesQuery, req.query, 'query string');
    await visible(v, id);
    return { alert_id: id, deliveries: await listDeliveries(data, v.org_id, id, { ...(q.status ? { status: q.status } : {}), ...(q.limit ? { limit: q.limit } : {}) }) };
  });
}
