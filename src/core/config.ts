import { resolve, join } from 'node:path';

/**
 * Every environment variable Trace reads, in one place. All are optional in the embedded
 * profile; README.md lists them with their defaults.
 */
export interface TraceEnv {
  home: string;
  stateDatabaseUrl?: string;
  dataDatabaseUrl?: string;
  queueDatabaseUrl?: string;
  objectStoreUrl?: string;
  dispatcherUrl?: string;
  queryUrl?: string;
  gatewayUrl?: string;
  workerToken?: string;
  taskCapabilitySecret?: string;
  taskCapabilityKid?: string;
  taskCapabilityNextSecret?: string;
  taskCapabilityNextKid?: string;
  userJwtSecret?: string;
  oidcIssuer?: string;
  oidcAudience?: string;
  oidcJwksUrl?: string;
  rpcPools: Record<string, string[]>;
}

function opt(env: NodeJS.ProcessEnv, name: string): string | undefined {
  const v = env[name];
  return v === undefined || v.trim() === '' ? undefined : v.trim();
}

export function readEnv(env: NodeJS.ProcessEnv = process.env): TraceEnv {
  const rpcPools: Record<string, string[]> = {};
  for (const [k, v] of Object.entries(env)) {
    const m = /^TRACE_RPC_POOL_([A-Z0-9_]+)_URL$/.exec(k);
    if (m && v) rpcPools[m[1]!.toLowerCase()] = v.split(',').map((s) => s.trim()).filter(Boolean);
  }
  const out: TraceEnv = { home: resolve(opt(env, 'TRACE_HOME') ?? '.trace'), rpcPools };
  const map: Array<[keyof TraceEnv, string]> = [
    ['stateDatabaseUrl', 'TRACE_STATE_DATABASE_URL'],
    ['dataDatabaseUrl', 'TRACE_DATA_DATABASE_URL'],
    ['queueDatabaseUrl', 'TRACE_QUEUE_DATABASE_URL'],
    ['objectStoreUrl', 'TRACE_OBJECT_STORE_URL'],
    ['dispatcherUrl', 'TRACE_DISPATCHER_URL'],
    ['queryUrl', 'TRACE_QUERY_URL'],
    ['gatewayUrl', 'TRACE_GATEWAY_URL'],
    ['workerToken', 'TRACE_WORKER_TOKEN'],
    ['taskCapabilitySecret', 'TRACE_TASK_CAPABILITY_SECRET'],
    ['taskCapabilityKid', 'TRACE_TASK_CAPABILITY_KID'],
    ['taskCapabilityNextSecret', 'TRACE_TASK_CAPABILITY_NEXT_SECRET'],
    ['taskCapabilityNextKid', 'TRACE_TASK_CAPABILITY_NEXT_KID'],
    ['userJwtSecret', 'TRACE_USER_JWT_SECRET'],
    ['oidcIssuer', 'TRACE_OIDC_ISSUER'],
    ['oidcAudience', 'TRACE_OIDC_AUDIENCE'],
    ['oidcJwksUrl', 'TRACE_OIDC_JWKS_URL'],
  ];
  for (const [key, name] of map) {
    const v = opt(env, name);
    if (v !== undefined) (out as unknown as Record<string, unknown>)[key] = v;
  }
  return out;
}

/** A positive integer from the environment, or `fallback` when unset; a bad value is an error naming the variable. */
export function intFromEnv(env: NodeJS.ProcessEnv, name: string, fallback: number, range: { min?: number; max?: number } = {}): number {
  const raw = opt(env, name);
  if (raw === undefined) return fallback;
  const n = Number(raw);
  const min = range.min ?? 1;
  const max = range.max ?? Number.MAX_SAFE_INTEGER;
  if (!/^\d+$/.test(raw) || !Number.isSafeInteger(n) || n < min || n > max) {
    throw new Error(`${name} must be an integer from ${min} to ${max} (got "${raw.slice(0, 40)}")`);
  }
  return n;
}

/**
 * Timeouts of every Postgres pool (operations: no request outlives its cap, a frozen database
 * cannot hang a caller). `TRACE_DB_CONNECT_TIMEOUT_MS` bounds opening a connection and waiting
 * for a free one; `TRACE_DB_STATEMENT_TIMEOUT_MS` is the server-side `statement_timeout`, also
 * enforced on the client (plus 2 s) for a server that stopped answering; idle connections close
 * after `TRACE_DB_IDLE_TIMEOUT_MS`, and a transaction left idle is ended by the server after
 * twice the statement timeout.
 */
export interface DbTimeouts {
  connectTimeoutMs: number;
  statementTimeoutMs: number;
  idleTimeoutMs: number;
}

export const DB_TIMEOUT_DEFAULTS: DbTimeouts = { connectTimeoutMs: 5_000, statementTimeoutMs: 30_000, idleTimeoutMs: 30_000 };

export function dbTimeoutsFromEnv(env: NodeJS.ProcessEnv = process.env): DbTimeouts {
  return {
    connectTimeoutMs: intFromEnv(env, 'TRACE_DB_CONNECT_TIMEOUT_MS', DB_TIMEOUT_DEFAULTS.connectTimeoutMs, { min: 100, max: 600_000 }),
    statementTimeoutMs: intFromEnv(env, 'TRACE_DB_STATEMENT_TIMEOUT_MS', DB_TIMEOUT_DEFAULTS.statementTimeoutMs, { min: 100, max: 3_600_000 }),
    idleTimeoutMs: intFromEnv(env, 'TRACE_DB_IDLE_TIMEOUT_MS', DB_TIMEOUT_DEFAULTS.idleTimeoutMs, { min: 100, max: 3_600_000 }),
  };
}

/** How long SIGTERM/SIGINT lets in-flight work finish before its leases are released (`TRACE_SHUTDOWN_GRACE_SECONDS`, default 25 s). */
export const DEFAULT_SHUTDOWN_GRACE_SECONDS = 25;

export function shutdownGraceMsFromEnv(env: NodeJS.ProcessEnv = process.env): number {
  return intFromEnv(env, 'TRACE_SHUTDOWN_GRACE_SECONDS', DEFAULT_SHUTDOWN_GRACE_SECONDS, { min: 0, max: 3600 }) * 1000;
}

export const DEFAULT_PORTS = { gateway: 8080, dispatcher: 8081, query: 8082, rpcGateway: 8083 } as const;

export const liteJsonPath = (home: string) => join(home, 'lite.json');

/** Defaults from operations.md. */
export const DEFAULTS = {
  /** Ceiling on a task lease; the lease itself is the job's heartbeat_timeout_seconds. */
  leaseSeconds: 3600,
  heartbeatSeconds: 30,
  maxAttempts: 3,
  timeoutSeconds: 3600,
  outboxMaxAttempts: 20,
  bufferDlqMaxReceives: 10,
  capabilityTtlExtraSeconds: 300,
  capabilityTtlCapSeconds: 24 * 3600,
  maxBodyBytes: 1024 * 1024,
  maxDagYamlBytes: 256 * 1024,
} as const;
