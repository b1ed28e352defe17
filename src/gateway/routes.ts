/**
 * The Gateway's route allowlist: the only method + path pairs the public entry point forwards.
 * Anything not in ROUTES is answered 404 by the Gateway itself and never reaches a backend; in
 * particular `/internal/*` (worker-only) and `/v1/task/*` (task-scoped) have no entry here and
 * must never get one (DESIGN.md section 3, user_api_contracts.md "Explicit non-user routes").
 *
 * Patterns are matched segment by segment against the canonical path (see target.ts): literal
 * segments exactly and case-sensitively, `{param}` segments against PARAM_RE.
 */

export type Upstream = 'dispatcher' | 'query';
export type Method = 'GET' | 'POST' | 'PUT' | 'DELETE';
/** `query` requests also draw from the per-user query bucket (10/min by default). */
export type RateClass = 'default' | 'query';

export interface RouteRule {
  methods: readonly Method[];
  pattern: string;
  upstream: Upstream;
  /**
   * Who the backend lets in; informational here, the backend enforces it. `webhook` routes take
   * no user token: the backend checks the delivery's HMAC signature instead.
   */
  audience: 'user' | 'admin' | 'webhook';
  rateClass: RateClass;
}

const user = (methods: Method[], pattern: string, upstream: Upstream = 'dispatcher', rateClass: RateClass = 'default'): RouteRule =>
  ({ methods, pattern, upstream, audience: 'user', rateClass });
const admin = (methods: Method[], pattern: string): RouteRule =>
  ({ methods, pattern, upstream: 'dispatcher', audience: 'admin', rateClass: 'default' });

export const ROUTES: readonly RouteRule[] = [
  // ---- User routes (user_api_contracts.md "Route allowlist"; DESIGN.md section 3) ----
  // Query Service
  user(['POST'], '/v1/query', 'query', 'query'),
  // Query Service: batch query results (ADR 0005); polling and paging draw from the default bucket
  user(['GET'], '/v1/query-results/{id}', 'query'),
  user(['GET'], '/v1/query-results/{id}/export', 'query'),
  // Dispatcher: dataset discovery
  user(['GET'], '/v1/datasets'),
  user(['GET'], '/v1/datasets/{name}'),
  user(['GET'], '/v1/datasets/{name}/export'),
  user(['GET'], '/v1/datasets/{name}/export/files/{file}'),
  user(['GET'], '/v1/datasets/{name}/versions'),
  // Dispatcher: a dataset's invalidation history (read access as for the dataset)
  user(['GET'], '/v1/datasets/{name}/invalidations'),
  // Dispatcher: DAG deployment (GET /v1/dags lists every DAG with its versions and the active one)
  user(['GET'], '/v1/dags'),
  user(['POST', 'GET'], '/v1/dags/{dag}/versions'),
  user(['PUT'], '/v1/dags/{dag}/active'),
  // Dispatcher: UDF bundle upload sessions
  user(['POST'], '/v1/udf/bundles'),
  user(['POST'], '/v1/udf/bundles/{id}/finalize'),
  // Dispatcher: alerts
  user(['POST', 'GET'], '/v1/alerts'),
  user(['GET', 'PUT', 'DELETE'], '/v1/alerts/{id}'),
  user(['GET'], '/v1/alerts/{id}/deliveries'),

  // ---- Admin routes beside the user routes on the Dispatcher (the admin role is checked there) ----
  admin(['POST'], '/v1/dags/{dag}/jobs/{job}/trigger'),
  admin(['GET'], '/v1/tasks'),
  admin(['GET'], '/v1/tasks/{id}'),
  admin(['POST'], '/v1/tasks/{id}/cancel'),
  admin(['POST'], '/v1/datasets/{name}/register'),
  admin(['POST'], '/v1/gc'),
  // chain_sync admin surface (src/dispatcher/chain-sync/routes.ts): apply, status, pause/resume.
  admin(['POST', 'GET'], '/v1/chain-sync'),
  admin(['GET'], '/v1/chain-sync/{name}'),
  admin(['POST'], '/v1/chain-sync/{name}/pause'),
  admin(['POST'], '/v1/chain-sync/{name}/resume'),
  // Data invalidations (src/dispatcher/invalidations.ts): record one; the Dispatcher re-runs what it covers.
  admin(['POST'], '/v1/datasets/{name}/invalidations'),
  // The deployment org, its users, roles and memberships (src/dispatcher/http/org-routes.ts).
  admin(['GET'], '/v1/admin/orgs'),
  admin(['GET'], '/v1/admin/orgs/{org}'),
  admin(['GET'], '/v1/admin/roles'),
  admin(['GET', 'POST'], '/v1/admin/users'),
  admin(['GET', 'DELETE'], '/v1/admin/users/{id}'),
  admin(['GET', 'POST'], '/v1/admin/members'),
  admin(['PUT'], '/v1/admin/members/{id}'),
  admin(['DELETE'], '/v1/admin/members/{id}/{role}'),
  admin(['GET'], '/v1/dags/{dag}/webhooks'),
  admin(['POST'], '/v1/dags/{dag}/webhooks/{job}/rotate'),

  // ---- Webhook ingress (src/dispatcher/http/webhook-routes.ts): signed by the source's secret ----
  // `{path+}` is one or more segments (a webhook_path like `hooks/my_feed`).
  { methods: ['POST'], pattern: '/v1/webhooks/{path+}', upstream: 'dispatcher', audience: 'webhook', rateClass: 'default' },
];

/**
 * A path parameter: a name, id or UUID. Every name Trace issues (DAG, job, dataset, bundle,
 * alert and task ids) fits; the first character being alphanumeric rules out `.`, `..` and
 * option-like values.
 */
export const PARAM_RE = /^[A-Za-z0-9][A-Za-z0-9._~:-]{0,255}$/;

interface CompiledRule {
  rule: RouteRule;
  parts: Array<{ literal: string } | { param: string; rest?: true }>;
}

function compile(rules: readonly RouteRule[]): CompiledRule[] {
  return rules.map((rule) => {
    if (!rule.pattern.startsWith('/v1/')) throw new TypeError(`gateway route ${rule.pattern} must live under /v1/`);
    const segs = rule.pattern.slice(1).split('/');
    const parts = segs.map((seg, i) => {
      const m = /^\{([a-z]+)(\+?)\}$/.exec(seg);
      if (m && m[2] === '+' && i !== segs.length - 1) throw new TypeError(`gateway route ${rule.pattern}: {${m[1]}+} must be the last segment`);
      if (m) return m[2] === '+' ? { param: m[1]!, rest: true as const } : { param: m[1]! };
      if (!/^[a-z0-9-]+$/.test(seg)) throw new TypeError(`gateway route ${rule.pattern} has a bad segment`);
      return { literal: seg };
    });
    if (parts[1] && 'literal' in parts[1] && parts[1].literal === 'task') throw new TypeError('/v1/task/* must never be routed by the gateway');
    return { rule, parts };
  });
}

export interface RouteMatch {
  rule: RouteRule;
  params: Record<string, string>;
}

export class RouteTable {
  readonly #compiled: CompiledRule[];

  constructor(rules: readonly RouteRule[] = ROUTES) {
    this.#compiled = compile(rules);
  }

  /** Every rule whose pattern matches these (decoded, canonical) segments, in table order. */
  matchPath(segments: readonly string[]): RouteMatch[] {
    const out: RouteMatch[] = [];
    outer: for (const c of this.#compiled) {
      const last = c.parts[c.parts.length - 1]!;
      const rest = 'rest' in last && last.rest === true;
      if (rest ? segments.length < c.parts.length : c.parts.length !== segments.length) continue;
      const params: Record<string, string> = {};
      for (let i = 0; i < segments.length; i++) {
        const part = c.parts[Math.min(i, c.parts.length - 1)]!;
        const seg = segments[i]!;
        if ('literal' in part) {
          if (part.literal !== seg) continue outer;
        } else if (part.rest) {
          if (!PARAM_RE.test(seg)) continue outer;
          params[part.param] = params[part.param] === undefined ? seg : `${params[part.param]}/${seg}`;
        } else {
          if (!PARAM_RE.test(seg)) continue outer;
          params[part.param] = seg;
        }
      }
      out.push({ rule: c.rule, params });
    }
    return out;
  }
}

/** The methods any of these matches allows (for CORS preflight answers). */
export function allowedMethods(matches: readonly RouteMatch[]): Method[] {
  return [...new Set(matches.flatMap((m) => m.rule.methods))];
}
