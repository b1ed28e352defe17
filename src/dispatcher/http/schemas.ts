import { z } from 'zod';
import { UUID_RE } from '../../core/ids.js';
import { DEPENDENCIES } from '../../core/dependency.js';

export const uuid = z.string().regex(UUID_RE, 'must be a UUID');

export const fence = {
  task_id: uuid,
  attempt: z.number().int().min(1),
  lease_token: uuid,
};

const cursor = z.union([z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER), z.string().min(1).max(200)]);

export const eventSchema = z.union([
  z.strictObject({ dataset_uuid: uuid, dataset_version: uuid, cursor }),
  z.strictObject({
    dataset_uuid: uuid,
    dataset_version: uuid,
    partition_key: z.string().regex(/^\d+-\d+$/, 'must be "{start}-{end}"'),
    start: z.number().int().nonnegative(),
    end: z.number().int().nonnegative(),
  }).refine((e) => e.end > e.start && e.partition_key === `${e.start}-${e.end}`, 'partition_key must be "{start}-{end}" with end > start'),
]);

export const claimBody = z.strictObject({ task_id: uuid, worker_id: z.string().min(1).max(200) });
export const heartbeatBody = z.strictObject(fence);
export const releaseBody = z.strictObject({
  ...fence,
  reason: z.enum(['shutdown', 'infrastructure']),
  dependency: z.enum(DEPENDENCIES).optional(),
  error_message: z.string().max(2000).optional(),
}).refine((b) => b.reason !== 'infrastructure' || b.dependency !== undefined, { path: ['dependency'], message: 'required when reason is infrastructure' })
  .refine((b) => b.reason !== 'shutdown' || b.dependency === undefined, { path: ['dependency'], message: 'only with reason infrastructure' });
/** `lease_token` is optional: the Query Service asks for callers that did not send one (older SDK copies). */
export const leaseCheckBody = z.strictObject({ task_id: fence.task_id, attempt: fence.attempt, lease_token: uuid.optional() });
export const eventsBody = z.strictObject({ ...fence, events: z.array(eventSchema).max(10_000) });

const storageRef = z.record(z.string(), z.unknown());
export const completeBody = z.strictObject({
  ...fence,
  status: z.enum(['Completed', 'Failed', 'Canceled']),
  events: z.array(eventSchema).max(10_000).default([]),
  outputs: z.array(z.unknown()).max(1000).default([]),
  datasets_published: z.array(z.strictObject({
    dataset_uuid: uuid,
    dataset_version: uuid,
    storage_ref: storageRef,
    config_hash: z.string().max(200).optional(),
    range_start: z.number().int().nonnegative().optional(),
    range_end: z.number().int().nonnegative().optional(),
    row_count: z.number().int().nonnegative().optional(),
    bytes: z.number().int().nonnegative().optional(),
  })).max(1000).default([]),
  error_message: z.string().max(10_000).nullable().default(null),
  operator_state: z.array(z.strictObject({
    state_key: z.string().min(1).max(200),
    expected_version: z.number().int().min(1).nullable(),
    state: z.record(z.string(), z.unknown()),
  })).max(100).default([]),
});

export const bufferPublishBody = z.strictObject({
  ...fence,
  batch_uri: z.string().min(1).max(2048).regex(/^(s3|file):\/\//, 'must be an s3:// or file:// URI'),
  content_type: z.literal('application/jsonl'),
  batch_size_bytes: z.number().int().nonnegative().max(16 * 1024 * 1024),
  dedupe_scope: z.string().regex(/^[a-z][a-z0-9_]{0,127}$/, 'must be a dataset name matching ^[a-z][a-z0-9_]{0,127}$'),
});

export const activateBody = z.strictObject({ dag_version_id: uuid });

const triggerCommon = {
  idempotency_key: z.string().min(1).max(200).optional(),
  /** Go ahead although the trigger is estimated to set off more tasks than the limit. */
  confirm: z.boolean().optional(),
};

export const triggerBody = z.union([
  z.strictObject({ cursor, ...triggerCommon }),
  z.strictObject({ start: z.number().int().nonnegative(), end: z.number().int().positive(), ...triggerCommon })
    .refine((b) => b.end > b.start, 'end must be greater than start'),
  z.strictObject({ ...triggerCommon }),
]);

export const dagNameParam = z.string().regex(/^[a-z][a-z0-9_]{0,63}$/, 'must be a DAG name');
export const jobNameParam = dagNameParam;
/** The allowed form of a dataset name, as every dataset-name error states it. */
export const DATASET_NAME_RULE = 'must match ^[a-z][a-z0-9_]{0,127}$ (a lower-case letter, then up to 127 lower-case letters, digits or underscores)';
export const datasetNameParam = z.string().regex(/^[a-z][a-z0-9_]{0,127}$/, `must be a dataset name: ${DATASET_NAME_RULE}`);

/** Most items one batch request carries (claim, complete, heartbeat). */
export const BATCH_MAX = 100;

/** A list of 1 to BATCH_MAX entries, no task id twice (each repeat is named by its path). */
function batchList<T extends z.ZodType>(item: T, idOf: (x: z.output<T>) => string, what: string) {
  return z.array(item)
    .min(1, `must list at least one ${what}`)
    .max(BATCH_MAX, `at most ${BATCH_MAX} ${what}s per request`)
    .superRefine((list, ctx) => {
      const first = new Map<string, number>();
      list.forEach((x, i) => {
        const id = idOf(x);
        const j = first.get(id);
        if (j === undefined) first.set(id, i);
        else ctx.addIssue({ code: 'custom', path: [i], message: `duplicate task id (also at index ${j}); one batch names each task once` });
      });
    });
}

export const claimBatchBody = z.strictObject({
  task_ids: batchList(uuid, (id) => id, 'task id'),
  worker_id: claimBody.shape.worker_id,
});

/** The envelope of a task-scoped batch: each item is checked on its own (see the item schemas). */
const batchItems = batchList(z.looseObject({ task_id: uuid }), (x) => x.task_id, 'item');
export const completeBatchBody = z.strictObject({ items: batchItems });
export const heartbeatBatchBody = z.strictObject({ items: batchItems });

/** Each item carries its attempt's own capability token (what the per-task route takes as a header). */
const capabilityToken = z.string().min(1).max(16_384);
export const completeBatchItem = z.strictObject({ ...completeBody.shape, capability_token: capabilityToken });
export const heartbeatBatchItem = z.strictObject({ ...fence, capability_token: capabilityToken });
