/**
 * `npm run bench [-- NAME...]`: runs the benchmarks and prints one JSON line per figure.
 * Needs the test Postgres (TRACE_TEST_PG_URL, default postgres://postgres@127.0.0.1:5432/test).
 * A suite name may run several modules, in order (each adds its own figures).
 */
import { orchestrationBench } from './orchestration.js';
import { udfBench } from './udf.js';
import { queryBench } from './query.js';
import { chainBench } from './chain.js';
import { cliBench } from './cli.js';
import { bench as isolationUdfBench } from './isolation-udf.js';
import { isolationQueryBench } from './isolation-query.js';
import { publishBench } from './publish.js';
import { consoleBench } from './console.js';
import { queryResultsBench } from './query-results.js';

const SUITES: Record<string, Array<() => Promise<void>>> = {
  orchestration: [orchestrationBench],
  query: [queryBench],
  udf: [udfBench],
  chain: [chainBench],
  cli: [cliBench],
  isolation: [isolationUdfBench, isolationQueryBench],
  publish: [publishBench],
  console: [consoleBench],
  'query-results': [queryResultsBench],
};

const wanted = process.argv.slice(2).filter((a) => !a.startsWith('-'));
const names = wanted.length > 0 ? wanted : Object.keys(SUITES);
for (const name of names) {
  if (!SUITES[name]) {
    process.stderr.write(`unknown benchmark ${name}; known: ${Object.keys(SUITES).join(', ')}\n`);
    process.exit(2);
  }
}
for (const name of names) {
  for (const run of SUITES[name]!) await run();
}
process.exit(0);
