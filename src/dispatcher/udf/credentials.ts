/**
 * Credential minting (contracts/credential_minting.md): turns the `s3` claim of a verified
 * capability token into object-store access for that attempt, deny by default.
 *
 * Scope derivation, for every profile:
 * 1. every prefix in `read_prefixes` / `write_prefixes` is canonicalized: scheme `s3` (non-empty
 *    bucket, non-empty key prefix) or `file` (absolute directory, not `/`); no `..` anywhere (also
 *    percent-encoded), no wildcards (`*`, `?`), no empty, `.` or control-character segments; the
 *    result is a directory prefix ending in `/` (`prefix/*`, never "starts with anything");
 * 2. every prefix must lie inside the profile's root (the object store's bucket and prefix, or
 *    its root directory): a wrong bucket or a path outside the store is refused;
 * 3. one bad prefix refuses the whole request (403 CREDENTIAL_SCOPE_INVALID), and a token with no
 *    prefixes at all gets nothing (403 NO_OBJECT_STORE_SCOPE).
 *
 * Profiles:
 * - `FileCredentialMinter` (embedded/local): file-scoped grants `{scheme: 'file', read_prefixes,
 *   write_prefixes}` as absolute directory paths. They are grants, not keys: the holder may touch
 *   only those directories, and signed upload URLs (see the credentials route) are the way an
 *   untrusted runtime without file access (Node's permission model) writes into them.
 * - `StsCredentialMinter` (AWS): `sts:AssumeRole` with a session policy built by
 *   `buildSessionPolicy` (GetObject on read prefixes, PutObject on write prefixes, ListBucket
 *   conditioned on `s3:prefix`), so the temporary keys can do nothing else even if the role can.
 */
import { AssumeRoleCommand, type AssumeRoleCommandInput, type AssumeRoleCommandOutput } from '@aws-sdk/client-sts';
import { TraceError } from '../../core/errors.js';
import type { CapabilityClaims, CapabilityS3Scope } from '../../auth/capability-claims.js';
import { canonicalPrefixUrl, isUrlWithin, parseObjectUrl } from '../../objectstore/keys.js';

export type ScopedPrefix =
  | { scheme: 's3'; url: string; bucket: string; /** key prefix, ending in `/` */ prefix: string }
  | { scheme: 'file'; url: string; /** absolute directory, ending in `/` */ dir: string };

export interface DerivedScope {
  read: ScopedPrefix[];
  write: ScopedPrefix[];
}

const scopeInvalid = (message: string) => new TraceError(403, 'CREDENTIAL_SCOPE_INVALID', message);

/**
 * Canonicalizes one granted prefix. Throws 403 CREDENTIAL_SCOPE_INVALID naming the rule (never
 * echoing the prefix).
 */
export function canonicalizePrefix(raw: unknown): ScopedPrefix {
  if (typeof raw !== 'string' || raw.length === 0) throw scopeInvalid('a granted prefix is empty');
  if (raw.length > 2048) throw scopeInvalid('a granted prefix is too long');
  let decoded: string;
  try {
    decoded = decodeURIComponent(raw);
  } catch {
    throw scopeInvalid('a granted prefix is not a valid URL');
  }
  if (raw.includes('..') || decoded.includes('..')) throw scopeInvalid('a granted prefix contains ..');
  if (/[*?]/.test(decoded) || /%2a|%3f/i.test(raw)) throw scopeInvalid('a granted prefix contains a wildcard');
  let url: string;
  try {
    url = canonicalPrefixUrl(raw);
  } catch {
    throw scopeInvalid('a granted prefix is not a canonical s3://bucket/prefix/ or file:///dir/ URL');
  }
  const parsed = parseObjectUrl(url);
  if (parsed.scheme === 's3') {
    if (parsed.prefix === '' || parsed.prefix === '/') throw scopeInvalid('a granted s3 prefix is empty');
    return { scheme: 's3', url, bucket: parsed.bucket, prefix: parsed.prefix };
  }
  if (parsed.path === '/') throw scopeInvalid('a granted file prefix is the filesystem root');
  return { scheme: 'file', url, dir: `${parsed.path}/` };
}

/** Drops duplicates and prefixes already covered by another prefix in the list. */
function minimal(list: ScopedPrefix[]): ScopedPrefix[] {
  const uniq = [...new Map(list.map((p) => [p.url, p])).values()];
  return uniq.filter((p) => !uniq.some((q) => q.url !== p.url && isUrlWithin(p.url, q.url)));
}

/**
 * Derives the scope of a token for a profile rooted at `rootUrl` (the object store root URL).
 * All or nothing: one prefix that is malformed or outside the root refuses the request.
 */
export function deriveScope(s3: CapabilityS3Scope | undefined, rootUrl: string): DerivedScope {
  const root = canonicalPrefixUrl(rootUrl.endsWith('/') ? rootUrl : `${rootUrl}/`);
  const rootParsed = parseObjectUrl(root);
  const take = (list: unknown): ScopedPrefix[] => {
    if (!Array.isArray(list)) throw scopeInvalid('the token carries no prefix list');
    return list.map((raw) => {
      const p = canonicalizePrefix(raw);
      if (p.scheme !== rootParsed.scheme) throw scopeInvalid(`a granted prefix is not in this deployment's ${rootParsed.scheme} object store`);
      if (p.scheme === 's3' && rootParsed.scheme === 's3' && p.bucket !== rootParsed.bucket) throw scopeInvalid('a granted prefix names another bucket');
      if (!isUrlWithin(p.url, root)) throw scopeInvalid('a granted prefix lies outside the object store root');
      return p;
    });
  };
  const read = minimal(take(s3?.read_prefixes));
  const write = minimal(take(s3?.write_prefixes));
  if (read.length === 0 && write.length === 0) throw new TraceError(403, 'NO_OBJECT_STORE_SCOPE', 'this task was granted no object-store prefixes');
  return { read, write };
}

// ---------------------------------------------------------------------------------------------
// The STS session policy.

export interface SessionPolicy {
  Version: '2012-10-17';
  Statement: Array<{
    Sid: string;
    Effect: 'Allow';
    Action: string[];
    Resource: string[];
    Condition?: { StringLike: { 's3:prefix': string[] } };
  }>;
}

/** AWS caps an inline session policy at 2048 characters (packed). */
export const MAX_SESSION_POLICY_CHARS = 2048;

const arnObjects = (p: Extract<ScopedPrefix, { scheme: 's3' }>) => `arn:aws:s3:::${p.bucket}/${p.prefix}*`;

/**
 * The least-privilege session policy for an S3 scope: object-level GetObject on read prefixes,
 * PutObject on write prefixes, and ListBucket per bucket only under an `s3:prefix` condition
 * naming the same prefixes. Throws for file scopes and for policies over the STS size limit.
 */
export function buildSessionPolicy(scope: DerivedScope): SessionPolicy {
  const s3 = (list: ScopedPrefix[]) => list.map((p) => {
    if (p.scheme !== 's3') throw new TraceError(500, 'CREDENTIAL_PROFILE_MISMATCH', 'an STS session policy covers s3 prefixes only');
    return p;
  });
  const read = s3(scope.read);
  const write = s3(scope.write);
  const statements: SessionPolicy['Statement'] = [];
  if (read.length > 0) statements.push({ Sid: 'TraceTaskRead', Effect: 'Allow', Action: ['s3:GetObject'], Resource: read.map(arnObjects) });
  if (write.length > 0) statements.push({ Sid: 'TraceTaskWrite', Effect: 'Allow', Action: ['s3:PutObject'], Resource: write.map(arnObjects) });
  const byBucket = new Map<string, Set<string>>();
  for (const p of [...read, ...write]) {
    const set = byBucket.get(p.bucket) ?? new Set<string>();
    set.add(`${p.prefix}*`);
    byBucket.set(p.bucket, set);
  }
  let i = 0;
  for (const [bucket, prefixes] of [...byBucket.entries()].sort(([a], [b]) => a.localeCompare(b))) {
    statements.push({
      Sid: `TraceTaskList${i++}`,
      Effect: 'Allow',
      Action: ['s3:ListBucket'],
      Resource: [`arn:aws:s3:::${bucket}`],
      Condition: { StringLike: { 's3:prefix': [...prefixes].sort() } },
    });
  }
  if (statements.length === 0) throw new TraceError(403, 'NO_OBJECT_STORE_SCOPE', 'this task was granted no object-store prefixes');
  const policy: SessionPolicy = { Version: '2012-10-17', Statement: statements };
  if (JSON.stringify(policy).length > MAX_SESSION_POLICY_CHARS) {
    throw new TraceError(422, 'CREDENTIAL_SCOPE_TOO_LARGE', 'the granted prefixes do not fit in one STS session policy');
  }
  return policy;
}

// ---------------------------------------------------------------------------------------------
// Minters

/** File grants (embedded/local profile). */
export interface FileGrant {
  scheme: 'file';
  expires_at: string;
  read_prefixes: string[];
  write_prefixes: string[];
}

/** Temporary AWS keys (AWS profile). */
export interface S3Grant {
  scheme: 's3';
  expires_at: string;
  access_key_id: string;
  secret_access_key: string;
  session_token: string;
  region?: string;
  read_prefixes: string[];
  write_prefixes: string[];
}

export type CredentialGrant = FileGrant | S3Grant;

export interface CredentialMinter {
  /** The object store root every granted prefix must lie in. */
  readonly rootUrl: string;
  mint(claims: CapabilityClaims, scope: DerivedScope): Promise<CredentialGrant>;
}

export class FileCredentialMinter implements CredentialMinter {
  constructor(readonly rootUrl: string) {}

  async mint(claims: CapabilityClaims, scope: DerivedScope): Promise<FileGrant> {
    const dirs = (list: ScopedPrefix[]) => list.map((p) => {
      if (p.scheme !== 'file') throw new TraceError(500, 'CREDENTIAL_PROFILE_MISMATCH', 'file grants cover file prefixes only');
      return p.dir;
    });
    return { scheme: 'file', expires_at: new Date(claims.exp * 1000).toISOString(), read_prefixes: dirs(scope.read), write_prefixes: dirs(scope.write) };
  }
}

/** The part of STSClient the minter uses, so tests can stub it. */
export interface StsClientLike {
  send(command: AssumeRoleCommand): Promise<AssumeRoleCommandOutput>;
}

export interface StsMinterOptions {
  client: StsClientLike;
  /** The role whose permissions the session policy narrows (bucket-wide on the scratch bucket at most). */
  roleArn: string;
  /** The object store root (`s3://bucket/prefix/`); every prefix must lie inside. */
  rootUrl: string;
  /** Requested lifetime; clamped to [900, 3600] seconds (STS minimum and a one-hour ceiling). */
  durationSeconds?: number;
  externalId?: string;
  region?: string;
}

export const STS_MIN_SECONDS = 900;
export const STS_MAX_SECONDS = 3600;

export class StsCredentialMinter implements CredentialMinter {
  readonly rootUrl: string;

  constructor(private readonly opts: StsMinterOptions) {
    if (!/^arn:aws[a-z-]*:iam::\d{12}:role\/[\w+=,.@/-]{1,512}$/.test(opts.roleArn)) {
      throw new TraceError(500, 'CREDENTIAL_PROFILE_INVALID', 'roleArn must be an IAM role ARN');
    }
    if (parseObjectUrl(opts.rootUrl).scheme !== 's3') throw new TraceError(500, 'CREDENTIAL_PROFILE_INVALID', 'the STS minter needs an s3:// object store root');
    this.rootUrl = opts.rootUrl;
  }

  /** The exact AssumeRole input for a token and its derived scope (exposed for tests and audits). */
  buildRequest(claims: CapabilityClaims, scope: DerivedScope, nowMs = Date.now()): AssumeRoleCommandInput {
    const policy = buildSessionPolicy(scope);
    const untilExp = Math.floor(claims.exp - nowMs / 1000);
    const wanted = Math.min(this.opts.durationSeconds ?? STS_MIN_SECONDS, untilExp);
    const duration = Math.max(STS_MIN_SECONDS, Math.min(STS_MAX_SECONDS, wanted));
    const input: AssumeRoleCommandInput = {
      RoleArn: this.opts.roleArn,
      RoleSessionName: `trace-${claims.task_id.replace(/-/g, '').slice(0, 32)}-${claims.attempt}`.slice(0, 64),
      Policy: JSON.stringify(policy),
      DurationSeconds: duration,
      Tags: [
        { Key: 'trace_org_id', Value: claims.org_id },
        { Key: 'trace_task_id', Value: claims.task_id },
        { Key: 'trace_attempt', Value: String(claims.attempt) },
      ],
    };
    if (this.opts.externalId) input.ExternalId = this.opts.externalId;
    return input;
  }

  async mint(claims: CapabilityClaims, scope: DerivedScope): Promise<S3Grant> {
    const input = this.buildRequest(claims, scope);
    let out: AssumeRoleCommandOutput;
    try {
      out = await this.opts.client.send(new AssumeRoleCommand(input));
    } catch (e) {
      const name = e instanceof Error ? e.name : 'Error';
      throw new TraceError(503, 'CREDENTIALS_UNAVAILABLE', `STS refused or could not be reached (${name.slice(0, 60)})`);
    }
    const c = out.Credentials;
    if (!c?.AccessKeyId || !c.SecretAccessKey || !c.SessionToken || !c.Expiration) {
      throw new TraceError(503, 'CREDENTIALS_UNAVAILABLE', 'STS returned no credentials');
    }
    const grant: S3Grant = {
      scheme: 's3',
      expires_at: new Date(c.Expiration).toISOString(),
      access_key_id: c.AccessKeyId,
      secret_access_key: c.SecretAccessKey,
      session_token: c.SessionToken,
      read_prefixes: scope.read.map((p) => p.url),
      write_prefixes: scope.write.map((p) => p.url),
    };
    if (this.opts.region) grant.region = this.opts.region;
    return grant;
  }
}
