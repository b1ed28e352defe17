// Entrypoint: run the evaluation; the platform completes the task from the returned object.
import { run } from './trace-udf.mjs';
import { evaluate } from './alert.mjs';

run(evaluate);
