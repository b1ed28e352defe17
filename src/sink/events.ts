/**
 * How the sink reports a committed batch: `POST /internal/dataset-events` on the Dispatcher with
 * the worker token (the sink is a trusted platform worker). The Dispatcher records the event once
 * and routes it like a task event. Idempotent: re-reporting the same range is a no-op.
 */
import { TraceError } from '../core/errors.js';

export interface DatasetEventReport {
  org_id: string;
  dataset: string;
  publish_id: string;
  producer_task_id?: string;
  /** alert_events `seq` range `[start, end)` of the rows this batch added. */
  start: number;
  end: number;
  /** Where the dataset's Parquet copy lives (the version's storage ref; see snapshot.ts). */
  storage_ref?: Record<string, unknown>;
}

export interface DatasetEventReporter {
  report(ev: DatasetEventReport): Promise<{ accepted: number; routed: number }>;
}

export function httpDatasetEvents(opts: { dispatcherUrl: string | (() => string | undefined); workerToken: string; timeoutMs?: number }): DatasetEventReporter {
  return {
    async report(ev) {
      const base = typeof opts.dispatcherUrl === 'string' ? opts.dispatcherUrl : opts.dispatcherUrl();
      if (!base) throw new TraceError(503, 'DISPATCHER_UNKNOWN', 'the Dispatcher URL is not known yet');
      let res: Response;
      try {
        res = await fetch(`${base.replace(/\/+$/, '')}/internal/dataset-events`, {
          method: 'POST',
          headers: { 'content-type': 'application/json', 'x-trace-worker-token': opts.workerToken },
          body: JSON.stringify(ev),
          signal: AbortSignal.timeout(opts.timeoutMs ?? 10_000),
        });
      } catch (e) {
        throw new TraceError(503, 'DISPATCHER_UNREACHABLE', `could not report the dataset event (${e instanceof Error ? e.name : 'error'})`);
      }
      const text = await res.text();
      let body: { accepted?: number; routed?: number; code?: string; error?: string } = {};
      try { body = JSON.parse(text) as typeof body; } catch { /* not JSON */ }
      if (!res.ok) throw new TraceError(res.status, body.code ?? `HTTP_${res.status}`, `the Dispatcher refused the dataset event: ${body.error ?? res.status}`);
      return { accepted: body.accepted ?? 0, routed: body.routed ?? 0 };
    },
  };
}
