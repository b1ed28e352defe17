/**
 * `npm run bench [-- NAME...]`: runs the benchmarks and prints one JSON line per figure.
 * Needs the test Postgres (TRACE_TEST_PG_URL, default postgres://postgres@127.0.0.1:5432/test).
 */
import { orchestrationBench } from './orchestration.js';
import { udfBench } from './udf.js';
import { queryBench } from './query.js';
import { chainBench } from './chain.js';

const SUITES: Record<string, () => Promise<void>> = {
  orchestration: orchestrationBench,
  query: queryBench,
  udf: udfBench,
  chain: chainBench,
};

const wanted = process.argv.slice(2).filter((a) => !a.startsWith('-'));
const names = wanted.length > 0 ? wanted : Object.keys(SUITES);
for (const name of names) {
  const suite = SUITES[name];
  if (!suite) {
    process.stderr.write(`unknown benchmark ${name}; known: ${Object.keys(SUITES).join(', ')}\n`);
    process.exit(2);
  }
  await suite();
}
process.exit(0);
