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

export const DEFAULT_PORTS = { gateway: 8080, dispatcher: 8081, query: 8082, rpcGateway: 8083 } as const;

export const liteJsonPath = (home: string) => join(home, 'lite.json');

/** Defaults from operations.md. */
export const DEFAULTS = {
  leaseSeconds: 120,
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
