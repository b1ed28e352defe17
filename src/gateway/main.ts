import type { FastifyInstance } from 'fastify';
import { DEFAULT_PORTS, readEnv } from '../core/config.js';
import { serve } from '../core/http.js';
import { createLogger, type Logger } from '../core/log.js';
import { createUserVerifier, userVerifierConfigFromEnv, type UserVerifier } from '../auth/user.js';
import { parseCorsOrigins } from './cors.js';
import { buildGateway, resolveLimits, type GatewayLimits } from './gateway.js';

export interface GatewayHandle {
  url: string;
  app: FastifyInstance;
  stop(): Promise<void>;
}

export interface StartGatewayOptions {
  dispatcherUrl: string;
  queryUrl: string;
  userVerifier: UserVerifier;
  host?: string;
  /** 0 picks a free port; default 8080. */
  port?: number;
  limits?: Partial<GatewayLimits>;
  corsOrigins?: readonly string[];
  /** The web console (console/README.md). */
  console?: { enabled?: boolean; secureCookies?: boolean };
  log?: Logger;
}

/** Builds and starts the Gateway (used by `trace lite up` and by runGatewayProcess). */
export async function startGateway(opts: StartGatewayOptions): Promise<GatewayHandle> {
  const log = opts.log ?? createLogger('gateway');
  const app = buildGateway({
    routes: { dispatcherUrl: opts.dispatcherUrl, queryUrl: opts.queryUrl },
    userVerifier: opts.userVerifier,
    ...(opts.limits ? { limits: opts.limits } : {}),
    cors: { allowedOrigins: opts.corsOrigins ?? [] },
    ...(opts.console ? { console: opts.console } : {}),
    log,
  });
  return serve(app, opts.host ?? '127.0.0.1', opts.port ?? DEFAULT_PORTS.gateway);
}

const ENV_LIMITS: Array<[keyof GatewayLimits, string]> = [
  ['userPerMinute', 'TRACE_GATEWAY_RATE_USER_PER_MINUTE'],
  ['orgPerMinute', 'TRACE_GATEWAY_RATE_ORG_PER_MINUTE'],
  ['queryPerUserPerMinute', 'TRACE_GATEWAY_RATE_QUERY_PER_MINUTE'],
  ['maxBodyBytes', 'TRACE_GATEWAY_MAX_BODY_BYTES'],
  ['dispatcherTimeoutMs', 'TRACE_GATEWAY_DISPATCHER_TIMEOUT_MS'],
  ['queryTimeoutMs', 'TRACE_GATEWAY_QUERY_TIMEOUT_MS'],
];

/**
 * The Gateway's own optional settings: `TRACE_GATEWAY_CORS_ORIGINS` (comma-separated exact
 * origins, default none) and the `TRACE_GATEWAY_*` limits above (defaults in
 * DEFAULT_GATEWAY_LIMITS). Throws a TypeError naming the variable on a bad value.
 */
export function gatewaySettingsFromEnv(penv: NodeJS.ProcessEnv): { limits: GatewayLimits; corsOrigins: string[]; console: { secureCookies: boolean } } {
  const limits: Partial<GatewayLimits> = {};
  for (const [key, name] of ENV_LIMITS) {
    const raw = penv[name]?.trim();
    if (raw === undefined || raw === '') continue;
    const n = Number(raw);
    if (!/^[0-9]+$/.test(raw) || !Number.isSafeInteger(n) || n < 1) throw new TypeError(`${name} must be a positive integer`);
    limits[key] = n;
  }
  return { limits: resolveLimits(limits), corsOrigins: parseCorsOrigins(penv.TRACE_GATEWAY_CORS_ORIGINS), console: { secureCookies: consoleSecureCookies(penv) } };
}

/** `TRACE_GATEWAY_CONSOLE_SECURE_COOKIES`: `true`/`1` marks the console session cookie Secure (default false). */
function consoleSecureCookies(penv: NodeJS.ProcessEnv): boolean {
  const raw = penv.TRACE_GATEWAY_CONSOLE_SECURE_COOKIES?.trim().toLowerCase();
  if (raw === undefined || raw === '' || raw === 'false' || raw === '0') return false;
  if (raw === 'true' || raw === '1') return true;
  throw new TypeError('TRACE_GATEWAY_CONSOLE_SECURE_COOKIES must be true or false');
}

/**
 * `trace gateway`: the Gateway as its own service. Backends default to the standard local
 * ports (TRACE_DISPATCHER_URL http://127.0.0.1:8081, TRACE_QUERY_URL http://127.0.0.1:8082);
 * the user token settings (TRACE_USER_JWT_SECRET, or the three TRACE_OIDC_* variables) are
 * required, because the Gateway verifies every Bearer token before proxying.
 */
export async function runGatewayProcess(penv: NodeJS.ProcessEnv, opts: { host?: string; port?: number; log?: Logger } = {}): Promise<GatewayHandle> {
  const env = readEnv(penv);
  const userCfg = userVerifierConfigFromEnv(env);
  if (!userCfg) throw new Error('missing configuration: TRACE_USER_JWT_SECRET or TRACE_OIDC_ISSUER/TRACE_OIDC_AUDIENCE/TRACE_OIDC_JWKS_URL');
  const settings = gatewaySettingsFromEnv(penv);
  const log = opts.log ?? createLogger('gateway');
  const dispatcherUrl = env.dispatcherUrl ?? `http://127.0.0.1:${DEFAULT_PORTS.dispatcher}`;
  const queryUrl = env.queryUrl ?? `http://127.0.0.1:${DEFAULT_PORTS.query}`;
  const handle = await startGateway({
    dispatcherUrl,
    queryUrl,
    userVerifier: createUserVerifier(userCfg),
    host: opts.host ?? '127.0.0.1',
    port: opts.port ?? DEFAULT_PORTS.gateway,
    limits: settings.limits,
    corsOrigins: settings.corsOrigins,
    console: settings.console,
    log,
  });
  log.info({ url: handle.url, user_tokens: userCfg.mode, cors_origins: settings.corsOrigins.length }, 'gateway listening');
  return handle;
}
