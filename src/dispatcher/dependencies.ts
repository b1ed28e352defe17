import type { Logger } from '../core/log.js';
import { unavailableDependency, type Dependency } from '../core/dependency.js';

/** A readiness probe: resolves when the dependency answers, rejects otherwise. */
export type Probe = (timeoutMs: number) => Promise<void>;

export interface ProbeReport {
  ready: boolean;
  checks: Partial<Record<Dependency, 'ok' | string>>;
}

/**
 * What the Dispatcher knows about the dependencies it can reach itself (the state and data
 * databases, the queue): probed on a short interval, and told by callers whenever an operation
 * failed because one was unreachable. It drives three behaviours:
 * - the retry scheduler holds tasks that wait on a dependency seen down (`down()`);
 * - when a dependency comes back, `onRecovered` re-drives the tasks waiting on it;
 * - the UDF executor asks `downDuring()` whether a run's failure coincided with an outage.
 * Transitions are logged once each way (warn when lost, info with the outage length when back).
 */
export class DependencyMonitor {
  private readonly downSince = new Map<Dependency, number>();
  /** Outages that ended, kept briefly so a run can ask whether one overlapped it. */
  private readonly recent: Array<{ dependency: Dependency; from: number; to: number }> = [];
  /** Recoveries whose re-drive has not succeeded yet (the state database may be down too). */
  private readonly pendingRecovery = new Set<Dependency>();

  constructor(
    private readonly probes: Partial<Record<Dependency, Probe>>,
    private readonly log: Logger,
    private readonly onRecovered: (d: Dependency) => Promise<void>,
  ) {}

  get probed(): Dependency[] {
    return Object.keys(this.probes) as Dependency[];
  }

  /** Dependencies seen unreachable right now. */
  down(): Dependency[] {
    return [...this.downSince.keys()];
  }

  /** Was `dependency` (any probed one when omitted) seen down at some point since `since` (epoch ms)? */
  downDuring(since: number, dependency?: Dependency): Dependency | undefined {
    for (const [d] of this.downSince) if (!dependency || d === dependency) return d;
    for (const o of this.recent) if (o.to >= since && (!dependency || o.dependency === dependency)) return o.dependency;
    return undefined;
  }

  /** An operation failed because `e` says a dependency was unreachable: note it at once. */
  observe(e: unknown): void {
    const d = unavailableDependency(e);
    if (d && d in this.probes) this.markDown(d, e instanceof Error ? e.message : String(e));
  }

  private markDown(d: Dependency, why: string): void {
    if (this.downSince.has(d)) return;
    this.downSince.set(d, Date.now());
    this.log.warn({ dependency: d, err: why.slice(0, 300) }, 'dependency unreachable; tasks waiting on it are held until it is back');
  }

  private markUp(d: Dependency): void {
    const from = this.downSince.get(d);
    if (from === undefined) return;
    this.downSince.delete(d);
    const to = Date.now();
    this.recent.push({ dependency: d, from, to });
    while (this.recent.length > 50 || (this.recent[0] && to - this.recent[0].to > 3_600_000)) this.recent.shift();
    this.pendingRecovery.add(d);
    this.log.info({ dependency: d, outage_ms: to - from }, 'dependency reachable again');
  }

  /** Probes every dependency once; marks transitions and runs pending re-drives. */
  async probeAll(timeoutMs: number): Promise<ProbeReport> {
    const checks: ProbeReport['checks'] = {};
    await Promise.all(Object.entries(this.probes).map(async ([name, probe]) => {
      const d = name as Dependency;
      try {
        await probe!(timeoutMs);
        checks[d] = 'ok';
        this.markUp(d);
      } catch (e) {
        const why = e instanceof Error ? e.message : String(e);
        checks[d] = why.slice(0, 200);
        this.markDown(d, why);
      }
    }));
    for (const d of [...this.pendingRecovery]) {
      if (this.downSince.has(d)) continue;
      try {
        await this.onRecovered(d);
        this.pendingRecovery.delete(d);
      } catch (e) {
        this.log.warn({ dependency: d, err: e instanceof Error ? e.message : String(e) }, 'could not re-drive tasks waiting on a recovered dependency; will try again');
      }
    }
    return { ready: Object.values(checks).every((c) => c === 'ok'), checks };
  }
}
