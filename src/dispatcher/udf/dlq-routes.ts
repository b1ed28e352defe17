import type { FastifyInstance } from 'fastify';
import { z } from 'zod';
import { notFound } from '../../core/errors.js';
import { parseInput } from '../../core/http.js';
import { BUFFER_QUEUE } from '../../queue/queue.js';
import type { DispatcherContext } from '../service.js';
import { userAuth } from '../http/user-routes.js';
import { requireAdmin } from '../identity.js';

/**
 * Buffer dead letters (operations.md "Buffer DLQ replay"), admin only, so `trace sink dlq` talks
 * HTTP like every admin command:
 * - `GET /v1/sink/dead-letters?limit=N`: pointer messages that exceeded the receive limit;
 * - `POST /v1/sink/dead-letters/{id}/replay`: puts one back on the buffer queue with a fresh
 *   receive count (the pointer is republished, never raw records).
 */
export function dlqRoutes(app: FastifyInstance, ctx: DispatcherContext): void {
  const auth = userAuth(ctx);
  app.get('/v1/sink/dead-letters', async (req) => {
    requireAdmin(await auth(req));
    const { limit } = parseInput(z.strictObject({ limit: z.coerce.number().int().min(1).max(1000).optional() }), req.query, 'query string');
    const list = await ctx.deps.queue.listDeadLetters<Record<string, unknown>>(BUFFER_QUEUE, limit ?? 100);
    return {
      queue: BUFFER_QUEUE,
      dead_letters: list.map((d) => ({ id: d.id, receive_count: d.receiveCount, dead_at: d.deadAt.toISOString(), last_error: d.lastError, message: d.body })),
    };
  });

  app.post('/v1/sink/dead-letters/:id/replay', async (req) => {
    const p = await auth(req);
    requireAdmin(p);
    const { id } = parseInput(z.strictObject({ id: z.string().regex(/^[A-Za-z0-9_-]{1,128}$/, 'must be a dead letter id') }), req.params, 'route');
    const ok = await ctx.deps.queue.replayDeadLetter(BUFFER_QUEUE, id);
    if (!ok) throw notFound('no such dead letter', 'DEAD_LETTER_NOT_FOUND');
    req.log.info({ org_id: p.org_id, dead_letter_id: id, user_id: p.user_id }, 'buffer dead letter replayed');
    return { ok: true, id, queue: BUFFER_QUEUE };
  });
}
