/**
 * Alerting vocabulary (specs/alerting.md, ADR 0004, data_model/alerting.md): severities, the
 * alert definition body of the user API, channel rules, and `max_delivery_age` durations.
 */
import { z } from 'zod';
import { unprocessable, type Problem } from '../core/errors.js';
import { checkWebhookHeaders, webhookUrlProblem } from '../delivery/net/index.js';

export const SEVERITIES = ['info', 'warning', 'critical'] as const;
export type Severity = (typeof SEVERITIES)[number];

export const CHANNEL_NAME_RE = /^[a-z][a-z0-9_-]{0,63}$/;
export const CHANNEL_TYPES = ['webhook'] as const;
export const MAX_CHANNELS = 20;
export const MAX_CONDITION_BYTES = 64 * 1024;

const channelSchema = z.strictObject({
  /** Unique within the definition; the `channel` of its deliveries. Defaults to the type when only one channel has that type. */
  name: z.string().regex(CHANNEL_NAME_RE, 'must match ^[a-z][a-z0-9_-]{0,63}$').optional(),
  type: z.enum(CHANNEL_TYPES),
  url: z.string().min(1).max(2048),
  /** Extra request headers (for example a receiver's shared secret). */
  headers: z.record(z.string(), z.string()).optional(),
});

export const visibilitySchema = z.union([
  z.enum(['private', 'org']),
  z.string().regex(/^role:[a-z][a-z0-9_-]{0,63}$/, "must be 'private', 'org' or 'role:<role_slug>'"),
]);

export const definitionBodySchema = z.strictObject({
  name: z.string().trim().min(1).max(200),
  /** Opaque to the platform; the evaluating bundle reads it. */
  condition: z.record(z.string(), z.unknown()).default({}),
  channels: z.array(channelSchema).min(1).max(MAX_CHANNELS),
  visibility: visibilitySchema.default('org'),
  enabled: z.boolean().default(true),
});

export type DefinitionBody = z.infer<typeof definitionBodySchema>;

export interface StoredChannel {
  name: string;
  type: 'webhook';
  url: string;
  headers?: Record<string, string>;
}

export interface NormalizedDefinition {
  name: string;
  condition: Record<string, unknown>;
  channels: StoredChannel[];
  visibility: string;
  enabled: boolean;
}

/**
 * Checks what zod cannot: every channel URL against the webhook policy (https only, no
 * forbidden literal hosts; loopback over http only with the development switch), headers
 * against the sender's header rules, channel names unique, condition size. URL refusals are
 * 422 WEBHOOK_URL_REFUSED; other problems 422 ALERT_INVALID. Every problem is listed by path.
 */
export function normalizeDefinition(body: DefinitionBody, opts: { allowHttpLoopback: boolean }): NormalizedDefinition {
  const urlProblems: Problem[] = [];
  const problems: Problem[] = [];
  const typeCount = new Map<string, number>();
  for (const c of body.channels) typeCount.set(c.type, (typeCount.get(c.type) ?? 0) + 1);
  const seen = new Set<string>();
  const channels: StoredChannel[] = body.channels.map((c, i) => {
    const problem = webhookUrlProblem(c.url, { allowHttpLoopback: opts.allowHttpLoopback });
    if (problem) urlProblems.push({ path: `channels[${i}].url`, message: problem });
    let name = c.name;
    if (name === undefined) {
      if ((typeCount.get(c.type) ?? 0) > 1) problems.push({ path: `channels[${i}].name`, message: `is required when several channels have type ${c.type}` });
      name = c.type;
    }
    if (seen.has(name)) problems.push({ path: `channels[${i}].name`, message: `channel name ${name} is used twice` });
    seen.add(name);
    if (c.headers) {
      if (Object.keys(c.headers).some((h) => h.toLowerCase() === 'idempotency-key')) {
        problems.push({ path: `channels[${i}].headers`, message: 'Idempotency-Key is set by the Delivery Service (the delivery id)' });
      } else {
        try {
          checkWebhookHeaders({ ...c.headers, 'Idempotency-Key': 'check' });
        } catch (e) {
          problems.push({ path: `channels[${i}].headers`, message: e instanceof Error ? e.message : 'invalid headers' });
        }
      }
    }
    const out: StoredChannel = { name, type: c.type, url: c.url };
    if (c.headers && Object.keys(c.headers).length > 0) out.headers = c.headers;
    return out;
  });
  if (JSON.stringify(body.condition).length > MAX_CONDITION_BYTES) problems.push({ path: 'condition', message: `must be at most ${MAX_CONDITION_BYTES} bytes of JSON` });
  if (urlProblems.length > 0) throw unprocessable('a channel URL is not allowed', [...urlProblems, ...problems], 'WEBHOOK_URL_REFUSED');
  if (problems.length > 0) throw unprocessable('the alert definition is invalid', problems, 'ALERT_INVALID');
  return { name: body.name, condition: body.condition, channels, visibility: body.visibility, enabled: body.enabled };
}
