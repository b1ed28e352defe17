import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { DuckDBInstance } from '@duckdb/node-api';

/** Shared helpers for chain tests: tiny JSON-RPC servers, a dev chain, DuckDB reads. */

export interface TestServer {
  url: string;
  port: number;
  server: Server;
  close(): Promise<void>;
}

export async function listen(handler: (req: IncomingMessage, res: ServerResponse) => void): Promise<TestServer> {
  const server = createServer(handler);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as AddressInfo).port;
  return {
    url: `http://127.0.0.1:${port}`,
    port,
    server,
    close: () =>
      new Promise<void>((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  };
}

export async function readBody(req: IncomingMessage): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const c of req) chunks.push(c as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

export function sendJson(res: ServerResponse, status: number, body: unknown): void {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(typeof body === 'string' ? body : JSON.stringify(body));
}

interface Req {
  jsonrpc: '2.0';
  id: number | string | null;
  method: string;
  params?: unknown[];
}

/**
 * A JSON-RPC server whose per-call answers come from `answer` (return `{result}` or
 * `{error}`); `before` may short-circuit the whole HTTP request (status codes, hangs).
 */
export async function jsonRpcServer(opts: {
  answer: (method: string, params: unknown[]) => Promise<{ result?: unknown; error?: { code: number; message: string } }> | { result?: unknown; error?: { code: number; message: string } };
  before?: (reqs: Req[], res: ServerResponse) => boolean | Promise<boolean>;
}): Promise<TestServer & { calls: Array<{ method: string; params: unknown[] }>; batches: number[] }> {
  const calls: Array<{ method: string; params: unknown[] }> = [];
  const batches: number[] = [];
  const s = await listen(async (req, res) => {
    const text = await readBody(req);
    let body: Req | Req[];
    try {
      body = JSON.parse(text) as Req | Req[];
    } catch {
      return sendJson(res, 400, { jsonrpc: '2.0', id: null, error: { code: -32700, message: 'parse error' } });
    }
    const reqs = Array.isArray(body) ? body : [body];
    if (opts.before && (await opts.before(reqs, res))) return;
    batches.push(reqs.length);
    const out = [];
    for (const r of reqs) {
      calls.push({ method: r.method, params: r.params ?? [] });
      const a = await opts.answer(r.method, r.params ?? []);
      out.push({ jsonrpc: '2.0', id: r.id, ...a });
    }
    sendJson(res, 200, Array.isArray(body) ? out : out[0]);
  });
  return Object.assign(s, { calls, batches });
}

export async function rpcCall<T = unknown>(url: string, method: string, params: unknown[] = []): Promise<T> {
  const res = await fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ jsonrpc: '2.0', id: 1, method, params }),
  });
  const body = (await res.json()) as { result?: T; error?: { message: string } };
  if (body.error) throw new Error(`${method}: ${body.error.message}`);
  return body.result as T;
}

/** Runs SQL in a fresh in-memory DuckDB and returns JS row objects. */
export async function duck<T = Record<string, unknown>>(sql: string): Promise<T[]> {
  const inst = await DuckDBInstance.create(':memory:', { threads: '1' });
  const conn = await inst.connect();
  try {
    const r = await conn.runAndReadAll(sql);
    return r.getRowObjectsJS() as T[];
  } finally {
    conn.closeSync();
    inst.closeSync();
  }
}

export async function describeParquet(path: string): Promise<Array<{ name: string; type: string }>> {
  const rows = await duck<{ column_name: string; column_type: string }>(`DESCRIBE SELECT * FROM read_parquet('${path.replace(/'/g, "''")}')`);
  return rows.map((r) => ({ name: r.column_name, type: r.column_type }));
}

export const hex = (b: Uint8Array | null | undefined): string | null => (b ? `0x${Buffer.from(b).toString('hex')}` : null);
