import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { readFile, rename, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { z } from 'zod';
import { TraceError } from '../../core/errors.js';
import { sha256Hex } from '../../core/ids.js';

/**
 * The commit protocol of a staging prefix (data_versioning.md): Parquet files first, then
 * `manifest.json` (files, row counts, bytes, sha256, range), then `_SUCCESS` last. `_SUCCESS`
 * holds the sha256 of the manifest bytes, so a reader can tell a finished prefix from a
 * crashed one and detect a manifest edited after the fact.
 */

export const MANIFEST_FILE = 'manifest.json';
export const SUCCESS_FILE = '_SUCCESS';

export const manifestFileSchema = z.object({
  path: z.string().min(1),
  dataset: z.string().min(1),
  range_start: z.number().int().min(0),
  range_end: z.number().int().min(1),
  rows: z.number().int().min(0),
  bytes: z.number().int().min(0),
  sha256: z.string().regex(/^[0-9a-f]{64}$/),
});
export type ManifestFile = z.infer<typeof manifestFileSchema>;

const hash32 = z.string().regex(/^0x[0-9a-f]{64}$/);

/**
 * What the chain looked like to the writer of a range (chain_sync checks it before committing:
 * the genesis hash against the sync's recorded identity, the parent hash of the first block
 * against the last block hash of the preceding committed range). `head_block` is the node's
 * head when the range was read (null for the fake chain, which has no head).
 */
export const manifestChainSchema = z.object({
  genesis_hash: hash32,
  head_block: z.number().int().min(0).nullable(),
  first_parent_hash: hash32,
  last_block_hash: hash32,
});
export type ManifestChain = z.infer<typeof manifestChainSchema>;

export const ingestManifestSchema = z.object({
  manifest_version: z.literal(1),
  producer: z.literal('trace.cryo_ingest'),
  mode: z.enum(['native', 'cryo', 'fake']),
  chain_id: z.number().int().positive(),
  datasets: z.array(z.string()),
  /** `[range_start, range_end)`, end exclusive. */
  range_start: z.number().int().min(0),
  range_end: z.number().int().min(1),
  files: z.array(manifestFileSchema),
  row_counts: z.record(z.string(), z.number().int().min(0)),
  bytes: z.number().int().min(0),
  /** Written by every mode since the chain identity checks; absent in older outputs. */
  chain: manifestChainSchema.optional(),
});
export type IngestManifest = z.infer<typeof ingestManifestSchema>;

export async function sha256File(path: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(path)) h.update(chunk as Buffer);
  return h.digest('hex');
}

async function writeAtomic(path: string, data: string): Promise<void> {
  const tmp = `${path}.tmp`;
  await writeFile(tmp, data, { mode: 0o600 });
  await rename(tmp, path);
}

/** Writes `manifest.json`, then `_SUCCESS`. Call only after every listed file is complete. */
export async function commitManifest(outDir: string, manifest: IngestManifest): Promise<void> {
  const text = `${JSON.stringify(manifest, null, 2)}\n`;
  await writeAtomic(join(outDir, MANIFEST_FILE), text);
  await writeAtomic(join(outDir, SUCCESS_FILE), `${sha256Hex(text)}\n`);
}

const invalid = (message: string) => new TraceError(409, 'CRYO_OUTPUT_INVALID', message, { extra: { retryable: false } });

/**
 * Reads a committed prefix: `_SUCCESS` must exist and match the manifest; every file must
 * exist with the listed size (and, with `checkHashes`, the listed sha256).
 */
export async function readCommittedManifest(outDir: string, opts: { checkHashes?: boolean } = {}): Promise<IngestManifest> {
  let marker: string;
  try {
    marker = (await readFile(join(outDir, SUCCESS_FILE), 'utf8')).trim();
  } catch {
    throw invalid('the output has no _SUCCESS marker');
  }
  let text: string;
  try {
    text = await readFile(join(outDir, MANIFEST_FILE), 'utf8');
  } catch {
    throw invalid('the output has _SUCCESS but no manifest.json');
  }
  if (sha256Hex(text) !== marker) throw invalid('manifest.json does not match the _SUCCESS marker');
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    throw invalid('manifest.json is not JSON');
  }
  const r = ingestManifestSchema.safeParse(parsed);
  if (!r.success) throw invalid('manifest.json does not follow the manifest schema');
  for (const f of r.data.files) {
    if (f.path.includes('/') || f.path.startsWith('.')) throw invalid('manifest.json lists a path outside the output directory');
    const p = join(outDir, f.path);
    const st = await stat(p).catch(() => undefined);
    if (!st || st.size !== f.bytes) throw invalid(`file ${f.path} is missing or has the wrong size`);
    if (opts.checkHashes && (await sha256File(p)) !== f.sha256) throw invalid(`file ${f.path} does not match its sha256`);
  }
  return r.data;
}
