import type { Logger } from '../core/log.js';
import { unavailableDependency } from '../core/dependency.js';

/**
 * A background loop: runs `step` until it reports no more work, then sleeps until the next
 * interval or an explicit kick. Errors are logged and retried at the next interval (longer after
 * repeated failures); a loop never dies while the process lives.
 */
export class Loop {
  private timer: NodeJS.Timeout | undefined;
  private wake: (() => void) | undefined;
  private kicked = false;
  private stopped = false;
  private done: Promise<void> | undefined;

  constructor(
    readonly name: string,
    private readonly step: () => Promise<boolean>,
    private readonly intervalMs: number,
    private readonly log: Logger,
  ) {}

  start(): void {
    this.done = this.run();
  }

  kick(): void {
    this.kicked = true;
    this.wake?.();
  }

  private async run(): Promise<void> {
    let failures = 0;
    while (!this.stopped) {
      this.kicked = false;
      let more = false;
      try {
        more = await this.step();
        if (failures > 0) this.log.info({ loop: this.name, failed_steps: failures }, 'loop step succeeds again');
        failures = 0;
      } catch (e) {
        if (!this.stopped) {
          failures++;
          // An outage fails every step: log the first failure and every 30th, not each.
          const dependency = unavailableDependency(e);
          const fields = { loop: this.name, err: e instanceof Error ? e.message : String(e), failures };
          if (dependency) {
            if (failures === 1 || failures % 30 === 0) this.log.warn({ ...fields, dependency }, 'loop step failed: a dependency is unreachable');
          } else {
            this.log.error(fields, 'loop step failed');
          }
        }
      }
      if (this.stopped) break;
      if ((more || this.kicked) && failures === 0) continue;
      // After failures, wait longer (up to 5 intervals) so an outage is not hammered.
      const wait = failures === 0 ? this.intervalMs : this.intervalMs * Math.min(5, failures);
      await new Promise<void>((resolve) => {
        this.wake = resolve;
        this.timer = setTimeout(resolve, wait);
      });
      clearTimeout(this.timer);
      this.wake = undefined;
    }
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.wake?.();
    await this.done;
  }
}
