/**
 * The web console the Gateway serves under `/console`: server-rendered pages, no client script.
 * The Gateway's front door admits `/console` paths (GET and POST) and hands them here instead of
 * proxying; see README.md for the pages, the session and the checks.
 */
import type { FastifyReply, FastifyRequest } from 'fastify';
import { TraceError } from '../../core/errors.js';
import type { Logger } from '../../core/log.js';
import type { UserIdentity, UserVerifier } from '../../auth/user.js';
import type { CanonicalTarget } from '../target.js';
import { ApiError, apiClient, schemas, type ApiClient } from './api.js';
import { SECURITY_HEADERS, STYLESHEET, STYLESHEET_ETAG, html, page, type Safe } from './html.js';
import * as pages from './pages.js';
import { MAX_SESSION_SECONDS, clearedCookie, csrfMatches, csrfToken, sameOrigin, sessionCookie, sessionToken } from './session.js';

export interface ConsoleOptions {
  dispatcherUrl: string;
  userVerifier: UserVerifier;
  /** Mark the session cookie `Secure` (TRACE_GATEWAY_CONSOLE_SECURE_COOKIES); on whenever the console is served over HTTPS. */
  secureCookies: boolean;
  /** Per Dispatcher call. */
  timeoutMs: number;
  /** The Gateway's rate limiter: one token per console request, as for an API request. */
  rateLimit?: (who: UserIdentity) => TraceError | undefined;
  log: Logger;
}

/** Largest form body the console reads. */
const MAX_FORM_BYTES = 16 * 1024;

type PageFn = (c: pages.PageContext, ...params: string[]) => Promise<pages.Rendered>;

/** GET pages by path shape; `:` marks a parameter. */
const PAGES: Array<[pattern: string[], fn: PageFn]> = [
  [[], pages.overview],
  [['dags'], pages.dagsPage],
  [['tasks'], pages.tasksPage],
  [['tasks', ':'], pages.taskPage],
  [['datasets'], pages.datasetsPage],
  [['datasets', ':'], pages.datasetPage],
  [['chain-sync'], pages.chainSyncPage],
  [['alerts'], pages.alertsPage],
  [['alerts', ':'], pages.alertPage],
  [['dead-letters'], pages.deadLettersPage],
];

function matchPage(segments: readonly string[]): { fn: PageFn; params: string[] } | undefined {
  for (const [pattern, fn] of PAGES) {
    if (pattern.length !== segments.length) continue;
    const params: string[] = [];
    if (pattern.every((p, i) => (p === ':' ? (params.push(segments[i]!), true) : p === segments[i]))) return { fn, params };
  }
  return undefined;
}

interface Session {
  token: string;
  from: 'header' | 'cookie';
  who: UserIdentity;
  api: ApiClient;
  csrf: string;
}

export interface Console {
  handle(req: FastifyRequest, reply: FastifyReply, target: CanonicalTarget, requestId: string): Promise<FastifyReply>;
}

export function createConsole(opts: ConsoleOptions): Console {
  const { log } = opts;

  const send = (reply: FastifyReply, status: number, body: string) =>
    reply.code(status).headers(SECURITY_HEADERS).type('text/html; charset=utf-8').send(body);

  const toLogin = (reply: FastifyReply, clear: boolean) => {
    if (clear) void reply.header('set-cookie', clearedCookie(opts.secureCookies));
    return reply.code(303).headers(SECURITY_HEADERS).header('location', '/console/login').send();
  };

  const errorPage = (reply: FastifyReply, status: number, title: string, message: Safe, s?: Session) =>
    send(reply, status, page({ title, section: '', ...(s ? { user: { sub: s.who.sub, csrf: s.csrf } } : {}) }, html`<h1>${title}</h1>${message}`));

  const loginPage = (reply: FastifyReply, status: number, error?: string) =>
    send(reply, status, page({ title: 'Sign in', section: 'login' }, html`<h1>Sign in</h1>
${error ? html`<p class="notice err">${error}</p>` : ''}
<form method="post" action="/console/login">
<p><label for="token">User token</label><br><input id="token" name="token" type="password" autocomplete="off" required></p>
<p class="muted">A token from <code>trace token dev-user</code> in development, or a bearer token from your identity provider.</p>
<p><button type="submit">Sign in</button></p>
</form>`));

  async function session(req: FastifyRequest, requestId: string): Promise<Session | undefined> {
    const t = sessionToken(req);
    if (!t) return undefined;
    let who: UserIdentity;
    try {
      who = await opts.userVerifier.verify(`Bearer ${t.token}`);
    } catch (e) {
      if (e instanceof TraceError && e.status === 401) return undefined;
      throw e;
    }
    return { ...t, who, csrf: csrfToken(t.token), api: apiClient({ dispatcherUrl: opts.dispatcherUrl, timeoutMs: opts.timeoutMs, requestId }, t.token) };
  }

  async function readForm(req: FastifyRequest): Promise<URLSearchParams> {
    const type = String(req.headers['content-type'] ?? '').split(';')[0]!.trim().toLowerCase();
    if (type !== 'application/x-www-form-urlencoded') throw new TraceError(415, 'UNSUPPORTED_MEDIA_TYPE', 'forms must be application/x-www-form-urlencoded');
    const chunks: Buffer[] = [];
    let size = 0;
    for await (const chunk of req.raw as AsyncIterable<Buffer>) {
      size += chunk.length;
      if (size > MAX_FORM_BYTES) throw new TraceError(413, 'PAYLOAD_TOO_LARGE', `form is larger than ${MAX_FORM_BYTES} bytes`);
      chunks.push(chunk);
    }
    return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
  }

  async function login(req: FastifyRequest, reply: FastifyReply, requestId: string): Promise<FastifyReply> {
    if (!sameOrigin(req)) return errorPage(reply, 403, 'Refused', html`<p>Sign-in forms are accepted from this site only.</p>`);
    const form = await readForm(req);
    const token = (form.get('token') ?? '').trim();
    if (!/^[A-Za-z0-9_.-]{1,8192}$/.test(token)) return loginPage(reply, 401, 'That is not a token.');
    let who: UserIdentity;
    try {
      who = await opts.userVerifier.verify(`Bearer ${token}`);
    } catch (e) {
      if (e instanceof TraceError && e.status === 401) return loginPage(reply, 401, 'The token was not accepted (invalid or expired).');
      throw e;
    }
    // Membership and roles come from the Dispatcher, as for any API call.
    try {
      await apiClient({ dispatcherUrl: opts.dispatcherUrl, timeoutMs: opts.timeoutMs, requestId }, token).get('/v1/dags', schemas.any);
    } catch (e) {
      if (e instanceof ApiError && (e.status === 401 || e.status === 403)) return loginPage(reply, 403, `Signed in as ${who.sub}, but the API refused: ${e.message}`);
      throw e;
    }
    const exp = typeof who.claims.exp === 'number' ? who.claims.exp - Math.floor(Date.now() / 1000) : MAX_SESSION_SECONDS;
    log.info({ request_id: requestId, sub: who.sub }, 'console sign-in');
    return reply.code(303).headers(SECURITY_HEADERS)
      .header('set-cookie', sessionCookie(token, Math.min(exp, MAX_SESSION_SECONDS), opts.secureCookies))
      .header('location', '/console').send();
  }

  async function replay(req: FastifyRequest, reply: FastifyReply, s: Session, id: string, requestId: string): Promise<FastifyReply> {
    const form = await readForm(req);
    if (!sameOrigin(req) || !csrfMatches(s.token, form.get('csrf') ?? undefined)) {
      log.info({ request_id: requestId, sub: s.who.sub, dead_letter_id: id }, 'console refused a replay without a valid CSRF token');
      return errorPage(reply, 403, 'Refused', html`<p>This form is not from your current console session. Reload the page and try again.</p>`, s);
    }
    await s.api.post(`/v1/sink/dead-letters/${id}/replay`, schemas.replay, {});
    log.info({ request_id: requestId, sub: s.who.sub, dead_letter_id: id }, 'console replayed a dead letter');
    return reply.code(303).headers(SECURITY_HEADERS).header('location', `/console/dead-letters?replayed=${encodeURIComponent(id)}`).send();
  }

  async function handle(req: FastifyRequest, reply: FastifyReply, target: CanonicalTarget, requestId: string): Promise<FastifyReply> {
    const segs = target.segments.slice(1);
    const method = req.method;
    const route = segs.join('/');
    if (route === 'static/console.css' && method === 'GET') {
      return reply.code(200).headers({ ...SECURITY_HEADERS, 'cache-control': 'public, max-age=3600', etag: STYLESHEET_ETAG }).type('text/css; charset=utf-8').send(STYLESHEET);
    }
    if (route === 'login') {
      if (method === 'GET') return loginPage(reply, 200);
      if (method === 'POST') return login(req, reply, requestId);
    }
    if (route === 'logout' && method === 'POST') {
      const t = sessionToken(req);
      const form = await readForm(req);
      if (t && (!sameOrigin(req) || !csrfMatches(t.token, form.get('csrf') ?? undefined))) return errorPage(reply, 403, 'Refused', html`<p>This form is not from your current console session.</p>`);
      return toLogin(reply, true);
    }
    let s: Session | undefined;
    try {
      s = await session(req, requestId);
      if (!s) return toLogin(reply, sessionToken(req)?.from === 'cookie');
      const limited = opts.rateLimit?.(s.who);
      if (limited) {
        void reply.header('retry-after', String(limited.extra?.retry_after_seconds ?? 60));
        return errorPage(reply, 429, 'Slow down', html`<p>${limited.message}</p>`, s);
      }
      const isReplay = segs.length === 3 && segs[0] === 'dead-letters' && segs[2] === 'replay';
      if (isReplay) {
        if (method !== 'POST') return errorPage(reply.header('allow', 'POST'), 405, 'Method not allowed', html`<p>Replay is a form post.</p>`, s);
        return await replay(req, reply, s, segs[1]!, requestId);
      }
      const p = matchPage(segs);
      if (!p) return errorPage(reply, 404, 'Not found', html`<p>There is no console page here. <a href="/console">Overview</a></p>`, s);
      if (method !== 'GET') return errorPage(reply.header('allow', 'GET'), 405, 'Method not allowed', html`<p>Pages are read with GET.</p>`, s);
      const r = await p.fn({ api: s.api, query: new URLSearchParams(target.query), csrf: s.csrf }, ...p.params);
      return send(reply, 200, page({ title: r.title, section: r.section, user: { sub: s.who.sub, csrf: s.csrf } }, r.body));
    } catch (e) {
      if (e instanceof ApiError) {
        if (e.status === 401) return toLogin(reply, s?.from === 'cookie');
        const title = e.status === 404 ? 'Not found' : e.status === 403 ? 'Not available to you' : 'Error';
        return errorPage(reply, e.status, title, html`<p>${e.message} <code>${e.code}</code></p>`, s);
      }
      if (e instanceof TraceError) {
        if (e.status >= 500) log.warn({ request_id: requestId, status: e.status, code: e.code }, 'console page failed');
        return errorPage(reply, e.status, 'Error', html`<p>${e.message} <code>${e.code}</code></p>`, s);
      }
      throw e;
    }
  }

  return { handle };
}
