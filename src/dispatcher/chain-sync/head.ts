/**
 * The head observer: for every `(org, chain_id, rpc_pool)` used by an enabled follow_head job,
 * at that job's `head_poll_interval_seconds` (the smallest when several jobs share the pool),
 * ask the RPC egress gateway for `eth_chainId` and `eth_blockNumber` and upsert
 * `chain_head_observations`. A failure keeps the last good head (so it ages and planning stops
 * once it is older than `max_head_age_seconds`) and records an error category; a pool that
 * serves another chain never produces an observation. Provider URLs never reach this process.
 */
import type { Db } from '../../db/db.js';
import type { Logger } from '../../core/log.js';

export interface HeadObserverOptions {
  /** Base URL of the RPC egress gateway; requests go to `{url}/rpc/{pool}`. */
  rpcGatewayUrl: () => string | undefined;
  timeoutMs?: number;
  log?: Logger;
}

const DUE = `
SELECT j.org_id, j.chain_id, s.rpc_pool
FROM chain_sync_jobs j
JOIN chain_sync_streams s ON s.job_id = j.job_id AND s.active
LEFT JOIN chain_head_observations o ON o.org_id = j.org_id AND o.chain_id = j.chain_id AND o.rpc_pool = s.rpc_pool
WHERE j.mode = 'follow_head' AND j.enabled
GROUP BY j.org_id, j.chain_id, s.rpc_pool, o.last_attempt_at
HAVING o.last_attempt_at IS NULL
    OR o.last_attempt_at <= now() - make_interval(secs => min(j.head_poll_interval_seconds)::float8 - 0.05)`;

const OBSERVED = `
INSERT INTO chain_head_observations (org_id, chain_id, rpc_pool, head_block, observed_at, source, last_attempt_at, last_error)
VALUES ($1, $2, $3, $4, now(), $5, now(), NULL)
ON CONFLICT (org_id, chain_id, rpc_pool) DO UPDATE SET head_block = EXCLUDED.head_block, observed_at = now(),
  source = EXCLUDED.source, last_attempt_at = now(), last_error = NULL`;

const FAILED = `
INSERT INTO chain_head_observations (org_id, chain_id, rpc_pool, source, last_attempt_at, last_error)
VALUES ($1, $2, $3, $4, now(), $5)
ON CONFLICT (org_id, chain_id, rpc_pool) DO UPDATE SET last_attempt_at = now(), last_error = EXCLUDED.last_error`;

class HeadError extends Error {}

function quantity(v: unknown, what: string): number {
  if (typeof v !== 'string' || !/^0x[0-9a-fA-F]{1,16}$/.test(v)) throw new HeadError(`${what} returned no quantity`);
  const n = Number.parseInt(v.slice(2), 16);
  if (!Number.isSafeInteger(n)) throw new HeadError(`${what} is out of range`);
  return n;
}

/** eth_chainId + eth_blockNumber in one batch through the gateway pool. */
export async function fetchHead(gatewayUrl: string, pool: string, timeoutMs = 5_000): Promise<{ chainId: number; head: number }> {
  let res: Response;
  try {
    res = await fetch(`${gatewayUrl.replace(/\/+$/, '')}/rpc/${pool}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify([
        { jsonrpc: '2.0', id: 1, method: 'eth_chainId', params: [] },
        { jsonrpc: '2.0', id: 2, method: 'eth_blockNumber', params: [] },
      ]),
      signal: AbortSignal.timeout(timeoutMs),
    });
  } catch (e) {
    const timeout = (e as { name?: string }).name === 'TimeoutError';
    throw new HeadError(timeout ? 'RPC gateway timed out' : 'RPC gateway unreachable');
  }
  const text = await res.text();
  if (!res.ok) {
    let code = `HTTP_${res.status}`;
    try { code = (JSON.parse(text) as { code?: string }).code ?? code; } catch { /* keep */ }
    throw new HeadError(`RPC gateway answered ${res.status} ${code}`);
  }
  let items: Array<{ id?: unknown; result?: unknown; error?: { code?: unknown } }>;
  try {
    const parsed: unknown = JSON.parse(text);
    items = Array.isArray(parsed) ? parsed as typeof items : [];
  } catch {
    throw new HeadError('RPC gateway answered with malformed JSON');
  }
  const byId = new Map(items.map((i) => [i.id, i]));
  const pick = (id: number, method: string) => {
    const it = byId.get(id);
    if (!it) throw new HeadError(`${method} had no answer`);
    if (it.error) throw new HeadError(`${method} failed with RPC error ${typeof it.error.code === 'number' ? it.error.code : '?'}`);
    return quantity(it.result, method);
  };
  return { chainId: pick(1, 'eth_chainId'), head: pick(2, 'eth_blockNumber') };
}

/** One pass: observes every due `(org, chain, pool)`; returns how many observations succeeded. */
export async function observeHeads(db: Db, opts: HeadObserverOptions): Promise<number> {
  const due = (await db.query<{ org_id: string; chain_id: number; rpc_pool: string }>(DUE)).rows;
  if (due.length === 0) return 0;
  const gw = opts.rpcGatewayUrl();
  let ok = 0;
  await Promise.all(due.map(async (d) => {
    const chainId = Number(d.chain_id);
    const source = `rpc_pool:${d.rpc_pool}`;
    try {
      if (!gw) throw new HeadError('no RPC gateway is configured for the Dispatcher (TRACE_RPC_GATEWAY_URL)');
      const h = await fetchHead(gw, d.rpc_pool, opts.timeoutMs);
      if (h.chainId !== chainId) throw new HeadError(`CHAIN_ID_MISMATCH: rpc_pool ${d.rpc_pool} serves chain ${h.chainId}, not ${chainId}`);
      await db.query(OBSERVED, [d.org_id, chainId, d.rpc_pool, h.head, source]);
      ok++;
    } catch (e) {
      const msg = e instanceof HeadError ? e.message : 'head observation failed';
      opts.log?.warn({ chain_id: chainId, rpc_pool: d.rpc_pool, err: msg }, 'chain head observation failed');
      await db.query(FAILED, [d.org_id, chainId, d.rpc_pool, source, msg]);
    }
  }));
  return ok;
}
