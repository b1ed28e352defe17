/**
 * A large DAG deploy does not stall the other routes of its process. On the one-process
 * platform (real Postgres and PGlite) a 2,000-job DAG, under the YAML size cap, is deployed while
 * the Dispatcher's health route is polled: parsing and validation run on a worker thread
 * (src/dispatcher/dag-parser.ts) and the writes are batched with turns of the event loop between
 * them (src/dispatcher/dags.ts).
 *
 * What the code controls is how long it keeps the main thread busy without a turn of the event
 * loop; that is measured as the main thread's own CPU time (/proc/self/task/<pid>/stat, 10 ms
 * ticks) between two runs of a 5 ms timer. Typically 50 to 100 ms here (the largest single
 * statement on PGlite, or a garbage collection); parsing and validating the same DAG on the main
 * thread kept it busy for 600 ms to 3 s. The bound asserted is 200 ms, a margin for a loaded
 * 2-core machine. The wall-clock loop delay (perf_hooks.monitorEventLoopDelay) and the health
 * route's latency also include the time the OS gives other processes (a health call needs several
 * turns of the loop), so they only get bounds the old behaviour broke (2 s and 3 s; it stalled
 * every route for about 6 s).
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { TraceError } from '../../src/core/errors.js';
import { WorkerDagParser, inlineDagParser } from '../../src/dispatcher/dag-parser.js';
import { operatorCatalog } from '../../src/operators/registry.js';
import { BACKENDS } from '../support/db.js';
import { startPlatform, type TestPlatform } from '../support/platform.js';

/** 2,000 jobs in about 230 KB of YAML (the cap is 256 KiB). */
function bigDag(name: string, prefix = 'j', jobs = 2_000): string {
  let y = `name: ${name}\njobs:\n`;
  for (let i = 0; i < jobs; i++) y += `- {name: ${prefix}${i},activation: source,runtime: ecs_platform,operator: cursor_emitter,source: {kind: manual},outputs: 1}\n`;
  return y;
}

/** CPU time of this process's main thread, in ms (10 ms resolution). */
function mainThreadCpuMs(): number {
  const f = readFileSync(`/proc/self/task/${process.pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  return (Number(f[11]) + Number(f[12])) * 10;
}

describe('the DAG parser', () => {
  it('on a worker thread gives what the inline parser gives, errors included', async () => {
    const worker = new WorkerDagParser({ includeTestOperators: true });
    const inline = inlineDagParser(operatorCatalog({ includeTestOperators: true }));
    try {
      const yaml = bigDag('same', 'j', 50);
      const { specJson, ...fromWorker } = await worker.parse(yaml);
      const fromInline = await inline.parse(yaml);
      assert.equal(specJson, JSON.stringify(fromInline.spec));
      assert.deepEqual(fromWorker, { ...fromInline, spec: JSON.parse(JSON.stringify(fromInline.spec)) });
      const bad = 'name: bad\njobs:\n  - {name: a, activation: source, runtime: ecs_platform, operator: nope, outputs: 1}\n';
      const [a, b] = await Promise.all([worker.parse(bad).catch((e: unknown) => e), inline.parse(bad).catch((e: unknown) => e)]);
      assert.ok(a instanceof TraceError && b instanceof TraceError);
      assert.deepEqual([a.status, a.code, a.message, a.problems], [b.status, b.code, b.message, b.problems]);
      assert.equal(a.code, 'DAG_INVALID');
      const broken = await worker.parse('a: [').catch((e: unknown) => e);
      assert.ok(broken instanceof TraceError && broken.code === 'YAML_MALFORMED');
    } finally {
      await worker.close();
    }
  });

  it('has a time bound: past it the DAG is refused (400) and the next one parses on a new worker', async () => {
    const parser = new WorkerDagParser({ includeTestOperators: true, timeoutMs: 1 });
    try {
      const e = await parser.parse(bigDag('slow')).catch((x: unknown) => x);
      assert.ok(e instanceof TraceError, String(e));
      assert.equal(e.status, 400);
      assert.equal(e.code, 'YAML_MALFORMED');
      assert.match(e.problems![0]!.message, /took longer than/);
    } finally {
      await parser.close();
    }
    const ok = new WorkerDagParser({ includeTestOperators: true });
    try {
      const timedOut = new WorkerDagParser({ includeTestOperators: true, timeoutMs: 1 });
      await timedOut.parse(bigDag('slow')).catch(() => undefined);
      await timedOut.close();
      assert.equal((await ok.parse(bigDag('fine', 'j', 3))).spec.jobs.length, 3);
    } finally {
      await ok.close();
    }
  });
});

for (const backend of BACKENDS) {
  describe(`a 2,000-job DAG deploy beside other routes (${backend})`, () => {
    let p: TestPlatform;

    before(async () => {
      p = await startPlatform(backend, { workers: 0, query: { maxConcurrent: 1 } });
    });
    after(async () => p?.close());

    it('keeps the main thread turning (no busy stretch near a parse); health keeps answering', async () => {
      for (const [round, prefix] of [[1, 'j'], [2, 'k']] as const) {
        const yaml = bigDag('big', prefix);
        assert.ok(Buffer.byteLength(yaml) < 256 * 1024);
        const delay = monitorEventLoopDelay({ resolution: 10 });
        let busiest = 0;
        let last = mainThreadCpuMs();
        const sampler = setInterval(() => {
          const now = mainThreadCpuMs();
          busiest = Math.max(busiest, now - last);
          last = now;
        }, 5);
        let polling = true;
        let worstHealth = 0;
        let polls = 0;
        const poller = (async () => {
          while (polling) {
            const t0 = performance.now();
            const r = await fetch(`${p.url}/healthz`);
            assert.equal(r.status, 200);
            await r.arrayBuffer();
            worstHealth = Math.max(worstHealth, performance.now() - t0);
            polls++;
            await new Promise((res) => setTimeout(res, 20));
          }
        })();
        delay.enable();
        const t0 = performance.now();
        const r = await p.api('POST', '/v1/dags/big/versions?activate=true', yaml);
        const took = performance.now() - t0;
        delay.disable();
        polling = false;
        await poller;
        clearInterval(sampler);
        assert.equal(r.status, 201, JSON.stringify(r.body).slice(0, 500));
        assert.equal(r.body.datasets.length, 2_000);
        const jobs = await p.dbs.state.query<{ n: number }>(`SELECT count(*)::int AS n FROM jobs WHERE dag_version_id = $1`, [r.body.dag_version_id]);
        assert.equal(jobs.rows[0]!.n, 2_000);
        const what = `round ${round}: deploy ${Math.round(took)} ms, main thread busy at most ${busiest} ms, loop delay max ${Math.round(delay.max / 1e6)} ms, health worst ${Math.round(worstHealth)} ms over ${polls} polls`;
        assert.ok(polls >= 5, what);
        assert.ok(busiest <= 200, what);
        assert.ok(delay.max / 1e6 < 2_000, what);
        assert.ok(worstHealth < 3_000, what);
      }
    });
  });
}
