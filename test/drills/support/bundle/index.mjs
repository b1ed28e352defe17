import { run } from './trace-udf.mjs';
import { evaluate } from './alert.mjs';

run(evaluate);
