/**
 * SQS adapter of the wake-up queue (AWS profile).
 *
 * UNTESTED AGAINST AWS ITSELF. Its tests (test/queue/sqs.test.ts) intercept the SDK client
 * before serialization and assert the commands and inputs it issues; nothing here has run
 * against a real SQS endpoint. Verify against a real queue before relying on it, in particular
 * the error names it treats as "stale receipt" and the dead-letter listing.
 *
 * Mapping onto the Queue interface:
 * - queue name -> queue URL from the constructor; an unknown name is a configuration error;
 * - bodies are JSON text; receive parses them back (a non-JSON body is returned as the raw string);
 * - receiveCount is `ApproximateReceiveCount`; the receipt is the SQS receipt handle;
 * - a long poll is one ReceiveMessage with WaitTimeSeconds = ceil(waitMs / 1000), capped at 20
 *   (so a longer waitMs returns empty after 20 s; callers loop anyway);
 * - dead letters live in the queue's redrive DLQ (`dlqUrls[queue]`). SQS moves messages there
 *   by the redrive policy; in addition, a received message whose receive count exceeds
 *   `setMaxReceives` is moved by this adapter (sent to the DLQ with `trace_*` attributes, then
 *   deleted), so both adapters dead-letter at the same count. Without a DLQ URL it is returned;
 * - listDeadLetters receives from the DLQ (hiding what it read for a moment) and then makes those
 *   messages visible again; replayDeadLetter scans the DLQ for the message id, sends the body
 *   back to the source queue and deletes it from the DLQ. SQS has no peek, so both are
 *   best-effort admin tools, and a dead letter's receive count is SQS's approximate count;
 * - depth is ApproximateNumberOfMessages + ApproximateNumberOfMessagesNotVisible.
 * Visibility and delay seconds are rounded up to whole seconds (SQS takes integers).
 */
import {
  ChangeMessageVisibilityBatchCommand,
  ChangeMessageVisibilityCommand,
  DeleteMessageCommand,
  GetQueueAttributesCommand,
  ReceiveMessageCommand,
  SQSClient,
  SendMessageBatchCommand,
  SendMessageCommand,
  type Message,
  type MessageAttributeValue,
  type SendMessageBatchRequestEntry,
} from '@aws-sdk/client-sqs';
import { TraceError, badRequest } from '../core/errors.js';
import type { DeadLetter, Queue, ReceivedMessage, ReceiveOptions } from './queue.js';
import {
  DEFAULT_MAX_RECEIVES, MAX_MESSAGE_BYTES, checkDelay, checkMaxReceives, checkQueueName, checkVisibility,
  encodeBody, resolveReceiveOptions,
} from './pgqueue.js';

export const SQS_MAX_MESSAGES = 10;
export const SQS_MAX_WAIT_SECONDS = 20;
/** How long listDeadLetters / replayDeadLetter hide what they read before releasing it. */
const DLQ_HOLD_SECONDS = 30;
const DLQ_SCAN_LIMIT = 1000;
const BATCH_SEND_ATTEMPTS = 3;

export interface SqsQueueOptions {
  /** Queue name -> queue URL, e.g. `{ tasks: url, buffers: url }`. */
  queueUrls: Record<string, string>;
  /** Queue name -> URL of its redrive dead-letter queue. */
  dlqUrls?: Record<string, string>;
  region?: string;
  /** A preconfigured client (custom endpoint, tests); not destroyed by close(). */
  client?: SQSClient;
  /** Overrides of DEFAULT_MAX_RECEIVES. */
  maxReceives?: Record<string, number>;
}

function isAbort(e: unknown): boolean {
  return e instanceof Error && (e.name === 'AbortError' || (e.name === 'TimeoutError' && /abort/i.test(e.message)));
}

function errName(e: unknown): string {
  return e instanceof Error ? e.name : '';
}

function parseBody(text: string | undefined): unknown {
  if (text === undefined) return null;
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return text;
  }
}

function chunk<T>(items: T[], size: number, bytes: (t: T) => number, maxBytes: number): T[][] {
  const out: T[][] = [];
  let cur: T[] = [];
  let curBytes = 0;
  for (const it of items) {
    const b = bytes(it);
    if (cur.length > 0 && (cur.length === size || curBytes + b > maxBytes)) {
      out.push(cur);
      cur = [];
      curBytes = 0;
    }
    cur.push(it);
    curBytes += b;
  }
  if (cur.length > 0) out.push(cur);
  return out;
}

export class SqsQueue implements Queue {
  readonly client: SQSClient;
  private readonly ownsClient: boolean;
  private readonly queueUrls: Record<string, string>;
  private readonly dlqUrls: Record<string, string>;
  private readonly maxReceives = new Map<string, number>();

  constructor(opts: SqsQueueOptions) {
    this.queueUrls = { ...opts.queueUrls };
    this.dlqUrls = { ...opts.dlqUrls };
    for (const name of [...Object.keys(this.queueUrls), ...Object.keys(this.dlqUrls)]) checkQueueName(name);
    this.ownsClient = !opts.client;
    this.client = opts.client ?? new SQSClient(opts.region ? { region: opts.region } : {});
    for (const [q, n] of Object.entries({ ...DEFAULT_MAX_RECEIVES, ...opts.maxReceives })) this.setMaxReceives(q, n);
  }

  private url(queue: string): string {
    checkQueueName(queue);
    const u = this.queueUrls[queue];
    if (!u) throw new TraceError(500, 'QUEUE_NOT_CONFIGURED', `no SQS queue URL is configured for queue "${queue}"`);
    return u;
  }

  async send(queue: string, body: unknown, opts: { delaySeconds?: number } = {}): Promise<void> {
    const QueueUrl = this.url(queue);
    const MessageBody = encodeBody(body);
    const delay = Math.ceil(checkDelay(opts.delaySeconds ?? 0));
    await this.client.send(new SendMessageCommand({ QueueUrl, MessageBody, ...(delay > 0 ? { DelaySeconds: delay } : {}) }));
  }

  /** Sends in SendMessageBatch calls of at most 10 entries and 256 KiB; failed entries are retried. */
  async sendBatch(queue: string, bodies: unknown[]): Promise<void> {
    const QueueUrl = this.url(queue);
    if (!Array.isArray(bodies)) throw badRequest('bodies must be an array', 'INVALID_QUEUE_ARGUMENT');
    const texts = bodies.map(encodeBody);
    for (const part of chunk(texts, SQS_MAX_MESSAGES, (t) => Buffer.byteLength(t, 'utf8'), MAX_MESSAGE_BYTES)) {
      let entries: SendMessageBatchRequestEntry[] = part.map((MessageBody, i) => ({ Id: String(i), MessageBody }));
      for (let attempt = 1; entries.length > 0; attempt++) {
        const r = await this.client.send(new SendMessageBatchCommand({ QueueUrl, Entries: entries }));
        const failed = r.Failed ?? [];
        if (failed.length === 0) break;
        const senderFault = failed.some((f) => f.SenderFault);
        if (senderFault || attempt >= BATCH_SEND_ATTEMPTS) {
          throw new TraceError(senderFault ? 400 : 503, 'QUEUE_SEND_FAILED', `${failed.length} of ${entries.length} queue messages were not accepted`);
        }
        const ids = new Set(failed.map((f) => f.Id));
        entries = entries.filter((e) => ids.has(e.Id));
      }
    }
  }

  async receive<T = unknown>(queue: string, opts?: ReceiveOptions): Promise<Array<ReceivedMessage<T>>> {
    const QueueUrl = this.url(queue);
    const o = resolveReceiveOptions(opts, SQS_MAX_MESSAGES);
    const wait = Math.min(SQS_MAX_WAIT_SECONDS, Math.ceil(o.waitMs / 1000));
    for (;;) {
      if (o.signal?.aborted) return [];
      let msgs: Message[];
      try {
        const r = await this.client.send(new ReceiveMessageCommand({
          QueueUrl,
          MaxNumberOfMessages: o.maxMessages,
          VisibilityTimeout: Math.ceil(o.visibilityTimeoutSeconds),
          WaitTimeSeconds: wait,
          MessageSystemAttributeNames: ['ApproximateReceiveCount'],
        }), o.signal ? { abortSignal: o.signal } : {});
        msgs = r.Messages ?? [];
      } catch (e) {
        if (o.signal?.aborted || isAbort(e)) return [];
        throw e;
      }
      const out: Array<ReceivedMessage<T>> = [];
      let dead = 0;
      for (const m of msgs) {
        const receiveCount = Number(m.Attributes?.ApproximateReceiveCount ?? 1);
        if (receiveCount > (this.maxReceives.get(queue) ?? Infinity) && this.dlqUrls[queue]) {
          await this.deadLetter(queue, QueueUrl, m, receiveCount);
          dead++;
          continue;
        }
        out.push({ id: m.MessageId ?? '', body: parseBody(m.Body) as T, receipt: m.ReceiptHandle ?? '', receiveCount });
      }
      // Only dead letters came back: look again right away (each round moves some out).
      if (out.length > 0 || dead === 0) return out;
    }
  }

  /** Client-side redrive: copy to the DLQ with trace_* attributes, then delete from the source. */
  private async deadLetter(queue: string, QueueUrl: string, m: Message, receiveCount: number): Promise<void> {
    const attr = (v: string): MessageAttributeValue => ({ DataType: 'String', StringValue: v });
    await this.client.send(new SendMessageCommand({
      QueueUrl: this.dlqUrls[queue],
      MessageBody: m.Body ?? 'null',
      MessageAttributes: {
        trace_dead_at: attr(new Date().toISOString()),
        trace_receive_count: { DataType: 'Number', StringValue: String(receiveCount - 1) },
        trace_last_error: attr(`exceeded max receives (${this.maxReceives.get(queue)})`),
      },
    }));
    await this.client.send(new DeleteMessageCommand({ QueueUrl, ReceiptHandle: m.ReceiptHandle }));
  }

  async ack(queue: string, receipt: string): Promise<void> {
    const QueueUrl = this.url(queue);
    if (typeof receipt !== 'string' || receipt === '') throw badRequest('malformed queue receipt', 'INVALID_RECEIPT');
    try {
      // SQS: a stale (not latest) receipt handle succeeds without deleting.
      await this.client.send(new DeleteMessageCommand({ QueueUrl, ReceiptHandle: receipt }));
    } catch (e) {
      if (errName(e) === 'ReceiptHandleIsInvalid') throw badRequest('malformed queue receipt', 'INVALID_RECEIPT');
      throw e;
    }
  }

  async ackBatch(queue: string, receipts: string[]): Promise<void> {
    // DeleteMessageBatch takes at most 10 entries; a per-entry failure is a stale receipt (no-op).
    for (let i = 0; i < receipts.length; i += 10) {
      await Promise.all(receipts.slice(i, i + 10).map((r) => this.ack(queue, r)));
    }
  }

  /** A receipt whose message is no longer in flight (or whose handle expired) changes nothing. */
  async changeVisibility(queue: string, receipt: string, seconds: number): Promise<void> {
    const QueueUrl = this.url(queue);
    const s = Math.ceil(checkVisibility(seconds));
    if (typeof receipt !== 'string' || receipt === '') throw badRequest('malformed queue receipt', 'INVALID_RECEIPT');
    try {
      await this.client.send(new ChangeMessageVisibilityCommand({ QueueUrl, ReceiptHandle: receipt, VisibilityTimeout: s }));
    } catch (e) {
      const name = errName(e);
      if (name === 'MessageNotInflight') return;
      if (/InvalidParameterValue/.test(name) && e instanceof Error && /receipt handle/i.test(e.message)) return;
      if (name === 'ReceiptHandleIsInvalid') throw badRequest('malformed queue receipt', 'INVALID_RECEIPT');
      throw e;
    }
  }

  setMaxReceives(queue: string, maxReceives: number): void {
    checkQueueName(queue);
    this.maxReceives.set(queue, checkMaxReceives(maxReceives));
  }

  /** Reads the DLQ (hiding each message briefly), then makes everything read visible again. */
  async listDeadLetters<T = unknown>(queue: string, limit = 100): Promise<Array<DeadLetter<T>>> {
    checkQueueName(queue);
    if (!Number.isInteger(limit) || limit < 1 || limit > 1000) throw badRequest('invalid limit: 1-1000', 'INVALID_QUEUE_ARGUMENT');
    const dlq = this.dlqUrls[queue];
    if (!dlq) return [];
    const seen = await this.scanDlq(dlq, limit, () => false);
    await this.release(dlq, seen.map((m) => m.ReceiptHandle ?? ''));
    return seen.map((m) => {
      const a = m.MessageAttributes ?? {};
      const sent = Number(m.Attributes?.SentTimestamp);
      const deadAt = a.trace_dead_at?.StringValue ? new Date(a.trace_dead_at.StringValue) : new Date(Number.isFinite(sent) ? sent : Date.now());
      return {
        id: m.MessageId ?? '',
        body: parseBody(m.Body) as T,
        receiveCount: Number(a.trace_receive_count?.StringValue ?? m.Attributes?.ApproximateReceiveCount ?? 0),
        deadAt,
        lastError: a.trace_last_error?.StringValue ?? null,
      };
    });
  }

  async replayDeadLetter(queue: string, id: string): Promise<boolean> {
    const QueueUrl = this.url(queue);
    const dlq = this.dlqUrls[queue];
    if (!dlq || typeof id !== 'string' || id === '') return false;
    const seen = await this.scanDlq(dlq, DLQ_SCAN_LIMIT, (m) => m.MessageId === id);
    const hit = seen.find((m) => m.MessageId === id);
    try {
      if (hit) {
        await this.client.send(new SendMessageCommand({ QueueUrl, MessageBody: hit.Body ?? 'null' }));
        await this.client.send(new DeleteMessageCommand({ QueueUrl: dlq, ReceiptHandle: hit.ReceiptHandle }));
      }
    } finally {
      await this.release(dlq, seen.filter((m) => m !== hit).map((m) => m.ReceiptHandle ?? ''));
    }
    return hit !== undefined;
  }

  /** Receives from the DLQ until `limit` distinct messages, an empty round, or `stop`. */
  private async scanDlq(dlq: string, limit: number, stop: (m: Message) => boolean): Promise<Message[]> {
    const byId = new Map<string, Message>();
    while (byId.size < limit) {
      const r = await this.client.send(new ReceiveMessageCommand({
        QueueUrl: dlq,
        MaxNumberOfMessages: Math.min(SQS_MAX_MESSAGES, limit - byId.size),
        VisibilityTimeout: DLQ_HOLD_SECONDS,
        WaitTimeSeconds: 1, // long poll: short polls sample only some servers
        MessageSystemAttributeNames: ['ApproximateReceiveCount', 'SentTimestamp'],
        MessageAttributeNames: ['All'],
      }));
      const got = r.Messages ?? [];
      let fresh = 0;
      for (const m of got) {
        if (!m.MessageId || byId.has(m.MessageId)) continue;
        byId.set(m.MessageId, m);
        fresh++;
      }
      if (fresh === 0 || got.some(stop)) break;
    }
    return [...byId.values()];
  }

  private async release(dlq: string, receipts: string[]): Promise<void> {
    const handles = receipts.filter((r) => r !== '');
    for (let i = 0; i < handles.length; i += SQS_MAX_MESSAGES) {
      const Entries = handles.slice(i, i + SQS_MAX_MESSAGES).map((ReceiptHandle, j) => ({ Id: String(j), ReceiptHandle, VisibilityTimeout: 0 }));
      await this.client.send(new ChangeMessageVisibilityBatchCommand({ QueueUrl: dlq, Entries }));
    }
  }

  async depth(queue: string): Promise<number> {
    const QueueUrl = this.url(queue);
    const r = await this.client.send(new GetQueueAttributesCommand({
      QueueUrl,
      AttributeNames: ['ApproximateNumberOfMessages', 'ApproximateNumberOfMessagesNotVisible'],
    }));
    const a = r.Attributes ?? {};
    return Number(a.ApproximateNumberOfMessages ?? 0) + Number(a.ApproximateNumberOfMessagesNotVisible ?? 0);
  }

  async close(): Promise<void> {
    if (this.ownsClient) this.client.destroy();
  }
}
