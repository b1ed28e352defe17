import type { FastifyInstance, FastifyRequest } from 'fastify';
import { z } from 'zod';
import { badRequest, notFound, payloadTooLarge } from '../../core/errors.js';
import { DEFAULTS } from '../../core/config.js';
import { header, parseInput, withYamlBodies } from '../../core/http.js';
import type { DispatcherContext } from '../service.js';
import { authenticate, type Principal } from '../identity.js';
import { activateDag, deployDag, listVersions } from '../dags.js';
import { getDataset, listDatasets } from '../registry.js';
import { datasetVersions, listDags } from '../lineage.js';
import { activateBody, dagNameParam, datasetNameParam } from './schemas.js';

/** `POST /v1/dags/{dag}/versions`: the YAML itself, or JSON `{yaml, activate?}`; `?activate=true`. */
export const dagDeployJsonBody = z.strictObject({ yaml: z.string(), activate: z.boolean().optional() });
export const dagDeployQuery = z.strictObject({ activate: z.enum(['true', 'false']).optional() });
export const datasetVersionsQuery = z.strictObject({ limit: z.coerce.number().int().min(1).max(1000).default(100) });

export function userAuth(ctx: DispatcherContext): (req: FastifyRequest) => Promise<Principal> {
  return (req) => authenticate(ctx.deps.state, ctx.deps.userVerifier, ctx.deps.orgId, header(req, 'authorization'));
}

/** User routes (Bearer JWT): DAG deployment and dataset discovery. */
export function userRoutes(app: FastifyInstance, ctx: DispatcherContext): void {
  const { deps } = ctx;
  const auth = userAuth(ctx);

  // YAML (or JSON {yaml}) bodies.
  withYamlBodies(app, (scope) => {
    scope.post('/v1/dags/:dag/versions', async (req, reply) => {
      const p = await auth(req);
      const { dag } = parseInput(z.strictObject({ dag: dagNameParam }), req.params, 'route');
      const { activate } = parseInput(dagDeployQuery, req.query, 'query string');
      let yaml: string;
      let activateFlag = activate === 'true';
      if (typeof req.body === 'string') {
        yaml = req.body;
      } else {
        const b = parseInput(dagDeployJsonBody, req.body);
        yaml = b.yaml;
        activateFlag ||= b.activate ?? false;
      }
      if (Buffer.byteLength(yaml) > DEFAULTS.maxDagYamlBytes) throw payloadTooLarge(`DAG YAML is larger than ${DEFAULTS.maxDagYamlBytes} bytes`);
      if (yaml.trim() === '') throw badRequest('DAG YAML is empty', 'YAML_MALFORMED');
      const r = await deployDag(deps.state, ctx.dagParser, p.org_id, p.user_id, yaml, {
        activate: activateFlag, expectName: dag, allowHidden: deps.allowHiddenOperators ?? false,
      });
      if (r.active) ctx.kickOutbox();
      req.log.info({ org_id: p.org_id, dag, dag_version_id: r.dag_version_id, created: r.created }, 'dag deployed');
      return reply.status(r.created ? 201 : 200).send(r);
    });
  });

  app.get('/v1/dags', async (req) => {
    const p = await auth(req);
    parseInput(z.strictObject({}), req.query ?? {}, 'query string');
    return { dags: await listDags(deps.state, p.org_id) };
  });

  app.get('/v1/dags/:dag/versions', async (req) => {
    const p = await auth(req);
    const { dag } = parseInput(z.strictObject({ dag: dagNameParam }), req.params, 'route');
    return { dag_name: dag, versions: await listVersions(deps.state, p.org_id, dag) };
  });

  app.put('/v1/dags/:dag/active', async (req) => {
    const p = await auth(req);
    const { dag } = parseInput(z.strictObject({ dag: dagNameParam }), req.params, 'route');
    const body = parseInput(activateBody, req.body);
    const r = await activateDag(deps.state, p.org_id, dag, body.dag_version_id);
    ctx.kickOutbox();
    req.log.info({ org_id: p.org_id, dag, dag_version_id: body.dag_version_id }, 'dag activated');
    return { ...r, active: true };
  });

  app.get('/v1/datasets', async (req) => {
    const p = await auth(req);
    return { datasets: await listDatasets(deps.state, p) };
  });

  app.get('/v1/datasets/:name', async (req) => {
    const p = await auth(req);
    const { name } = parseInput(z.strictObject({ name: datasetNameParam }), req.params, 'route');
    const d = await getDataset(deps.state, p, name);
    if (!d) throw notFound(`no dataset named ${name}`, 'DATASET_NOT_FOUND');
    return d;
  });

  app.get('/v1/datasets/:name/versions', async (req) => {
    const p = await auth(req);
    const { name } = parseInput(z.strictObject({ name: datasetNameParam }), req.params, 'route');
    const { limit } = parseInput(datasetVersionsQuery, req.query ?? {}, 'query string');
    const v = await datasetVersions(deps.state, p, name, limit);
    if (!v) throw notFound(`no dataset named ${name}`, 'DATASET_NOT_FOUND');
    return { name, ...v };
  });
}
