/**
 * The pieces of one buffer batch the sink checks before anything is written:
 * - the queue message (written by the Dispatcher's outbox from the fenced publish record);
 * - the batch URI, which must name an object inside the publishing attempt's own buffer prefix
 *   `buffers/{task_id}/{attempt}/` of this sink's object store;
 * - the JSONL artifact: UTF-8 (strict), one JSON object per line, no empty lines, an optional
 *   final newline, within the size and row caps; then every row against the dataset's schema.
 * Any problem rejects the whole batch (`BatchRejected`, with problems by line); nothing partial.
 */
import { z } from 'zod';
import { UUID_RE } from '../core/ids.js';
import type { Problem } from '../core/errors.js';
import type { ObjectStore } from '../objectstore/objectstore.js';
import { isValidKey, isWithin, parseObjectUrl } from '../objectstore/keys.js';
import type { BufferedDatasetSpec } from './types.js';

/** A batch that can never be written as it is (the message goes to the DLQ after its receives). */
export class BatchRejected extends Error {
  constructor(readonly code: string, message: string, readonly problems: Problem[] = []) {
    super(message);
    this.name = 'BatchRejected';
  }
}

const uuid = z.string().regex(UUID_RE);

export const bufferMessageSchema = z.looseObject({
  publish_id: uuid,
  org_id: uuid,
  task_id: uuid,
  attempt: z.number().int().min(1),
  job_id: uuid.nullable().optional(),
  batch_uri: z.string().min(1).max(2048),
  content_type: z.string(),
  batch_size_bytes: z.number().int().nonnegative(),
  dedupe_scope: z.string().regex(/^[a-z][a-z0-9_]{0,127}$/),
});

export type BufferMessage = z.infer<typeof bufferMessageSchema>;

export function parseBufferMessage(body: unknown): BufferMessage {
  const r = bufferMessageSchema.safeParse(body);
  if (!r.success) throw new BatchRejected('MESSAGE_INVALID', 'the buffer message is malformed');
  if (r.data.content_type !== 'application/jsonl') throw new BatchRejected('CONTENT_TYPE_UNSUPPORTED', 'only application/jsonl batches are supported');
  return r.data;
}

/**
 * The store key of `uri`, if it lies inside `buffers/{task_id}/{attempt}/` of `store`; otherwise
 * BatchRejected `BATCH_URI_OUTSIDE_PREFIX` (a task may only publish what its own attempt wrote).
 */
export function batchKey(store: ObjectStore, uri: string, taskId: string, attempt: number): string {
  const outside = () => new BatchRejected('BATCH_URI_OUTSIDE_PREFIX', "the batch URI is not inside the publishing attempt's buffer prefix");
  let root;
  let u;
  try {
    root = parseObjectUrl(store.rootUrl);
    u = parseObjectUrl(uri);
  } catch {
    throw outside();
  }
  let key: string;
  if (root.scheme === 'file' && u.scheme === 'file') {
    const base = root.path === '/' ? '' : root.path.slice(1);
    const full = u.path.slice(1);
    if (base === '' || !isWithin(full, base)) throw outside();
    key = full.slice(base.length + 1);
  } else if (root.scheme === 's3' && u.scheme === 's3') {
    if (root.bucket !== u.bucket) throw outside();
    const full = u.prefix.slice(0, -1); // parseObjectUrl canonicalizes s3 keys as prefixes
    if (root.prefix !== '' && !isWithin(full, root.prefix)) throw outside();
    key = full.slice(root.prefix.length);
  } else {
    throw outside();
  }
  if (!isValidKey(key) || !isWithin(key, `buffers/${taskId}/${attempt}/`)) throw outside();
  return key;
}

const MAX_PROBLEMS = 20;

/** Parses and validates a whole JSONL batch; returns every row or throws BatchRejected. */
export function parseBatch<Row>(bytes: Uint8Array, spec: BufferedDatasetSpec<Row>, opts: { maxRows: number }): Row[] {
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(bytes);
  } catch {
    throw new BatchRejected('BATCH_NOT_UTF8', 'the batch is not valid UTF-8');
  }
  if (text.startsWith('\uFEFF')) throw new BatchRejected('BATCH_MALFORMED', 'the batch starts with a byte order mark');
  const lines = text.split('\n');
  if (lines[lines.length - 1] === '') lines.pop();
  if (lines.length > opts.maxRows) throw new BatchRejected('BATCH_TOO_MANY_ROWS', `the batch has ${lines.length} rows; the limit is ${opts.maxRows}`);
  const rows: Row[] = [];
  const problems: Problem[] = [];
  let bad = 0;
  const problem = (p: Problem) => {
    bad++;
    if (problems.length < MAX_PROBLEMS) problems.push(p);
  };
  lines.forEach((line, i) => {
    const at = `line[${i + 1}]`;
    if (line.trim() === '') return problem({ path: at, message: 'is empty' });
    let value: unknown;
    try {
      value = JSON.parse(line);
    } catch {
      return problem({ path: at, message: 'is not valid JSON' });
    }
    if (value === null || typeof value !== 'object' || Array.isArray(value)) return problem({ path: at, message: 'must be a JSON object' });
    const r = spec.checkRow(value);
    if (r.ok) rows.push(r.row);
    else for (const p of r.problems) problem({ path: p.path === '$' ? at : `${at}.${p.path}`, message: p.message });
  });
  if (bad > 0) {
    if (bad > problems.length) problems.push({ path: 'batch', message: `and ${bad - problems.length} more problems` });
    throw new BatchRejected('BATCH_INVALID', `the batch has ${bad} invalid row problem(s); nothing was written`, problems);
  }
  return rows;
}
