/**
 * Shared, paranoid pre-checks for every JWT Trace verifies (task capability tokens and user
 * tokens). jose does the cryptography; these helpers decide what reaches jose at all.
 *
 * Nothing here ever puts a token, a secret or a claim value into an error message: a
 * `Rejection` carries only a short fixed reason such as "expired" or "unknown key id".
 */
import { decodeProtectedHeader, errors as joseErrors } from 'jose';

/** Longest token accepted before any parsing (a cheap guard against oversized headers). */
export const MAX_TOKEN_CHARS = 16 * 1024;
/** Clock skew allowed on `exp`, `nbf` and `iat`; configurable down to 0, never above this. */
export const MAX_CLOCK_TOLERANCE_SECONDS = 60;
export const DEFAULT_CLOCK_TOLERANCE_SECONDS = 60;

/**
 * Header `typ` carried by every task capability token and by no user token. User verifiers
 * refuse it; the capability verifier requires it (together with `aud: "trace.task"`).
 */
export const CAPABILITY_TYP = 'trace-task+jwt';
export const CAPABILITY_AUDIENCE = 'trace.task';

/** Header parameters that name or embed a key. Keys come from configuration only, never from the token. */
export const KEY_BEARING_HEADER_PARAMS = ['jwk', 'jku', 'x5u', 'x5c'] as const;

/** `kid` values we accept at all (configuration and tokens). */
export const KID_RE = /^[A-Za-z0-9._:+=-]{1,128}$/;

const COMPACT_JWS_RE = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/;

/** A token was refused; `reason` is a short fixed phrase safe to show and log. */
export class Rejection extends Error {
  constructor(readonly reason: string) {
    super(reason);
    this.name = 'Rejection';
  }
}

/** The key source (a JWKS URL) could not be read: our fault, not the caller's. */
export class KeySourceUnavailable extends Error {
  constructor(cause: unknown) {
    super('key source unavailable', { cause });
    this.name = 'KeySourceUnavailable';
  }
}

export type Clock = () => number;
export const systemClock: Clock = () => Date.now();

/** Validates a configured clock tolerance (seconds); throws on misconfiguration. */
export function resolveClockTolerance(value: number | undefined): number {
  if (value === undefined) return DEFAULT_CLOCK_TOLERANCE_SECONDS;
  if (!Number.isFinite(value) || value < 0 || value > MAX_CLOCK_TOLERANCE_SECONDS) {
    throw new TypeError(`clockToleranceSeconds must be between 0 and ${MAX_CLOCK_TOLERANCE_SECONDS}`);
  }
  return value;
}

/** Returns the token if it has the shape of a compact JWS with a non-empty signature. */
export function checkCompactShape(token: unknown): string {
  if (typeof token !== 'string' || token.length === 0) throw new Rejection('missing token');
  if (token.length > MAX_TOKEN_CHARS) throw new Rejection('token too large');
  if (!COMPACT_JWS_RE.test(token)) throw new Rejection('malformed token');
  return token;
}

/** Decodes the protected header without trusting it. */
export function readHeader(token: string): Record<string, unknown> {
  let header: unknown;
  try {
    header = decodeProtectedHeader(token);
  } catch {
    throw new Rejection('malformed token header');
  }
  if (header === null || typeof header !== 'object' || Array.isArray(header)) {
    throw new Rejection('malformed token header');
  }
  return header as Record<string, unknown>;
}

/** Refuses header-supplied keys, `crit` extensions and unencoded payloads; returns `{alg, kid}`. */
export function checkCommonHeader(header: Record<string, unknown>): { alg: string; kid: string } {
  for (const p of KEY_BEARING_HEADER_PARAMS) {
    if (p in header) throw new Rejection('header-supplied keys are not accepted');
  }
  if ('crit' in header || 'b64' in header) throw new Rejection('unsupported header parameter');
  const { alg, kid } = header;
  if (typeof alg !== 'string' || alg === '') throw new Rejection('missing alg');
  if (alg.toLowerCase() === 'none') throw new Rejection('unsigned tokens are not accepted');
  if (typeof kid !== 'string' || !KID_RE.test(kid)) throw new Rejection('missing or malformed kid');
  return { alg, kid };
}

/** Lower-cased media type with the optional `application/` prefix removed. */
export function normalizeTyp(typ: string): string {
  const t = typ.trim().toLowerCase();
  return t.startsWith('application/') ? t.slice('application/'.length) : t;
}

/**
 * Numeric-date checks on a verified payload, independent of jose: `exp` must be a finite
 * integer in the future (within tolerance); `iat`, when present or required, must be a finite
 * integer not later than now + tolerance; `nbf`, when present, must have passed.
 */
export function checkTimes(payload: Record<string, unknown>, nowSeconds: number, tolerance: number, requireIat: boolean): void {
  const exp = payload.exp;
  if (typeof exp !== 'number' || !Number.isSafeInteger(exp)) throw new Rejection('missing or malformed exp');
  if (exp <= nowSeconds - tolerance) throw new Rejection('expired');
  const iat = payload.iat;
  if (iat === undefined) {
    if (requireIat) throw new Rejection('missing iat');
  } else {
    if (typeof iat !== 'number' || !Number.isSafeInteger(iat)) throw new Rejection('malformed iat');
    if (iat > nowSeconds + tolerance) throw new Rejection('issued in the future');
    if (iat > exp) throw new Rejection('malformed iat');
  }
  const nbf = payload.nbf;
  if (nbf !== undefined) {
    if (typeof nbf !== 'number' || !Number.isFinite(nbf)) throw new Rejection('malformed nbf');
    if (nbf > nowSeconds + tolerance) throw new Rejection('not yet valid');
  }
}

/** Maps whatever jose (or a key lookup) threw to a Rejection or KeySourceUnavailable. */
export function classifyJoseError(e: unknown): Rejection | KeySourceUnavailable {
  if (e instanceof Rejection || e instanceof KeySourceUnavailable) return e;
  if (e instanceof joseErrors.JWTExpired) return new Rejection('expired');
  if (e instanceof joseErrors.JWSSignatureVerificationFailed) return new Rejection('bad signature');
  if (e instanceof joseErrors.JWTClaimValidationFailed) return new Rejection(`claim check failed: ${safeClaimName(e.claim)}`);
  if (e instanceof joseErrors.JWKSNoMatchingKey) return new Rejection('unknown key id');
  if (e instanceof joseErrors.JWKSMultipleMatchingKeys) return new Rejection('ambiguous key id');
  if (e instanceof joseErrors.JOSEAlgNotAllowed) return new Rejection('algorithm not allowed');
  if (e instanceof joseErrors.JWSInvalid || e instanceof joseErrors.JWTInvalid) return new Rejection('malformed token');
  if (e instanceof joseErrors.JOSENotSupported) return new Rejection('unsupported token');
  return new Rejection('invalid token');
}

function safeClaimName(claim: unknown): string {
  return typeof claim === 'string' && /^[a-z_]{1,32}$/.test(claim) ? claim : 'claim';
}

/** Wraps a remote JWKS lookup so transport failures are told apart from unknown keys. */
export function classifyKeyLookupError(e: unknown): Rejection | KeySourceUnavailable {
  if (e instanceof joseErrors.JWKSNoMatchingKey) return new Rejection('unknown key id');
  if (e instanceof joseErrors.JWKSMultipleMatchingKeys) return new Rejection('ambiguous key id');
  if (e instanceof joseErrors.JOSENotSupported) return new Rejection('algorithm not allowed');
  return new KeySourceUnavailable(e);
}

/** Text secret or bytes, at least 32 bytes (RFC 7518: an HS256 key is at least the hash size). */
export function secretBytes(secret: string | Uint8Array, what: string): Uint8Array {
  const bytes = typeof secret === 'string' ? new TextEncoder().encode(secret) : new Uint8Array(secret);
  if (bytes.length < 32) throw new TypeError(`${what} must be at least 32 bytes`);
  return bytes;
}

export function checkKid(kid: string, what: string): string {
  if (typeof kid !== 'string' || !KID_RE.test(kid)) throw new TypeError(`${what} must match ${KID_RE.source}`);
  return kid;
}
