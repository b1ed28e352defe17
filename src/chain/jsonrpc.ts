import { z } from 'zod';

/** JSON-RPC 2.0 envelopes shared by the RPC egress gateway and the ingest client. */

export type JsonRpcId = string | number | null;

export interface JsonRpcRequest {
  jsonrpc: '2.0';
  id?: JsonRpcId;
  method: string;
  params?: unknown[] | Record<string, unknown>;
}

export interface JsonRpcErrorObject {
  code: number;
  message: string;
  data?: unknown;
}

export interface JsonRpcResponse {
  jsonrpc?: string;
  id?: JsonRpcId;
  result?: unknown;
  error?: JsonRpcErrorObject;
}

/** Method names are short ASCII identifiers (`eth_getLogs`, `debug_traceBlockByNumber`). */
export const METHOD_RE = /^[A-Za-z][A-Za-z0-9_]{0,127}$/;

export const jsonRpcRequestSchema = z.object({
  jsonrpc: z.literal('2.0'),
  id: z.union([z.string().max(256), z.number(), z.null()]).optional(),
  method: z.string().regex(METHOD_RE, 'method must be an identifier'),
  params: z.union([z.array(z.unknown()), z.record(z.string(), z.unknown())]).optional(),
});

/**
 * Accepts exactly what `jsonRpcRequestSchema` accepts, at a fraction of the cost (the gateway
 * checks every item of every batch); the schema runs only to describe a rejection.
 */
export function isJsonRpcRequest(v: unknown): boolean {
  if (v === null || typeof v !== 'object' || Array.isArray(v)) return false;
  const o = v as Record<string, unknown>;
  if (o.jsonrpc !== '2.0') return false;
  if (typeof o.method !== 'string' || !METHOD_RE.test(o.method)) return false;
  if (o.id !== undefined && o.id !== null && typeof o.id !== 'number' && !(typeof o.id === 'string' && o.id.length <= 256)) return false;
  if (o.params !== undefined && (o.params === null || typeof o.params !== 'object')) return false;
  return true;
}

export const jsonRpcErrorSchema = z.object({
  code: z.number(),
  message: z.string(),
  data: z.unknown().optional(),
});

export const jsonRpcResponseSchema = z.object({
  jsonrpc: z.string().optional(),
  id: z.union([z.string(), z.number(), z.null()]).optional(),
  result: z.unknown().optional(),
  error: jsonRpcErrorSchema.optional(),
});

/** A response object carries either `result` or `error` (result may legitimately be null). */
export function isJsonRpcResponse(v: unknown): v is JsonRpcResponse {
  if (v === null || typeof v !== 'object' || Array.isArray(v)) return false;
  const o = v as Record<string, unknown>;
  return 'result' in o || ('error' in o && jsonRpcErrorSchema.safeParse(o.error).success);
}

/** How a JSON-RPC error (or a transport failure around it) should be handled. */
export type RpcErrorKind =
  | 'method_not_found'
  | 'too_many_results'
  | 'rate_limited'
  | 'timeout'
  | 'transport'
  | 'server'
  | 'bad_response'
  | 'rpc'
  | 'http'
  | 'closed';

const METHOD_NOT_FOUND_RE = /(method|api).{0,80}(not found|does not exist|not available|not supported|unsupported|is not enabled)|unknown method|no such method/i;
const TOO_MANY_RESULTS_RE =
  /more than \d+ results|too many results|query returned more than|result(s| set)? (is )?too large|response size (exceeded|should not greater)|exceed(s|ed)? (the )?max(imum)? (block )?range|block range (is )?too (large|wide)|range (is )?too large|limit exceeded.{0,40}logs|log response size|query timeout exceeded|requested too many blocks/i;
const RATE_LIMIT_RE = /rate.?limit|too many requests|request limit|exceeded .{0,30}(capacity|quota|compute units)|throughput/i;
const TRANSIENT_RE = /header not found|timeout|timed out|try again|temporar|busy|unavailable|overloaded|internal error/i;

/**
 * Classifies a JSON-RPC error object by code and message. Nodes disagree on codes (ganache
 * answers an unknown method with -32700, Infura uses -32005 both for rate limits and for
 * oversized log queries), so messages decide where codes are ambiguous.
 */
export function classifyRpcError(err: JsonRpcErrorObject): RpcErrorKind {
  const msg = String(err.message ?? '');
  if (err.code === -32601 || METHOD_NOT_FOUND_RE.test(msg)) return 'method_not_found';
  if (TOO_MANY_RESULTS_RE.test(msg)) return 'too_many_results';
  if (err.code === 429 || RATE_LIMIT_RE.test(msg) || (err.code === -32005 && !TOO_MANY_RESULTS_RE.test(msg))) return 'rate_limited';
  if (err.code === -32603 || TRANSIENT_RE.test(msg)) return 'server';
  return 'rpc';
}

