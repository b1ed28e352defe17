/**
 * `trace datasets export --to` takes a local folder only: an `s3://` (or any other URL)
 * destination is refused before anything is asked or written, with an error naming `--to`,
 * instead of becoming a folder named after the URL.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseCommandArgs, CliError } from '../../src/cli/args.js';
import { datasetsExport } from '../../src/cli/commands/export.js';

test('datasets export refuses an s3:// destination, naming --to, and writes nothing', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'trace-export-dest-'));
  const cwd = process.cwd();
  const saved = { url: process.env.TRACE_DISPATCHER_URL, home: process.env.TRACE_HOME };
  // Unreachable: had the command gone on, it would have failed with UNREACHABLE instead.
  process.env.TRACE_DISPATCHER_URL = 'http://127.0.0.1:9';
  process.env.TRACE_HOME = dir;
  process.chdir(dir);
  try {
    for (const to of ['s3://other-bucket/exports/blocks', 'S3://b/p', 'https://example.com/x']) {
      await assert.rejects(datasetsExport.run(parseCommandArgs(datasetsExport, ['dev_blocks', '--to', to])), (e: unknown) => {
        assert.ok(e instanceof CliError);
        assert.equal(e.code, 'EXPORT_DESTINATION_UNSUPPORTED');
        assert.match(e.message, /^--to must be a local folder; (s3|https):\/\/ destinations are not supported/);
        return true;
      });
    }
    assert.deepEqual(await readdir(dir), [], 'no folder named after the URL');
  } finally {
    process.chdir(cwd);
    for (const [k, v] of Object.entries({ TRACE_DISPATCHER_URL: saved.url, TRACE_HOME: saved.home })) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
    await rm(dir, { recursive: true, force: true });
  }
});
