import type { Agent } from 'node:http';
import { TraceError } from '../core/errors.js';
import { keepAliveAgent } from '../core/http-client.js';

/**
 * One upstream RPC provider and its health. The full URL (which may carry an API key in its
 * path or query string) never leaves this object except to `fetch`; logs and errors use
 * `label` (`<index>:<host>`).
 */
export class Provider {
  readonly index: number;
  readonly label: string;
  readonly #url: URL;
  /** Keep-alive connections to this provider only. */
  readonly agent: Agent;
  consecutiveFailures = 0;
  cooldownUntil = 0;
  successes = 0;
  failures = 0;

  constructor(index: number, url: string, maxSockets = 64) {
    let parsed: URL;
    try {
      parsed = new URL(url);
    } catch {
      throw new TraceError(500, 'RPC_POOL_CONFIG_INVALID', `provider #${index} is not a valid URL`);
    }
    if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') {
      throw new TraceError(500, 'RPC_POOL_CONFIG_INVALID', `provider #${index} must be an http(s) URL`);
    }
    this.index = index;
    this.label = `${index}:${parsed.host}`;
    this.#url = parsed;
    this.agent = keepAliveAgent(parsed, maxSockets);
  }

  get url(): string {
    return this.#url.toString();
  }

  /** The parsed URL, for the HTTP client only. */
  get endpoint(): URL {
    return this.#url;
  }

  /** Never serialise the URL by accident. */
  toJSON(): Record<string, unknown> {
    return { provider: this.label };
  }
}

export interface HealthPolicy {
  /** First cooldown after a failure; doubles per consecutive failure. */
  cooldownBaseMs: number;
  cooldownMaxMs: number;
}

export const DEFAULT_HEALTH: HealthPolicy = { cooldownBaseMs: 1_000, cooldownMaxMs: 60_000 };

/**
 * The providers of one named pool. Healthy providers are used round-robin (spreading load
 * over several keys); a provider that failed cools down for an exponentially growing time and
 * is tried only after every healthy one, so a request still goes out when all are cooling.
 */
export class ProviderPool {
  readonly name: string;
  readonly providers: Provider[];
  readonly #health: HealthPolicy;
  #cursor = 0;

  constructor(name: string, urls: readonly string[], health: HealthPolicy = DEFAULT_HEALTH, maxSocketsPerProvider = 64) {
    if (urls.length === 0) throw new TraceError(500, 'RPC_POOL_CONFIG_INVALID', `pool ${name} has no providers`);
    this.name = name;
    this.providers = urls.map((u, i) => new Provider(i, u, maxSocketsPerProvider));
    this.#health = health;
  }

  /** Closes idle keep-alive connections (the gateway is shutting down). */
  close(): void {
    for (const p of this.providers) p.agent.destroy();
  }

  /** Order in which to try providers for one request. */
  order(now = Date.now()): Provider[] {
    const n = this.providers.length;
    const start = this.#cursor++ % n;
    const rotated = [...this.providers.slice(start), ...this.providers.slice(0, start)];
    const healthy = rotated.filter((p) => p.cooldownUntil <= now);
    // stable sort: fewer consecutive failures first, round-robin order otherwise
    healthy.sort((a, b) => a.consecutiveFailures - b.consecutiveFailures);
    const cooling = rotated.filter((p) => p.cooldownUntil > now).sort((a, b) => a.cooldownUntil - b.cooldownUntil);
    return [...healthy, ...cooling];
  }

  markSuccess(p: Provider): void {
    p.successes++;
    p.consecutiveFailures = 0;
    p.cooldownUntil = 0;
  }

  /** `retryAfterMs` (from a 429 `Retry-After`) overrides the computed cooldown when longer. */
  markFailure(p: Provider, retryAfterMs?: number, now = Date.now()): void {
    p.failures++;
    p.consecutiveFailures++;
    const exp = Math.min(this.#health.cooldownMaxMs, this.#health.cooldownBaseMs * 2 ** Math.min(p.consecutiveFailures - 1, 20));
    const wait = Math.min(this.#health.cooldownMaxMs, Math.max(exp, retryAfterMs ?? 0));
    p.cooldownUntil = now + wait;
  }
}

/** Parses `Retry-After` (seconds or HTTP date) into milliseconds. */
export function parseRetryAfter(value: string | null, now = Date.now()): number | undefined {
  if (!value) return undefined;
  const s = Number(value);
  if (Number.isFinite(s) && s >= 0) return Math.round(s * 1000);
  const t = Date.parse(value);
  return Number.isFinite(t) ? Math.max(0, t - now) : undefined;
}
