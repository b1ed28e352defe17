/**
 * Chain identity checks: a chain sync only ever stitches blocks of ONE chain into its datasets.
 *
 * Recorded: the first commit of a job records the chain's identity (`identity_chain_id`,
 * `genesis_hash`, from the range's manifest); every committed range keeps the parent hash of its
 * first block and the hash of its last block (`first_parent_hash`, `last_block_hash`).
 *
 * Checked, with a stable code per failure:
 * - `CHAIN_ID_MISMATCH`: the node serves another chain id than the one recorded;
 * - `CHAIN_GENESIS_MISMATCH`: the node's block 0 is not the recorded genesis block;
 * - `CHAIN_HEAD_BEHIND`: the node's head is behind the last committed block by more than the
 *   reorg window (follow_head: `tail_lag`; fixed_target: 0), e.g. a fresh dev chain;
 * - `CHAIN_PARENT_MISMATCH`: a range does not link to its committed neighbours (its first
 *   block's parent hash is not the preceding range's last block hash, or the other way round),
 *   or the node's block at the end of a stream's committed data has another hash than the one
 *   committed (the chain was reorganized below the window, or it is another chain).
 *
 * Where: every planning round (`checkJobChain`, live through the RPC gateway, before anything
 * is planned), before every commit (`checkRangeChain`, against the manifest the worker wrote
 * from its own view of the chain, inside the commit transaction), and on resume of a halted job.
 * A mismatch halts the job (`halt_code`, `halt_reason`, `halted_at`): nothing is planned or
 * committed until a resume whose re-check passes clears it. A node that cannot be reached
 * during a planning round does not halt anything (the commit check still guards every write).
 */
import type { Db, Queryable } from '../../db/db.js';
import { TraceError } from '../../core/errors.js';
import type { ManifestChain } from '../../operators/cryo_ingest/manifest.js';

export const CHAIN_CHECK_CODES = ['CHAIN_ID_MISMATCH', 'CHAIN_GENESIS_MISMATCH', 'CHAIN_HEAD_BEHIND', 'CHAIN_PARENT_MISMATCH'] as const;
export type ChainCheckCode = (typeof CHAIN_CHECK_CODES)[number];

export const isChainCheckError = (e: unknown): e is TraceError & { code: ChainCheckCode } =>
  e instanceof TraceError && (CHAIN_CHECK_CODES as readonly string[]).includes(e.code);

export type ChainCheck =
  | { status: 'ok' }
  /** Nothing committed yet: there is no identity to compare with. */
  | { status: 'unrecorded' }
  | { status: 'mismatch'; code: ChainCheckCode; message: string }
  | { status: 'unavailable'; message: string };

/** Blocks the node's head may be behind the last committed block (a reorg within it is normal). */
export const reorgWindow = (j: { mode: string; tail_lag: number | null }): number => (j.mode === 'follow_head' ? Number(j.tail_lag ?? 0) : 0);

interface JobIdentityRow {
  job_id: string;
  name: string;
  chain_id: number;
  mode: string;
  tail_lag: number | null;
  enabled: boolean;
  identity_chain_id: number | null;
  genesis_hash: string | null;
  halt_code: string | null;
}

const JOB = `
SELECT job_id, name, chain_id, mode, tail_lag, enabled, identity_chain_id, genesis_hash, halt_code
FROM chain_sync_jobs WHERE job_id = $1`;

// The highest committed block end of the job (any stream): the committed cursor the head is compared with.
const COMMITTED_TOP = `SELECT max(range_end)::int8 AS top FROM chain_sync_scheduled_ranges WHERE job_id = $1 AND status = 'completed'`;

/** Halts a job (the first reason wins until a resume clears it). Returns true if this call halted it. */
export async function haltJob(q: Queryable, jobId: string, code: string, message: string): Promise<boolean> {
  const r = await q.query(`UPDATE chain_sync_jobs SET halt_code = $2, halt_reason = $3, halted_at = now(), updated_at = now() WHERE job_id = $1 AND halt_code IS NULL`,
    [jobId, code, message.slice(0, 1000)]);
  return (r.rowCount ?? 0) > 0;
}

const short = (h: string) => `${h.slice(0, 10)}…${h.slice(-6)}`;

// ---------------------------------------------------------------------------------------------
// Before a commit: the worker's manifest against what is recorded.

export interface RangeChainInput {
  kind: 'range' | 'compaction';
  job_id: string;
  dataset_key: string;
  chain_id: number;
  range_start: number;
  range_end: number;
  chain: ManifestChain | undefined;
}

const NEIGHBOURS = `
SELECT range_start::int8 AS range_start, range_end::int8 AS range_end, first_parent_hash, last_block_hash
FROM chain_sync_scheduled_ranges
WHERE job_id = $1 AND dataset_key = $2 AND status = 'completed'
  AND (range_end = $3 OR range_start = $4 OR range_start = $3 OR range_end = $4)`;

/**
 * Checks a verified range against the recorded identity and its committed neighbours (the
 * caller holds the stream lock). Throws 422 with a `CHAIN_*` code on a mismatch, 422
 * `CHAIN_SYNC_HALTED` when the job is halted, 422 `OUTPUT_INVALID` when the manifest records
 * no chain view.
 */
export async function checkRangeChain(q: Queryable, v: RangeChainInput): Promise<void> {
  const j = (await q.query<JobIdentityRow>(JOB, [v.job_id])).rows[0];
  if (!j) throw new TraceError(422, 'RANGE_NOT_SCHEDULED', 'the chain sync of this range no longer exists');
  const c = v.chain;
  if (!c) throw new TraceError(422, 'OUTPUT_INVALID', 'manifest.json records no chain view (genesis, boundary hashes); the worker is older than the Dispatcher');
  const refuse = (code: ChainCheckCode, message: string) => new TraceError(422, code, message);
  const where = `range [${v.range_start}, ${v.range_end}) of stream ${v.dataset_key}`;
  if (j.identity_chain_id !== null && Number(j.identity_chain_id) !== v.chain_id) {
    throw refuse('CHAIN_ID_MISMATCH', `${where} was read from chain ${v.chain_id}, but chain sync ${j.name} committed chain ${j.identity_chain_id}`);
  }
  if (j.genesis_hash !== null && j.genesis_hash !== c.genesis_hash) {
    throw refuse('CHAIN_GENESIS_MISMATCH', `${where} was read from a chain whose genesis block is ${short(c.genesis_hash)}, but chain sync ${j.name} committed blocks of the chain with genesis ${short(j.genesis_hash)}`);
  }
  if (c.head_block !== null) {
    const top = (await q.query<{ top: number | null }>(COMMITTED_TOP, [v.job_id])).rows[0]?.top;
    if (top !== null && top !== undefined) {
      const last = Number(top) - 1;
      const window = reorgWindow(j);
      if (last - c.head_block > window) {
        throw refuse('CHAIN_HEAD_BEHIND', `${where} was read from a node whose head is block ${c.head_block}, ${last - c.head_block} blocks behind block ${last}, the last block chain sync ${j.name} committed (reorg window ${window})`);
      }
    }
  }
  const rows = (await q.query<{ range_start: number; range_end: number; first_parent_hash: string | null; last_block_hash: string | null }>(
    NEIGHBOURS, [v.job_id, v.dataset_key, v.range_start, v.range_end])).rows;
  for (const r of rows) {
    const s = Number(r.range_start);
    const e = Number(r.range_end);
    const span = `[${s}, ${e})`;
    if (e === v.range_start && r.last_block_hash !== null && r.last_block_hash !== c.first_parent_hash) {
      throw refuse('CHAIN_PARENT_MISMATCH', `the parent of block ${v.range_start} in ${where} is ${short(c.first_parent_hash)}, but the committed range ${span} ends with block ${short(r.last_block_hash)}`);
    }
    if (s === v.range_end && r.first_parent_hash !== null && r.first_parent_hash !== c.last_block_hash) {
      throw refuse('CHAIN_PARENT_MISMATCH', `block ${v.range_end - 1} in ${where} is ${short(c.last_block_hash)}, but the committed range ${span} names ${short(r.first_parent_hash)} as its parent`);
    }
    // A compaction re-reads committed blocks: its boundaries must be the ones committed.
    if (s === v.range_start && r.first_parent_hash !== null && r.first_parent_hash !== c.first_parent_hash) {
      throw refuse('CHAIN_PARENT_MISMATCH', `the parent of block ${s} in ${where} is ${short(c.first_parent_hash)}, but the committed range ${span} recorded ${short(r.first_parent_hash)}`);
    }
    if (e === v.range_end && r.last_block_hash !== null && r.last_block_hash !== c.last_block_hash) {
      throw refuse('CHAIN_PARENT_MISMATCH', `block ${e - 1} in ${where} is ${short(c.last_block_hash)}, but the committed range ${span} recorded ${short(r.last_block_hash)}`);
    }
  }
  if (j.halt_code !== null) {
    throw new TraceError(422, 'CHAIN_SYNC_HALTED', `chain sync ${j.name} is halted (${j.halt_code}); nothing is committed until a resume whose chain check passes`);
  }
}

/**
 * Records the identity on the job's first commit (inside the commit transaction, after
 * `checkRangeChain`). Two streams committing their first range at once take turns on the job
 * row; the second one compares with what the first recorded.
 */
export async function recordIdentity(q: Queryable, jobId: string, chainId: number, chain: ManifestChain): Promise<void> {
  const r = await q.query<{ genesis_hash: string; identity_chain_id: number }>(
    `UPDATE chain_sync_jobs SET identity_chain_id = coalesce(identity_chain_id, $2), genesis_hash = coalesce(genesis_hash, $3),
       identity_recorded_at = coalesce(identity_recorded_at, now())
     WHERE job_id = $1 RETURNING genesis_hash, identity_chain_id`, [jobId, chainId, chain.genesis_hash]);
  const row = r.rows[0];
  if (row && (row.genesis_hash !== chain.genesis_hash || Number(row.identity_chain_id) !== chainId)) {
    throw new TraceError(422, 'CHAIN_GENESIS_MISMATCH', `the range was read from a chain whose genesis block is ${short(chain.genesis_hash)}, but the chain sync committed blocks of the chain with genesis ${short(row.genesis_hash)}`);
  }
}

// ---------------------------------------------------------------------------------------------
// Each planning round and on resume: the node behind the RPC pool(s) against what is recorded.

class Unavailable extends Error {}

async function rpcBatch(gatewayUrl: string, pool: string, calls: Array<{ method: string; params: unknown[] }>, timeoutMs: number): Promise<unknown[]> {
  let res: Response;
  try {
    res = await fetch(`${gatewayUrl.replace(/\/+$/, '')}/rpc/${pool}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(calls.map((c, i) => ({ jsonrpc: '2.0', id: i, method: c.method, params: c.params }))),
      signal: AbortSignal.timeout(timeoutMs),
    });
  } catch (e) {
    throw new Unavailable((e as { name?: string }).name === 'TimeoutError' ? 'RPC gateway timed out' : 'RPC gateway unreachable');
  }
  const text = await res.text();
  if (!res.ok) throw new Unavailable(`RPC gateway answered ${res.status}`);
  let items: Array<{ id?: unknown; result?: unknown; error?: unknown }>;
  try {
    const parsed: unknown = JSON.parse(text);
    if (!Array.isArray(parsed)) throw new Error('not a batch');
    items = parsed as typeof items;
  } catch {
    throw new Unavailable('RPC gateway answered with malformed JSON');
  }
  const byId = new Map(items.map((i) => [i.id, i]));
  return calls.map((c, i) => {
    const it = byId.get(i);
    if (!it || it.error !== undefined) throw new Unavailable(`${c.method} failed`);
    return it.result;
  });
}

const quantity = (v: unknown): number | undefined => (typeof v === 'string' && /^0x[0-9a-fA-F]{1,16}$/.test(v) ? Number.parseInt(v.slice(2), 16) : undefined);
const hashOf = (b: unknown): string | null | undefined => {
  if (b === null) return null;
  const h = b && typeof b === 'object' ? (b as { hash?: unknown }).hash : undefined;
  return typeof h === 'string' && /^0x[0-9a-fA-F]{64}$/.test(h) ? h.toLowerCase() : undefined;
};

// The end of each stream's committed data that has a recorded hash.
const STREAM_ENDS = `
SELECT DISTINCT ON (dataset_key) dataset_key, range_end::int8 AS range_end, last_block_hash
FROM chain_sync_scheduled_ranges
WHERE job_id = $1 AND status = 'completed' AND last_block_hash IS NOT NULL
ORDER BY dataset_key, range_end DESC`;

/**
 * Asks every RPC pool of the job's active streams for the chain id, block 0, the head and the
 * blocks at the end of each stream's committed data, and compares them with what is recorded.
 * No RPC is made when nothing was committed yet.
 */
export async function checkJobChain(db: Queryable, jobId: string, gatewayUrl: string | undefined, timeoutMs = 5_000): Promise<ChainCheck> {
  const j = (await db.query<JobIdentityRow>(JOB, [jobId])).rows[0];
  if (!j || j.genesis_hash === null || j.identity_chain_id === null) return { status: 'unrecorded' };
  const pools = (await db.query<{ rpc_pool: string }>(`SELECT DISTINCT rpc_pool FROM chain_sync_streams WHERE job_id = $1 AND active ORDER BY rpc_pool`, [jobId])).rows.map((r) => r.rpc_pool);
  if (pools.length === 0) return { status: 'ok' };
  if (!gatewayUrl) return { status: 'unavailable', message: 'no RPC gateway is configured for the Dispatcher (TRACE_RPC_GATEWAY_URL)' };
  const top = (await db.query<{ top: number | null }>(COMMITTED_TOP, [jobId])).rows[0]?.top;
  const ends = (await db.query<{ dataset_key: string; range_end: number; last_block_hash: string }>(STREAM_ENDS, [jobId])).rows;
  const window = reorgWindow(j);
  for (const pool of pools) {
    let got: unknown[];
    try {
      got = await rpcBatch(gatewayUrl, pool, [
        { method: 'eth_chainId', params: [] },
        { method: 'eth_getBlockByNumber', params: ['0x0', false] },
        { method: 'eth_blockNumber', params: [] },
        ...ends.map((e) => ({ method: 'eth_getBlockByNumber', params: [`0x${(Number(e.range_end) - 1).toString(16)}`, false] })),
      ], timeoutMs);
    } catch (e) {
      return { status: 'unavailable', message: `rpc_pool ${pool}: ${e instanceof Unavailable ? e.message : 'the chain check failed'}` };
    }
    const chainId = quantity(got[0]);
    const genesis = hashOf(got[1]);
    const head = quantity(got[2]);
    if (chainId === undefined || genesis === undefined || head === undefined) return { status: 'unavailable', message: `rpc_pool ${pool}: the node answered the chain check with malformed values` };
    if (chainId !== Number(j.identity_chain_id)) {
      return { status: 'mismatch', code: 'CHAIN_ID_MISMATCH', message: `rpc_pool ${pool} serves chain ${chainId}, but chain sync ${j.name} committed chain ${j.identity_chain_id}` };
    }
    if (genesis !== j.genesis_hash) {
      return { status: 'mismatch', code: 'CHAIN_GENESIS_MISMATCH', message: `rpc_pool ${pool} serves a chain whose genesis block is ${genesis === null ? 'missing' : short(genesis)}, but chain sync ${j.name} committed blocks of the chain with genesis ${short(j.genesis_hash)} (another chain, or a dev chain that was reset)` };
    }
    if (top !== null && top !== undefined && Number(top) - 1 - head > window) {
      const last = Number(top) - 1;
      return { status: 'mismatch', code: 'CHAIN_HEAD_BEHIND', message: `the head of rpc_pool ${pool} is block ${head}, ${last - head} blocks behind block ${last}, the last block chain sync ${j.name} committed (reorg window ${window})` };
    }
    for (const [i, e] of ends.entries()) {
      const h = hashOf(got[3 + i]);
      const n = Number(e.range_end) - 1;
      if (h === undefined) return { status: 'unavailable', message: `rpc_pool ${pool}: the node answered block ${n} with a malformed block` };
      if (h === null && n - head <= window) continue; // within the reorg window: the node may lag a little
      if (h !== e.last_block_hash) {
        return { status: 'mismatch', code: 'CHAIN_PARENT_MISMATCH', message: `block ${n} of rpc_pool ${pool} is ${h === null ? 'missing' : short(h)}, but stream ${e.dataset_key} committed ${short(e.last_block_hash)} (the chain was reorganized below the committed data, or it is another chain)` };
      }
    }
  }
  return { status: 'ok' };
}

/** One planning-round check of a job that plans: halts the job on a mismatch. */
export async function checkBeforePlanning(db: Db, jobId: string, gatewayUrl: string | undefined, timeoutMs?: number): Promise<ChainCheck> {
  const j = (await db.query<{ enabled: boolean; halt_code: string | null; completed_at: Date | null }>(
    `SELECT enabled, halt_code, completed_at FROM chain_sync_jobs WHERE job_id = $1`, [jobId])).rows[0];
  // paused, halted or completed jobs do not plan: nothing to check
  if (!j || !j.enabled || j.halt_code !== null || j.completed_at !== null) return { status: 'ok' };
  const r = await checkJobChain(db, jobId, gatewayUrl, timeoutMs);
  if (r.status === 'mismatch') await haltJob(db, jobId, r.code, r.message);
  return r;
}
