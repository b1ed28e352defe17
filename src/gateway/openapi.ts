/**
 * `GET /v1/openapi.json`: an OpenAPI 3.1 document of every route the Gateway forwards (ROUTES in
 * routes.ts), generated from the zod schemas the backends validate those routes with
 * (`z.toJSONSchema`). The route list comes from ROUTES itself, so the document cannot name a
 * route the Gateway refuses or miss one it forwards; the schemas are the handlers' own.
 *
 * The backend modules are imported on the first request only, so starting a Gateway loads none
 * of them.
 */
import { z } from 'zod';
import { ROUTES, PARAM_RE, type RouteRule } from './routes.js';

/** What the document says about one method + pattern beyond the route itself. */
interface OperationSpec {
  summary: string;
  body?: z.ZodType;
  /** The route also takes the raw YAML document as its body. */
  yaml?: boolean;
  query?: z.ZodType;
  success?: number;
  /** A webhook ingress route: no user token, a raw body of any type, the signature headers. */
  webhook?: true;
}

type Schemas = Record<string, OperationSpec>;

async function operationSpecs(): Promise<Schemas> {
  const [query, user, schemas, bundles, alerting, alertSchemas, admin, datasetAdmin, chainSync, exports, gc, invalidations] = await Promise.all([
    import('../query/service.js'),
    import('../dispatcher/http/user-routes.js'),
    import('../dispatcher/http/schemas.js'),
    import('../dispatcher/udf/bundle-routes.js'),
    import('../alerting/plugin.js'),
    import('../alerting/schemas.js'),
    import('../dispatcher/http/admin-routes.js'),
    import('../dispatcher/http/dataset-admin-routes.js'),
    import('../dispatcher/chain-sync/routes.js'),
    import('../dispatcher/http/export-routes.js'),
    import('../dispatcher/http/gc-routes.js'),
    import('../dispatcher/http/invalidation-routes.js'),
  ]);
  const orgs = await import('../dispatcher/http/org-routes.js');
  return {
    'POST /v1/query': { summary: 'Run validated read-only SQL over one or several datasets (mode batch: 202 with a query_id)', body: query.userBodySchema },
    'GET /v1/query-results/{id}': { summary: 'A batch query result: its status and, once succeeded, a page of rows (cursor, limit)', query: query.resultPageQuery },
    'GET /v1/query-results/{id}/export': { summary: 'The whole batch query result as one file (format csv or parquet)', query: query.resultExportQuery },
    'GET /v1/datasets': { summary: 'List the datasets the caller may read' },
    'GET /v1/datasets/{name}': { summary: 'One dataset and its current version' },
    'GET /v1/datasets/{name}/versions': { summary: 'Versions of a dataset with partitions, the producing task and its inputs', query: user.datasetVersionsQuery },
    'GET /v1/datasets/{name}/export': { summary: 'The Cryo-named files of a version, one per range, nothing superseded', query: exports.exportQuery },
    'GET /v1/datasets/{name}/export/files/{file}': { summary: 'One file of a version\'s export (Parquet)', query: exports.exportFileQuery },
    'GET /v1/dags': { summary: 'Every DAG with its versions and the active one' },
    'POST /v1/dags/{dag}/versions': { summary: 'Deploy a DAG version (idempotent by YAML hash)', body: user.dagDeployJsonBody, yaml: true, query: user.dagDeployQuery, success: 201 },
    'GET /v1/dags/{dag}/versions': { summary: 'List the versions of a DAG' },
    'PUT /v1/dags/{dag}/active': { summary: 'Make a version the active one (atomic cutover)', body: schemas.activateBody },
    'POST /v1/udf/bundles': { summary: 'Open a UDF bundle upload', body: bundles.openBody, success: 201 },
    'POST /v1/udf/bundles/{id}/finalize': { summary: 'Check and finalize an uploaded bundle', body: bundles.finalizeBody },
    'POST /v1/alerts': { summary: 'Create an alert', body: alertSchemas.definitionBodySchema, success: 201 },
    'GET /v1/alerts': { summary: 'List alerts' },
    'GET /v1/alerts/{id}': { summary: 'One alert' },
    'PUT /v1/alerts/{id}': { summary: 'Replace an alert', body: alertSchemas.definitionBodySchema },
    'DELETE /v1/alerts/{id}': { summary: 'Delete an alert' },
    'GET /v1/alerts/{id}/deliveries': { summary: 'Deliveries of an alert', query: alerting.deliveriesQuery },
    'POST /v1/dags/{dag}/jobs/{job}/trigger': { summary: 'Trigger a manual or clock-driven source job (admin)', body: schemas.triggerBody },
    'GET /v1/tasks': { summary: 'List tasks (admin)', query: admin.tasksQuery },
    'GET /v1/tasks/{id}': { summary: 'One task with its attempts, lease and errors (admin)' },
    'POST /v1/tasks/{id}/cancel': { summary: 'Cancel a task (admin)' },
    'POST /v1/datasets/{name}/register': { summary: 'Register or refresh an external dataset (admin)', body: datasetAdmin.registerBody },
    'POST /v1/gc': { summary: 'Run one garbage collection pass, or list what it would remove (admin)', body: gc.gcBody },
    'POST /v1/chain-sync': { summary: 'Apply a chain_sync job (admin; idempotent by name)', body: chainSync.chainSyncJsonBody, yaml: true },
    'GET /v1/chain-sync': { summary: 'Chain syncs and their per-stream progress (admin)' },
    'GET /v1/chain-sync/{name}': { summary: 'One chain sync (admin)' },
    'POST /v1/chain-sync/{name}/pause': { summary: 'Pause a chain sync (admin)' },
    'POST /v1/chain-sync/{name}/resume': { summary: 'Resume a chain sync, re-checking its chain first (admin)' },
    'GET /v1/datasets/{name}/invalidations': { summary: 'The invalidations of a dataset with their status, re-runs and cascades', query: invalidations.invalidationsQuery },
    'POST /v1/datasets/{name}/invalidations': { summary: 'Invalidate a partition or a block range of a dataset: its producing task, then each task downstream, re-runs once (admin)', body: invalidations.invalidationBody, success: 201 },
    'GET /v1/admin/orgs': { summary: 'The deployment org (v1 is single-org) with its member and admin counts (admin)' },
    'GET /v1/admin/orgs/{org}': { summary: 'The deployment org by slug or id, with its roles; any other org is 404 (admin)' },
    'GET /v1/admin/roles': { summary: 'The org roles and how many users hold each (admin)' },
    'GET /v1/admin/users': { summary: 'Users of the org with their roles, removed ones included (admin)', query: orgs.usersQuery },
    'POST /v1/admin/users': { summary: 'Add a user (IdP subject) to the org with one role, or let a removed one back in (admin)', body: orgs.addUserBody, success: 201 },
    'GET /v1/admin/users/{id}': { summary: 'One user of the org with its roles (admin)' },
    'DELETE /v1/admin/users/{id}': { summary: 'Remove a user from the org: every role goes, access ends on the next request; the last admin cannot go (admin)' },
    'GET /v1/admin/members': { summary: 'Current members of the org with their roles (admin)', query: orgs.membersQuery },
    'POST /v1/admin/members': { summary: 'Grant a user one more role (idempotent) (admin)', body: orgs.grantBody, success: 201 },
    'PUT /v1/admin/members/{id}': { summary: 'Make a role the user\'s only role; demoting the last admin is refused (admin)', body: orgs.setRoleBody },
    'DELETE /v1/admin/members/{id}/{role}': { summary: 'Revoke one role; the last admin keeps it (admin)' },
    'GET /v1/dags/{dag}/webhooks': { summary: 'The webhook sources of the active version: path, URL and signing secret (admin)' },
    'POST /v1/dags/{dag}/webhooks/{job}/rotate': { summary: 'Replace a webhook source\'s signing secret; the old one stops working at once (admin)' },
    'POST /v1/webhooks/{path+}': { summary: 'Deliver a signed event to a webhook source; 202 with the task it created', webhook: true, success: 202 },
  };
}

/** The stable error shape every failure has. */
const ERROR_SCHEMA = {
  type: 'object',
  required: ['error', 'code'],
  properties: { error: { type: 'string' }, code: { type: 'string' } },
  additionalProperties: true,
};

function jsonSchema(schema: z.ZodType, io: 'input' | 'output' = 'input'): Record<string, unknown> {
  const out = z.toJSONSchema(schema, { io, unrepresentable: 'any', target: 'draft-2020-12' }) as Record<string, unknown>;
  delete out.$schema;
  return out;
}

function operation(rule: RouteRule, method: string, spec: OperationSpec | undefined): Record<string, unknown> {
  if (!spec) throw new Error(`no OpenAPI description for ${method} ${rule.pattern}`);
  const params: unknown[] = [...rule.pattern.matchAll(/\{([a-z]+)(\+?)\}/g)].map((m) => (m[2] === '+'
    ? { name: m[1], in: 'path', required: true, description: 'One or more segments (a webhook_path such as hooks/my_feed)', schema: { type: 'string' } }
    : { name: m[1], in: 'path', required: true, schema: { type: 'string', pattern: PARAM_RE.source } }));
  if (spec.webhook) {
    params.push(
      { name: 'x-trace-webhook-id', in: 'header', required: true, description: 'Event id, unique per source (replays are 409)', schema: { type: 'string', pattern: '^[A-Za-z0-9._:-]{1,200}$' } },
      { name: 'x-trace-webhook-timestamp', in: 'header', required: true, description: 'Unix seconds; outside the tolerance (default 300 s) is 401', schema: { type: 'string', pattern: '^[0-9]{1,12}$' } },
      { name: 'x-trace-webhook-signature', in: 'header', required: true, description: 'v1=<hex HMAC-SHA256 of "timestamp.id.body" keyed by the source secret>', schema: { type: 'string' } },
    );
  }
  const query: unknown[] = [];
  if (spec.query) {
    const q = jsonSchema(spec.query) as { properties?: Record<string, unknown>; required?: string[] };
    for (const [name, schema] of Object.entries(q.properties ?? {})) query.push({ name, in: 'query', required: q.required?.includes(name) ?? false, schema });
  }
  const op: Record<string, unknown> = {
    operationId: `${method.toLowerCase()}${rule.pattern.replace('+}', '}').replace(/\{([a-z]+)\}/g, 'By-$1').split(/[/-]/).filter(Boolean).map((w) => w[0]!.toUpperCase() + w.slice(1)).join('')}`,
    summary: spec.summary,
    tags: [rule.audience],
    ...(params.length + query.length > 0 ? { parameters: [...params, ...query] } : {}),
    responses: {
      [String(spec.success ?? 200)]: { description: 'Success', content: { 'application/json': { schema: { type: 'object' } } } },
      default: { description: 'Failure in the stable error shape', content: { 'application/json': { schema: { $ref: '#/components/schemas/Error' } } } },
    },
  };
  if (spec.webhook) {
    op.security = [];
    op.requestBody = { required: false, content: { '*/*': { schema: {} } } };
  }
  if (spec.body) {
    op.requestBody = {
      required: true,
      content: {
        'application/json': { schema: jsonSchema(spec.body) },
        ...(spec.yaml ? { 'application/yaml': { schema: { type: 'string' } } } : {}),
      },
    };
  }
  return op;
}

let cached: Promise<Record<string, unknown>> | undefined;

/** The document (built once per process). */
export function openApiDocument(): Promise<Record<string, unknown>> {
  cached ??= (async () => {
    const specs = await operationSpecs();
    const paths: Record<string, Record<string, unknown>> = {};
    for (const rule of ROUTES) {
      for (const method of rule.methods) {
        (paths[rule.pattern.replace('+}', '}')] ??= {})[method.toLowerCase()] = operation(rule, method, specs[`${method} ${rule.pattern}`]);
      }
    }
    return {
      openapi: '3.1.0',
      info: { title: 'Trace API', version: '1', description: 'The user and admin routes of the Trace Gateway. Every route takes a Bearer user token (admin routes need the admin role), except webhook deliveries, which carry an HMAC signature instead.' },
      paths,
      components: {
        schemas: { Error: ERROR_SCHEMA },
        securitySchemes: { bearer: { type: 'http', scheme: 'bearer', bearerFormat: 'JWT' } },
      },
      security: [{ bearer: [] }],
    };
  })();
  return cached;
}
