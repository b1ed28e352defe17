import { TraceError } from '../core/errors.js';

/**
 * A counting semaphore with a bounded wait queue and a wait deadline. `acquire` resolves to a
 * release function; it rejects with 429 `RPC_POOL_BUSY` when the queue is full or the wait
 * runs out, so callers (and the ingest client's AIMD) see back-pressure instead of a hang.
 */
export class Limiter {
  readonly #max: number;
  readonly #maxWaiters: number;
  #active = 0;
  readonly #waiters: Array<{ grant: () => void; timer: NodeJS.Timeout | undefined }> = [];

  constructor(max: number, maxWaiters: number) {
    this.#max = Math.max(1, Math.floor(max));
    this.#maxWaiters = Math.max(0, Math.floor(maxWaiters));
  }

  get active(): number {
    return this.#active;
  }

  get waiting(): number {
    return this.#waiters.length;
  }

  acquire(waitMs: number): Promise<() => void> {
    if (this.#active < this.#max) {
      this.#active++;
      return Promise.resolve(this.#releaser());
    }
    if (this.#waiters.length >= this.#maxWaiters) {
      return Promise.reject(new TraceError(429, 'RPC_POOL_BUSY', 'the RPC pool is at its concurrency limit'));
    }
    return new Promise((resolve, reject) => {
      const entry: { grant: () => void; timer: NodeJS.Timeout | undefined } = {
        grant: () => {
          if (entry.timer) clearTimeout(entry.timer);
          this.#active++;
          resolve(this.#releaser());
        },
        timer: undefined,
      };
      entry.timer = setTimeout(() => {
        const i = this.#waiters.indexOf(entry);
        if (i >= 0) this.#waiters.splice(i, 1);
        reject(new TraceError(429, 'RPC_POOL_BUSY', 'timed out waiting for a free slot in the RPC pool'));
      }, Math.max(1, waitMs));
      this.#waiters.push(entry);
    });
  }

  #releaser(): () => void {
    let done = false;
    return () => {
      if (done) return;
      done = true;
      this.#active--;
      const next = this.#waiters.shift();
      if (next) next.grant();
    };
  }
}
