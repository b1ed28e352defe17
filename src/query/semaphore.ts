import { TraceError } from '../core/errors.js';

/**
 * Per-process query concurrency cap with a bounded wait queue (operations.md: a small pool and
 * backpressure). `acquire` resolves to a release function, or throws 429 QUERY_BUSY at once when
 * `maxConcurrent` queries run and `maxQueued` more already wait.
 */
export class Semaphore {
  private running = 0;
  private readonly waiting: Array<() => void> = [];

  constructor(
    readonly maxConcurrent: number,
    readonly maxQueued: number,
  ) {
    if (!Number.isInteger(maxConcurrent) || maxConcurrent < 1) throw new TypeError('maxConcurrent must be a positive integer');
    if (!Number.isInteger(maxQueued) || maxQueued < 0) throw new TypeError('maxQueued must be a non-negative integer');
  }

  get active(): number {
    return this.running;
  }

  get queued(): number {
    return this.waiting.length;
  }

  async acquire(): Promise<() => void> {
    if (this.running < this.maxConcurrent) {
      this.running++;
      return this.releaser();
    }
    if (this.waiting.length >= this.maxQueued) {
      throw new TraceError(429, 'QUERY_BUSY', 'the Query Service is at its concurrency limit; retry shortly');
    }
    await new Promise<void>((resolve) => this.waiting.push(resolve));
    return this.releaser();
  }

  private releaser(): () => void {
    let done = false;
    return () => {
      if (done) return;
      done = true;
      const next = this.waiting.shift();
      if (next) next(); // hand the slot over; running stays the same
      else this.running--;
    };
  }
}
