/**
 * Infrastructure failures, told apart from task failures. A database, queue or peer service
 * that cannot be reached is not the fault of the work that needed it: such failures must not use
 * up a task's `max_attempts`, an outbox row's attempts or a buffer message's receives, and their
 * errors must name the dependency, never a symptom further down the line.
 *
 * `DependencyUnavailable` is what every adapter throws when its dependency is unreachable; the
 * database adapter (src/db/postgres.ts) turns connection losses, connect timeouts and statement
 * timeouts into it. It is a TraceError with status 503, so an HTTP handler that meets one answers
 * `{"error": "the state database is unreachable (...)", "code": "STATE_DATABASE_UNAVAILABLE"}`.
 */
import { TraceError } from './errors.js';

/** What a task may wait on. Stable names: they are stored on tasks (`waiting_on`). */
export const DEPENDENCIES = ['state_database', 'data_database', 'queue', 'object_store', 'query_service', 'rpc_gateway'] as const;
export type Dependency = (typeof DEPENDENCIES)[number];

const LABEL: Record<Dependency, string> = {
  state_database: 'the state database',
  data_database: 'the data database',
  queue: 'the queue',
  object_store: 'the object store',
  query_service: 'the Query Service',
  rpc_gateway: 'the RPC gateway',
};

const CODE: Record<Dependency, string> = {
  state_database: 'STATE_DATABASE_UNAVAILABLE',
  data_database: 'DATA_DATABASE_UNAVAILABLE',
  queue: 'QUEUE_UNAVAILABLE',
  object_store: 'OBJECT_STORE_UNAVAILABLE',
  query_service: 'QUERY_SERVICE_UNAVAILABLE',
  rpc_gateway: 'RPC_GATEWAY_UNAVAILABLE',
};

export const dependencyLabel = (d: Dependency): string => LABEL[d];
export const dependencyCode = (d: Dependency): string => CODE[d];

export class DependencyUnavailable extends TraceError {
  readonly dependency: Dependency;

  /** `reason` is a short cause without secrets (an error code such as ECONNREFUSED, or "no answer within 30000 ms"). */
  constructor(dependency: Dependency, reason: string, opts: { cause?: unknown } = {}) {
    super(503, CODE[dependency], `${LABEL[dependency]} is unreachable (${reason})`, opts.cause === undefined ? {} : { cause: opts.cause });
    this.name = 'DependencyUnavailable';
    this.dependency = dependency;
  }
}

/** The dependency an error says was unreachable: a DependencyUnavailable, or anything carrying one of its codes. */
export function unavailableDependency(e: unknown): Dependency | undefined {
  if (e instanceof DependencyUnavailable) return e.dependency;
  const code = typeof e === 'object' && e !== null ? (e as { code?: unknown }).code : undefined;
  if (typeof code !== 'string') return undefined;
  for (const d of DEPENDENCIES) if (CODE[d] === code) return d;
  return undefined;
}

// Socket-level failures: the peer is gone or never answered.
const NETWORK_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'ECONNABORTED', 'EPIPE', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENETUNREACH', 'ENOTFOUND', 'EAI_AGAIN', 'ENETDOWN', 'EHOSTDOWN']);

// Postgres SQLSTATEs that mean "this connection or server is not usable now", not "your SQL is wrong":
// class 08 (connection exception), 57P01..57P05 (admin shutdown, crash shutdown, cannot connect now,
// database dropped, idle session timeout), 53300 (too many connections), 57014 (statement timeout).
const PG_UNAVAILABLE = /^(08...|57P0[1-5]|53300|57014)$/;

// Messages node-postgres and pg-pool use for connection losses and their own timeouts.
const PG_MESSAGES = [
  'Connection terminated',
  'connection terminated',
  'Client has encountered a connection error',
  'timeout exceeded when trying to connect',
  'Query read timeout',
  'Connection ended',
  'Client was closed and is not queryable',
  'Cannot use a pool after calling end',
];

/**
 * True when an error means the other side could not be reached or did not answer: a socket
 * error, a Postgres connection-class SQLSTATE or a statement timeout, or one of node-postgres'
 * connection messages. False for errors about the request itself (syntax, constraints, 4xx).
 */
export function isConnectionFailure(e: unknown): boolean {
  if (e instanceof DependencyUnavailable) return true;
  if (typeof e !== 'object' || e === null) return false;
  const { code, message, cause } = e as { code?: unknown; message?: unknown; cause?: unknown };
  if (typeof code === 'string' && (NETWORK_CODES.has(code) || PG_UNAVAILABLE.test(code))) return true;
  if (typeof message === 'string' && PG_MESSAGES.some((m) => message.includes(m))) return true;
  if (e instanceof AggregateError) return e.errors.some(isConnectionFailure);
  return cause !== undefined && cause !== e && isConnectionFailure(cause);
}

/** A short, secret-free description of a connection failure for messages and logs. */
export function connectionFailureReason(e: unknown): string {
  if (typeof e !== 'object' || e === null) return 'unknown error';
  const { code, message } = e as { code?: unknown; message?: unknown };
  if (code === '57014') return 'statement timeout';
  if (typeof code === 'string' && NETWORK_CODES.has(code)) return code;
  if (typeof message === 'string') {
    const known = PG_MESSAGES.find((m) => message.includes(m));
    if (known) return known.toLowerCase();
  }
  if (typeof code === 'string' && PG_UNAVAILABLE.test(code)) return `SQLSTATE ${code}`;
  if (e instanceof AggregateError) {
    const inner = e.errors.find(isConnectionFailure);
    if (inner) return connectionFailureReason(inner);
  }
  return 'connection failure';
}
