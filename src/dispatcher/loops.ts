import type { Logger } from '../core/log.js';

/**
 * A background loop: runs `step` until it reports no more work, then sleeps until the next
 * interval or an explicit kick. Errors are logged and retried at the next interval; a loop never
 * dies while the process lives.
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
    while (!this.stopped) {
      this.kicked = false;
      let more = false;
      try {
        more = await this.step();
      } catch (e) {
        if (!this.stopped) this.log.error({ loop: this.name, err: e instanceof Error ? e.message : String(e) }, 'loop step failed');
      }
      if (this.stopped) break;
      if (more || this.kicked) continue;
      await new Promise<void>((resolve) => {
        this.wake = resolve;
        this.timer = setTimeout(resolve, this.intervalMs);
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
