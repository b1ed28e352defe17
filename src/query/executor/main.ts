/**
 * The query executor process: the only place where DuckDB runs a query. The Query Service
 * starts a few of these in advance (src/query/executors.ts), sends each one statement at a time
 * over IPC (protocol.ts), and kills one that passes its deadline or its memory cap. What this
 * process may load is checked by test/query/executor-boundary.test.ts: no database client, no
 * Dispatcher code, no keys.
 *
 * Per statement: the full SQL gate for the statement's relations, then the sandbox (a locked
 * instance per exact grant, reused while it is safe; a fresh connection per query), the row and
 * byte caps, and an answer that is either the response body or a scrubbed stable error.
 */
import { TraceError } from '../../core/errors.js';
import { SqlGate } from './gate.js';
import { join } from 'node:path';
import { runExport, runQuery, type SandboxOptions } from './engine.js';
import { SandboxPool } from './instances.js';
import { createExecutorDir, removeDir } from './spill.js';
import type { ExecutorError, ExecutorInit, ExecutorRun, FromExecutor, ToExecutor } from './protocol.js';

/** The executor interrupts a statement this long after the deadline at which it should be dead. */
const OWN_INTERRUPT_GRACE_MS = 1_000;
/** An export's file name: plain, inside the executor's own directory. */
const EXPORT_NAME_RE = /^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$/;

const send = process.send?.bind(process);
if (!send) {
  process.stderr.write('the query executor runs only as a child process of the Query Service\n');
  process.exit(2);
}

let dir: string | undefined;
let gate: SqlGate | undefined;
let instances: SandboxPool | undefined;
let sandbox: SandboxOptions = {};
let work: Promise<void> = Promise.resolve();
const parentPid = process.ppid;

function post(m: FromExecutor): void {
  send!(m);
}

/** Leaves at once, without running engine destructors: the service is gone or something broke. */
function die(): never {
  try {
    if (dir) removeDir(dir);
  } finally {
    process.kill(process.pid, 'SIGKILL');
  }
  throw new Error('unreachable');
}

process.on('disconnect', die);
process.on('uncaughtException', die);
process.on('unhandledRejection', die);
// Belt and braces for a service that died without closing the channel.
setInterval(() => {
  if (process.ppid !== parentPid) die();
}, 1_000).unref();

function asError(e: unknown): ExecutorError {
  if (e instanceof TraceError) {
    const rule = e.extra?.rule;
    return { status: e.status, code: e.code, message: e.message, ...(typeof rule === 'string' ? { rule } : {}) };
  }
  return { status: 500, code: 'QUERY_FAILED', message: 'the query failed in the executor' };
}

async function init(m: ExecutorInit): Promise<void> {
  try {
    dir = createExecutorDir(m.spillRoot);
    sandbox = {
      memoryLimit: m.memoryLimit,
      threads: m.threads,
      maxTempDirectorySize: m.maxTempDirectorySize,
      tempRoot: dir,
      ...(m.s3 ? { s3: m.s3 } : {}),
    };
    gate = await SqlGate.create();
    instances = m.maxInstances > 0 ? new SandboxPool(sandbox, { maxInstances: m.maxInstances, idleMs: m.idleMs }) : undefined;
    post({ t: 'ready', dir });
  } catch (e) {
    post({ t: 'fatal', message: e instanceof Error ? e.message : String(e) });
    die();
  }
}

async function run(m: ExecutorRun): Promise<void> {
  try {
    if (!gate) throw new TraceError(500, 'QUERY_EXECUTOR_FAILED', 'the query executor was not initialized');
    const relations = m.relations.map((r) => ({ name: r.name, files: r.files, ...(r.where !== undefined ? { where: r.where } : {}) }));
    const gated = await gate.check(m.sql, relations.map((r) => r.name));
    if (m.action === 'check') {
      post({ t: 'done', id: m.id, ok: true, columns: [], rowCount: 0, truncated: false, body: '' });
      return;
    }
    if (m.action === 'export') {
      const spec = m.export;
      if (!dir || !spec || !EXPORT_NAME_RE.test(spec.name) || (spec.format !== 'parquet' && spec.format !== 'csv')) {
        throw new TraceError(500, 'QUERY_EXECUTOR_FAILED', 'invalid export request');
      }
      const out = await runExport({ grant: { relations }, sql: gated, format: spec.format, dest: join(dir, spec.name), timeoutMs: m.timeoutMs + OWN_INTERRUPT_GRACE_MS, sandbox });
      post({ t: 'done', id: m.id, ok: true, columns: out.columns, rowCount: out.rowCount, truncated: false, body: '' });
      return;
    }
    const result = await runQuery({
      grant: { relations },
      sql: gated,
      limit: m.limit,
      maxBytes: m.maxBytes,
      timeoutMs: m.timeoutMs + OWN_INTERRUPT_GRACE_MS,
      sandbox,
      ...(instances ? { pool: instances } : {}),
    });
    post({ t: 'done', id: m.id, ok: true, columns: result.columns, rowCount: result.rows.length, truncated: result.truncated, body: JSON.stringify(result) });
  } catch (e) {
    post({ t: 'done', id: m.id, ok: false, error: asError(e) });
  }
}

process.on('message', (m: ToExecutor) => {
  if (m.t === 'init') work = work.then(() => init(m));
  else if (m.t === 'run') work = work.then(() => run(m));
});
