import type { FastifyInstance } from 'fastify';
import { z } from 'zod';
import { parseInput } from '../../core/http.js';
import type { DispatcherContext } from '../service.js';
import { userAuth } from '../http/user-routes.js';
import { uuid } from '../http/schemas.js';
import { SHA256_HEX_RE } from '../../udf/manifest.js';
import { bundleView, finalizeBundle, getBundle, openBundleUpload, type BundleSettings } from './bundles.js';
import { notFound } from '../../core/errors.js';

const entrypoint = z.string().min(1).max(512).refine(
  (p) => !p.startsWith('/') && !p.includes('\\') && p.split('/').every((s) => s !== '' && s !== '.' && s !== '..'),
  'must be a relative path inside the bundle',
);

/**
 * Opening an upload says what is coming: the runtime picks the runner at upload time (udf.md
 * "Runner selection"), so it is required; the entrypoint may come from the zip's manifest.
 * An empty declaration creates nothing.
 */
export const openBody = z.strictObject({
  name: z.string().min(1).max(200).optional(),
  runtime: z.enum(['node', 'python'], { error: (iss) => (iss.input === undefined ? 'is required (node or python)' : 'must be node or python') }),
  entrypoint: entrypoint.optional(),
});

export const finalizeBody = z.strictObject({
  sha256: z.string().regex(SHA256_HEX_RE, 'must be 64 lowercase hex characters').optional(),
}).default({});

/**
 * `POST /v1/udf/bundles` (open an upload: 201 `{bundle_id, status, upload: {url, method, headers,
 * expires_at, max_bytes}}`), `POST /v1/udf/bundles/{id}/finalize` (200 the bundle, or the refusal
 * with its reason), `GET /v1/udf/bundles/{id}`. Bearer; every bundle belongs to the caller's org.
 */
export function bundleRoutes(app: FastifyInstance, ctx: DispatcherContext, settings: BundleSettings): void {
  const auth = userAuth(ctx);
  const { state } = ctx.deps;

  app.post('/v1/udf/bundles', async (req, reply) => {
    const p = await auth(req);
    const body = parseInput(openBody, req.body ?? {});
    const r = await openBundleUpload(state, settings, {
      org_id: p.org_id,
      user_id: p.user_id,
      ...(body.name ? { name: body.name } : {}),
      runtime: body.runtime,
      ...(body.entrypoint ? { entrypoint: body.entrypoint } : {}),
    });
    req.log.info({ org_id: p.org_id, bundle_id: r.bundle.bundle_id }, 'udf bundle upload opened');
    return reply.status(201).send({ ...r.bundle, upload: r.upload });
  });

  app.post('/v1/udf/bundles/:id/finalize', async (req) => {
    const p = await auth(req);
    const { id } = parseInput(z.strictObject({ id: uuid }), req.params, 'route');
    const body = parseInput(finalizeBody, req.body ?? {});
    try {
      const v = await finalizeBundle(state, settings, p.org_id, id, body.sha256 ? { sha256: body.sha256 } : {});
      req.log.info({ org_id: p.org_id, bundle_id: id, sha256: v.sha256, runtime: v.runtime }, 'udf bundle finalized');
      return v;
    } catch (e) {
      req.log.info({ org_id: p.org_id, bundle_id: id, code: (e as { code?: unknown }).code }, 'udf bundle refused');
      throw e;
    }
  });

  app.get('/v1/udf/bundles/:id', async (req) => {
    const p = await auth(req);
    const { id } = parseInput(z.strictObject({ id: uuid }), req.params, 'route');
    const row = await getBundle(state, p.org_id, id);
    if (!row) throw notFound('no such bundle', 'BUNDLE_NOT_FOUND');
    return bundleView(row);
  });
}
