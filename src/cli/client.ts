import { readFile } from 'node:fs/promises';
import http from 'node:http';
import https from 'node:https';
import { liteJsonPath, readEnv } from '../core/config.js';
import type { LiteInfo } from '../lite/lite.js';
import { CliError } from './args.js';

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
    throw new CliError('NO_TARGET', `no Trace to talk to: set TRACE_${service === 'query' ? 'QUERY' : 'DISPATCHER'}_URL (or TRACE_GATEWAY_URL), or start one with \`trace lite up\``);
  }
  return { baseUrl: baseUrl.replace(/\/$/, ''), token: process.env.TRACE_TOKEN ?? info?.admin_token, workerToken: env.workerToken ?? info?.worker_token };
}

/**
 * One request with node:http(s) (not fetch: loading fetch's client costs every command about
 * 80 ms of start-up, see bench/cli.ts). Resolves with the status and the body text.
 */
function send(url: URL, method: string, headers: Record<string, string>, payload: string | undefined): Promise<{ status: number; text: string }> {
  const mod = url.protocol === 'https:' ? https : http;
  return new Promise((resolve, reject) => {
    const req = mod.request(url, { method, headers: payload === undefined ? headers : { ...headers, 'content-length': String(Buffer.byteLength(payload)) } }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString('utf8') }));
      res.on('error', reject);
    });
    req.setTimeout(120_000, () => req.destroy(new Error('no answer within 120 s')));
    req.on('error', reject);
    req.end(payload);
  });
}

export async function api<T>(target: ApiTarget, method: string, path: string, body?: unknown, contentType?: string): Promise<T> {
  const headers: Record<string, string> = {};
  if (target.token) headers.authorization = `Bearer ${target.token}`;
  let payload: string | undefined;
  if (body !== undefined) {
    payload = typeof body === 'string' ? body : JSON.stringify(body);
    headers['content-type'] = contentType ?? (typeof body === 'string' ? 'application/yaml' : 'application/json');
  }
  let res: { status: number; text: string };
  try {
    res = await send(new URL(`${target.baseUrl}${path}`), method, headers, payload);
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    throw new CliError('UNREACHABLE', `cannot reach ${target.baseUrl}: ${err.code ?? err.message}`);
  }
  const text = res.text;
  let parsed: unknown;
  try { parsed = JSON.parse(text); } catch { parsed = text; }
  if (res.status < 200 || res.status >= 300) {
    const b = parsed as { error?: string; code?: string } | undefined;
    throw new ApiError(res.status, b?.code ?? `HTTP_${res.status}`, b?.error ?? `HTTP ${res.status}`, parsed);
  }
  return parsed as T;
}
