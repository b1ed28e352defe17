/**
 * Console sessions. The session is the user token itself, kept in an HttpOnly, SameSite=Strict
 * cookie scoped to `/console` (plus `Secure` when configured); a request may instead carry the
 * token as `Authorization: Bearer` (an OIDC proxy in front of the console, say). Nothing about
 * the session is stored server-side, so any Gateway instance serves any session.
 *
 * CSRF: every form carries a token derived from the session token (SHA-256 under a fixed label).
 * A page on another site can neither read the cookie nor compute the token, and with
 * SameSite=Strict it does not even get the cookie sent; POSTs must also come from this origin
 * (`Sec-Fetch-Site` / `Origin`, when the browser sends them).
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import type { FastifyRequest } from 'fastify';

export const SESSION_COOKIE = 'trace_console';
/** Longest session when the token carries no `exp`. */
export const MAX_SESSION_SECONDS = 12 * 3600;

export function cookieValue(req: FastifyRequest, name: string): string | undefined {
  const raw = req.headers.cookie;
  if (typeof raw !== 'string') return undefined;
  for (const part of raw.split(';')) {
    const i = part.indexOf('=');
    if (i < 0) continue;
    if (part.slice(0, i).trim() === name) return part.slice(i + 1).trim();
  }
  return undefined;
}

/** The user token of this request: the Bearer header, else the session cookie. */
export function sessionToken(req: FastifyRequest): { token: string; from: 'header' | 'cookie' } | undefined {
  const authz = req.headers.authorization;
  const m = typeof authz === 'string' ? /^Bearer +([^\s]+) *$/i.exec(authz) : null;
  if (m) return { token: m[1]!, from: 'header' };
  const c = cookieValue(req, SESSION_COOKIE);
  // JWTs are base64url segments joined by dots; anything else is not a session.
  if (c && /^[A-Za-z0-9_.-]{1,8192}$/.test(c)) return { token: c, from: 'cookie' };
  return undefined;
}

export function csrfToken(sessionTokenValue: string): string {
  return createHash('sha256').update('trace-console-csrf\u0000').update(sessionTokenValue).digest('base64url');
}

export function csrfMatches(sessionTokenValue: string, sent: string | undefined): boolean {
  if (typeof sent !== 'string') return false;
  const want = Buffer.from(csrfToken(sessionTokenValue));
  const got = Buffer.from(sent);
  return want.length === got.length && timingSafeEqual(want, got);
}

/** Did a browser send this POST from a page of this origin? Requests without either header (non-browser clients) pass. */
export function sameOrigin(req: FastifyRequest): boolean {
  const site = req.headers['sec-fetch-site'];
  if (typeof site === 'string' && site !== 'same-origin' && site !== 'none') return false;
  const origin = req.headers.origin;
  if (typeof origin !== 'string') return true;
  try {
    return new URL(origin).host === req.headers.host;
  } catch {
    return false; // `Origin: null` and other opaque origins
  }
}

export function sessionCookie(token: string, maxAgeSeconds: number, secure: boolean): string {
  return `${SESSION_COOKIE}=${token}; Path=/console; Max-Age=${Math.max(0, Math.floor(maxAgeSeconds))}; HttpOnly; SameSite=Strict${secure ? '; Secure' : ''}`;
}

export function clearedCookie(secure: boolean): string {
  return sessionCookie('', 0, secure);
}
