import { TraceError } from '../../core/errors.js';
import { backoffDelayMs, type BackoffPolicy } from '../../core/backoff.js';
import { silentLogger, type Logger } from '../../core/log.js';
import { HttpTransportError, httpRequestRaw, type HttpRawResult } from '../../core/http-client.js';
import { classifyRpcError, isJsonRpcResponse, type JsonRpcErrorObject, type JsonRpcResponse, type RpcErrorKind } from '../../chain/jsonrpc.js';

export { classifyRpcError, type RpcErrorKind };

/**
 * JSON-RPC client for the ingest, pointed at the RPC egress gateway (`{gateway}/rpc/{pool}`).
 *
 * Calls are queued and sent as JSON-RPC batches under a concurrency limit. Both the batch size
 * and the concurrency adapt (AIMD): a 429, a 503 or a timeout halves them, a window of
 * successful requests grows them back by a small step. Failed items are retried with
 * exponential backoff and jitter; per-item errors are classified so the caller can react
 * (missing method -> fallback, "too many results" -> split the range).
 */

export class RpcCallError extends TraceError {
  readonly kind: RpcErrorKind;
  readonly rpcCode: number | undefined;
  readonly method: string;

  constructor(kind: RpcErrorKind, method: string, message: string, rpcCode?: number) {
    const retryable = kind !== 'method_not_found' && kind !== 'too_many_results' && kind !== 'rpc' && kind !== 'http';
    super(502, `RPC_${kind.toUpperCase()}`, message, { extra: { retryable } });
    this.name = 'RpcCallError';
    this.kind = kind;
    this.rpcCode = rpcCode;
    this.method = method;
  }
}

export interface RpcClientOptions {
  /** Full endpoint, normally `${gatewayUrl}/rpc/${pool}`. */
  url: string;
  /** Per HTTP request. Default 30 s. */
  timeoutMs?: number;
  /** Upper bound of requests in flight. Default 8. */
  maxConcurrency?: number;
  /** Starting concurrency. Default `maxConcurrency`. */
  initialConcurrency?: number;
  /** Upper bound of calls per JSON-RPC batch. Default 100. */
  maxBatchSize?: number;
  initialBatchSize?: number;
  /** Retries per call after the first try. Default 6. */
  maxRetries?: number;
  backoff?: BackoffPolicy;
  log?: Logger;
  /** Test seam. */
  random?: () => number;
  /**
   * What the node behind the URL is known to support, shared by clients of the same endpoint
   * (`rpcClientForPool` shares one per pool in this process). Default: this client's own.
   */
  methodSupport?: MethodSupport;
}

/**
 * Optional-method support learned from a node, remembered for `ttlMs` (default 10 min) so a
 * provider that gains or loses a method is probed again.
 */
export class MethodSupport {
  readonly #known = new Map<string, { supported: boolean; at: number }>();
  constructor(
    readonly ttlMs = 10 * 60_000,
    readonly now: () => number = Date.now,
  ) {}

  get(method: string): boolean | undefined {
    const k = this.#known.get(method);
    if (!k) return undefined;
    if (this.now() - k.at > this.ttlMs) {
      this.#known.delete(method);
      return undefined;
    }
    return k.supported;
  }

  set(method: string, supported: boolean): void {
    this.#known.set(method, { supported, at: this.now() });
  }

  entries(): Record<string, boolean> {
    const out: Record<string, boolean> = {};
    for (const m of this.#known.keys()) {
      const v = this.get(m);
      if (v !== undefined) out[m] = v;
    }
    return out;
  }
}

export interface RpcClientStats {
  concurrency: number;
  batchSize: number;
  inflight: number;
  queued: number;
  requests: number;
  retries: number;
  rateLimited: number;
  timeouts: number;
  decreases: number;
  increases: number;
  methodSupport: Record<string, boolean>;
}

interface Item {
  method: string;
  params: unknown[];
  attempt: number;
  notBefore: number;
  resolve: (v: unknown) => void;
  reject: (e: unknown) => void;
}

/** The gateway caps upstream answers at 64 MiB; a little room for its own framing. */
const MAX_RESPONSE_BYTES = 80 * 1024 * 1024;

export const DEFAULT_RPC_BACKOFF: BackoffPolicy = { baseMs: 200, maxMs: 10_000 };

export class RpcClient {
  readonly url: string;
  readonly #endpoint: URL;
  readonly #timeoutMs: number;
  readonly #maxConcurrency: number;
  readonly #maxBatch: number;
  readonly #maxRetries: number;
  readonly #backoff: BackoffPolicy;
  readonly #log: Logger;
  readonly #random: () => number;

  #concurrency: number;
  #batchSize: number;
  #inflight = 0;
  #ready: Item[] = [];
  #delayed: Item[] = [];
  #timer: NodeJS.Timeout | undefined;
  #timerAt = 0;
  #nextId = 1;
  #epoch = 0;
  #successStreak = 0;
  #closed = false;
  #pumpScheduled = false;
  readonly #support: MethodSupport;
  readonly #probes = new Map<string, Promise<void>>();
  readonly #stats = { requests: 0, retries: 0, rateLimited: 0, timeouts: 0, decreases: 0, increases: 0 };

  constructor(opts: RpcClientOptions) {
    let u: URL;
    try {
      u = new URL(opts.url);
    } catch {
      throw new TraceError(400, 'RPC_URL_INVALID', 'the RPC endpoint is not a valid URL');
    }
    if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new TraceError(400, 'RPC_URL_INVALID', 'the RPC endpoint must be http(s)');
    this.url = u.toString();
    this.#endpoint = u;
    this.#timeoutMs = opts.timeoutMs ?? 30_000;
    this.#maxConcurrency = Math.max(1, Math.floor(opts.maxConcurrency ?? 8));
    this.#maxBatch = Math.max(1, Math.floor(opts.maxBatchSize ?? 100));
    this.#concurrency = clamp(opts.initialConcurrency ?? this.#maxConcurrency, 1, this.#maxConcurrency);
    this.#batchSize = clamp(opts.initialBatchSize ?? this.#maxBatch, 1, this.#maxBatch);
    this.#maxRetries = Math.max(0, Math.floor(opts.maxRetries ?? 6));
    this.#backoff = opts.backoff ?? DEFAULT_RPC_BACKOFF;
    this.#log = opts.log ?? silentLogger;
    this.#random = opts.random ?? Math.random;
    this.#support = opts.methodSupport ?? new MethodSupport();
  }

  /** One call. Rejects with `RpcCallError`. */
  call<T = unknown>(method: string, params: unknown[] = []): Promise<T> {
    if (this.#closed) return Promise.reject(new RpcCallError('closed', method, 'the RPC client is closed'));
    return new Promise<T>((resolve, reject) => {
      this.#ready.push({ method, params, attempt: 0, notBefore: 0, resolve: resolve as (v: unknown) => void, reject });
      this.#schedulePump();
    });
  }

  /** Many calls; they share batches with every other queued call. Rejects on the first failure. */
  callMany<T = unknown>(calls: ReadonlyArray<{ method: string; params?: unknown[] }>): Promise<T[]> {
    return Promise.all(calls.map((c) => this.call<T>(c.method, c.params ?? [])));
  }

  /**
   * Calls a method the node may lack. The first caller probes; concurrent callers wait for the
   * probe. Once a node answered "method not found" the client remembers it and later calls
   * return `{ supported: false }` without a request.
   */
  async callOptional<T = unknown>(method: string, params: unknown[] = []): Promise<{ supported: true; result: T } | { supported: false }> {
    for (;;) {
      const known = this.#support.get(method);
      if (known === false) return { supported: false };
      if (known === true) {
        try {
          return { supported: true, result: await this.call<T>(method, params) };
        } catch (e) {
          // the node lost the method (another provider of the pool answered): fall back
          if (!(e instanceof RpcCallError && e.kind === 'method_not_found')) throw e;
          this.#support.set(method, false);
          this.#log.info({ method }, 'rpc method no longer supported by the node; using the fallback');
          return { supported: false };
        }
      }
      const probe = this.#probes.get(method);
      if (probe) {
        // re-check after the probe: support may be known now, or another waiter probes again
        await probe.catch(() => undefined);
        continue;
      }
      // become the prober
      let done!: () => void;
      this.#probes.set(method, new Promise<void>((r) => (done = r)));
      try {
        const result = await this.call<T>(method, params);
        this.#support.set(method, true);
        return { supported: true, result };
      } catch (e) {
        if (e instanceof RpcCallError && e.kind === 'method_not_found') {
          this.#support.set(method, false);
          this.#log.info({ method }, 'rpc method not supported by the node; using the fallback');
          return { supported: false };
        }
        throw e;
      } finally {
        this.#probes.delete(method);
        done();
      }
    }
  }

  /** What the client learned about optional methods (`true` supported, `false` missing). */
  methodSupport(method: string): boolean | undefined {
    return this.#support.get(method);
  }

  stats(): RpcClientStats {
    return {
      concurrency: this.#concurrency,
      batchSize: this.#batchSize,
      inflight: this.#inflight,
      queued: this.#ready.length + this.#delayed.length,
      ...this.#stats,
      methodSupport: this.#support.entries(),
    };
  }

  /** Rejects everything still queued; in-flight requests finish on their own. */
  close(): void {
    this.#closed = true;
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = undefined;
    const pending = [...this.#ready, ...this.#delayed];
    this.#ready = [];
    this.#delayed = [];
    for (const it of pending) it.reject(new RpcCallError('closed', it.method, 'the RPC client is closed'));
  }

  // ---- scheduling -------------------------------------------------------------------------

  /** Calls made in the same tick share batches: pump once, after the caller's loop. */
  #schedulePump(): void {
    if (this.#pumpScheduled) return;
    this.#pumpScheduled = true;
    queueMicrotask(() => {
      this.#pumpScheduled = false;
      this.#pump();
    });
  }

  #pump(): void {
    if (this.#closed) return;
    const now = Date.now();
    if (this.#delayed.length > 0) {
      const still: Item[] = [];
      for (const it of this.#delayed) (it.notBefore <= now ? this.#ready : still).push(it);
      this.#delayed = still;
    }
    while (this.#inflight < this.#concurrency && this.#ready.length > 0) {
      const batch = this.#ready.splice(0, this.#batchSize);
      this.#inflight++;
      const epoch = this.#epoch;
      void this.#send(batch, epoch).finally(() => {
        this.#inflight--;
        this.#pump();
      });
    }
    this.#armTimer(now);
  }

  #armTimer(now: number): void {
    if (this.#delayed.length === 0) return;
    let next = Infinity;
    for (const it of this.#delayed) if (it.notBefore < next) next = it.notBefore;
    if (this.#timer && this.#timerAt <= next) return;
    if (this.#timer) clearTimeout(this.#timer);
    this.#timerAt = next;
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      this.#pump();
    }, Math.max(0, next - now));
  }

  /** Multiplicative decrease, at most once per generation of requests (TCP style). */
  #decrease(epoch: number, batchOnly = false): void {
    if (epoch !== this.#epoch) return;
    this.#epoch++;
    this.#successStreak = 0;
    this.#stats.decreases++;
    if (!batchOnly) this.#concurrency = Math.max(1, Math.floor(this.#concurrency / 2));
    this.#batchSize = Math.max(1, Math.floor(this.#batchSize / 2));
    this.#log.info({ concurrency: this.#concurrency, batch_size: this.#batchSize }, 'rpc client backing off');
  }

  /**
   * Additive increase after a window of `concurrency` consecutive good requests; requests
   * sent before the last decrease do not count.
   */
  #onSuccess(epoch: number): void {
    if (epoch !== this.#epoch) return;
    this.#successStreak++;
    if (this.#successStreak < this.#concurrency) return;
    this.#successStreak = 0;
    const c = Math.min(this.#maxConcurrency, this.#concurrency + 1);
    const b = Math.min(this.#maxBatch, this.#batchSize + Math.max(1, Math.round(this.#maxBatch / 20)));
    if (c !== this.#concurrency || b !== this.#batchSize) {
      this.#concurrency = c;
      this.#batchSize = b;
      this.#stats.increases++;
    }
  }

  #retry(items: Item[], err: RpcCallError, minDelayMs = 0): void {
    const now = Date.now();
    for (const it of items) {
      it.attempt++;
      if (it.attempt > this.#maxRetries) {
        it.reject(err);
        continue;
      }
      this.#stats.retries++;
      it.notBefore = now + Math.max(minDelayMs, backoffDelayMs(this.#backoff, it.attempt - 1, this.#random));
      this.#delayed.push(it);
    }
  }

  async #send(items: Item[], epoch: number): Promise<void> {
    try {
      await this.#sendInner(items, epoch);
    } catch (e) {
      // a bug here must not leave callers hanging; settled promises ignore the second call
      for (const it of items) it.reject(e);
    }
  }

  async #sendInner(items: Item[], epoch: number): Promise<void> {
    const ids = items.map(() => this.#nextId++);
    const payload = items.map((it, i) => ({ jsonrpc: '2.0', id: ids[i], method: it.method, params: it.params }));
    const body = JSON.stringify(payload.length === 1 ? payload[0] : payload);
    const label = items[0]!.method;
    this.#stats.requests++;

    let res: HttpRawResult;
    try {
      res = await httpRequestRaw(this.#endpoint, {
        method: 'POST',
        headers: { 'content-type': 'application/json', accept: 'application/json' },
        body,
        timeoutMs: this.#timeoutMs,
        maxResponseBytes: MAX_RESPONSE_BYTES,
      });
    } catch (e) {
      if (e instanceof HttpTransportError && e.timedOut) {
        this.#stats.timeouts++;
        this.#decrease(epoch);
        this.#retry(items, new RpcCallError('timeout', label, 'the RPC request timed out'));
      } else if (e instanceof HttpTransportError && e.code === 'RESPONSE_TOO_LARGE') {
        this.#tooLarge(items, epoch, label);
      } else {
        this.#retry(items, new RpcCallError('transport', label, 'could not reach the RPC endpoint'));
      }
      return;
    }

    let parsed: unknown;
    try {
      parsed = JSON.parse(res.body.toString('utf8'));
    } catch {
      parsed = undefined;
    }

    if (res.status === 429 || res.status === 503) {
      this.#stats.rateLimited++;
      this.#decrease(epoch);
      const retryAfter = Number(res.headers['retry-after']);
      const minDelay = Number.isFinite(retryAfter) && retryAfter > 0 ? Math.min(retryAfter * 1000, this.#backoff.maxMs) : 0;
      this.#retry(items, new RpcCallError('rate_limited', label, `the RPC endpoint answered ${res.status}`), minDelay);
      return;
    }
    if (res.status === 413 || errorCode(parsed) === 'RPC_BATCH_TOO_LARGE') {
      if (items.length > 1) {
        this.#decrease(epoch, true);
        this.#retry(items, new RpcCallError('http', label, 'the RPC batch was too large'));
      } else {
        for (const it of items) it.reject(new RpcCallError('http', it.method, 'the RPC request was too large'));
      }
      return;
    }
    if (errorCode(parsed) === 'RPC_RESPONSE_TOO_LARGE') {
      this.#tooLarge(items, epoch, label);
      return;
    }
    if (res.status === 504) {
      this.#stats.timeouts++;
      this.#decrease(epoch);
      this.#retry(items, new RpcCallError('timeout', label, 'the RPC providers timed out'));
      return;
    }

    const responses = Array.isArray(parsed) ? parsed : parsed !== undefined ? [parsed] : [];
    // ids compared as strings: some proxies turn numeric ids into strings
    const byId = new Map<string, JsonRpcResponse>();
    for (const r of responses) if (isJsonRpcResponse(r) && r.id !== undefined && r.id !== null) byId.set(String(r.id), r);

    if (byId.size === 0) {
      // Not a JSON-RPC answer to our ids: a batch-level error object, a gateway error or garbage.
      if (isJsonRpcResponse(parsed) && parsed.error) {
        const kind = classifyRpcError(parsed.error);
        if (kind === 'rate_limited') {
          this.#stats.rateLimited++;
          this.#decrease(epoch);
          this.#retry(items, new RpcCallError(kind, label, parsed.error.message, parsed.error.code));
          return;
        }
        if (items.length > 1) {
          // many providers reject a whole batch (size limits); try smaller batches
          this.#decrease(epoch, true);
          this.#retry(items, new RpcCallError(kind, label, parsed.error.message, parsed.error.code));
          return;
        }
        this.#settleError(items[0]!, parsed.error, epoch);
        return;
      }
      if (res.status >= 500) {
        this.#retry(items, new RpcCallError('server', label, `the RPC endpoint answered ${res.status}`));
        return;
      }
      if (res.status >= 400) {
        const code = errorCode(parsed);
        const msg = `the RPC endpoint answered ${res.status}${code ? ` (${code})` : ''}`;
        for (const it of items) it.reject(new RpcCallError('http', it.method, msg));
        return;
      }
      this.#retry(items, new RpcCallError('bad_response', label, 'the RPC endpoint returned an unusable answer'));
      return;
    }

    let anyOk = false;
    const missing: Item[] = [];
    items.forEach((it, i) => {
      const r = byId.get(String(ids[i]));
      if (!r) return void missing.push(it);
      if (r.error) return void this.#settleError(it, r.error, epoch);
      anyOk = true;
      it.resolve(r.result);
    });
    if (missing.length > 0) this.#retry(missing, new RpcCallError('bad_response', label, 'the RPC batch answer lacked some responses'));
    if (anyOk) this.#onSuccess(epoch);
  }

  /** An answer over the size cap: smaller batches, or "too many results" for a single call. */
  #tooLarge(items: Item[], epoch: number, label: string): void {
    if (items.length > 1) {
      this.#decrease(epoch, true);
      this.#retry(items, new RpcCallError('too_many_results', label, 'the RPC response was too large'));
    } else {
      for (const it of items) it.reject(new RpcCallError('too_many_results', it.method, 'the RPC response was too large'));
    }
  }

  #settleError(it: Item, err: JsonRpcErrorObject, epoch: number): void {
    const kind = classifyRpcError(err);
    const e = new RpcCallError(kind, it.method, `${it.method}: ${truncate(err.message)}`, err.code);
    if (kind === 'rate_limited') {
      this.#stats.rateLimited++;
      this.#decrease(epoch);
      this.#retry([it], e);
    } else if (kind === 'server') {
      this.#retry([it], e);
    } else {
      it.reject(e);
    }
  }
}

function errorCode(v: unknown): string | undefined {
  if (v && typeof v === 'object' && !Array.isArray(v) && typeof (v as { code?: unknown }).code === 'string') {
    return (v as { code: string }).code;
  }
  return undefined;
}

const truncate = (s: string, n = 300): string => (s.length > n ? `${s.slice(0, n)}…` : s);
const clamp = (v: number, lo: number, hi: number): number => Math.max(lo, Math.min(hi, Math.floor(v)));

/** Method support per gateway pool endpoint, shared by the clients (tasks) of this process. */
const poolSupport = new Map<string, MethodSupport>();

/**
 * Client for one pool of the RPC egress gateway. Operators name a pool, never a URL. Clients
 * of the same pool share what they learned about optional methods, so a node without
 * `eth_getBlockReceipts` is probed once per process (and again after the TTL), not per task.
 */
export function rpcClientForPool(gatewayUrl: string, pool: string, opts: Omit<RpcClientOptions, 'url'> = {}): RpcClient {
  if (!/^[a-z0-9_]{1,64}$/.test(pool)) throw new TraceError(400, 'RPC_POOL_INVALID', 'rpc_pool must match ^[a-z0-9_]{1,64}$');
  const url = `${gatewayUrl.replace(/\/+$/, '')}/rpc/${pool}`;
  let support = poolSupport.get(url);
  if (!support) {
    support = new MethodSupport();
    if (poolSupport.size >= 256) poolSupport.clear(); // bounded: pools are few
    poolSupport.set(url, support);
  }
  return new RpcClient({ methodSupport: support, ...opts, url });
}
