import type { FastifyInstance } from 'fastify';
import { z } from 'zod';
import { parseInput } from '../../core/http.js';
import type { DispatcherContext } from '../service.js';
import { exportFile, exportPlan } from '../export.js';
import { datasetNameParam, uuid } from './schemas.js';
import { userAuth } from './user-routes.js';

/** A file name of an export plan: one path segment, no leading dot. */
const exportFileParam = z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$/, 'must be a file name of the export plan');

/**
 * User routes (read authorization as for querying the dataset):
 * `GET /v1/datasets/{name}/export` the current version's export plan (export.ts), and
 * `GET /v1/datasets/{name}/export/files/{file}?version=V` one file of version V's plan, streamed.
 */
export const exportQuery = z.strictObject({ version: uuid.optional() });
export const exportFileQuery = z.strictObject({ version: uuid });

export function exportRoutes(app: FastifyInstance, ctx: DispatcherContext): void {
  const auth = userAuth(ctx);
  const store = () => ctx.deps.datasetStorage?.store;

  app.get('/v1/datasets/:name/export', async (req) => {
    const p = await auth(req);
    const { name } = parseInput(z.strictObject({ name: datasetNameParam }), req.params, 'route');
    const { version } = parseInput(exportQuery, req.query, 'query string');
    return exportPlan(ctx.deps.state, store(), p, name, version);
  });

  app.get('/v1/datasets/:name/export/files/:file', async (req, reply) => {
    const p = await auth(req);
    const { name, file } = parseInput(z.strictObject({ name: datasetNameParam, file: exportFileParam }), req.params, 'route');
    const { version } = parseInput(exportFileQuery, req.query, 'query string');
    const f = await exportFile(ctx.deps.state, store(), p, name, version, file);
    req.log.info({ org_id: p.org_id, dataset: name, version, file, bytes: f.bytes }, 'export file served');
    return reply
      .header('content-type', 'application/vnd.apache.parquet')
      .header('content-length', String(f.bytes))
      .header('content-disposition', `attachment; filename="${file}"`)
      .send(f.stream);
  });
}
