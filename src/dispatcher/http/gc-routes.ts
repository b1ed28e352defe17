import type { FastifyInstance } from 'fastify';
import { z } from 'zod';
import { parseInput } from '../../core/http.js';
import type { DispatcherContext } from '../service.js';
import { requireAdmin } from '../identity.js';
import { runGc } from '../gc.js';
import { userAuth } from './user-routes.js';

export const gcBody = z.strictObject({ dry_run: z.boolean().optional() });

/** `POST /v1/gc` (admin): one garbage collection pass now; `{dry_run: true}` lists what would go and changes nothing. */
export function gcRoutes(app: FastifyInstance, ctx: DispatcherContext): void {
  const auth = userAuth(ctx);
  app.post('/v1/gc', async (req) => {
    const p = await auth(req);
    requireAdmin(p);
    const body = parseInput(gcBody, req.body ?? {});
    const dryRun = body.dry_run ?? false;
    const r = await runGc(ctx.deps.state, ctx.deps.settings, ctx.gcCollectors, { dryRun, log: ctx.deps.log });
    req.log.info({ user: p.sub, dry_run: dryRun, rows: r.rows, objects: r.objects }, 'gc requested');
    return r;
  });
}
