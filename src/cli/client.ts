import { readFile } from 'node:fs/promises';
import { liteJsonPath, readEnv } from '../core/config.js';
import type { LiteInfo } from '../lite/lite.js';

/** A CLI failure carrying the server's stable error shape; printed as one line. */
export class ApiError extends Error {
  constructor(readonly status: number, readonly code: string, message: string, readonly body: unknown) {
    super(message);
  }
}

export interface ApiTarget {
  baseUrl: string;
  token: string | undefined;
  workerToken: string | undefined;
}

async function liteInfo(): Promise<LiteInfo | undefined> {
  try {
    return JSON.parse(await readFile(liteJsonPath(readEnv().home), 'utf8')) as LiteInfo;
  } catch {
    return undefined;
  }
}

/**
 * Where admin commands send requests: TRACE_GATEWAY_URL or TRACE_DISPATCHER_URL, else the URLs
 * a running `trace lite up` wrote to $TRACE_HOME/lite.json. The token comes from TRACE_TOKEN or
 * lite.json's dev admin token. Never the database: the embedded database belongs to one process.
 */
export async function resolveTarget(service: 'dispatcher' | 'query' = 'dispatcher'): Promise<ApiTarget> {
  const env = readEnv();
  const info = await liteInfo();
  const explicit = service === 'query' ? (env.queryUrl ?? env.gatewayUrl) : (env.dispatcherUrl ?? env.gatewayUrl);
  const fromLite = info ? (service === 'query' ? ((info as unknown as Record<string, string>).query_url ?? info.dispatcher_url) : info.dispatcher_url) : undefined;
  const baseUrl = explicit ?? fromLite;
  if (!baseUrl) {
    throw new Error(`no Trace to talk to: set TRACE_${service === 'query' ? 'QUERY' : 'DISPATCHER'}_URL (or TRACE_GATEWAY_URL), or start one with \`trace lite up\``);
  }
  return { baseUrl: baseUrl.replace(/\/$/, ''), token: process.env.TRACE_TOKEN ?? info?.admin_token, workerToken: env.workerToken ?? info?.worker_token };
}

export async function api<T>(target: ApiTarget, method: string, path: string, body?: unknown, contentType?: string): Promise<T> {
  const headers: Record<string, string> = {};
  if (target.token) headers.authorization = `Bearer ${target.token}`;
  let payload: string | undefined;
  if (body !== undefined) {
    payload = typeof body === 'string' ? body : JSON.stringify(body);
    headers['content-type'] = contentType ?? (typeof body === 'string' ? 'application/yaml' : 'application/json');
  }
  let res: Response;
  try {
    res = await fetch(`${target.baseUrl}${path}`, { method, headers, ...(payload !== undefined ? { body: payload } : {}) });
  } catch (e) {
    throw new Error(`cannot reach ${target.baseUrl}: ${e instanceof Error ? (e.cause instanceof Error ? e.cause.message : e.message) : String(e)}`, { cause: e });
  }
  const text = await res.text();
  let parsed: unknown;
  try { parsed = JSON.parse(text); } catch { parsed = text; }
  if (!res.ok) {
    const b = parsed as { error?: string; code?: string } | undefined;
    throw new ApiError(res.status, b?.code ?? `HTTP_${res.status}`, b?.error ?? `HTTP ${res.status}`, parsed);
  }
  return parsed as T;
}
