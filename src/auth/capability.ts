/**
 * Task capability tokens (contracts/task_capability_tokens.md): the per-attempt JWT the
 * Dispatcher mints at claim time and every task-scoped endpoint verifies.
 *
 * Token scheme (see src/auth/README.md):
 * - header `{alg, kid, typ: "trace-task+jwt"}` and nothing else;
 * - payload `iss, aud: "trace.task", sub: "task:{task_id}", exp, iat, jti?, org_id, task_id,
 *   attempt, datasets, s3` and nothing else.
 * Each `kid` is pinned to one algorithm (HS256 for shared secrets, ES256 for P-256 keys); keys
 * come from configuration or the configured task-JWKS URL, never from the token.
 */
import { createHmac, createPublicKey, timingSafeEqual, type JsonWebKey, type KeyObject } from 'node:crypto';
import { createRemoteJWKSet, jwtVerify, SignJWT, type JSONWebKeySet, type KeyInput } from 'jose';
import { z } from 'zod';
import { DEFAULTS, type TraceEnv } from '../core/config.js';
import { formatPath, TraceError } from '../core/errors.js';
import { newId, sha256Hex } from '../core/ids.js';
import {
  capabilityClaimsSchema,
  capabilityGrantSchema,
  type CapabilityClaims,
  type CapabilityGrant,
} from './capability-claims.js';
import { generateEcKey, loadEcKey, type EcKeyInput, type LoadedEcKey, type PublicEcJwk } from './ec-keys.js';
import {
  CAPABILITY_AUDIENCE,
  CAPABILITY_TYP,
  checkCommonHeader,
  checkCompactShape,
  checkKid,
  checkTimes,
  classifyJoseError,
  classifyKeyLookupError,
  KeySourceUnavailable,
  KID_RE,
  readHeader,
  Rejection,
  resolveClockTolerance,
  secretBytes,
  systemClock,
  type Clock,
} from './jwt-common.js';

export const DEFAULT_CAPABILITY_ISSUER = 'trace-dispatcher';
export { CAPABILITY_AUDIENCE, CAPABILITY_TYP };

export type CapabilityAlg = 'HS256' | 'ES256';

/** One HS256 key: a shared secret (at least 32 bytes) and its `kid`. */
export interface HmacKeyInput {
  kid: string;
  secret: string | Uint8Array;
}

/** Lite / local profile: shared secrets. The issuer signs with `current`; verifiers also accept `next`. */
export interface Hs256KeyConfig {
  alg: 'HS256';
  /** `iss` of minted tokens; default `trace-dispatcher`. */
  issuer?: string;
  current: HmacKeyInput;
  next?: HmacKeyInput;
}

/**
 * AWS profile: ECDSA P-256. `current` signs (a key pair is generated with jose when it is
 * absent); `next` is published in the JWKS ahead of rotation and may be public-only.
 */
export interface Es256KeyConfig {
  alg: 'ES256';
  issuer?: string;
  current?: EcKeyInput;
  next?: EcKeyInput;
}

export type CapabilityKeyConfig = Hs256KeyConfig | Es256KeyConfig;

/** The public task-JWKS document served at `GET /internal/jwks/task`. */
export interface TaskJwks {
  keys: PublicEcJwk[];
}

export interface CapabilityVerifier {
  /** Verifies a capability token; throws TraceError 401 `INVALID_CAPABILITY` (503 `TASK_JWKS_UNAVAILABLE` when a JWKS URL cannot be read). */
  verify(token: string | undefined | null): Promise<CapabilityClaims>;
}

export interface CapabilityIssuer {
  readonly alg: CapabilityAlg;
  /** `iss` of minted tokens. */
  readonly iss: string;
  /** `kid` of the signing (current) key. */
  readonly kid: string;
  /** Mints a token for one attempt, valid for `ttlSeconds` (see capabilityTtlSeconds). */
  sign(grant: CapabilityGrant, ttlSeconds: number): Promise<string>;
  /** Public keys (current and next) for ES256; `{keys: []}` for HS256, whose secrets are never published. */
  jwks(): TaskJwks;
  /** A verifier accepting this issuer's current and next keys (for the Dispatcher's own task routes). */
  verifier(opts?: VerifierTuning): CapabilityVerifier;
}

export interface VerifierTuning {
  /** Allowed skew on exp/iat, 0..60 s; default 60. */
  clockToleranceSeconds?: number;
  /** Milliseconds since the epoch; for tests. */
  clock?: Clock;
}

export interface IssuerTuning {
  clock?: Clock;
}

export type CapabilityVerifierOptions = VerifierTuning & {
  /** Expected `iss`; default `trace-dispatcher`. */
  issuer?: string;
} & (
    | { hs256: { current: HmacKeyInput; next?: HmacKeyInput } }
    | { jwks: JSONWebKeySet | TaskJwks }
    | {
        /** The Dispatcher's `/internal/jwks/task`; fetched lazily, cached, re-read on an unknown kid. */
        jwksUrl: string | URL;
        /** Minimum seconds between refetches caused by an unknown kid; default 30. */
        cooldownSeconds?: number;
        /** Seconds a fetched JWKS stays fresh; default 600. */
        cacheMaxAgeSeconds?: number;
        /** HTTP timeout for one fetch; default 5000 ms. */
        timeoutMs?: number;
        /** Extra request headers (for example `X-Trace-Worker-Token`). */
        headers?: Record<string, string>;
      }
  );

/**
 * TTL of a capability token for a task with the given timeout: the timeout plus 300 s of
 * slack, capped at 24 h, but never shorter than the timeout itself.
 */
export function capabilityTtlSeconds(timeoutSeconds: number): number {
  if (!Number.isFinite(timeoutSeconds) || timeoutSeconds <= 0) throw new TypeError('timeoutSeconds must be a positive number');
  const t = Math.ceil(timeoutSeconds);
  return Math.max(t, Math.min(t + DEFAULTS.capabilityTtlExtraSeconds, DEFAULTS.capabilityTtlCapSeconds));
}

// ---------------------------------------------------------------------------------------------
// Keys

type PinnedKey = { alg: 'HS256'; key: Uint8Array } | { alg: 'ES256'; key: KeyObject };
type KeyResolver = (kid: string, alg: string) => Promise<KeyInput>;

function hmacKeys(current: HmacKeyInput, next: HmacKeyInput | undefined): Map<string, PinnedKey> {
  const map = new Map<string, PinnedKey>();
  map.set(checkKid(current.kid, 'current kid'), { alg: 'HS256', key: secretBytes(current.secret, 'current secret') });
  if (next) {
    const kid = checkKid(next.kid, 'next kid');
    if (map.has(kid)) throw new TypeError('current and next keys must have different kids');
    map.set(kid, { alg: 'HS256', key: secretBytes(next.secret, 'next secret') });
  }
  return map;
}

function staticResolver(keys: Map<string, PinnedKey>): KeyResolver {
  return async (kid, alg) => {
    const entry = keys.get(kid);
    if (!entry) throw new Rejection('unknown key id');
    if (entry.alg !== alg) throw new Rejection('algorithm not allowed for this key');
    return entry.key;
  };
}

const staticJwkSchema = z.looseObject({
  kty: z.literal('EC'),
  crv: z.literal('P-256'),
  x: z.string().min(1),
  y: z.string().min(1),
  kid: z.string().regex(KID_RE),
  alg: z.literal('ES256').optional(),
  use: z.literal('sig').optional(),
});

/** Imports a static task JWKS: EC P-256 public keys only, each with a unique kid. */
function jwksKeys(jwks: JSONWebKeySet | TaskJwks): Map<string, PinnedKey> {
  if (!jwks || !Array.isArray(jwks.keys)) throw new TypeError('task JWKS must have a keys array');
  const map = new Map<string, PinnedKey>();
  for (const raw of jwks.keys as unknown[]) {
    const parsed = staticJwkSchema.safeParse(raw);
    if (!parsed.success) throw new TypeError('task JWKS keys must be EC P-256 public keys with a kid');
    const jwk = parsed.data;
    if ('d' in jwk) throw new TypeError('task JWKS must not contain private keys');
    if (map.has(jwk.kid)) throw new TypeError('task JWKS has a duplicate kid');
    const key = createPublicKey({ key: { kty: 'EC', crv: 'P-256', x: jwk.x, y: jwk.y } as JsonWebKey, format: 'jwk' });
    map.set(jwk.kid, { alg: 'ES256', key });
  }
  return map;
}

function remoteResolver(opts: {
  jwksUrl: string | URL;
  cooldownSeconds?: number;
  cacheMaxAgeSeconds?: number;
  timeoutMs?: number;
  headers?: Record<string, string>;
}): KeyResolver {
  const url = new URL(String(opts.jwksUrl));
  if (url.protocol !== 'https:' && url.protocol !== 'http:') throw new TypeError('jwksUrl must be http(s)');
  const seconds = (v: number | undefined, d: number, name: string) => {
    const s = v ?? d;
    if (!Number.isFinite(s) || s < 0) throw new TypeError(`${name} must be a non-negative number`);
    return Math.round(s * 1000);
  };
  const set = createRemoteJWKSet(url, {
    cooldownDuration: seconds(opts.cooldownSeconds, 30, 'cooldownSeconds'),
    cacheMaxAge: seconds(opts.cacheMaxAgeSeconds, 600, 'cacheMaxAgeSeconds'),
    timeoutDuration: Math.round(opts.timeoutMs ?? 5000),
    ...(opts.headers ? { headers: opts.headers } : {}),
  });
  return async (kid, alg) => {
    // The task JWKS only ever holds ES256 keys; anything else is refused before any fetch.
    if (alg !== 'ES256') throw new Rejection('algorithm not allowed for this key');
    try {
      return await set({ alg, kid });
    } catch (e) {
      throw classifyKeyLookupError(e);
    }
  };
}

// ---------------------------------------------------------------------------------------------
// Verification

function capabilityError(e: unknown): TraceError {
  if (e instanceof TraceError) return e;
  const c = classifyJoseError(e);
  if (c instanceof KeySourceUnavailable) {
    return new TraceError(503, 'TASK_JWKS_UNAVAILABLE', 'task capability keys are unavailable');
  }
  return new TraceError(401, 'INVALID_CAPABILITY', `invalid task capability token: ${c.reason}`);
}

/** Header of a capability token: exactly `alg`, `kid`, `typ`, with `typ` = trace-task+jwt. */
function checkCapabilityHeader(header: Record<string, unknown>): { alg: string; kid: string } {
  const { alg, kid } = checkCommonHeader(header);
  if (header.typ !== CAPABILITY_TYP) throw new Rejection('not a task capability token');
  for (const name of Object.keys(header)) {
    if (name !== 'alg' && name !== 'kid' && name !== 'typ') throw new Rejection('unexpected header parameter');
  }
  if (alg !== 'HS256' && alg !== 'ES256') throw new Rejection('algorithm not allowed');
  return { alg, kid };
}

// HS256 with node:crypto directly: jose's WebCrypto path costs an async key import and a
// thread-pool hop per call, which dominated the Dispatcher's CPU on the task hot path. The
// header and claim checks around it are the same for both paths.
const b64url = (b: Buffer | string) => Buffer.from(b).toString('base64url');

function hs256Sign(header: Record<string, unknown>, payload: Record<string, unknown>, key: Uint8Array): string {
  const input = `${b64url(JSON.stringify(header))}.${b64url(JSON.stringify(payload))}`;
  return `${input}.${createHmac('sha256', key).update(input).digest('base64url')}`;
}

function hs256Verify(jwt: string, key: Uint8Array, iss: string): Record<string, unknown> {
  const dot = jwt.lastIndexOf('.');
  const input = jwt.slice(0, dot);
  const given = Buffer.from(jwt.slice(dot + 1), 'base64url');
  const expected = createHmac('sha256', key).update(input).digest();
  if (given.length !== expected.length || !timingSafeEqual(given, expected)) throw new Rejection('bad signature');
  let payload: unknown;
  try {
    payload = JSON.parse(Buffer.from(input.slice(input.indexOf('.') + 1), 'base64url').toString('utf8'));
  } catch {
    throw new Rejection('malformed payload');
  }
  if (payload === null || typeof payload !== 'object' || Array.isArray(payload)) throw new Rejection('malformed payload');
  const p = payload as Record<string, unknown>;
  for (const c of ['iss', 'aud', 'sub', 'exp', 'iat']) if (!(c in p)) throw new Rejection(`missing ${c}`);
  if (p.iss !== iss) throw new Rejection('unexpected iss');
  if (p.aud !== CAPABILITY_AUDIENCE && !(Array.isArray(p.aud) && p.aud.includes(CAPABILITY_AUDIENCE))) throw new Rejection('unexpected aud');
  return p;
}

function makeVerifier(resolve: KeyResolver, iss: string, tuning: VerifierTuning): CapabilityVerifier {
  const tolerance = resolveClockTolerance(tuning.clockToleranceSeconds);
  const clock = tuning.clock ?? systemClock;
  checkIssuer(iss);
  return {
    async verify(token) {
      try {
        const jwt = checkCompactShape(token);
        const { alg, kid } = checkCapabilityHeader(readHeader(jwt));
        const key = await resolve(kid, alg);
        const nowMs = clock();
        let raw: Record<string, unknown>;
        if (alg === 'HS256' && key instanceof Uint8Array) {
          raw = hs256Verify(jwt, key, iss);
        } else {
          const { payload } = await jwtVerify(jwt, key, {
            algorithms: [alg],
            issuer: iss,
            audience: CAPABILITY_AUDIENCE,
            clockTolerance: tolerance,
            currentDate: new Date(nowMs),
            requiredClaims: ['iss', 'aud', 'sub', 'exp', 'iat'],
          });
          raw = payload as Record<string, unknown>;
        }
        checkTimes(raw, Math.floor(nowMs / 1000), tolerance, true);
        const parsed = capabilityClaimsSchema.safeParse(raw);
        if (!parsed.success) {
          const first = parsed.error.issues[0];
          throw new Rejection(`malformed claims (${first ? formatPath(first.path) : '$'})`);
        }
        return parsed.data;
      } catch (e) {
        throw capabilityError(e);
      }
    },
  };
}

function checkIssuer(iss: string): void {
  if (typeof iss !== 'string' || iss.length === 0 || iss.length > 256) throw new TypeError('issuer must be a non-empty string');
}

/** A verifier from HS256 secrets, a static task JWKS, or the task-JWKS URL. */
export function createCapabilityVerifier(opts: CapabilityVerifierOptions): CapabilityVerifier {
  const iss = opts.issuer ?? DEFAULT_CAPABILITY_ISSUER;
  let resolve: KeyResolver;
  if ('hs256' in opts) resolve = staticResolver(hmacKeys(opts.hs256.current, opts.hs256.next));
  else if ('jwks' in opts) resolve = staticResolver(jwksKeys(opts.jwks));
  else if ('jwksUrl' in opts) resolve = remoteResolver(opts);
  else throw new TypeError('capability verifier needs hs256, jwks or jwksUrl');
  return makeVerifier(resolve, iss, opts);
}

/**
 * Binds a task-scoped request to its token: the body's `{task_id, attempt}` must equal the
 * token's. Throws TraceError 403 `CAPABILITY_MISMATCH`. (The Dispatcher also checks lease_token.)
 */
export function bindTaskRequest(claims: Pick<CapabilityClaims, 'task_id' | 'attempt'>, body: { task_id: unknown; attempt: unknown }): void {
  if (body === null || typeof body !== 'object' || body.task_id !== claims.task_id || body.attempt !== claims.attempt) {
    throw new TraceError(403, 'CAPABILITY_MISMATCH', 'task capability token does not match task_id and attempt');
  }
}

// ---------------------------------------------------------------------------------------------
// Issuing

function grantError(issues: z.core.$ZodIssue[]): TraceError {
  return new TraceError(500, 'INVALID_CAPABILITY_GRANT', 'refusing to sign an invalid capability grant', {
    problems: issues.map((i) => ({ path: formatPath(i.path), message: i.message })),
  });
}

export async function createCapabilityIssuer(keys: CapabilityKeyConfig, tuning: IssuerTuning = {}): Promise<CapabilityIssuer> {
  const iss = keys.issuer ?? DEFAULT_CAPABILITY_ISSUER;
  checkIssuer(iss);
  const clock = tuning.clock ?? systemClock;

  let alg: CapabilityAlg;
  let kid: string;
  let signingKey: KeyInput;
  let verifyKeys: Map<string, PinnedKey>;
  let published: PublicEcJwk[] = [];

  if (keys.alg === 'HS256') {
    alg = 'HS256';
    verifyKeys = hmacKeys(keys.current, keys.next);
    kid = keys.current.kid;
    signingKey = verifyKeys.get(kid)!.key;
  } else if (keys.alg === 'ES256') {
    alg = 'ES256';
    const current: LoadedEcKey = keys.current ? await loadEcKey(keys.current, 'current ES256 key') : await generateEcKey();
    if (!current.privateKey) throw new TypeError('current ES256 key needs a private key');
    const next = keys.next ? await loadEcKey(keys.next, 'next ES256 key') : undefined;
    if (next && next.kid === current.kid) throw new TypeError('current and next keys must have different kids');
    kid = current.kid;
    signingKey = current.privateKey;
    verifyKeys = new Map<string, PinnedKey>([[current.kid, { alg: 'ES256', key: current.publicKey }]]);
    if (next) verifyKeys.set(next.kid, { alg: 'ES256', key: next.publicKey });
    published = [current.publicJwk, ...(next ? [next.publicJwk] : [])];
  } else {
    throw new TypeError('capability keys: alg must be HS256 or ES256');
  }

  return {
    alg,
    iss,
    kid,
    async sign(grant, ttlSeconds) {
      if (!Number.isSafeInteger(ttlSeconds) || ttlSeconds < 1) throw new TypeError('ttlSeconds must be a positive integer');
      const g = capabilityGrantSchema.safeParse(grant);
      if (!g.success) throw grantError(g.error.issues);
      const iat = Math.floor(clock() / 1000);
      const claims = {
        ...g.data,
        jti: g.data.jti ?? newId(),
        iss,
        aud: CAPABILITY_AUDIENCE,
        sub: `task:${g.data.task_id}`,
        iat,
        exp: iat + ttlSeconds,
      };
      const c = capabilityClaimsSchema.safeParse(claims);
      if (!c.success) throw grantError(c.error.issues);
      if (alg === 'HS256' && signingKey instanceof Uint8Array) return hs256Sign({ alg, kid, typ: CAPABILITY_TYP }, { ...c.data }, signingKey);
      return new SignJWT({ ...c.data }).setProtectedHeader({ alg, kid, typ: CAPABILITY_TYP }).sign(signingKey);
    },
    jwks() {
      return { keys: published.map((k) => ({ ...k })) };
    },
    verifier(opts = {}) {
      return makeVerifier(staticResolver(verifyKeys), iss, opts);
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Environment

/** Default kid for a secret without `..._KID`: a domain-separated hash prefix, stable across processes. */
export function derivedKid(secret: string): string {
  return `hs-${sha256Hex(`trace-task-capability-kid\u0000${secret}`).slice(0, 16)}`;
}

/**
 * HS256 key configuration from `TRACE_TASK_CAPABILITY_SECRET` / `_KID` and
 * `TRACE_TASK_CAPABILITY_NEXT_SECRET` / `_NEXT_KID`; undefined when no secret is set.
 */
export function capabilityKeyConfigFromEnv(env: TraceEnv, issuer?: string): Hs256KeyConfig | undefined {
  if (env.taskCapabilitySecret === undefined) {
    if (env.taskCapabilityNextSecret !== undefined) throw new TypeError('TRACE_TASK_CAPABILITY_NEXT_SECRET needs TRACE_TASK_CAPABILITY_SECRET');
    return undefined;
  }
  const cfg: Hs256KeyConfig = {
    alg: 'HS256',
    current: { kid: env.taskCapabilityKid ?? derivedKid(env.taskCapabilitySecret), secret: env.taskCapabilitySecret },
  };
  if (issuer !== undefined) cfg.issuer = issuer;
  if (env.taskCapabilityNextSecret !== undefined) {
    cfg.next = { kid: env.taskCapabilityNextKid ?? derivedKid(env.taskCapabilityNextSecret), secret: env.taskCapabilityNextSecret };
  }
  return cfg;
}

/**
 * ES256 key configuration for the AWS profile: `TRACE_TASK_CAPABILITY_ES256_PRIVATE_KEY` (PEM or
 * JWK JSON of the signing key, with optional `TRACE_TASK_CAPABILITY_KID`) and
 * `TRACE_TASK_CAPABILITY_ES256_NEXT_PUBLIC_KEY` (PEM or JWK JSON, published ahead of rotation,
 * with `TRACE_TASK_CAPABILITY_NEXT_KID`). Undefined when no ES256 key is set. HS256 and ES256
 * settings together are refused: one deployment signs with one algorithm.
 */
export function es256KeyConfigFromEnv(penv: NodeJS.ProcessEnv, issuer?: string): Es256KeyConfig | undefined {
  const priv = penv.TRACE_TASK_CAPABILITY_ES256_PRIVATE_KEY?.trim();
  const nextPub = penv.TRACE_TASK_CAPABILITY_ES256_NEXT_PUBLIC_KEY?.trim();
  if (!priv) {
    if (nextPub) throw new TypeError('TRACE_TASK_CAPABILITY_ES256_NEXT_PUBLIC_KEY needs TRACE_TASK_CAPABILITY_ES256_PRIVATE_KEY');
    return undefined;
  }
  if (penv.TRACE_TASK_CAPABILITY_SECRET) throw new TypeError('set either TRACE_TASK_CAPABILITY_SECRET (HS256) or TRACE_TASK_CAPABILITY_ES256_PRIVATE_KEY (ES256), not both');
  const parse = (v: string) => (v.startsWith('{') ? (JSON.parse(v) as Record<string, unknown>) : v);
  const kid = penv.TRACE_TASK_CAPABILITY_KID?.trim();
  const nextKid = penv.TRACE_TASK_CAPABILITY_NEXT_KID?.trim();
  const cfg: Es256KeyConfig = {
    alg: 'ES256',
    current: { privateKey: parse(priv), ...(kid ? { kid } : {}) } as EcKeyInput,
  };
  if (nextPub) cfg.next = { publicKey: parse(nextPub), ...(nextKid ? { kid: nextKid } : {}) } as EcKeyInput;
  if (issuer !== undefined) cfg.issuer = issuer;
  return cfg;
}
