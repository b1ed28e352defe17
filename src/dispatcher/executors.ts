import type { Logger } from '../core/log.js';
import type { Operator } from '../operators/types.js';
import { runClaimedTask } from '../worker/run-task.js';
import { TaskClient } from '../worker/task-client.js';
import type { ClaimedTask } from '../worker/payload.js';
import type { TaskExecutor } from './service.js';

/**
 * Runs trusted platform operators inside the Dispatcher process (`runtime: dispatcher`, and
 * `runtime: lambda` operators that are platform-owned). The run talks to the Dispatcher over
 * the same fenced HTTP routes a remote worker uses, so the lifecycle is identical: completions
 * are retried while the lease lasts, an unreachable dependency releases the lease, and a
 * shutdown (`signal`) releases it too (the worker token is what `/internal/task-release` needs).
 */
export class InProcessExecutor implements TaskExecutor {
  private client: TaskClient | undefined;

  constructor(private readonly opts: { dispatcherUrl: () => string | undefined; registry: ReadonlyMap<string, Operator>; log: Logger; workerToken?: string }) {}

  async execute(claimed: ClaimedTask, o: { signal?: AbortSignal } = {}): Promise<void> {
    const url = this.opts.dispatcherUrl();
    if (!url) throw new Error('dispatcher URL not known yet');
    this.client ??= new TaskClient({ baseUrl: url, ...(this.opts.workerToken ? { workerToken: this.opts.workerToken } : {}) });
    await runClaimedTask(claimed, { client: this.client, registry: this.opts.registry, log: this.opts.log, ...(o.signal ? { signal: o.signal } : {}) });
  }
}
