/**
 * pgqueue: the wake-up queue on Postgres (tables `queue_messages`, `queue_dead_letters` in the
 * state migration). SQS semantics: at-least-once, unordered, visibility timeout, receive count,
 * dead letters after too many receives. Runs the same SQL on real Postgres and PGlite.
 *
 * Receipts are `<message id>.<uuid>`: the id finds the row by primary key, the uuid (fresh on
 * every receive) makes an old receipt stale. Long polls wait on LISTEN `trace_queue` (payload =
 * queue name), on the earliest `visible_at` that comes due, on `waitMs`, or on the abort signal;
 * they never hold a connection while waiting.
 */
import { z } from 'zod';
import type { Db, Queryable } from '../db/db.js';
import { DEFAULTS } from '../core/config.js';
import { TraceError, badRequest, payloadTooLarge } from '../core/errors.js';
import { BUFFER_QUEUE, TASK_QUEUE } from './queue.js';
import type { DeadLetter, Queue, ReceivedMessage, ReceiveOptions } from './queue.js';

/** The NOTIFY channel every pgqueue sender and receiver shares. */
export const QUEUE_CHANNEL = 'trace_queue';
/** Same ceiling as SQS: messages are pointers, never records (buffered_datasets.md). */
export const MAX_MESSAGE_BYTES = 256 * 1024;
export const DEFAULT_VISIBILITY_SECONDS = 30;
export const MAX_VISIBILITY_SECONDS = 12 * 3600;
export const DEFAULT_MAX_MESSAGES = 10;
export const PGQUEUE_MAX_MESSAGES_CAP = 100;
export const MAX_DELAY_SECONDS = 900;
/** Per-queue max receives before dead-lettering; queues not listed are unlimited. */
export const DEFAULT_MAX_RECEIVES = Object.freeze({
  [TASK_QUEUE]: Infinity,
  [BUFFER_QUEUE]: DEFAULTS.bufferDlqMaxReceives,
} as const);

// ---------------------------------------------------------------------------------------------
// Validation shared with the SQS adapter.

export const queueNameSchema = z.string().regex(/^[A-Za-z0-9_-]{1,80}$/, 'queue names are 1-80 letters, digits, "-" or "_"');
const visibilitySchema = z.number().finite().min(0).max(MAX_VISIBILITY_SECONDS);
const delaySchema = z.number().finite().min(0).max(MAX_DELAY_SECONDS);
const receiveOptsSchema = z.object({
  maxMessages: z.number().int().min(1).optional(),
  visibilityTimeoutSeconds: visibilitySchema.optional(),
  waitMs: z.number().finite().min(0).max(15 * 60_000).optional(),
});

function check<T>(schema: z.ZodType<T>, value: unknown, what: string): T {
  const r = schema.safeParse(value);
  if (!r.success) throw badRequest(`invalid ${what}: ${r.error.issues[0]?.message ?? 'bad value'}`, 'INVALID_QUEUE_ARGUMENT');
  return r.data;
}

export const checkQueueName = (queue: unknown): string => check(queueNameSchema, queue, 'queue name');
export const checkVisibility = (s: unknown): number => check(visibilitySchema, s, 'visibility timeout');
export const checkDelay = (s: unknown): number => check(delaySchema, s, 'delay');

export interface ResolvedReceiveOptions {
  maxMessages: number;
  visibilityTimeoutSeconds: number;
  waitMs: number;
  signal: AbortSignal | undefined;
}

/** Validates receive options and applies defaults; `maxMessages` is clamped to `cap`. */
export function resolveReceiveOptions(opts: ReceiveOptions | undefined, cap: number): ResolvedReceiveOptions {
  const { signal, ...rest } = opts ?? {};
  const o = check(receiveOptsSchema, rest, 'receive options');
  return {
    maxMessages: Math.min(o.maxMessages ?? DEFAULT_MAX_MESSAGES, cap),
    visibilityTimeoutSeconds: o.visibilityTimeoutSeconds ?? DEFAULT_VISIBILITY_SECONDS,
    waitMs: o.waitMs ?? 0,
    signal,
  };
}

/** JSON text of a message body; rejects non-JSON values and bodies over 256 KiB. */
export function encodeBody(body: unknown): string {
  const text = JSON.stringify(body) as string | undefined;
  if (text === undefined) throw badRequest('queue message body must be a JSON value', 'INVALID_QUEUE_MESSAGE');
  if (Buffer.byteLength(text, 'utf8') > MAX_MESSAGE_BYTES) {
    throw payloadTooLarge(`queue message body exceeds ${MAX_MESSAGE_BYTES} bytes; send a pointer instead`, 'QUEUE_MESSAGE_TOO_LARGE');
  }
  return text;
}

export function checkMaxReceives(n: unknown): number {
  if (n === Infinity) return Infinity;
  return check(z.number().int().min(1), n, 'max receives');
}

// ---------------------------------------------------------------------------------------------
// SQL. Every statement is one round trip; notifications fire at commit.

/** Inserts a batch (one statement) and wakes receivers of the queue. */
const SEND_SQL = `
WITH ins AS (
  INSERT INTO queue_messages (queue, body, visible_at)
  SELECT $1::text, u.b::jsonb, now() + make_interval(secs => $3::float8)
  FROM unnest($2::text[]) WITH ORDINALITY AS u(b, ord)
  ORDER BY u.ord
  RETURNING 1
)
SELECT pg_notify('${QUEUE_CHANNEL}', $1::text) AS notified
FROM (SELECT count(*) AS n FROM ins) c
WHERE c.n > 0`;

/**
 * Claims up to $2 visible messages (SKIP LOCKED, so concurrent receivers never share one),
 * hides them for $3 seconds with a fresh receipt, and moves those already received $4 times
 * to the dead letters instead. Also reports how far away the next hidden message is.
 */
const RECEIVE_SQL = `
WITH picked AS (
  SELECT id FROM queue_messages
  WHERE queue = $1::text AND visible_at <= now()
  ORDER BY visible_at, id
  LIMIT $2::int
  FOR UPDATE SKIP LOCKED
),
dead AS (
  DELETE FROM queue_messages m USING picked p
  WHERE m.id = p.id AND $4::int IS NOT NULL AND m.receive_count >= $4::int
  RETURNING m.id, m.queue, m.body, m.receive_count, m.created_at
),
moved AS (
  INSERT INTO queue_dead_letters (id, queue, body, receive_count, created_at, dead_at, last_error)
  SELECT id, queue, body, receive_count, created_at, now(), format('exceeded max receives (%s)', $4::int)
  FROM dead
  ON CONFLICT (id) DO UPDATE SET queue = EXCLUDED.queue, body = EXCLUDED.body,
    receive_count = EXCLUDED.receive_count, dead_at = EXCLUDED.dead_at, last_error = EXCLUDED.last_error
  RETURNING id
),
got AS (
  UPDATE queue_messages m
  SET visible_at = now() + make_interval(secs => $3::float8),
      receive_count = m.receive_count + 1,
      receipt = gen_random_uuid()
  FROM picked p
  WHERE m.id = p.id AND ($4::int IS NULL OR m.receive_count < $4::int)
  RETURNING m.id, m.body, m.receipt, m.receive_count
)
SELECT 'msg' AS kind, id, body, receipt::text AS receipt, receive_count, NULL::float8 AS due_ms FROM got
UNION ALL
SELECT 'dead', id, NULL::jsonb, NULL::text, NULL::int, NULL::float8 FROM moved
UNION ALL
SELECT 'next', NULL::bigint, NULL::jsonb, NULL::text, NULL::int,
       (extract(epoch FROM (min(visible_at) - clock_timestamp())) * 1000)::float8
FROM queue_messages WHERE queue = $1::text AND visible_at > now()`;

const ACK_SQL = `DELETE FROM queue_messages WHERE id = $1::bigint AND receipt = $2::uuid AND queue = $3::text`;

const ACK_BATCH_SQL = `
DELETE FROM queue_messages m USING unnest($1::bigint[], $2::uuid[]) AS r(id, receipt)
WHERE m.id = r.id AND m.receipt = r.receipt AND m.queue = $3::text`;

const CHANGE_VISIBILITY_SQL = `
UPDATE queue_messages SET visible_at = now() + make_interval(secs => $4::float8)
WHERE id = $1::bigint AND receipt = $2::uuid AND queue = $3::text`;

/** Visible plus in-flight, like SQS ApproximateNumberOfMessages + NotVisible (delayed excluded). */
const DEPTH_SQL = `
SELECT count(*)::int AS n FROM queue_messages
WHERE queue = $1::text AND (visible_at <= now() OR receive_count > 0)`;

const LIST_DEAD_SQL = `
SELECT id, body, receive_count, dead_at, last_error FROM queue_dead_letters
WHERE queue = $1::text ORDER BY dead_at, id LIMIT $2::int`;

/** Moves a dead letter back (same id, receive count 0, visible now) and wakes receivers. */
const REPLAY_SQL = `
WITH d AS (
  DELETE FROM queue_dead_letters WHERE queue = $1::text AND id = $2::bigint
  RETURNING id, queue, body, created_at
),
ins AS (
  INSERT INTO queue_messages (id, queue, body, visible_at, receive_count, receipt, created_at)
  SELECT id, queue, body, now(), 0, NULL, created_at FROM d
  RETURNING id
)
SELECT pg_notify('${QUEUE_CHANNEL}', $1::text) AS notified FROM ins`;

// ---------------------------------------------------------------------------------------------

interface ReceiveRow {
  kind: 'msg' | 'dead' | 'next';
  id: number | null;
  body: unknown;
  receipt: string | null;
  receive_count: number | null;
  due_ms: number | null;
}

interface Waiter {
  wake(byNotify: boolean): void;
}

const RECEIPT_RE = /^(\d{1,18})\.([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$/i;

function parseReceipt(receipt: unknown): { id: string; uuid: string } {
  const m = typeof receipt === 'string' ? RECEIPT_RE.exec(receipt) : null;
  if (!m) throw badRequest('malformed queue receipt', 'INVALID_RECEIPT');
  return { id: m[1]!, uuid: m[2]! };
}

/** Shortest sleep, and the margin added, when waiting for a hidden message to come due. */
const MIN_DUE_SLEEP_MS = 5;
const DUE_SLACK_MS = 5;

export interface PgQueueOptions {
  /** Overrides of DEFAULT_MAX_RECEIVES (per queue; Infinity = unlimited). */
  maxReceives?: Record<string, number>;
}

export class PgQueue implements Queue {
  private readonly maxReceives = new Map<string, number>();
  /** Waiters per queue, oldest first; a notification wakes one, who may pass it on. */
  private readonly waiters = new Map<string, Waiter[]>();
  /** Notifications seen per queue; a receiver that saw it change while querying tries again. */
  private readonly seq = new Map<string, number>();
  private listening: Promise<() => Promise<void>> | undefined;
  private closed = false;

  constructor(private readonly db: Db, opts: PgQueueOptions = {}) {
    for (const [q, n] of Object.entries({ ...DEFAULT_MAX_RECEIVES, ...opts.maxReceives })) this.setMaxReceives(q, n);
  }

  async send(queue: string, body: unknown, opts: { delaySeconds?: number } = {}): Promise<void> {
    this.assertOpen();
    await this.insert(this.db, queue, [body], opts.delaySeconds);
  }

  async sendBatch(queue: string, bodies: unknown[]): Promise<void> {
    this.assertOpen();
    await this.insert(this.db, queue, bodies, 0);
  }

  /** Enqueues inside the caller's transaction; receivers are woken when it commits. */
  async sendInTx(q: Queryable, queue: string, bodies: unknown[], opts: { delaySeconds?: number } = {}): Promise<void> {
    this.assertOpen();
    await this.insert(q, queue, bodies, opts.delaySeconds);
  }

  private async insert(q: Queryable, queue: string, bodies: unknown[], delaySeconds: number | undefined): Promise<void> {
    checkQueueName(queue);
    if (!Array.isArray(bodies)) throw badRequest('bodies must be an array', 'INVALID_QUEUE_ARGUMENT');
    const delay = checkDelay(delaySeconds ?? 0);
    const texts = bodies.map(encodeBody);
    if (texts.length === 0) return;
    await q.query(SEND_SQL, [queue, texts, delay]);
  }

  async receive<T = unknown>(queue: string, opts?: ReceiveOptions): Promise<Array<ReceivedMessage<T>>> {
    checkQueueName(queue);
    const o = resolveReceiveOptions(opts, PGQUEUE_MAX_MESSAGES_CAP);
    this.assertOpen();
    const deadline = Date.now() + o.waitMs;
    // Listen before the first look, so a message sent right after it still wakes us.
    if (o.waitMs > 0) await this.ensureListening();
    let woken = false;
    for (;;) {
      if (this.closed || o.signal?.aborted) return [];
      const before = this.seq.get(queue) ?? 0;
      let r: { messages: Array<ReceivedMessage<T>>; dead: number; dueMs: number | null };
      try {
        r = await this.receiveOnce<T>(queue, o);
      } catch (e) {
        if (woken) this.wakeOne(queue); // do not swallow the wake-up we were handed
        throw e;
      }
      if (r.messages.length > 0) {
        // A full batch suggests more are waiting: pass the wake-up on to the next waiter.
        if (woken && r.messages.length === o.maxMessages) this.wakeOne(queue);
        return r.messages;
      }
      if (r.dead > 0) continue; // only dead letters were picked; look again right away
      const remaining = deadline - Date.now();
      if (remaining <= 0) return [];
      if ((this.seq.get(queue) ?? 0) !== before) continue; // notified while we were querying
      const sleep = r.dueMs === null ? remaining : Math.min(remaining, Math.max(MIN_DUE_SLEEP_MS, r.dueMs + DUE_SLACK_MS));
      woken = await this.wait(queue, sleep, o.signal);
    }
  }

  private async receiveOnce<T>(queue: string, o: ResolvedReceiveOptions) {
    const max = this.maxReceives.get(queue) ?? Infinity;
    const res = await this.db.query<ReceiveRow>(RECEIVE_SQL, [
      queue, o.maxMessages, o.visibilityTimeoutSeconds, Number.isFinite(max) ? max : null,
    ]);
    const messages: Array<ReceivedMessage<T>> = [];
    let dead = 0;
    let dueMs: number | null = null;
    for (const row of res.rows) {
      if (row.kind === 'msg') {
        messages.push({ id: String(row.id), body: row.body as T, receipt: `${row.id}.${row.receipt}`, receiveCount: Number(row.receive_count) });
      } else if (row.kind === 'dead') dead++;
      else if (row.due_ms !== null) dueMs = Number(row.due_ms);
    }
    messages.sort((a, b) => Number(a.id) - Number(b.id));
    return { messages, dead, dueMs };
  }

  /** Resolves true when woken by a notification, false on timeout, abort or close. */
  private wait(queue: string, ms: number, signal: AbortSignal | undefined): Promise<boolean> {
    return new Promise<boolean>((resolve) => {
      if (signal?.aborted || this.closed) {
        resolve(false);
        return;
      }
      let list = this.waiters.get(queue);
      if (!list) this.waiters.set(queue, (list = []));
      const done = (byNotify: boolean) => {
        clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
        const l = this.waiters.get(queue);
        const i = l ? l.indexOf(waiter) : -1;
        if (i >= 0) l!.splice(i, 1);
        if (l && l.length === 0) this.waiters.delete(queue);
        resolve(byNotify);
      };
      const waiter: Waiter = { wake: done };
      const onAbort = () => done(false);
      const timer = setTimeout(() => done(false), ms);
      signal?.addEventListener('abort', onAbort, { once: true });
      list.push(waiter);
    });
  }

  private wakeOne(queue: string): void {
    this.waiters.get(queue)?.[0]?.wake(true);
  }

  private onNotify(queue: string): void {
    this.seq.set(queue, (this.seq.get(queue) ?? 0) + 1);
    this.wakeOne(queue);
  }

  private async ensureListening(): Promise<void> {
    this.listening ??= this.db.listen(QUEUE_CHANNEL, (payload) => this.onNotify(payload));
    try {
      await this.listening;
    } catch (e) {
      this.listening = undefined; // retry on the next long poll
      throw e;
    }
  }

  async ack(queue: string, receipt: string): Promise<void> {
    checkQueueName(queue);
    const r = parseReceipt(receipt);
    await this.db.query(ACK_SQL, [r.id, r.uuid, queue]);
  }

  async ackBatch(queue: string, receipts: string[]): Promise<void> {
    checkQueueName(queue);
    if (receipts.length === 0) return;
    const parsed = receipts.map(parseReceipt);
    await this.db.query(ACK_BATCH_SQL, [parsed.map((r) => r.id), parsed.map((r) => r.uuid), queue]);
  }

  /** Hides the message for `seconds` from now; a stale receipt changes nothing. */
  async changeVisibility(queue: string, receipt: string, seconds: number): Promise<void> {
    checkQueueName(queue);
    const r = parseReceipt(receipt);
    const s = checkVisibility(seconds);
    await this.db.query(CHANGE_VISIBILITY_SQL, [r.id, r.uuid, queue, s]);
  }

  setMaxReceives(queue: string, maxReceives: number): void {
    checkQueueName(queue);
    this.maxReceives.set(queue, checkMaxReceives(maxReceives));
  }

  async listDeadLetters<T = unknown>(queue: string, limit = 100): Promise<Array<DeadLetter<T>>> {
    checkQueueName(queue);
    const n = check(z.number().int().min(1).max(1000), limit, 'limit');
    const r = await this.db.query<{ id: number; body: T; receive_count: number; dead_at: Date; last_error: string | null }>(
      LIST_DEAD_SQL, [queue, n]);
    return r.rows.map((x) => ({ id: String(x.id), body: x.body, receiveCount: Number(x.receive_count), deadAt: x.dead_at, lastError: x.last_error }));
  }

  async replayDeadLetter(queue: string, id: string): Promise<boolean> {
    checkQueueName(queue);
    if (typeof id !== 'string' || !/^\d{1,18}$/.test(id)) return false;
    const r = await this.db.query(REPLAY_SQL, [queue, id]);
    return r.rows.length > 0;
  }

  async depth(queue: string): Promise<number> {
    checkQueueName(queue);
    const r = await this.db.query<{ n: number }>(DEPTH_SQL, [queue]);
    return Number(r.rows[0]?.n ?? 0);
  }

  /** Stops listening and ends every long poll (they return []). Does not close the Db. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const list of [...this.waiters.values()]) for (const w of [...list]) w.wake(false);
    const l = this.listening;
    this.listening = undefined;
    if (l) {
      const unlisten = await l.catch(() => undefined);
      if (unlisten) await unlisten().catch(() => undefined);
    }
  }

  private assertOpen(): void {
    if (this.closed) throw new TraceError(503, 'QUEUE_CLOSED', 'queue is closed');
  }
}
