/**
 * The one error type every Trace boundary speaks. HTTP handlers turn it into the stable
 * `{ "error": <sentence>, "code": <STABLE_CODE> }` shape; CLIs print its message on one line.
 * Messages must never contain tokens, secrets or raw SQL.
 */
export interface Problem {
  /** YAML / JSON path of the offending field, e.g. `jobs[1].unique_key`. */
  path: string;
  message: string;
}

export class TraceError extends Error {
  readonly status: number;
  readonly code: string;
  readonly problems?: Problem[];
  readonly extra?: Record<string, unknown>;

  constructor(status: number, code: string, message: string, opts: { problems?: Problem[]; extra?: Record<string, unknown>; cause?: unknown } = {}) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = 'TraceError';
    this.status = status;
    this.code = code;
    if (opts.problems) this.problems = opts.problems;
    if (opts.extra) this.extra = opts.extra;
  }

  toJSON(): Record<string, unknown> {
    const body: Record<string, unknown> = { error: this.message, code: this.code };
    if (this.problems) body.problems = this.problems;
    if (this.extra) Object.assign(body, this.extra);
    return body;
  }
}

export const badRequest = (message: string, code = 'BAD_REQUEST', problems?: Problem[]) =>
  new TraceError(400, code, message, problems ? { problems } : {});
export const unauthorized = (message = 'missing or invalid credentials', code = 'UNAUTHORIZED') =>
  new TraceError(401, code, message);
export const forbidden = (message = 'not allowed', code = 'FORBIDDEN') => new TraceError(403, code, message);
export const notFound = (message = 'not found', code = 'NOT_FOUND') => new TraceError(404, code, message);
export const conflict = (message: string, code = 'CONFLICT') => new TraceError(409, code, message);
export const payloadTooLarge = (message = 'request body too large', code = 'PAYLOAD_TOO_LARGE') =>
  new TraceError(413, code, message);
export const unprocessable = (message: string, problems: Problem[], code = 'VALIDATION_FAILED') =>
  new TraceError(422, code, message, { problems });
export const tooManyRequests = (message = 'rate limited', code = 'RATE_LIMITED') => new TraceError(429, code, message);
export const internal = (message = 'internal error', code = 'INTERNAL') => new TraceError(500, code, message);
export const unavailable = (message = 'service unavailable', code = 'UNAVAILABLE') => new TraceError(503, code, message);

export function isTraceError(e: unknown): e is TraceError {
  return e instanceof TraceError;
}

/** Renders a zod-style issue path (`['jobs', 1, 'name']`) as `jobs[1].name`. */
export function formatPath(path: ReadonlyArray<PropertyKey>): string {
  let out = '';
  for (const seg of path) {
    if (typeof seg === 'number') out += `[${seg}]`;
    else out += out === '' ? String(seg) : `.${String(seg)}`;
  }
  return out === '' ? '$' : out;
}
