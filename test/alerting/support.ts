/** Data-database fixtures and a local webhook receiver for the alerting tests. */
import { createServer, type IncomingHttpHeaders, type Server } from 'node:http';
import { randomUUID } from 'node:crypto';
import type { Db } from '../../src/db/db.js';
import { alertEventsDataset, type AlertEventRow } from '../../src/alerting/alert-events.js';

export async function insertDefinition(data: Db, orgId: string, channels: Array<Record<string, unknown>>, opts: { enabled?: boolean; name?: string } = {}): Promise<string> {
  const id = randomUUID();
  await data.query(
    `INSERT INTO alert_definitions (id, org_id, name, condition, channels, enabled) VALUES ($1, $2, $3, '{}', $4::jsonb, $5)`,
    [id, orgId, opts.name ?? 'test alert', JSON.stringify(channels), opts.enabled ?? true],
  );
  return id;
}

/** Writes alert events as the sink would (one transaction); returns the seq range. */
export async function insertEvents(data: Db, orgId: string, rows: Array<Partial<AlertEventRow> & { alert_definition_id: string; dedupe_key: string }>): Promise<{ start: number; end: number } | null> {
  const full: AlertEventRow[] = rows.map((r) => ({ event_time: new Date().toISOString(), severity: 'critical', payload: {}, ...r }));
  const w = await data.tx((q) => alertEventsDataset.write(q, full, { org_id: orgId, publish_id: randomUUID(), task_id: randomUUID(), attempt: 1, job_id: null }));
  return w.seqStart === null || w.seqEnd === null ? null : { start: w.seqStart, end: w.seqEnd };
}

export interface Received {
  method: string;
  url: string;
  headers: IncomingHttpHeaders;
  body: any;
}

export interface Receiver {
  url: string;
  requests: Received[];
  /** Status to answer with, per request index (default 200). */
  respond: (i: number, req: Received) => { status: number; headers?: Record<string, string> };
  close(): Promise<void>;
}

export async function startReceiver(respond: Receiver['respond'] = () => ({ status: 200 })): Promise<Receiver> {
  const rec: Receiver = { url: '', requests: [], respond, close: async () => undefined };
  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      let body: unknown;
      try { body = JSON.parse(Buffer.concat(chunks).toString('utf8')); } catch { body = Buffer.concat(chunks).toString('utf8'); }
      const r: Received = { method: req.method ?? '', url: req.url ?? '', headers: req.headers, body };
      const i = rec.requests.length;
      rec.requests.push(r);
      const out = rec.respond(i, r);
      res.writeHead(out.status, out.headers ?? {});
      res.end('ok');
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const addr = server.address();
  if (addr === null || typeof addr === 'string') throw new Error('no address');
  rec.url = `http://127.0.0.1:${addr.port}`;
  rec.close = () => new Promise<void>((resolve) => server.close(() => resolve()));
  return rec;
}
