/**
 * How the Dispatcher starts a UDF run for a leased `runtime: lambda` task
 * (architecture/contracts/lambda_invocation.md). One interface, two adapters:
 *
 * - `LocalProcessInvoker` (embedded and local-services profiles): loads the bundle bytes through
 *   an injected `loadBundle`, runs them with `runUdf` as a local child process, and returns the
 *   outcome (always synchronous).
 * - `AwsLambdaInvoker` (AWS profile): sends the invocation JSON, including a pre-signed
 *   `bundle_url`, to the platform-managed runner Lambda with `InvokeCommand`. `Event` returns as
 *   soon as Lambda accepted the event (the runner reports completion through `/v1/task/complete`);
 *   `RequestResponse` waits and expects the runner Lambda to return a `UdfRunResult` JSON.
 *   Only the request shape is tested here (stubbed client); it is untested against AWS itself.
 *
 * Lambda's own retries must be disabled on the runner function (the Dispatcher owns attempts).
 */
import { InvokeCommand, type InvokeCommandOutput } from '@aws-sdk/client-lambda';
import { createHash } from 'node:crypto';
import type { Logger } from '../core/log.js';
import { silentLogger } from '../core/log.js';
import { formatPath, type Problem } from '../core/errors.js';
import { lambdaInvocationPayloadSchema, udfStdinPayload, type LambdaInvocationPayload } from './invocation.js';
import type { BundleCaps, BundleRuntime } from './manifest.js';
import { runUdf, type UdfFailureKind, type UdfRunResult } from './runner.js';
import type { UdfSandbox } from './sandbox/sandbox.js';

export type InvokeFailureKind = UdfFailureKind | 'bad_payload' | 'bundle_unavailable' | 'invoke_error' | 'function_error';

export type InvokeResult =
  /** The run finished and produced one JSON object. */
  | { status: 'succeeded'; output: Record<string, unknown>; stderr: string; durationMs: number }
  /** Asynchronous invoke accepted; the outcome arrives through the task-scoped endpoints. */
  | { status: 'accepted'; requestId?: string }
  | {
      status: 'failed';
      failure: InvokeFailureKind;
      /** A safe sentence for `error_message` (never tokens or raw output). */
      message: string;
      /** False when retrying cannot help (invalid bundle, hash mismatch, bad payload, no sandbox). */
      retryable: boolean;
      stderr?: string;
      exitCode?: number | null;
      durationMs?: number;
      problems?: Problem[];
    };

export interface UdfInvoker {
  /** `signal` asks a synchronous run to stop at once (the host is shutting down); its result is then meaningless. */
  invoke(payload: LambdaInvocationPayload, opts?: { signal?: AbortSignal }): Promise<InvokeResult>;
}

const PERMANENT: ReadonlySet<InvokeFailureKind> = new Set(['invalid_bundle', 'hash_mismatch', 'bad_payload', 'sandbox_unavailable']);

function parsePayload(payload: unknown): { ok: true; value: LambdaInvocationPayload } | { ok: false; result: InvokeResult } {
  const parsed = lambdaInvocationPayloadSchema.safeParse(payload);
  if (parsed.success) return { ok: true, value: parsed.data };
  return {
    ok: false,
    result: {
      status: 'failed',
      failure: 'bad_payload',
      message: 'invocation payload is malformed',
      retryable: false,
      problems: parsed.error.issues.map((i) => ({ path: formatPath(i.path), message: i.message })),
    },
  };
}

/** Maps a runner outcome to an invoke result. */
export function fromRunResult(r: UdfRunResult): InvokeResult {
  if (r.ok) return { status: 'succeeded', output: r.output, stderr: r.stderr, durationMs: r.durationMs };
  const out: InvokeResult = {
    status: 'failed',
    failure: r.failure,
    message: r.message,
    retryable: !PERMANENT.has(r.failure),
    stderr: r.stderr,
    exitCode: r.exitCode,
    durationMs: r.durationMs,
  };
  if (r.problems) out.problems = r.problems;
  return out;
}

/**
 * The `/v1/task/complete` body (beyond the fencing triple) for a finished run. A UDF's output
 * may carry `events`, `outputs` and `datasets_published`, and may report its own failure with
 * `{"status": "Failed", "error_message": "..."}`. Returns null for `accepted` (nothing to report).
 */
export function completionFromResult(r: InvokeResult): Record<string, unknown> | null {
  if (r.status === 'accepted') return null;
  if (r.status === 'failed') return { status: 'Failed', error_message: `${r.failure}: ${r.message}` };
  const o = r.output;
  if (o.status === 'Failed') {
    return { status: 'Failed', error_message: typeof o.error_message === 'string' ? o.error_message.slice(0, 2000) : 'the UDF reported failure' };
  }
  const body: Record<string, unknown> = { status: 'Completed' };
  for (const k of ['events', 'outputs', 'datasets_published'] as const) if (Array.isArray(o[k])) body[k] = o[k];
  return body;
}

// ---------------------------------------------------------------------------------------------

export interface LoadedBundle {
  bytes: Buffer;
  /** SHA-256 recorded at upload (the pin). */
  sha256: string;
  /** Runtime recorded at upload, when known. */
  runtime?: BundleRuntime;
}

export interface LocalProcessInvokerOptions {
  /** The OS sandbox every run goes through (created once at start-up). */
  sandbox: UdfSandbox;
  /** Fetches the immutable bundle bytes and their recorded hash (object store + bundle table). */
  loadBundle(bundleId: string): Promise<LoadedBundle>;
  dispatcherUrl: string;
  queryUrl: string;
  /** Used when the payload has no `timeout_seconds`. Default 5 minutes. */
  timeoutMs?: number;
  /** Upper bound for any run, whatever the payload asks. Default 15 minutes (Lambda's max). */
  maxTimeoutMs?: number;
  maxStdoutBytes?: number;
  maxStderrBytes?: number;
  /** Runner-owned env allowlist with values (see RunUdfOptions.envAllowlist). */
  envAllowlist?: Record<string, string>;
  caps?: Partial<BundleCaps>;
  nodeMaxOldSpaceMb?: number;
  logger?: Logger;
}

export class LocalProcessInvoker implements UdfInvoker {
  private readonly log: Logger;

  constructor(private readonly opts: LocalProcessInvokerOptions) {
    this.log = opts.logger ?? silentLogger;
  }

  async invoke(raw: LambdaInvocationPayload, invokeOpts: { signal?: AbortSignal } = {}): Promise<InvokeResult> {
    const parsed = parsePayload(raw);
    if (!parsed.ok) return parsed.result;
    const payload = parsed.value;
    const log = this.log.child({ task_id: payload.task_id, attempt: payload.attempt, bundle_id: payload.udf.bundle_id });

    let bundle: LoadedBundle;
    try {
      bundle = await this.opts.loadBundle(payload.udf.bundle_id);
    } catch (e) {
      log.warn({ err_name: e instanceof Error ? e.name : 'error' }, 'udf bundle could not be loaded');
      return { status: 'failed', failure: 'bundle_unavailable', message: 'the UDF bundle could not be loaded', retryable: true };
    }
    const pinned = bundle.sha256.toLowerCase();
    if (payload.udf.sha256 !== undefined && payload.udf.sha256 !== pinned) {
      return { status: 'failed', failure: 'hash_mismatch', message: 'the job pins a different bundle hash than the bundle record', retryable: false };
    }
    const maxTimeout = this.opts.maxTimeoutMs ?? 15 * 60_000;
    const wanted = payload.timeout_seconds !== undefined ? payload.timeout_seconds * 1000 : (this.opts.timeoutMs ?? 5 * 60_000);
    const runtime = payload.udf.runtime ?? bundle.runtime;

    const result = await runUdf({
      sandbox: this.opts.sandbox,
      log,
      fence: { task_id: payload.task_id, attempt: payload.attempt, lease_token: payload.lease_token },
      bundle: bundle.bytes,
      expectedSha256: pinned,
      invocation: udfStdinPayload(payload),
      timeoutMs: Math.min(wanted, maxTimeout),
      maxStdoutBytes: this.opts.maxStdoutBytes ?? 1024 * 1024,
      maxStderrBytes: this.opts.maxStderrBytes ?? 64 * 1024,
      capabilityToken: payload.capability_token,
      dispatcherUrl: this.opts.dispatcherUrl,
      queryUrl: this.opts.queryUrl,
      expectedEntrypoint: payload.udf.entrypoint,
      ...(runtime ? { expectedRuntime: runtime } : {}),
      ...(this.opts.envAllowlist ? { envAllowlist: this.opts.envAllowlist } : {}),
      ...(this.opts.caps ? { caps: this.opts.caps } : {}),
      ...(this.opts.nodeMaxOldSpaceMb ? { nodeMaxOldSpaceMb: this.opts.nodeMaxOldSpaceMb } : {}),
      ...(invokeOpts.signal ? { signal: invokeOpts.signal } : {}),
    });
    if (result.ok) log.info({ duration_ms: result.durationMs }, 'udf run succeeded');
    else log.warn({ failure: result.failure, exit_code: result.exitCode, duration_ms: result.durationMs }, 'udf run failed');
    return fromRunResult(result);
  }
}

// ---------------------------------------------------------------------------------------------

/** The part of `LambdaClient` the invoker uses, so tests can stub it. */
export interface LambdaClientLike {
  send(command: InvokeCommand): Promise<InvokeCommandOutput>;
}

export interface AwsLambdaInvokerOptions {
  client: LambdaClientLike;
  /** The platform-managed runner Lambda (name or ARN). */
  functionName: string;
  qualifier?: string;
  /** Default `Event`. */
  invocationType?: 'Event' | 'RequestResponse';
  /** Mints an object-scoped pre-signed GET URL when the payload has no `bundle_url`. */
  presignBundleUrl?: (bundleId: string) => Promise<string>;
  /** Default: 256 KiB for Event, 6 MiB for RequestResponse (Lambda's payload limits). */
  maxPayloadBytes?: number;
  logger?: Logger;
}

export class AwsLambdaInvoker implements UdfInvoker {
  private readonly log: Logger;

  constructor(private readonly opts: AwsLambdaInvokerOptions) {
    this.log = opts.logger ?? silentLogger;
  }

  /** The exact InvokeCommand input for a payload (exposed for tests and dry runs). */
  async buildRequest(raw: LambdaInvocationPayload): Promise<{ ok: true; input: ConstructorParameters<typeof InvokeCommand>[0] } | { ok: false; result: InvokeResult }> {
    const parsed = parsePayload(raw);
    if (!parsed.ok) return parsed;
    const payload = { ...parsed.value };
    if (payload.bundle_url === undefined) {
      if (!this.opts.presignBundleUrl) {
        return { ok: false, result: { status: 'failed', failure: 'bad_payload', message: 'no bundle_url and no way to pre-sign one', retryable: false } };
      }
      try {
        payload.bundle_url = await this.opts.presignBundleUrl(payload.udf.bundle_id);
      } catch {
        return { ok: false, result: { status: 'failed', failure: 'bundle_unavailable', message: 'could not pre-sign the bundle URL', retryable: true } };
      }
    }
    const type = this.opts.invocationType ?? 'Event';
    const bytes = new TextEncoder().encode(JSON.stringify(payload));
    const max = this.opts.maxPayloadBytes ?? (type === 'Event' ? 256 * 1024 : 6 * 1024 * 1024);
    if (bytes.length > max) {
      return { ok: false, result: { status: 'failed', failure: 'bad_payload', message: `invocation payload is ${bytes.length} bytes; the limit is ${max}`, retryable: false } };
    }
    const input: ConstructorParameters<typeof InvokeCommand>[0] = { FunctionName: this.opts.functionName, InvocationType: type, Payload: bytes };
    if (this.opts.qualifier) input.Qualifier = this.opts.qualifier;
    return { ok: true, input };
  }

  async invoke(raw: LambdaInvocationPayload): Promise<InvokeResult> {
    const built = await this.buildRequest(raw);
    if (!built.ok) return built.result;
    const log = this.log.child({ task_id: raw.task_id, attempt: raw.attempt });
    let res: InvokeCommandOutput;
    try {
      res = await this.opts.client.send(new InvokeCommand(built.input));
    } catch (e) {
      const name = e instanceof Error ? e.name : 'Error';
      log.warn({ err_name: name }, 'lambda invoke failed');
      return { status: 'failed', failure: 'invoke_error', message: `Lambda invoke failed (${name})`, retryable: true };
    }
    const requestId = res.$metadata?.requestId;
    if (built.input.InvocationType === 'Event') {
      if (res.StatusCode === 202) return requestId ? { status: 'accepted', requestId } : { status: 'accepted' };
      return { status: 'failed', failure: 'invoke_error', message: `Lambda answered ${res.StatusCode ?? 'no status'} to an Event invoke`, retryable: true };
    }
    const text = res.Payload ? new TextDecoder().decode(res.Payload) : '';
    if (res.FunctionError) {
      let type = 'error';
      try {
        const parsed = JSON.parse(text) as { errorType?: unknown };
        if (typeof parsed.errorType === 'string') type = parsed.errorType.slice(0, 100);
      } catch {
        // keep the generic type
      }
      return { status: 'failed', failure: 'function_error', message: `the runner Lambda failed (${res.FunctionError}: ${type})`, retryable: true };
    }
    let body: unknown;
    try {
      body = JSON.parse(text);
    } catch {
      return { status: 'failed', failure: 'bad_output', message: 'the runner Lambda returned something other than JSON', retryable: true };
    }
    if (isRunResult(body)) return fromRunResult(body);
    return { status: 'failed', failure: 'bad_output', message: 'the runner Lambda returned an unexpected shape', retryable: true };
  }
}

const KINDS: ReadonlySet<string> = new Set(['hash_mismatch', 'invalid_bundle', 'timeout', 'bad_output', 'exit_nonzero', 'spawn_failed', 'sandbox_unavailable']);

function isRunResult(v: unknown): v is UdfRunResult {
  if (v === null || typeof v !== 'object') return false;
  const r = v as Record<string, unknown>;
  const common = typeof r.stderr === 'string' && typeof r.durationMs === 'number';
  if (r.ok === true) return common && r.output !== null && typeof r.output === 'object' && !Array.isArray(r.output);
  if (r.ok === false) return common && typeof r.failure === 'string' && KINDS.has(r.failure) && typeof r.message === 'string';
  return false;
}

/** SHA-256 of bundle bytes, as `loadBundle` implementations record it at upload. */
export function bundleSha256(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}
