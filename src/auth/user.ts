/**
 * User JWT verification for `Authorization: Bearer <jwt>` (security.md, "User JWT claim
 * contract"). Authentication only: the caller maps `sub` to `users.external_id` and resolves
 * roles from Postgres state.
 *
 * Two modes:
 * - dev: HS256 with `TRACE_USER_JWT_SECRET`, `iss: "trace-dev"`, `aud: "trace.user"`,
 *   `kid: "trace-dev-user"` (tokens from mintDevUserToken / `trace token dev-user`);
 * - oidc: RS256 or ES256 keys from `TRACE_OIDC_JWKS_URL`, with `TRACE_OIDC_ISSUER` and
 *   `TRACE_OIDC_AUDIENCE`.
 * A task capability token (header `typ: trace-task+jwt`, or `aud` containing `trace.task`) is
 * never accepted as a user token.
 */
import { createRemoteJWKSet, createLocalJWKSet, jwtVerify, SignJWT, type JSONWebKeySet, type JWTPayload, type KeyInput } from 'jose';
import type { TraceEnv } from '../core/config.js';
import { TraceError } from '../core/errors.js';
import {
  CAPABILITY_AUDIENCE,
  CAPABILITY_TYP,
  checkCommonHeader,
  checkCompactShape,
  checkTimes,
  classifyJoseError,
  classifyKeyLookupError,
  KeySourceUnavailable,
  normalizeTyp,
  readHeader,
  Rejection,
  resolveClockTolerance,
  secretBytes,
  systemClock,
  type Clock,
} from './jwt-common.js';

export const DEV_USER_ISSUER = 'trace-dev';
export const DEV_USER_AUDIENCE = 'trace.user';
export const DEV_USER_KID = 'trace-dev-user';
/** Default lifetime of a dev user token: 24 h. */
export const DEV_USER_TOKEN_TTL_SECONDS = 24 * 3600;

export type OidcAlg = 'RS256' | 'ES256';

export interface UserIdentity {
  /** Maps to `users.external_id`. */
  sub: string;
  iss: string;
  /** Non-authoritative; present only when the token carries a string email. */
  email?: string;
  claims: JWTPayload;
}

export interface UserVerifier {
  /** Throws TraceError 401 `UNAUTHORIZED` (503 `USER_JWKS_UNAVAILABLE` when the IdP JWKS cannot be read). */
  verify(authorizationHeader: string | undefined | null): Promise<UserIdentity>;
}

interface Tuning {
  /** Allowed skew on exp/iat/nbf, 0..60 s; default 60. */
  clockToleranceSeconds?: number;
  /** Milliseconds since the epoch; for tests. */
  clock?: Clock;
}

export interface DevUserVerifierConfig extends Tuning {
  mode: 'dev';
  secret: string | Uint8Array;
}

export interface OidcUserVerifierConfig extends Tuning {
  mode: 'oidc';
  issuer: string;
  audience: string;
  /** The IdP's JWKS URL (cached; an unknown kid causes at most one refetch per cooldown). */
  jwksUrl?: string | URL;
  /** A fixed JWKS instead of a URL. */
  jwks?: JSONWebKeySet;
  /** Allowed algorithms, a subset of RS256 and ES256; default both. */
  algorithms?: OidcAlg[];
  cooldownSeconds?: number;
  cacheMaxAgeSeconds?: number;
  timeoutMs?: number;
}

export type UserVerifierConfig = DevUserVerifierConfig | OidcUserVerifierConfig;

const BEARER_RE = /^Bearer +([^\s]+) *$/i;

function userError(e: unknown): TraceError {
  if (e instanceof TraceError) return e;
  const c = classifyJoseError(e);
  if (c instanceof KeySourceUnavailable) return new TraceError(503, 'USER_JWKS_UNAVAILABLE', 'identity provider keys are unavailable');
  return new TraceError(401, 'UNAUTHORIZED', `invalid bearer token: ${c.reason}`);
}

type Resolve = (alg: string, kid: string) => Promise<KeyInput>;

function devResolver(secret: string | Uint8Array): { resolve: Resolve; algorithms: string[] } {
  const key = secretBytes(secret, 'TRACE_USER_JWT_SECRET');
  return {
    algorithms: ['HS256'],
    resolve: async (alg, kid) => {
      if (kid !== DEV_USER_KID) throw new Rejection('unknown key id');
      if (alg !== 'HS256') throw new Rejection('algorithm not allowed');
      return key;
    },
  };
}

function oidcResolver(cfg: OidcUserVerifierConfig): { resolve: Resolve; algorithms: string[] } {
  const algorithms: string[] = cfg.algorithms ?? ['RS256', 'ES256'];
  if (algorithms.length === 0 || algorithms.some((a) => a !== 'RS256' && a !== 'ES256')) {
    throw new TypeError('OIDC algorithms must be RS256 and/or ES256');
  }
  let set: (header: { alg: string; kid: string }) => Promise<KeyInput>;
  if (cfg.jwks !== undefined) {
    set = createLocalJWKSet(cfg.jwks);
  } else if (cfg.jwksUrl !== undefined) {
    const url = new URL(String(cfg.jwksUrl));
    if (url.protocol !== 'https:' && url.protocol !== 'http:') throw new TypeError('TRACE_OIDC_JWKS_URL must be http(s)');
    const ms = (v: number | undefined, d: number) => {
      const s = v ?? d;
      if (!Number.isFinite(s) || s < 0) throw new TypeError('JWKS durations must be non-negative numbers');
      return Math.round(s * 1000);
    };
    set = createRemoteJWKSet(url, {
      cooldownDuration: ms(cfg.cooldownSeconds, 30),
      cacheMaxAge: ms(cfg.cacheMaxAgeSeconds, 600),
      timeoutDuration: Math.round(cfg.timeoutMs ?? 5000),
    });
  } else {
    throw new TypeError('OIDC mode needs jwksUrl or jwks');
  }
  return {
    algorithms,
    resolve: async (alg, kid) => {
      if (!algorithms.includes(alg)) throw new Rejection('algorithm not allowed');
      try {
        return await set({ alg, kid });
      } catch (e) {
        throw classifyKeyLookupError(e);
      }
    },
  };
}

/** Refuses anything shaped like a task capability token. */
function refuseCapabilityShape(header: Record<string, unknown>, payload: JWTPayload): void {
  if (typeof header.typ === 'string' && normalizeTyp(header.typ) === CAPABILITY_TYP) throw new Rejection('task capability tokens are not user tokens');
  const aud = payload.aud;
  if (aud === CAPABILITY_AUDIENCE || (Array.isArray(aud) && aud.includes(CAPABILITY_AUDIENCE))) {
    throw new Rejection('task capability tokens are not user tokens');
  }
  if (typeof payload.sub === 'string' && payload.sub.startsWith('task:')) throw new Rejection('task capability tokens are not user tokens');
}

export function createUserVerifier(cfg: UserVerifierConfig): UserVerifier {
  const tolerance = resolveClockTolerance(cfg.clockToleranceSeconds);
  const clock = cfg.clock ?? systemClock;
  let issuer: string;
  let audience: string;
  let keys: { resolve: Resolve; algorithms: string[] };
  if (cfg.mode === 'dev') {
    issuer = DEV_USER_ISSUER;
    audience = DEV_USER_AUDIENCE;
    keys = devResolver(cfg.secret);
  } else if (cfg.mode === 'oidc') {
    if (typeof cfg.issuer !== 'string' || cfg.issuer === '') throw new TypeError('TRACE_OIDC_ISSUER is required');
    if (typeof cfg.audience !== 'string' || cfg.audience === '') throw new TypeError('TRACE_OIDC_AUDIENCE is required');
    if (cfg.audience === CAPABILITY_AUDIENCE) throw new TypeError('TRACE_OIDC_AUDIENCE must not be the task audience');
    issuer = cfg.issuer;
    audience = cfg.audience;
    keys = oidcResolver(cfg);
  } else {
    throw new TypeError('user verifier mode must be dev or oidc');
  }

  // Verified tokens are remembered briefly (at most 60 s and never past their exp), so a client
  // reusing its token does not pay for signature checks on every request.
  const cache = new Map<string, { identity: UserIdentity; untilMs: number }>();
  const CACHE_MAX = 1000;

  return {
    async verify(authorizationHeader) {
      if (typeof authorizationHeader === 'string') {
        const hit = cache.get(authorizationHeader);
        if (hit && hit.untilMs > clock()) return hit.identity;
        if (hit) cache.delete(authorizationHeader);
      }
      const identity = await verifyUncached(authorizationHeader);
      const exp = typeof identity.claims.exp === 'number' ? identity.claims.exp * 1000 : 0;
      if (typeof authorizationHeader === 'string') {
        if (cache.size >= CACHE_MAX) cache.delete(cache.keys().next().value!);
        cache.set(authorizationHeader, { identity, untilMs: Math.min(exp, clock() + 60_000) });
      }
      return identity;
    },
  };

  async function verifyUncached(authorizationHeader: string | undefined | null): Promise<UserIdentity> {
      try {
        if (typeof authorizationHeader !== 'string' || authorizationHeader.trim() === '') throw new Rejection('missing token');
        const m = BEARER_RE.exec(authorizationHeader);
        if (!m) throw new Rejection('expected a Bearer token');
        const jwt = checkCompactShape(m[1]);
        const header = readHeader(jwt);
        const { alg, kid } = checkCommonHeader(header);
        if (typeof header.typ === 'string' && normalizeTyp(header.typ) === CAPABILITY_TYP) {
          throw new Rejection('task capability tokens are not user tokens');
        }
        if (!keys.algorithms.includes(alg)) throw new Rejection('algorithm not allowed');
        const key = await keys.resolve(alg, kid);
        const nowMs = clock();
        const { payload } = await jwtVerify(jwt, key, {
          algorithms: keys.algorithms,
          issuer,
          audience,
          clockTolerance: tolerance,
          currentDate: new Date(nowMs),
          requiredClaims: ['iss', 'aud', 'sub', 'exp'],
        });
        refuseCapabilityShape(header, payload);
        checkTimes(payload as Record<string, unknown>, Math.floor(nowMs / 1000), tolerance, false);
        const { sub, iss } = payload;
        if (typeof sub !== 'string' || sub.length === 0 || sub.length > 256) throw new Rejection('malformed sub');
        if (typeof iss !== 'string') throw new Rejection('malformed iss');
        const identity: UserIdentity = { sub, iss, claims: payload };
        const email = payload.email;
        if (typeof email === 'string' && email.length > 0 && email.length <= 320) identity.email = email;
        return identity;
      } catch (e) {
        throw userError(e);
      }
  }
}

/** Mints a dev-mode user token (HS256, iss trace-dev, aud trace.user) for `trace token dev-user` and tests. */
export async function mintDevUserToken(
  secret: string | Uint8Array,
  sub: string,
  opts: { email?: string; ttlSeconds?: number; clock?: Clock } = {},
): Promise<string> {
  const key = secretBytes(secret, 'TRACE_USER_JWT_SECRET');
  if (typeof sub !== 'string' || sub.length === 0 || sub.length > 256 || sub.startsWith('task:')) {
    throw new TypeError('sub must be a non-empty string (at most 256 characters) not starting with task:');
  }
  const ttl = opts.ttlSeconds ?? DEV_USER_TOKEN_TTL_SECONDS;
  if (!Number.isSafeInteger(ttl) || ttl < 1) throw new TypeError('ttlSeconds must be a positive integer');
  const iat = Math.floor((opts.clock ?? systemClock)() / 1000);
  const payload: JWTPayload = { iss: DEV_USER_ISSUER, aud: DEV_USER_AUDIENCE, sub, iat, exp: iat + ttl };
  if (opts.email !== undefined) payload.email = opts.email;
  return new SignJWT(payload).setProtectedHeader({ alg: 'HS256', kid: DEV_USER_KID, typ: 'JWT' }).sign(key);
}

/**
 * User verifier configuration from the environment: OIDC when `TRACE_OIDC_ISSUER` is set (all
 * three OIDC variables are then required), else dev mode when `TRACE_USER_JWT_SECRET` is set,
 * else undefined.
 */
export function userVerifierConfigFromEnv(env: TraceEnv): UserVerifierConfig | undefined {
  const anyOidc = env.oidcIssuer ?? env.oidcAudience ?? env.oidcJwksUrl;
  if (anyOidc !== undefined) {
    if (env.oidcIssuer === undefined || env.oidcAudience === undefined || env.oidcJwksUrl === undefined) {
      throw new TypeError('TRACE_OIDC_ISSUER, TRACE_OIDC_AUDIENCE and TRACE_OIDC_JWKS_URL must be set together');
    }
    return { mode: 'oidc', issuer: env.oidcIssuer, audience: env.oidcAudience, jwksUrl: env.oidcJwksUrl };
  }
  if (env.userJwtSecret !== undefined) return { mode: 'dev', secret: env.userJwtSecret };
  return undefined;
}
