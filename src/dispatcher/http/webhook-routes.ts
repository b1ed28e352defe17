import type { FastifyInstance } from 'fastify';
import { z } from 'zod';
import { TraceError, badRequest } from '../../core/errors.js';
import { header, parseInput } from '../../core/http.js';
import { WEBHOOK_PATH_RE } from '../../dag/schema.js';
import type { DispatcherContext } from '../service.js';
import { requireAdmin } from '../identity.js';
import {
  WEBHOOK_ID_HEADER, WEBHOOK_SIGNATURE_HEADER, WEBHOOK_TIMESTAMP_HEADER, WebhookRateLimiter,
  ingestWebhook, listWebhookSources, rotateWebhookSecret,
} from '../webhooks.js';
import { dagNameParam, jobNameParam } from './schemas.js';
import { userAuth } from './user-routes.js';

/**
 * Webhook sources: the signed ingress `POST /v1/webhooks/{webhook_path}` (no user token: the
 * HMAC signature authenticates it) and the admin routes that read and rotate the secrets.
 */
export function webhookRoutes(app: FastifyInstance, ctx: DispatcherContext): void {
  const { deps } = ctx;
  const auth = userAuth(ctx);
  const s = deps.settings;
  const limiter = new WebhookRateLimiter(s.webhookRatePerMinute);

  // Any content type, read raw (the signature covers the exact bytes), capped.
  void app.register(async (scope) => {
    scope.removeAllContentTypeParsers();
    scope.addContentTypeParser('*', { parseAs: 'buffer', bodyLimit: s.webhookMaxBodyBytes }, (_req, body, done) => done(null, body));
    scope.post('/v1/webhooks/*', { bodyLimit: s.webhookMaxBodyBytes }, async (req, reply) => {
      const path = (req.params as { '*': string })['*'];
      if (!WEBHOOK_PATH_RE.test(path) || path.length > 128) throw badRequest('not a webhook path', 'WEBHOOK_PATH_INVALID');
      // Before any database work, so a flood of deliveries (signed or not) costs nothing.
      const rate = limiter.take(path);
      if (!rate.ok) {
        void reply.header('retry-after', String(rate.retryAfterSeconds));
        throw new TraceError(429, 'RATE_LIMITED', `webhook rate limit exceeded; retry after ${rate.retryAfterSeconds} s`, { extra: { scope: 'webhook', retry_after_seconds: rate.retryAfterSeconds } });
      }
      const body = Buffer.isBuffer(req.body) ? req.body : Buffer.alloc(0);
      try {
        const r = await ingestWebhook(deps.state, deps.orgId, {
          path,
          headers: {
            id: header(req, WEBHOOK_ID_HEADER), timestamp: header(req, WEBHOOK_TIMESTAMP_HEADER),
            signature: header(req, WEBHOOK_SIGNATURE_HEADER), contentType: header(req, 'content-type'),
          },
          body,
        }, { toleranceSeconds: s.webhookToleranceSeconds, maxBodyBytes: s.webhookMaxBodyBytes });
        ctx.kickOutbox();
        req.log.info({ webhook_path: path, dag: r.dag, job: r.job, event_id: r.event_id, task_id: r.task_id, bytes: body.length }, 'webhook accepted');
        return reply.status(202).send({ task_id: r.task_id, event_id: r.event_id });
      } catch (e) {
        if (e instanceof TraceError) req.log.info({ webhook_path: path, status: e.status, code: e.code }, 'webhook refused');
        throw e;
      }
    });
  });

  app.get('/v1/dags/:dag/webhooks', async (req) => {
    const p = await auth(req);
    requireAdmin(p);
    const { dag } = parseInput(z.strictObject({ dag: dagNameParam }), req.params, 'route');
    return { dag_name: dag, webhooks: await listWebhookSources(deps.state, p.org_id, dag) };
  });

  app.post('/v1/dags/:dag/webhooks/:job/rotate', async (req) => {
    const p = await auth(req);
    requireAdmin(p);
    const { dag, job } = parseInput(z.strictObject({ dag: dagNameParam, job: jobNameParam }), req.params, 'route');
    const r = await rotateWebhookSecret(deps.state, p.org_id, dag, job);
    req.log.info({ org_id: p.org_id, dag, job, by: p.sub }, 'webhook secret rotated');
    return { dag_name: dag, ...r };
  });
}
