/**
 * `isolation` suite, UDF part: what the OS sandbox adds to one UDF invocation. A trivial bundle
 * (reads its invocation, writes `{}`) runs through the real runner (`runUdf`: hash check, inspect,
 * extract, spawn, stdout, cleanup) sandboxed (`bubblewrap`: namespaces, uid drop when root,
 * binds, rlimits, the task channel socket) and unsandboxed (`unsafe-none`, the reference), the
 * two alternating run by run in the same process, for Node and for Python. Figures: p50 and p99
 * of each, and the difference of the p50s (the sandbox's start-up cost per invocation).
 *
 * Knobs: BENCH_ISOLATION_SAMPLES (default 40 per system and runtime), BENCH_ISOLATION_PYTHON
 * (the interpreter, default `python3` on PATH as the platform would use it; both systems run the
 * same real binary).
 */
import { randomUUID } from 'node:crypto';
import { runUdf } from '../src/udf/runner.js';
import { UdfSandbox } from '../src/udf/sandbox/sandbox.js';
import { defaultSandboxConfig } from '../src/udf/sandbox/config.js';
import { resolvePython } from '../src/udf/sandbox/runtimes.js';
import { goodBundle, sha256 } from '../test/udf/support/zips.js';
import { testWorkRoot } from '../test/udf/support/sandbox.js';
import { percentile, report, round } from './util.js';
import { rm } from 'node:fs/promises';

const SAMPLES = Number(process.env.BENCH_ISOLATION_SAMPLES ?? 40);
const WARMUP = 3;

const BUNDLES = {
  node: { name: 'index.mjs', data: "let s = ''; for await (const c of process.stdin) s += c; JSON.parse(s); process.stdout.write('{}');\n" },
  python: { name: 'main.py', data: 'import json, sys\njson.load(sys.stdin)\nsys.stdout.write("{}")\n' },
} as const;

export async function bench(): Promise<void> {
  const workRoot = testWorkRoot();
  const python = (await resolvePython(process.env.BENCH_ISOLATION_PYTHON ?? 'python3')).exe;
  const boxed = await UdfSandbox.start({ config: defaultSandboxConfig({ workRoot, pythonPath: python }) });
  const open = await UdfSandbox.start({ config: defaultSandboxConfig({ workRoot, mode: 'unsafe-none', pythonPath: python }) });
  try {
    if (boxed.state !== 'bubblewrap') throw new Error(`the sandbox is ${boxed.state}: ${boxed.report.reason ?? ''}`);
    const common = { bench: 'isolation', part: 'udf', samples: SAMPLES, uid_drop: boxed.report.identity?.dropsRoot ?? false, bwrap: boxed.report.bwrap?.version };
    for (const runtime of ['node', 'python'] as const) {
      const b = BUNDLES[runtime];
      const bytes = await goodBundle([b], { runtime, entrypoint: b.name });
      const sha = sha256(bytes);
      const once = async (sandbox: UdfSandbox): Promise<number> => {
        const token = `bench.${randomUUID()}`;
        const t0 = performance.now();
        const r = await runUdf({
          sandbox, bundle: bytes, expectedSha256: sha, timeoutMs: 30_000, maxStdoutBytes: 1024, maxStderrBytes: 4096, capabilityToken: token,
          invocation: { task_id: randomUUID(), attempt: 1, lease_token: randomUUID(), capability_token: token },
          dispatcherUrl: 'http://127.0.0.1:9', queryUrl: 'http://127.0.0.1:9',
        });
        const ms = performance.now() - t0;
        if (!r.ok) throw new Error(`${runtime} run failed: ${r.failure}: ${r.message} ${r.stderr}`);
        return ms;
      };
      const times = { sandboxed: [] as number[], open: [] as number[] };
      for (let i = 0; i < SAMPLES + WARMUP; i++) {
        // Alternate which goes first so neither always runs on a warmer cache.
        const order = i % 2 === 0 ? (['sandboxed', 'open'] as const) : (['open', 'sandboxed'] as const);
        for (const which of order) {
          const ms = await once(which === 'sandboxed' ? boxed : open);
          if (i >= WARMUP) times[which].push(ms);
        }
      }
      const exe = boxed.interpreter(runtime);
      const s = { p50: percentile(times.sandboxed, 50), p99: percentile(times.sandboxed, 99) };
      const o = { p50: percentile(times.open, 50), p99: percentile(times.open, 99) };
      report({ ...common, system: 'trace', sandbox: 'bubblewrap', metric: `udf_${runtime}_invocation_ms_p50`, value: round(s.p50), unit: 'ms', runtime: exe });
      report({ ...common, system: 'trace', sandbox: 'bubblewrap', metric: `udf_${runtime}_invocation_ms_p99`, value: round(s.p99), unit: 'ms', runtime: exe });
      report({ ...common, system: 'trace-unsandboxed-reference', sandbox: 'unsafe-none', metric: `udf_${runtime}_invocation_ms_p50`, value: round(o.p50), unit: 'ms' });
      report({ ...common, system: 'trace-unsandboxed-reference', sandbox: 'unsafe-none', metric: `udf_${runtime}_invocation_ms_p99`, value: round(o.p99), unit: 'ms' });
      report({ ...common, system: 'trace', metric: `udf_${runtime}_sandbox_startup_ms_p50`, value: round(s.p50 - o.p50), unit: 'ms', reference: 'unsafe-none p50', target: '< 50' });
      report({ ...common, system: 'trace', metric: `udf_${runtime}_sandbox_startup_ms_p99`, value: round(s.p99 - o.p99), unit: 'ms', reference: 'unsafe-none p99' });
    }
  } finally {
    await boxed.close();
    await open.close();
    await rm(workRoot, { recursive: true, force: true });
  }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  await bench();
  process.exit(0);
}
