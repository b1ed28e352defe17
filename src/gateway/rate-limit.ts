/**
 * In-memory token buckets for the Gateway (operations.md "Default timings and limits"):
 * per user (`iss` + `sub`) 100 requests/min, per org 1000/min (v1 is single-org, so one bucket),
 * and per user 10/min on `POST /v1/query`. A bucket holds up to `perMinute` tokens (the burst)
 * and refills continuously at `perMinute` per 60 s.
 *
 * These buckets live in one process: N gateway instances admit up to N times the limit. A
 * deployment with several instances needs a shared limiter (for example the cloud API
 * gateway's usage plans, or a Redis-backed bucket) in front of or instead of this one.
 */
import type { RateClass } from './routes.js';

export interface RateLimits {
  userPerMinute: number;
  orgPerMinute: number;
  queryPerUserPerMinute: number;
}

export const DEFAULT_RATE_LIMITS: RateLimits = { userPerMinute: 100, orgPerMinute: 1000, queryPerUserPerMinute: 10 };

interface Bucket {
  tokens: number;
  at: number;
}

/** A family of buckets with one capacity and refill rate, keyed by a string. */
class Buckets {
  readonly #capacity: number;
  readonly #perMs: number;
  readonly #maxKeys: number;
  readonly #map = new Map<string, Bucket>();

  constructor(perMinute: number, maxKeys: number) {
    this.#capacity = perMinute;
    this.#perMs = perMinute / 60_000;
    this.#maxKeys = maxKeys;
  }

  /** The bucket refilled to `now`, without taking anything. */
  peek(key: string, now: number): Bucket {
    const b = this.#map.get(key);
    if (!b) return { tokens: this.#capacity, at: now };
    return { tokens: Math.min(this.#capacity, b.tokens + Math.max(0, now - b.at) * this.#perMs), at: now };
  }

  /** Milliseconds until the bucket holds one whole token. */
  waitMs(b: Bucket): number {
    return b.tokens >= 1 ? 0 : Math.ceil((1 - b.tokens) / this.#perMs);
  }

  put(key: string, b: Bucket): void {
    this.#map.delete(key);
    this.#map.set(key, b);
    if (this.#map.size > this.#maxKeys) this.#sweep(b.at);
  }

  /**
   * Drops buckets that have refilled completely (they equal a fresh one), then the least
   * recently used down to 90% of the cap, so sweeps stay rare. Evicting a partly used bucket
   * only ever errs towards admitting a request.
   */
  #sweep(now: number): void {
    for (const k of this.#map.keys()) {
      if (this.peek(k, now).tokens >= this.#capacity) this.#map.delete(k);
    }
    const target = Math.floor(this.#maxKeys * 0.9);
    while (this.#map.size > target) {
      const oldest = this.#map.keys().next();
      if (oldest.done) break;
      this.#map.delete(oldest.value);
    }
  }

  get size(): number {
    return this.#map.size;
  }
}

export type RateDecision = { ok: true } | { ok: false; scope: 'user' | 'org' | 'query'; retryAfterSeconds: number };

export class GatewayRateLimiter {
  readonly #user: Buckets;
  readonly #org: Buckets;
  readonly #query: Buckets;
  readonly #clock: () => number;

  constructor(limits: RateLimits, opts: { clock?: () => number; maxTrackedUsers?: number } = {}) {
    for (const [k, v] of Object.entries(limits)) {
      if (!Number.isSafeInteger(v) || v < 1) throw new TypeError(`rate limit ${k} must be a positive integer`);
    }
    const maxKeys = opts.maxTrackedUsers ?? 100_000;
    this.#user = new Buckets(limits.userPerMinute, maxKeys);
    this.#org = new Buckets(limits.orgPerMinute, 16);
    this.#query = new Buckets(limits.queryPerUserPerMinute, maxKeys);
    this.#clock = opts.clock ?? Date.now;
  }

  /**
   * Takes one token from every bucket that applies, or from none: a refused request does not
   * use up the caller's other budgets. `org` is the deployment org (one bucket in v1).
   */
  take(userKey: string, rateClass: RateClass, org = 'org'): RateDecision {
    const now = this.#clock();
    const checks: Array<{ scope: 'user' | 'org' | 'query'; buckets: Buckets; key: string }> = [
      { scope: 'org', buckets: this.#org, key: org },
      { scope: 'user', buckets: this.#user, key: userKey },
    ];
    if (rateClass === 'query') checks.push({ scope: 'query', buckets: this.#query, key: userKey });
    const states = checks.map((c) => ({ ...c, b: c.buckets.peek(c.key, now) }));
    const empty = states.filter((s) => s.b.tokens < 1);
    if (empty.length > 0) {
      const worst = empty.reduce((a, s) => (s.buckets.waitMs(s.b) > a.buckets.waitMs(a.b) ? s : a));
      return { ok: false, scope: worst.scope, retryAfterSeconds: Math.max(1, Math.ceil(worst.buckets.waitMs(worst.b) / 1000)) };
    }
    for (const s of states) s.buckets.put(s.key, { tokens: s.b.tokens - 1, at: now });
    return { ok: true };
  }

  /** Tracked bucket counts (tests, metrics). */
  get tracked(): { users: number; queryUsers: number } {
    return { users: this.#user.size, queryUsers: this.#query.size };
  }
}
