/**
 * Buffer batches' part of garbage collection (gc.ts). A task writes a buffered-dataset batch
 * under `buffers/{task_id}/{attempt}/` and publishes it (`buffer_publishes`, state); the sink
 * commits it into Postgres data and records it in its ledger (`buffer_batches`, data). Once
 * committed the object is never read again: a redelivered or replayed pointer finds the ledger
 * row first (src/sink/README.md). So:
 *
 * - consumed: an object a publish names whose publish the sink ledger holds, committed longer
 *   than `gcSupersededRetentionSeconds` ago, and itself older than that.
 * - staging: an object no publish names, of a task that will not run again (a publish needs its
 *   attempt running), older than `gcStagingRetentionSeconds`.
 *
 * A published batch the ledger does not hold (still queued, retried, rejected or dead-lettered)
 * always stays, however old. When Postgres data cannot be read, nothing counts as consumed
 * (fail closed).
 */
import type { Db } from '../db/db.js';
import type { ObjectStore } from '../objectstore/objectstore.js';
import { batchKey } from '../sink/batch.js';
import { FINISHED_TASK, referencedObjects, type GcCollector, type GcObject } from './gc.js';
import type { DispatcherPlugin } from './dispatcher.js';

const GROUP = /^buffers\/([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\/(\d+)\//;

const PUBLISHES = `SELECT id, task_id, attempt, batch_uri FROM buffer_publishes WHERE task_id = ANY($1::uuid[])`;
const LIVE = `SELECT t.id FROM tasks t WHERE t.id = ANY($1::uuid[]) AND NOT ${FINISHED_TASK}`;
// The sink ledger (Postgres data): publishes committed before the retention.
const CONSUMED = `SELECT publish_id FROM buffer_batches WHERE publish_id = ANY($1::uuid[]) AND committed_at < now() - make_interval(secs => $2)`;

export interface BufferGcOptions {
  /** Postgres data, where the sink keeps its ledger. */
  data: Db;
  getStore: () => ObjectStore | undefined;
}

export function bufferGcCollector(opts: BufferGcOptions): GcCollector {
  return {
    name: 'buffers',
    async collect({ db, settings, dryRun, limit, log }) {
      const store = opts.getStore();
      if (!store) return [];
      const objects = (await store.list('buffers/')).filter((o) => GROUP.test(o.key));
      if (objects.length === 0) return [];
      const tasks = [...new Set(objects.map((o) => GROUP.exec(o.key)![1]!))];
      const publishOf = new Map<string, string>();
      for (const p of (await db.query<{ id: string; task_id: string; attempt: number; batch_uri: string }>(PUBLISHES, [tasks])).rows) {
        try {
          publishOf.set(batchKey(store, p.batch_uri, p.task_id, Number(p.attempt)), p.id);
        } catch {
          // a URI outside the attempt's prefix names no object here (the sink refuses it too)
        }
      }
      let consumed = new Set<string>();
      const ids = [...new Set(publishOf.values())];
      if (ids.length > 0) {
        try {
          consumed = new Set((await opts.data.query<{ publish_id: string }>(CONSUMED, [ids, settings.gcSupersededRetentionSeconds])).rows.map((r) => r.publish_id));
        } catch (e) {
          log.warn({ err: e instanceof Error ? e.message : String(e) }, 'gc: the sink ledger cannot be read; no buffer batch counts as consumed');
        }
      }
      const live = new Set((await db.query<{ id: string }>(LIVE, [tasks])).rows.map((r) => r.id));
      const referenced = await referencedObjects(db, store);
      const now = Date.now();
      const consumedBefore = now - settings.gcSupersededRetentionSeconds * 1000;
      const stagingBefore = now - settings.gcStagingRetentionSeconds * 1000;
      const out: GcObject[] = [];
      for (const o of objects) {
        if (out.length >= limit) break;
        const t = o.lastModified?.getTime() ?? now;
        const publish = publishOf.get(o.key);
        let reason: GcObject['reason'];
        if (publish !== undefined) {
          if (!consumed.has(publish) || t > consumedBefore) continue;
          reason = 'consumed';
        } else {
          if (live.has(GROUP.exec(o.key)![1]!) || t > stagingBefore) continue;
          reason = 'staging';
        }
        if (referenced.has(o.key)) continue;
        if (!dryRun) await store.delete(o.key);
        out.push({ key: o.key, bytes: o.size, reason });
      }
      if (out.length > 0 && !dryRun) log.info({ objects: out.length }, 'gc removed buffer batch objects');
      return out;
    },
  };
}

/** The collector as a Dispatcher plugin (it needs Postgres data, which the core does not hold). */
export function bufferGcPlugin(opts: BufferGcOptions): DispatcherPlugin {
  return { name: 'buffer_gc', gcCollector: bufferGcCollector(opts) };
}
