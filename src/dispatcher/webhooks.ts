/**
 * Webhook sources (dag_configuration.md `source: {kind: webhook, webhook_path}`; dispatcher.md:
 * the Gateway invokes the Webhook Source, which emits an event that creates the source task).
 *
 * Owns: the per-source signing secrets (`webhook_secrets`), the signature check, the per-source
 * rate limit and the ingest transaction that records the event id (`webhook_deliveries`, the
 * replay protection) together with the task it creates. Secrets never reach a log line.
 */
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import type { Db, Queryable } from '../db/db.js';
import { TraceError, badRequest, notFound, type Problem } from '../core/errors.js';
import { createTasks } from './tasks/create.js';

/** Request headers of a signed delivery. */
export const WEBHOOK_ID_HEADER = 'x-trace-webhook-id';
export const WEBHOOK_TIMESTAMP_HEADER = 'x-trace-webhook-timestamp';
export const WEBHOOK_SIGNATURE_HEADER = 'x-trace-webhook-signature';

/** `webhook_path` as stored and matched: without its optional leading slash. */
export const normalizeWebhookPath = (p: string): string => p.replace(/^\/+/, '');

/** A new signing secret: 32 random bytes, base64url, with a recognizable prefix. */
export const newWebhookSecret = (): string => `whsec_${randomBytes(32).toString('base64url')}`;

/** `v1=<hex>` of HMAC-SHA256(secret, `${timestamp}.${id}.${body}`). */
export function webhookSignature(secret: string, timestamp: string, id: string, body: Buffer | string): string {
  const h = createHmac('sha256', secret);
  h.update(`${timestamp}.${id}.`);
  h.update(body);
  return `v1=${h.digest('hex')}`;
}

/** Constant-time comparison of a received signature header with the expected one. */
export function signatureMatches(expected: string, received: string): boolean {
  const a = Buffer.from(expected);
  const b = Buffer.from(received);
  if (a.length !== b.length) return false;
  return timingSafeEqual(a, b);
}

const unauthenticated = (message: string, code: string) => new TraceError(401, code, message);

/** Per-source token buckets: `perMinute` tokens, refilled continuously; in-memory, per process. */
export class WebhookRateLimiter {
  readonly #buckets = new Map<string, { tokens: number; at: number }>();
  constructor(private readonly perMinute: number, private readonly clock: () => number = Date.now, private readonly maxKeys = 10_000) {}

  /** Takes a token, or answers how many seconds until one is there. */
  take(key: string): { ok: true } | { ok: false; retryAfterSeconds: number } {
    const now = this.clock();
    const perMs = this.perMinute / 60_000;
    const b = this.#buckets.get(key);
    const tokens = b ? Math.min(this.perMinute, b.tokens + Math.max(0, now - b.at) * perMs) : this.perMinute;
    if (tokens < 1) return { ok: false, retryAfterSeconds: Math.max(1, Math.ceil((1 - tokens) / perMs / 1000)) };
    this.#buckets.delete(key);
    this.#buckets.set(key, { tokens: tokens - 1, at: now });
    if (this.#buckets.size > this.maxKeys) {
      const oldest = this.#buckets.keys().next();
      if (!oldest.done) this.#buckets.delete(oldest.value);
    }
    return { ok: true };
  }
}

// ---- deploy -------------------------------------------------------------------------------

/**
 * Deploy-time checks of a DAG's webhook sources: each `webhook_path` appears once in the DAG and
 * is not served by another active DAG of the org. The caller holds the org's webhook lock.
 */
export async function webhookPathProblems(q: Queryable, orgId: string, dag: string, jobs: Array<{ source?: { kind: string; webhook_path?: string } | undefined }>): Promise<Problem[]> {
  const problems: Problem[] = [];
  const seen = new Map<string, number>();
  const mine: Array<{ path: string; index: number }> = [];
  jobs.forEach((j, ji) => {
    if (j.source?.kind !== 'webhook' || j.source.webhook_path === undefined) return;
    const path = normalizeWebhookPath(j.source.webhook_path);
    const prev = seen.get(path);
    if (prev !== undefined) problems.push({ path: `jobs[${ji}].source.webhook_path`, message: `${JSON.stringify(path)} is also the webhook_path of jobs[${prev}]` });
    else seen.set(path, ji);
    mine.push({ path, index: ji });
  });
  if (mine.length === 0) return problems;
  const taken = await q.query<{ path: string; dag_name: string; name: string }>(
    `SELECT ltrim(j.source->>'webhook_path', '/') AS path, j.dag_name, j.name
     FROM jobs j JOIN dag_current_versions d ON d.dag_version_id = j.dag_version_id
     WHERE j.org_id = $1 AND j.dag_name <> $2 AND j.source->>'kind' = 'webhook'
       AND ltrim(j.source->>'webhook_path', '/') = ANY ($3::text[])`,
    [orgId, dag, mine.map((m) => m.path)]);
  const owner = new Map(taken.rows.map((r) => [r.path, `${r.dag_name}.${r.name}`]));
  for (const m of mine) {
    const o = owner.get(m.path);
    if (o) problems.push({ path: `jobs[${m.index}].source.webhook_path`, message: `${JSON.stringify(m.path)} is already served by the active DAG job ${o}; a webhook_path is unique in the org` });
  }
  return problems;
}

/** Serializes webhook path checks of one org (deploys and activations of different DAGs). */
export const lockWebhookPaths = (q: Queryable, orgId: string) => q.query('SELECT pg_advisory_xact_lock(hashtext($1))', [`webhook_paths:${orgId}`]);

/** A secret for every webhook source of this version that has none yet (kept across versions). */
export async function ensureWebhookSecrets(q: Queryable, orgId: string, dag: string, jobNames: string[]): Promise<void> {
  if (jobNames.length === 0) return;
  await q.query(
    `INSERT INTO webhook_secrets (org_id, dag_name, job_name, secret)
     SELECT $1, $2, x.job, x.secret FROM unnest($3::text[], $4::text[]) AS x(job, secret)
     ON CONFLICT (org_id, dag_name, job_name) DO NOTHING`,
    [orgId, dag, jobNames, jobNames.map(() => newWebhookSecret())]);
}

/** Activation check: the version's webhook paths must be free in the org (409 otherwise). */
export async function assertWebhookPathsFree(q: Queryable, orgId: string, dag: string, versionId: string): Promise<void> {
  const jobs = await q.query<{ name: string; source: { kind: string; webhook_path?: string } }>(
    `SELECT name, source FROM jobs WHERE dag_version_id = $1 AND source->>'kind' = 'webhook' ORDER BY name`, [versionId]);
  if (jobs.rows.length === 0) return;
  await lockWebhookPaths(q, orgId);
  const problems = await webhookPathProblems(q, orgId, dag, jobs.rows);
  if (problems.length > 0) throw new TraceError(409, 'WEBHOOK_PATH_TAKEN', `DAG ${dag} cannot be activated: ${problems[0]!.message}`, { problems });
  await ensureWebhookSecrets(q, orgId, dag, jobs.rows.map((j) => j.name));
}

// ---- admin --------------------------------------------------------------------------------

export interface WebhookSourceInfo {
  job: string;
  webhook_path: string;
  /** Relative to the Gateway's base URL. */
  url: string;
  secret: string;
  created_at: Date;
  rotated_at: Date | null;
}

const SOURCES_OF_DAG = `
SELECT j.name AS job, ltrim(j.source->>'webhook_path', '/') AS webhook_path, s.secret, s.created_at, s.rotated_at
FROM dag_current_versions d
JOIN jobs j ON j.dag_version_id = d.dag_version_id AND j.source->>'kind' = 'webhook'
JOIN webhook_secrets s ON s.org_id = j.org_id AND s.dag_name = j.dag_name AND s.job_name = j.name
WHERE d.org_id = $1 AND d.dag_name = $2 AND ($3::text IS NULL OR j.name = $3)
ORDER BY j.name`;

const info = (r: Omit<WebhookSourceInfo, 'url'>): WebhookSourceInfo => ({ ...r, url: `/v1/webhooks/${r.webhook_path}` });

/** The webhook sources of a DAG's active version, with their secrets (admin only). */
export async function listWebhookSources(db: Queryable, orgId: string, dag: string): Promise<WebhookSourceInfo[]> {
  const active = await db.query(`SELECT 1 FROM dag_current_versions WHERE org_id = $1 AND dag_name = $2`, [orgId, dag]);
  if (active.rows.length === 0) throw notFound(`DAG ${dag} has no active version`, 'DAG_NOT_FOUND');
  const r = await db.query<Omit<WebhookSourceInfo, 'url'>>(SOURCES_OF_DAG, [orgId, dag, null]);
  return r.rows.map(info);
}

/** Replaces a source's secret; the old one stops working at once. */
export async function rotateWebhookSecret(db: Db, orgId: string, dag: string, job: string): Promise<WebhookSourceInfo> {
  return db.tx(async (q) => {
    const r = await q.query<Omit<WebhookSourceInfo, 'url'>>(SOURCES_OF_DAG, [orgId, dag, job]);
    if (!r.rows[0]) throw notFound(`the active version of DAG ${dag} has no webhook source ${job}`, 'WEBHOOK_SOURCE_NOT_FOUND');
    const u = await q.query<{ secret: string; rotated_at: Date }>(
      `UPDATE webhook_secrets SET secret = $4, rotated_at = now() WHERE org_id = $1 AND dag_name = $2 AND job_name = $3 RETURNING secret, rotated_at`,
      [orgId, dag, job, newWebhookSecret()]);
    return info({ ...r.rows[0], ...u.rows[0]! });
  });
}

// ---- ingest -------------------------------------------------------------------------------

export interface WebhookSettings {
  toleranceSeconds: number;
  maxBodyBytes: number;
}

export interface WebhookDelivery {
  path: string;
  headers: { id?: string | undefined; timestamp?: string | undefined; signature?: string | undefined; contentType?: string | undefined };
  body: Buffer;
}

const SOURCE_BY_PATH = `
SELECT j.id AS job_id, j.dag_name, j.name AS job_name, s.secret
FROM jobs j
JOIN dag_current_versions d ON d.dag_version_id = j.dag_version_id
JOIN webhook_secrets s ON s.org_id = j.org_id AND s.dag_name = j.dag_name AND s.job_name = j.name
WHERE j.org_id = $1 AND j.source->>'kind' = 'webhook' AND ltrim(j.source->>'webhook_path', '/') = $2`;

/**
 * How long an accepted event id is remembered: a week, and always more than twice the tolerance
 * (a delivery stamped `tolerance` ahead of the clock is still acceptable `2 × tolerance` later).
 */
export const replayRetentionSeconds = (toleranceSeconds: number) => Math.max(7 * 86_400, 2 * toleranceSeconds + 60);

const PRUNE_DELIVERIES = `
DELETE FROM webhook_deliveries WHERE (org_id, dag_name, job_name, event_id) IN (
  SELECT org_id, dag_name, job_name, event_id FROM webhook_deliveries
  WHERE org_id = $1 AND dag_name = $2 AND job_name = $3 AND received_at < now() - make_interval(secs => $4)
  LIMIT 10)`;

const EVENT_ID_RE = /^[A-Za-z0-9._:-]{1,200}$/;

/**
 * Checks and records one signed delivery: 404 for a path no active DAG serves, 401 for a missing
 * or wrong signature or a timestamp outside the tolerance, 409 for an event id this source has
 * already accepted. On success the replay row and the task (its trigger carries the body) are
 * committed in one transaction.
 */
export async function ingestWebhook(db: Db, orgId: string, d: WebhookDelivery, s: WebhookSettings, now = Date.now()): Promise<{ task_id: string; dag: string; job: string; event_id: string }> {
  const path = normalizeWebhookPath(d.path);
  const src = (await db.query<{ job_id: string; dag_name: string; job_name: string; secret: string }>(SOURCE_BY_PATH, [orgId, path])).rows[0];
  if (!src) throw notFound('no active webhook source at this path', 'WEBHOOK_NOT_FOUND');
  const { id, timestamp, signature } = d.headers;
  if (id === undefined || timestamp === undefined || signature === undefined) {
    throw unauthenticated(`a signed delivery needs the ${WEBHOOK_ID_HEADER}, ${WEBHOOK_TIMESTAMP_HEADER} and ${WEBHOOK_SIGNATURE_HEADER} headers`, 'WEBHOOK_SIGNATURE_MISSING');
  }
  if (!EVENT_ID_RE.test(id)) throw badRequest(`${WEBHOOK_ID_HEADER} must be 1 to 200 characters of A-Z a-z 0-9 . _ : -`, 'WEBHOOK_ID_INVALID');
  if (!/^\d{1,12}$/.test(timestamp)) throw unauthenticated(`${WEBHOOK_TIMESTAMP_HEADER} must be Unix seconds`, 'WEBHOOK_TIMESTAMP_INVALID');
  const expected = webhookSignature(src.secret, timestamp, id, d.body);
  // Several space- or comma-separated signatures may be sent; one valid one is enough.
  const candidates = signature.split(/[\s,]+/).filter(Boolean).slice(0, 8);
  if (!candidates.some((c) => signatureMatches(expected, c))) throw unauthenticated('the webhook signature does not match', 'WEBHOOK_SIGNATURE_INVALID');
  const skew = Math.abs(Math.floor(now / 1000) - Number(timestamp));
  if (skew > s.toleranceSeconds) {
    throw unauthenticated(`${WEBHOOK_TIMESTAMP_HEADER} is ${skew} s away from the server clock; at most ${s.toleranceSeconds} s is accepted`, 'WEBHOOK_TIMESTAMP_OUT_OF_TOLERANCE');
  }
  const text = d.body.toString('utf8');
  const isUtf8 = Buffer.from(text, 'utf8').equals(d.body);
  const trigger: Record<string, unknown> = {
    kind: 'webhook',
    webhook_path: path,
    event_id: id,
    timestamp: Number(timestamp),
    received_at: new Date(now).toISOString(),
    content_type: d.headers.contentType ?? null,
    ...(isUtf8 ? { body: text } : { body_base64: d.body.toString('base64') }),
  };
  return db.tx(async (q) => {
    const taskId = await q.query<{ id: string }>(`SELECT gen_random_uuid() AS id`);
    const ins = await q.query(
      `INSERT INTO webhook_deliveries (org_id, dag_name, job_name, event_id, task_id) VALUES ($1, $2, $3, $4, $5)
       ON CONFLICT DO NOTHING RETURNING task_id`,
      [orgId, src.dag_name, src.job_name, id, taskId.rows[0]!.id]);
    if (ins.rows.length === 0) {
      throw new TraceError(409, 'WEBHOOK_REPLAYED', `event ${id} was already accepted by this webhook source`);
    }
    const created = await createTasks(q, [{ job_id: src.job_id, dedupe_key: `webhook:${id}`, inputs: [], trigger }]);
    let task = created[0]?.id;
    if (!task) {
      // A task from an earlier version's source with the same event id: point the row at it.
      task = (await q.query<{ id: string }>(`SELECT id FROM tasks WHERE job_id = $1 AND dedupe_key = $2`, [src.job_id, `webhook:${id}`])).rows[0]!.id;
    }
    await q.query(`UPDATE webhook_deliveries SET task_id = $5 WHERE org_id = $1 AND dag_name = $2 AND job_name = $3 AND event_id = $4`,
      [orgId, src.dag_name, src.job_name, id, task]);
    // Forget this source's oldest event ids once no timestamp they were sent with can pass the
    // tolerance check again; a few per delivery, so the table stays bounded without a sweep.
    await q.query(PRUNE_DELIVERIES, [orgId, src.dag_name, src.job_name, replayRetentionSeconds(s.toleranceSeconds)]);
    return { task_id: task, dag: src.dag_name, job: src.job_name, event_id: id };
  });
}
