/**
 * Whether a task's attempt still holds its lease, asked of the Dispatcher: the Query Service
 * holds no state-database credentials. `POST {dispatcher}/v1/task/lease-check` with the caller's
 * own capability token and `{task_id, attempt, lease_token?}` answers 200 while the attempt is the
 * task's current attempt and Running (under that lease token, when one is given), and 403 with a
 * stable code otherwise (`STALE_ATTEMPT`, `LEASE_MISMATCH`, `ATTEMPT_NOT_LIVE`).
 *
 * A positive answer is kept for `cacheMs` (default 1 s, at most 1 s): a task that queries in a
 * loop costs the Dispatcher one lookup per second, and a token stays usable for at most that long
 * after its attempt ends. Refusals are never cached. When the Dispatcher cannot be asked, task
 * queries fail closed with 503 LEASE_CHECK_UNAVAILABLE.
 */
import { TraceError } from '../core/errors.js';
import { httpRequest, HttpTransportError } from '../core/http-client.js';

export interface TaskLeaseRef {
  task_id: string;
  attempt: number;
  lease_token?: string;
}

/** Throws TraceError 403 (not live), 401 (token refused by the Dispatcher) or 503; resolves when live. */
export type TaskLeaseCheck = (capabilityToken: string, ref: TaskLeaseRef) => Promise<void>;

export const LEASE_CHECK_DEFAULTS = { cacheMs: 1_000, timeoutMs: 5_000, maxEntries: 10_000 } as const;

export function dispatcherLeaseCheck(opts: { dispatcherUrl: string | (() => string); cacheMs?: number; timeoutMs?: number; maxEntries?: number }): TaskLeaseCheck {
  const cacheMs = Math.max(0, Math.min(LEASE_CHECK_DEFAULTS.cacheMs, opts.cacheMs ?? LEASE_CHECK_DEFAULTS.cacheMs));
  const timeoutMs = opts.timeoutMs ?? LEASE_CHECK_DEFAULTS.timeoutMs;
  const maxEntries = opts.maxEntries ?? LEASE_CHECK_DEFAULTS.maxEntries;
  /** Live answers by `task_id|attempt|lease_token`, with the time they expire (insertion order = age). */
  const live = new Map<string, number>();
  const base = () => (typeof opts.dispatcherUrl === 'function' ? opts.dispatcherUrl() : opts.dispatcherUrl).replace(/\/+$/, '');

  return async (token, ref) => {
    const key = `${ref.task_id}|${ref.attempt}|${ref.lease_token ?? ''}`;
    const now = Date.now();
    const until = live.get(key);
    if (until !== undefined && until > now) return;
    if (until !== undefined) live.delete(key);
    const body = JSON.stringify({ task_id: ref.task_id, attempt: ref.attempt, ...(ref.lease_token !== undefined ? { lease_token: ref.lease_token } : {}) });
    let status: number;
    let text: string;
    try {
      ({ status, text } = await httpRequest(`${base()}/v1/task/lease-check`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'x-trace-task-capability': token },
        body,
        timeoutMs,
        maxResponseBytes: 64 * 1024,
      }));
    } catch (e) {
      const why = e instanceof HttpTransportError && e.timedOut ? 'did not answer in time' : 'could not be reached';
      throw new TraceError(503, 'LEASE_CHECK_UNAVAILABLE', `the Dispatcher ${why} to confirm this task's lease; retry shortly`);
    }
    if (status === 200) {
      if (cacheMs > 0) {
        live.set(key, Date.now() + cacheMs);
        while (live.size > maxEntries) live.delete(live.keys().next().value!);
      }
      return;
    }
    let answer: { error?: unknown; code?: unknown } = {};
    try {
      answer = JSON.parse(text) as typeof answer;
    } catch {
      // not JSON: handled by status below
    }
    const code = typeof answer.code === 'string' && /^[A-Z_]{1,64}$/.test(answer.code) ? answer.code : undefined;
    const message = typeof answer.error === 'string' ? answer.error.slice(0, 300) : undefined;
    if (status === 403) throw new TraceError(403, code ?? 'ATTEMPT_NOT_LIVE', message ?? 'this attempt no longer holds its lease');
    if (status === 404) throw new TraceError(403, 'ATTEMPT_NOT_LIVE', 'the task of this token no longer exists');
    if (status === 401) throw new TraceError(401, 'UNAUTHORIZED', 'the Dispatcher did not accept the task capability token');
    throw new TraceError(503, 'LEASE_CHECK_UNAVAILABLE', `the Dispatcher could not confirm this task's lease (HTTP ${status}); retry shortly`);
  };
}
