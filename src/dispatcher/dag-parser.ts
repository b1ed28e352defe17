/**
 * Where DAG YAML is parsed and validated for a deploy. A 2,000-job DAG takes about a second of
 * CPU to parse and validate; on the Dispatcher's own thread that second stalls every co-hosted
 * route (in `trace lite up`, the Query Service and the Gateway too). `WorkerDagParser` does it on
 * a worker thread instead, one DAG at a time, with a time bound: past `timeoutMs` the worker is
 * terminated and the deploy answers 400 YAML_MALFORMED (a resource cap, like the size and depth
 * caps), and a new worker takes its place. `inlineDagParser` parses on the calling thread, for
 * Dispatchers built with a catalog of their own (tests).
 */
import { TraceError, tooManyRequests, type Problem } from '../core/errors.js';
import { startWorkerThread } from '../core/entry.js';
import type { Worker } from 'node:worker_threads';
import { jobConfigHash, lineageHashes, parseDag, type DagSpec, type OperatorCatalog, type ParseDagOptions } from '../dag/index.js';
import { yamlMalformed } from '../dag/problems.js';

/** A valid DAG with the hashes a deploy stores (computed where the DAG was parsed). */
export interface ParsedDag {
  spec: DagSpec;
  yamlHash: string;
  /** Per job name: `jobConfigHash` and `lineageHashes` of the spec. */
  configHashes: Record<string, string>;
  lineageHashes: Record<string, string>;
  /** `JSON.stringify(spec)`, when the parser made it already (the worker sends the spec as JSON). */
  specJson?: string;
}

export interface DagParser {
  parse(text: string, opts?: ParseDagOptions): Promise<ParsedDag>;
  close(): Promise<void>;
}

/** Parse, validate and hash: what both parsers run. */
export function parseAndHash(text: string, catalog: OperatorCatalog, opts: ParseDagOptions): ParsedDag {
  const { spec, yamlHash } = parseDag(text, catalog, opts);
  const configHashes: Record<string, string> = {};
  for (const j of spec.jobs) configHashes[j.name] = jobConfigHash(j);
  return { spec, yamlHash, configHashes, lineageHashes: Object.fromEntries(lineageHashes(spec)) };
}

export interface DagParseRequest {
  id: number;
  text: string;
  opts: ParseDagOptions;
}

/** A parsed DAG crosses from the worker as JSON text: cheaper to receive than a cloned object tree. */
export type DagParseReply =
  | ({ id: number; ok: true; specJson: string } & Omit<ParsedDag, 'spec' | 'specJson'>)
  | { id: number; ok: false; error: { status: number; code: string; message: string; problems?: Problem[] } };

/** Parses on the calling thread. */
export function inlineDagParser(catalog: OperatorCatalog): DagParser {
  return {
    parse: async (text, opts = {}) => parseAndHash(text, catalog, opts),
    close: async () => undefined,
  };
}

export const DAG_PARSER_DEFAULTS = { timeoutMs: 30_000, maxQueued: 16 } as const;

interface Pending {
  req: DagParseRequest;
  resolve(v: ParsedDag): void;
  reject(e: TraceError): void;
}

export class WorkerDagParser implements DagParser {
  private worker: Worker | undefined;
  private readonly queue: Pending[] = [];
  private current: Pending | undefined;
  private timer: NodeJS.Timeout | undefined;
  private nextId = 1;
  private closed = false;
  private readonly timeoutMs: number;
  private readonly maxQueued: number;

  constructor(private readonly opts: { includeTestOperators?: boolean; timeoutMs?: number; maxQueued?: number } = {}) {
    this.timeoutMs = opts.timeoutMs ?? DAG_PARSER_DEFAULTS.timeoutMs;
    this.maxQueued = opts.maxQueued ?? DAG_PARSER_DEFAULTS.maxQueued;
    this.start();
  }

  parse(text: string, opts: ParseDagOptions = {}): Promise<ParsedDag> {
    if (this.closed) return Promise.reject(new TraceError(503, 'DISPATCHER_CLOSING', 'the Dispatcher is shutting down'));
    if (this.queue.length >= this.maxQueued) return Promise.reject(tooManyRequests('too many DAG deploys are being validated; retry shortly', 'DEPLOY_BUSY'));
    return new Promise((resolve, reject) => {
      this.queue.push({ req: { id: this.nextId++, text, opts }, resolve, reject });
      this.next();
    });
  }

  async close(): Promise<void> {
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    const closing = new TraceError(503, 'DISPATCHER_CLOSING', 'the Dispatcher is shutting down');
    for (const p of this.queue.splice(0)) p.reject(closing);
    this.current?.reject(closing);
    this.current = undefined;
    const w = this.worker;
    this.worker = undefined;
    await w?.terminate();
  }

  private start(): void {
    const w = startWorkerThread(import.meta.url, './dag-parse-worker.js', { workerData: { includeTestOperators: this.opts.includeTestOperators === true } });
    // An idle parser never keeps the process alive; a parse in progress has its timer.
    w.unref();
    w.on('message', (m: DagParseReply | { ready: true }) => {
      if ('ready' in m) return;
      const cur = this.current;
      if (!cur || cur.req.id !== m.id) return;
      this.finish();
      if (m.ok) cur.resolve({ spec: JSON.parse(m.specJson) as DagSpec, specJson: m.specJson, yamlHash: m.yamlHash, configHashes: m.configHashes, lineageHashes: m.lineageHashes });
      else cur.reject(new TraceError(m.error.status, m.error.code, m.error.message, m.error.problems ? { problems: m.error.problems } : {}));
    });
    w.on('error', () => this.replace(new TraceError(500, 'DAG_PARSE_FAILED', 'the DAG parser failed; retry the deploy')));
    w.on('exit', () => {
      if (this.worker === w) this.replace(new TraceError(500, 'DAG_PARSE_FAILED', 'the DAG parser stopped; retry the deploy'));
    });
    this.worker = w;
  }

  private next(): void {
    if (this.current || this.closed || !this.worker) return;
    const p = this.queue.shift();
    if (!p) return;
    this.current = p;
    this.timer = setTimeout(() => {
      this.replace(yamlMalformed([{ path: '$', message: `the DAG took longer than ${this.timeoutMs / 1000} s to parse and validate; split it into smaller DAGs` }]));
    }, this.timeoutMs);
    this.worker.postMessage(p.req);
  }

  private finish(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    this.current = undefined;
    setImmediate(() => this.next());
  }

  /** Fails the DAG in progress with `e`, and continues on a new worker. */
  private replace(e: TraceError): void {
    const cur = this.current;
    const old = this.worker;
    this.worker = undefined;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    this.current = undefined;
    cur?.reject(e);
    void old?.terminate();
    if (this.closed) return;
    this.start();
    this.next();
  }
}
