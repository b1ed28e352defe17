/**
 * alert_route (specs/operators/alert_route.md): a trusted platform operator that turns new
 * `alert_events` into `alert_deliveries` work items for the Delivery Service. It never sends
 * anything itself.
 *
 * Input: the `alert_events` buffered dataset. Its events are partition events over the sink's
 * commit range `[start, end)` (alert_events `seq`), carrying the edge's `where` filter. A task
 * without a range (a manual replay) routes every event of the org; re-runs are harmless.
 *
 * Config: `channel` (optional: only the definition channel with this name or type) and
 * `max_delivery_age` (optional: `7d`, `12h`, `30m`, `45s`, `2w` or seconds; older events get no
 * delivery). Database access is injected (`AlertRouteStore`, implemented in src/alerting/), so
 * this module holds no credentials; the worker process that runs it wires the store.
 */
import { z } from 'zod';
import { TraceError } from '../../core/errors.js';
import { configProblems, parseConfig } from '../config.js';
import type { Operator, OperatorInfo } from '../types.js';
import { bufferedDatasetUuid } from '../../sink/ids.js';

type Scalar = string | number | boolean;

export interface AlertRouteRequest {
  org_id: string;
  task_id: string;
  /** alert_events `seq` range `[start, end)`; absent routes every event of the org. */
  range?: { start: number; end: number };
  where?: Record<string, Scalar | Scalar[]>;
  channel?: string;
  max_age_seconds?: number;
}

export interface AlertRouteResult {
  /** Events in range that passed the where filter. */
  events: number;
  /** Of those, too old to deliver. */
  stale: number;
  /** (event, channel) pairs that should have a delivery. */
  targets: number;
  /** Deliveries created by this run (the rest already existed). */
  created: number;
}

export interface AlertRouteStore {
  route(req: AlertRouteRequest): Promise<AlertRouteResult>;
}

/** `max_delivery_age` as seconds, or undefined when it is not a positive duration. */
export function durationToSeconds(v: unknown): number | undefined {
  if (typeof v === 'number') return Number.isSafeInteger(v) && v > 0 ? v : undefined;
  if (typeof v !== 'string') return undefined;
  const m = /^([1-9][0-9]{0,8})([smhdw])$/.exec(v.trim());
  if (!m) return undefined;
  return Number(m[1]) * { s: 1, m: 60, h: 3600, d: 86_400, w: 604_800 }[m[2] as 's' | 'm' | 'h' | 'd' | 'w'];
}

const configSchema = z.strictObject({
  channel: z.string().regex(/^[a-z][a-z0-9_-]{0,63}$/, 'must be a channel name or type').optional(),
  max_delivery_age: z.union([z.string(), z.number()]).refine((v) => durationToSeconds(v) !== undefined, "must be a duration like '7d', '12h', '30m' or a number of seconds").optional(),
});

export const alertRouteInfo: OperatorInfo = {
  name: 'alert_route',
  runtimes: ['ecs_platform', 'dispatcher'],
  udf: 'forbidden',
  activations: ['reactive'],
  executionStrategies: ['PerUpdate'],
  // one delivery per (alert event, channel); a re-run adds nothing
  writes: { replace: true },
  // routes only the alert events its edge's where selects
  filtersInputs: true,
  validateConfig: (config) => configProblems(configSchema, config),
};

export function createAlertRoute(store: AlertRouteStore): Operator {
  return {
    info: alertRouteInfo,
    async run(ctx) {
      const cfg = parseConfig('alert_route', configSchema, ctx.task.config);
      const task = ctx.task;
      const base = {
        org_id: task.org_id,
        task_id: task.task_id,
        ...(cfg.channel ? { channel: cfg.channel } : {}),
        ...(cfg.max_delivery_age !== undefined ? { max_age_seconds: durationToSeconds(cfg.max_delivery_age)! } : {}),
      };
      const alertEvents = bufferedDatasetUuid(task.org_id, 'alert_events');
      const total: AlertRouteResult = { events: 0, stale: 0, targets: 0, created: 0 };
      const add = (r: AlertRouteResult) => { total.events += r.events; total.stale += r.stale; total.targets += r.targets; total.created += r.created; };
      if (task.inputs.length === 0) {
        const t = task.trigger;
        const range = typeof t.start === 'number' && typeof t.end === 'number' && t.end > t.start ? { start: t.start, end: t.end } : undefined;
        add(await store.route({ ...base, ...(range ? { range } : {}) }));
      }
      for (const input of task.inputs) {
        if (input.dataset_uuid !== alertEvents) throw new TraceError(422, 'INPUT_UNSUPPORTED', 'alert_route reads the alert_events dataset; wire its input as { dataset: alert_events }');
        const range = typeof input.start === 'number' && typeof input.end === 'number' && input.end > input.start ? { start: input.start, end: input.end } : undefined;
        add(await store.route({
          ...base,
          ...(range ? { range } : {}),
          ...(input.where ? { where: input.where as Record<string, Scalar | Scalar[]> } : {}),
        }));
      }
      ctx.log.info({ ...total }, 'alert deliveries routed');
      return { outputs: [total] };
    },
  };
}
