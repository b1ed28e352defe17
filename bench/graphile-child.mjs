// A graphile-worker process running no-op jobs: the reference the orchestration benchmark
// compares Trace against. Reports each job's enqueue-to-start latency on stdout as JSON lines.
import { run } from 'graphile-worker';

const [connectionString, concurrency] = process.argv.slice(2);
const runner = await run({
  connectionString,
  concurrency: Number(concurrency),
  noHandleSignals: true,
  pollInterval: 1000,
  logger: undefined,
  taskList: {
    noop: async (payload) => {
      if (payload && typeof payload === 'object' && 't' in payload) {
        process.stdout.write(`${JSON.stringify({ latency_ms: Date.now() - payload.t })}\n`);
      }
    },
  },
});
process.stdout.write(`${JSON.stringify({ ready: true })}\n`);
process.on('SIGTERM', async () => { await runner.stop(); process.exit(0); });
await runner.promise;
