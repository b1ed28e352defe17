/**
 * The chain_sync YAML (v1, specs/chain_sync_entrypoint.md): hostile-input-safe parsing
 * (`parseYamlSafely`) and strict validation that reports every problem by path in one 422
 * `CHAIN_SYNC_INVALID`. Nothing here touches the database.
 *
 * ```yaml
 * kind: chain_sync
 * name: mainnet_follow                # ^[a-z][a-z0-9_]{0,63}$, unique per org
 * chain_id: 1
 * mode:
 *   kind: fixed_target                # from_block, to_block (end exclusive)
 *   # kind: follow_head               # from_block, tail_lag, head_poll_interval_seconds, max_head_age_seconds
 * streams:
 *   blocks:                           # dataset_key ^[a-z0-9_]{1,64}$
 *     cryo_dataset_name: blocks
 *     rpc_pool: standard              # a pool NAME of the RPC gateway, never a URL
 *     chunk_size: 2000                # optional, default 1000
 *     max_inflight: 40                # optional, default 8
 *     publish_name: mainnet_blocks    # optional, default {name}_{dataset_key}
 * ```
 *
 * Secrets never belong here: any value or key that looks like a URL, credential or API key is
 * refused, and no problem message repeats the offending text.
 */
import { TraceError } from '../../core/errors.js';
import { canonicalJson, sha256Hex } from '../../core/ids.js';
import { parseYamlSafely } from '../../dag/safe-yaml.js';
import { DATASET_NAME_RE, DAG_NAME_RE } from '../../dag/schema.js';
import { MAX_BLOCK, SLUG_RE } from '../../operators/cryo_ingest/payload.js';

export const CHAIN_SYNC_LIMITS = {
  maxYamlBytes: 64 * 1024,
  maxStreams: 32,
  maxChunkSize: 1_000_000,
  maxInflight: 256,
  maxTailLag: 1_000_000,
  maxPollSeconds: 3600,
  maxHeadAgeSeconds: 86_400,
} as const;

export const CHAIN_SYNC_DEFAULTS = { chunk_size: 1000, max_inflight: 8 } as const;

export type ChainSyncMode =
  | { kind: 'fixed_target'; from_block: number; to_block: number }
  | { kind: 'follow_head'; from_block: number; tail_lag: number; head_poll_interval_seconds: number; max_head_age_seconds: number };

export interface ChainSyncStreamSpec {
  dataset_key: string;
  cryo_dataset_name: string;
  rpc_pool: string;
  chunk_size: number;
  max_inflight: number;
  /** The registry name the stream publishes (default `{name}_{dataset_key}`). */
  publish_name: string;
}

export interface ChainSyncSpec {
  kind: 'chain_sync';
  name: string;
  chain_id: number;
  mode: ChainSyncMode;
  streams: ChainSyncStreamSpec[];
}

interface Problem {
  path: string;
  message: string;
}

const TOP = ['kind', 'name', 'chain_id', 'mode', 'streams'];
const FIXED = ['kind', 'from_block', 'to_block'];
const FOLLOW = ['kind', 'from_block', 'tail_lag', 'head_poll_interval_seconds', 'max_head_age_seconds'];
const STREAM = ['cryo_dataset_name', 'rpc_pool', 'chunk_size', 'max_inflight', 'publish_name'];

const NO_SECRETS = 'chain sync YAML must not contain URLs, API keys or credentials; name an RPC pool (rpc_pool: standard) and configure its providers in the RPC gateway (TRACE_RPC_POOL_<NAME>_URL)';

const URLISH = /[a-z][a-z0-9+.-]*:\/\/|^(https?|wss?|ipc|file):|[^\s@/]+:[^\s@/]*@[^\s@]+|\?.*=/i;
const SECRET_KEY = /(^|_)(url|uri|urls|endpoint|endpoints|api_?key|apikey|key|keys|secret|secrets|token|tokens|password|passwd|credential|credentials|auth|authorization|bearer|private_key|access_key|secret_key)($|_)/i;
const TOKENISH = /(bearer\s+\S|^sk[-_]|^(0x)?[0-9a-f]{40,}$|^eyJ[A-Za-z0-9_-]{10,}\.)/i;

/** A string that looks like a URL, a credential or an API key (never echoed back). */
export function looksSecret(s: string): boolean {
  if (URLISH.test(s) || TOKENISH.test(s)) return true;
  // A long run of mixed letters and digits with no word breaks reads like an API key
  // (names such as mainnet_bootstrap_20260111 are words joined by underscores).
  for (const seg of s.split(/[_\-./:\s]+/)) {
    if (seg.length >= 20 && /^[A-Za-z0-9+=]+$/.test(seg) && (seg.match(/[0-9]/g) ?? []).length >= 4 && (seg.match(/[A-Za-z]/g) ?? []).length >= 4) return true;
  }
  return false;
}

const safeKey = (k: string) => (looksSecret(k) ? '<redacted>' : k);

function isMap(v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

function describe(v: unknown): string {
  if (v === null || v === undefined) return 'nothing';
  if (Array.isArray(v)) return 'a list';
  return typeof v === 'object' ? 'a mapping' : `a ${typeof v}`;
}

class Checker {
  readonly problems: Problem[] = [];

  add(path: string, message: string): void {
    if (this.problems.length < 100) this.problems.push({ path, message });
  }

  /** Every string and key in the document, for the secrets rule (stream keys are names, not fields). */
  scanSecrets(v: unknown, path: string, namesOnly = false): void {
    if (typeof v === 'string') {
      if (looksSecret(v)) this.add(path, `looks like a URL or secret; ${NO_SECRETS}`);
      return;
    }
    if (Array.isArray(v)) {
      v.forEach((x, i) => this.scanSecrets(x, `${path}[${i}]`));
      return;
    }
    if (isMap(v)) {
      for (const [k, x] of Object.entries(v)) {
        const p = path === '' ? safeKey(k) : `${path}.${safeKey(k)}`;
        if (looksSecret(k)) this.add(p, `key looks like a URL or secret; ${NO_SECRETS}`);
        else if (!namesOnly && SECRET_KEY.test(k)) this.add(p, `field names a URL or secret; ${NO_SECRETS}`);
        this.scanSecrets(x, p, path === '' && k === 'streams');
      }
    }
  }

  unknown(obj: Record<string, unknown>, allowed: string[], path: string, extra = ''): void {
    for (const k of Object.keys(obj)) {
      if (!allowed.includes(k)) this.add(path === '' ? safeKey(k) : `${path}.${safeKey(k)}`, `unknown field${extra} (allowed: ${allowed.join(', ')})`);
    }
  }

  int(obj: Record<string, unknown>, key: string, path: string, min: number, max: number, required: boolean): number | undefined {
    const v = obj[key];
    const p = `${path}.${key}`;
    if (v === undefined || v === null) {
      if (required) this.add(p, 'is required');
      return undefined;
    }
    if (typeof v !== 'number' || !Number.isSafeInteger(v)) {
      this.add(p, `must be an integer (got ${describe(v)})`);
      return undefined;
    }
    if (v < min || v > max) {
      this.add(p, `must be between ${min} and ${max}`);
      return undefined;
    }
    return v;
  }

  str(obj: Record<string, unknown>, key: string, path: string, re: RegExp, what: string, required: boolean): string | undefined {
    const v = obj[key];
    const p = path === '' ? key : `${path}.${key}`;
    if (v === undefined || v === null) {
      if (required) this.add(p, 'is required');
      return undefined;
    }
    if (typeof v !== 'string') {
      this.add(p, `must be a string (got ${describe(v)})`);
      return undefined;
    }
    if (looksSecret(v)) return undefined; // reported by scanSecrets without repeating the value
    if (!re.test(v)) {
      this.add(p, `must be ${what}`);
      return undefined;
    }
    return v;
  }
}

function redactProblems(problems: unknown): Problem[] {
  const list = Array.isArray(problems) ? (problems as Array<{ path?: unknown; message?: unknown; line?: unknown }>) : [];
  const scrub = (s: string) => s.replace(/\S*:\/\/\S*/g, '<url>').replace(/[A-Za-z0-9+/=_-]{24,}/g, (m) => (looksSecret(m) ? '<redacted>' : m));
  return list.map((p) => ({
    path: scrub(String(p.path ?? '$')),
    message: scrub(String(p.message ?? '')),
    ...(typeof p.line === 'number' ? { line: p.line } : {}),
  }));
}

export function chainSyncInvalid(problems: Problem[], message?: string): TraceError {
  const first = problems[0];
  const summary = message ?? (first ? `invalid chain_sync: ${first.path}: ${first.message}${problems.length > 1 ? ` (and ${problems.length - 1} more problem${problems.length > 2 ? 's' : ''})` : ''}` : 'invalid chain_sync');
  return new TraceError(422, 'CHAIN_SYNC_INVALID', summary, { problems });
}

/** Parses the YAML text (YAML_MALFORMED 400 on unreadable text). */
function readYaml(text: string): unknown {
  if (typeof text !== 'string' || text.trim() === '') throw new TraceError(400, 'YAML_MALFORMED', 'chain sync YAML is empty');
  try {
    return parseYamlSafely(text, { maxBytes: CHAIN_SYNC_LIMITS.maxYamlBytes, maxAliases: 0 });
  } catch (e) {
    if (e instanceof TraceError) {
      const problems = redactProblems(e.problems);
      if (e.code === 'DAG_INVALID') throw chainSyncInvalid(problems);
      throw new TraceError(e.status, e.code, e.status === 400 ? 'malformed chain sync YAML' : 'invalid chain sync YAML', { problems });
    }
    throw e;
  }
}

/** Validates parsed YAML into a spec, or throws 422 CHAIN_SYNC_INVALID listing every problem. */
export function validateChainSync(doc: unknown): ChainSyncSpec {
  const c = new Checker();
  if (!isMap(doc)) throw chainSyncInvalid([{ path: '$', message: `the document must be a mapping (got ${describe(doc)})` }]);
  c.scanSecrets(doc, '');
  c.unknown(doc, TOP, '');
  if (doc.kind === undefined) c.add('kind', 'is required (kind: chain_sync)');
  else if (doc.kind !== 'chain_sync') c.add('kind', 'must be chain_sync');
  const name = c.str(doc, 'name', '', DAG_NAME_RE, 'a job name matching ^[a-z][a-z0-9_]{0,63}$', true);
  let chainId: number | undefined;
  if (doc.chain_id === undefined || doc.chain_id === null) c.add('chain_id', 'is required');
  else if (typeof doc.chain_id !== 'number' || !Number.isSafeInteger(doc.chain_id) || doc.chain_id < 1) c.add('chain_id', 'must be a positive integer');
  else chainId = doc.chain_id;

  let mode: ChainSyncMode | undefined;
  const m = doc.mode;
  if (m === undefined || m === null) c.add('mode', 'is required (kind: fixed_target or follow_head)');
  else if (!isMap(m)) c.add('mode', `must be a mapping (got ${describe(m)})`);
  else if (m.kind !== 'fixed_target' && m.kind !== 'follow_head') {
    c.add('mode.kind', m.kind === undefined ? 'is required (fixed_target or follow_head)' : 'must be fixed_target or follow_head');
  } else if (m.kind === 'fixed_target') {
    c.unknown(m, FIXED, 'mode', ' for fixed_target');
    const from = c.int(m, 'from_block', 'mode', 0, MAX_BLOCK - 1, true);
    const to = c.int(m, 'to_block', 'mode', 1, MAX_BLOCK, true);
    if (from !== undefined && to !== undefined) {
      if (to <= from) c.add('mode.to_block', 'must be greater than from_block (to_block is end exclusive: to sync through block N, set N + 1)');
      else mode = { kind: 'fixed_target', from_block: from, to_block: to };
    }
  } else {
    c.unknown(m, FOLLOW, 'mode', ' for follow_head');
    const from = c.int(m, 'from_block', 'mode', 0, MAX_BLOCK - 1, true);
    const lag = c.int(m, 'tail_lag', 'mode', 0, CHAIN_SYNC_LIMITS.maxTailLag, true);
    const poll = c.int(m, 'head_poll_interval_seconds', 'mode', 1, CHAIN_SYNC_LIMITS.maxPollSeconds, true);
    const age = c.int(m, 'max_head_age_seconds', 'mode', 1, CHAIN_SYNC_LIMITS.maxHeadAgeSeconds, true);
    if (poll !== undefined && age !== undefined && age <= poll) {
      c.add('mode.max_head_age_seconds', 'must be greater than head_poll_interval_seconds (otherwise every observation is already stale)');
    } else if (from !== undefined && lag !== undefined && poll !== undefined && age !== undefined) {
      mode = { kind: 'follow_head', from_block: from, tail_lag: lag, head_poll_interval_seconds: poll, max_head_age_seconds: age };
    }
  }

  const streams: ChainSyncStreamSpec[] = [];
  const s = doc.streams;
  if (s === undefined || s === null) c.add('streams', 'is required: a mapping from dataset_key to a stream');
  else if (!isMap(s)) c.add('streams', `must be a mapping from dataset_key to a stream (got ${describe(s)})`);
  else {
    const keys = Object.keys(s);
    if (keys.length === 0) c.add('streams', 'must name at least one stream');
    if (keys.length > CHAIN_SYNC_LIMITS.maxStreams) c.add('streams', `may name at most ${CHAIN_SYNC_LIMITS.maxStreams} streams`);
    const names = new Map<string, string>();
    for (const key of keys) {
      const path = `streams.${safeKey(key)}`;
      const keyOk = !looksSecret(key) && SLUG_RE.test(key);
      if (!looksSecret(key) && !SLUG_RE.test(key)) c.add(path, 'dataset_key must match ^[a-z0-9_]{1,64}$');
      const v = s[key];
      if (!isMap(v)) {
        c.add(path, `must be a mapping with cryo_dataset_name and rpc_pool (got ${describe(v)})`);
        continue;
      }
      c.unknown(v, STREAM, path);
      const cryo = c.str(v, 'cryo_dataset_name', path, SLUG_RE, 'a Cryo dataset name matching ^[a-z0-9_]{1,64}$', true);
      const pool = c.str(v, 'rpc_pool', path, SLUG_RE, 'an RPC pool name matching ^[a-z0-9_]{1,64}$ (a name, never a URL)', true);
      const chunk = c.int(v, 'chunk_size', path, 1, CHAIN_SYNC_LIMITS.maxChunkSize, false) ?? (v.chunk_size === undefined ? CHAIN_SYNC_DEFAULTS.chunk_size : undefined);
      const inflight = c.int(v, 'max_inflight', path, 1, CHAIN_SYNC_LIMITS.maxInflight, false) ?? (v.max_inflight === undefined ? CHAIN_SYNC_DEFAULTS.max_inflight : undefined);
      let publish: string | undefined;
      if (v.publish_name !== undefined) publish = c.str(v, 'publish_name', path, DATASET_NAME_RE, 'a dataset name matching ^[a-z][a-z0-9_]{0,127}$', true);
      else if (name !== undefined && keyOk) {
        publish = `${name}_${key}`;
        if (!DATASET_NAME_RE.test(publish)) {
          c.add(path, `the default dataset name ${name}_${key} is longer than 128 characters; set publish_name`);
          publish = undefined;
        }
      }
      if (publish !== undefined) {
        const prev = names.get(publish);
        if (prev !== undefined) c.add(`${path}.publish_name`, `dataset name ${publish} is already published by stream ${prev}`);
        else names.set(publish, key);
      }
      if (keyOk && cryo !== undefined && pool !== undefined && chunk !== undefined && inflight !== undefined && publish !== undefined) {
        streams.push({ dataset_key: key, cryo_dataset_name: cryo, rpc_pool: pool, chunk_size: chunk, max_inflight: inflight, publish_name: publish });
      }
    }
  }
  if (c.problems.length > 0 || !name || chainId === undefined || !mode) {
    throw chainSyncInvalid(c.problems.length > 0 ? c.problems : [{ path: '$', message: 'invalid chain sync' }]);
  }
  streams.sort((a, b) => (a.dataset_key < b.dataset_key ? -1 : 1));
  return { kind: 'chain_sync', name, chain_id: chainId, mode, streams };
}

/** Parses and validates; `yaml_hash` is the sha256 of the normalized spec (formatting and comments do not count). */
export function parseChainSyncYaml(text: string): { spec: ChainSyncSpec; yamlHash: string } {
  const spec = validateChainSync(readYaml(text));
  return { spec, yamlHash: sha256Hex(canonicalJson(spec)) };
}
