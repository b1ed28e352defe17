/**
 * Wake-up queue interface (SQS semantics). Queues carry pointers only (`{task_id}` or a buffer
 * batch pointer); Postgres state is the truth. Delivery is at-least-once, unordered, and a
 * message that is received but not acked becomes visible again after its visibility timeout.
 * Implementations: pgqueue (Postgres, the embedded and local profiles) and SQS.
 */
export interface ReceivedMessage<T = unknown> {
  /** Stable message id. */
  id: string;
  body: T;
  /** Opaque handle for ack / changeVisibility; changes on every receive. */
  receipt: string;
  /** How many times this message has been received, this receive included. */
  receiveCount: number;
}

export interface ReceiveOptions {
  maxMessages?: number;
  visibilityTimeoutSeconds?: number;
  /** Long poll: wait up to this long for a message before returning an empty list. */
  waitMs?: number;
  /** Abort a long poll early (shutdown). */
  signal?: AbortSignal;
}

export interface DeadLetter<T = unknown> {
  id: string;
  body: T;
  receiveCount: number;
  deadAt: Date;
  lastError: string | null;
}

export interface Queue {
  send(queue: string, body: unknown, opts?: { delaySeconds?: number }): Promise<void>;
  sendBatch(queue: string, bodies: unknown[]): Promise<void>;
  receive<T = unknown>(queue: string, opts?: ReceiveOptions): Promise<Array<ReceivedMessage<T>>>;
  /** Deletes the message; a stale receipt (message re-received by someone else) is a no-op. */
  ack(queue: string, receipt: string): Promise<void>;
  /** Acks several messages in one call (same semantics as `ack` for each). */
  ackBatch(queue: string, receipts: string[]): Promise<void>;
  changeVisibility(queue: string, receipt: string, seconds: number): Promise<void>;
  /** Messages received more than `maxReceives` times are moved to the dead-letter store on their next receive. */
  setMaxReceives(queue: string, maxReceives: number): void;
  listDeadLetters<T = unknown>(queue: string, limit?: number): Promise<Array<DeadLetter<T>>>;
  /** Moves a dead letter back onto its queue with a fresh receive count. Returns false if unknown. */
  replayDeadLetter(queue: string, id: string): Promise<boolean>;
  /** Approximate number of visible + in-flight messages (backlog metric). */
  depth(queue: string): Promise<number>;
  close(): Promise<void>;
}

export const TASK_QUEUE = 'tasks';
export const BUFFER_QUEUE = 'buffers';
