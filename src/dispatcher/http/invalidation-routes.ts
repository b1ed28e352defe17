/**
 * Invalidations of a dataset (invalidations.ts owns the table and the processing):
 * - `POST /v1/datasets/{name}/invalidations` (admin): `{scope: "partition", partition_key}` or
 *   `{scope: "row_range", start, end}` ([start, end), block numbers), with an optional `reason`;
 *   201 with the recorded invalidation. The Dispatcher's invalidation loop processes it.
 * - `GET /v1/datasets/{name}/invalidations?limit=` (read access as for the dataset): the history,
 *   newest first, each with its status, the jobs that re-ran, the re-run tasks and the cascades.
 */
import type { FastifyInstance } from 'fastify';
import { z } from 'zod';
import { notFound } from '../../core/errors.js';
import { parseInput } from '../../core/http.js';
import type { DispatcherContext } from '../service.js';
import { requireAdmin } from '../identity.js';
import { createInvalidation, datasetInvalidations } from '../invalidations.js';
import { datasetNameParam } from './schemas.js';
import { userAuth } from './user-routes.js';

const blockNumber = z.number().int('must be an integer').min(0).max(Number.MAX_SAFE_INTEGER);
const reason = z.string().min(1).max(500).optional();

export const invalidationBody = z.discriminatedUnion('scope', [
  z.strictObject({
    scope: z.literal('partition'),
    partition_key: z.string().min(1).max(200).regex(/^[^\0\r\n]+$/, 'must be one line'),
    reason,
  }),
  z.strictObject({ scope: z.literal('row_range'), start: blockNumber, end: blockNumber, reason })
    .refine((b) => b.end > b.start, { message: 'end must be greater than start (the range is [start, end))', path: ['end'] }),
]);

export const invalidationsQuery = z.strictObject({ limit: z.coerce.number().int().min(1).max(1000).default(50) });

export function invalidationRoutes(app: FastifyInstance, ctx: DispatcherContext): void {
  const { deps } = ctx;
  const auth = userAuth(ctx);

  app.post('/v1/datasets/:name/invalidations', async (req, reply) => {
    const p = await auth(req);
    requireAdmin(p);
    const { name } = parseInput(z.strictObject({ name: datasetNameParam }), req.params, 'route');
    const body = parseInput(invalidationBody, req.body);
    const inv = await deps.state.tx((q) => createInvalidation(q, p, name, body));
    req.log.info({ org_id: p.org_id, dataset: name, invalidation_id: inv.id, scope: inv.scope, by: p.sub }, 'invalidation recorded');
    return reply.status(201).send({ name, ...inv });
  });

  app.get('/v1/datasets/:name/invalidations', async (req) => {
    const p = await auth(req);
    const { name } = parseInput(z.strictObject({ name: datasetNameParam }), req.params, 'route');
    const { limit } = parseInput(invalidationsQuery, req.query ?? {}, 'query string');
    const h = await datasetInvalidations(deps.state, p, name, limit);
    if (!h) throw notFound(`no dataset named ${name}`, 'DATASET_NOT_FOUND');
    return { name, ...h };
  });
}
