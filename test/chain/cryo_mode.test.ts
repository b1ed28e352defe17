import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { chmod, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ingestRange } from '../../src/operators/cryo_ingest/ingest.js';
import { cryoArgs } from '../../src/operators/cryo_ingest/cryo_cli.js';
import { SUCCESS_FILE, readCommittedManifest } from '../../src/operators/cryo_ingest/manifest.js';
import { rpcClientForPool } from '../../src/operators/cryo_ingest/rpc.js';
import { jsonRpcServer } from './support.js';

/**
 * `mode: 'cryo'` runs a real child process. A stand-in `cryo` executable (a Node script)
 * records its argv and copies Parquet that fake mode produced, the way Cryo would write it,
 * plus a `.cryo/` report directory that Trace must ignore.
 */

let work: string;
let source: string;
let stub: string;
let gatewayUrl: string;
let gateway: Awaited<ReturnType<typeof jsonRpcServer>>;

async function writeStub(path: string, behaviour: 'ok' | 'exit2' | 'exit1'): Promise<string> {
  const script = `#!${process.execPath}
const fs = require('node:fs');
const path = require('node:path');
const args = process.argv.slice(2);
const out = args[args.indexOf('--output-dir') + 1];
fs.writeFileSync(process.env.STUB_ARGS_FILE, JSON.stringify(args));
if (${JSON.stringify(behaviour)} === 'exit2') { process.stderr.write('error: invalid dataset name\\n'); process.exit(2); }
if (${JSON.stringify(behaviour)} === 'exit1') { process.stderr.write('rpc error talking to ' + args[args.indexOf('--rpc') + 1] + ' and https://other.example/x?apikey=LEAK\\n'); process.exit(1); }
fs.mkdirSync(path.join(out, '.cryo', 'reports'), { recursive: true });
fs.writeFileSync(path.join(out, '.cryo', 'reports', 'r.json'), '{}');
for (const f of fs.readdirSync(process.env.STUB_SOURCE)) {
  if (f.endsWith('.parquet')) fs.copyFileSync(path.join(process.env.STUB_SOURCE, f), path.join(out, f));
}
`;
  await writeFile(path, script);
  await chmod(path, 0o755);
  return path;
}

before(async () => {
  work = await mkdtemp(join(tmpdir(), 'trace-cryo-mode-'));
  source = join(work, 'source');
  await ingestRange({ chainId: 1, datasets: ['blocks', 'logs'], start: 1000, end: 1010, outDir: source, mode: 'fake' });
  stub = await writeStub(join(work, 'cryo-ok'), 'ok');
  process.env.STUB_SOURCE = source;
  // stands in for the gateway: the ingest checks eth_chainId before running cryo, and reads the
  // chain's boundaries (genesis, head, first and last block) for the manifest after it
  const hash = (n: number) => `0x${n.toString(16).padStart(64, '0')}`;
  gateway = await jsonRpcServer({
    answer: (m, params) => {
      if (m === 'eth_chainId') return { result: '0x1' };
      if (m === 'eth_getBlockByNumber') {
        const tag = String((params as unknown[])[0]);
        const n = tag === 'latest' ? 2000 : Number.parseInt(tag.slice(2), 16);
        return { result: { number: `0x${n.toString(16)}`, hash: hash(n + 1), parentHash: hash(n) } };
      }
      return { error: { code: -32601, message: 'no' } };
    },
  });
  gatewayUrl = gateway.url;
});

after(async () => {
  await gateway?.close();
  delete process.env.STUB_SOURCE;
  delete process.env.STUB_ARGS_FILE;
  if (work) await rm(work, { recursive: true, force: true });
});

test('cryo is invoked as `cryo <datasets> --rpc <gateway pool url> --blocks start:end --output-dir <dir>`', async () => {
  const argsFile = join(work, 'args-ok.json');
  process.env.STUB_ARGS_FILE = argsFile;
  const rpc = rpcClientForPool(gatewayUrl, 'standard');
  const outDir = join(work, 'out-ok');
  const r = await ingestRange({ rpc, chainId: 1, datasets: ['blocks', 'logs'], start: 1000, end: 1010, outDir, mode: 'cryo', cryoBin: stub });
  rpc.close();
  const h = (n: number) => `0x${n.toString(16).padStart(64, '0')}`;
  assert.deepEqual(r.manifest.chain, { genesis_hash: h(1), head_block: 2000, first_parent_hash: h(1000), last_block_hash: h(1010) }, 'the manifest records the chain view');
  const args = JSON.parse(await readFile(argsFile, 'utf8')) as string[];
  assert.deepEqual(args, ['blocks', 'logs', '--rpc', `${gatewayUrl}/rpc/standard`, '--blocks', '1000:1010', '--output-dir', outDir]);
  assert.deepEqual(cryoArgs({ datasets: ['logs'], rpcUrl: 'u', start: 0, end: 5, outDir: '/o' }), ['logs', '--rpc', 'u', '--blocks', '0:5', '--output-dir', '/o']);
  assert.deepEqual(r.row_counts, { blocks: 10, logs: 9 });
  assert.deepEqual(
    r.files.map((f) => [f.path, f.dataset, f.range_start, f.range_end]),
    [
      ['ethereum__blocks__00001000_to_00001009.parquet', 'blocks', 1000, 1010],
      ['ethereum__logs__00001000_to_00001009.parquet', 'logs', 1000, 1010],
    ],
  );
  assert.ok(!existsSync(join(outDir, '.cryo')), "Cryo's report directory is not part of the output");
  const m = await readCommittedManifest(outDir, { checkHashes: true });
  assert.equal(m.mode, 'cryo');
  assert.deepEqual((await readdir(outDir)).sort(), [...r.files.map((f) => f.path), 'manifest.json', '_SUCCESS'].sort());
});

test('a missing cryo binary is a clear, non-retryable error', async () => {
  const rpc = rpcClientForPool(gatewayUrl, 'standard');
  const outDir = join(work, 'out-missing');
  await assert.rejects(
    ingestRange({ rpc, chainId: 1, datasets: ['blocks'], start: 0, end: 10, outDir, mode: 'cryo', cryoBin: join(work, 'no-such-cryo') }),
    (e: { code?: string; message: string; extra?: { retryable?: boolean } }) =>
      e.code === 'CRYO_BINARY_NOT_FOUND' && /TRACE_CRYO_BIN/.test(e.message) && e.extra?.retryable === false,
  );
  rpc.close();
  assert.ok(!existsSync(join(outDir, SUCCESS_FILE)));
});

test('cryo exit 2 is fatal; other failures are retryable and never echo URLs with keys', async () => {
  const rpc = rpcClientForPool(gatewayUrl, 'standard');
  process.env.STUB_ARGS_FILE = join(work, 'args-fail.json');
  await assert.rejects(
    ingestRange({ rpc, chainId: 1, datasets: ['blocks'], start: 0, end: 10, outDir: join(work, 'out-2'), mode: 'cryo', cryoBin: await writeStub(join(work, 'cryo-2'), 'exit2') }),
    (e: { code?: string; message: string; extra?: { retryable?: boolean } }) =>
      e.code === 'CRYO_INVALID_ARGS' && e.extra?.retryable === false && /invalid dataset name/.test(e.message),
  );
  await assert.rejects(
    ingestRange({ rpc, chainId: 1, datasets: ['blocks'], start: 0, end: 10, outDir: join(work, 'out-1'), mode: 'cryo', cryoBin: await writeStub(join(work, 'cryo-1'), 'exit1') }),
    (e: { code?: string; message: string; extra?: { retryable?: boolean } }) => {
      assert.equal(e.code, 'CRYO_FAILED');
      assert.equal(e.extra?.retryable, true);
      assert.ok(!e.message.includes('LEAK') && !e.message.includes('/rpc/standard'), e.message);
      return true;
    },
  );
  rpc.close();
  assert.ok(!existsSync(join(work, 'out-1', SUCCESS_FILE)));
});
