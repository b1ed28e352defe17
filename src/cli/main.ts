// The `trace` binary: bin/trace.mjs imports this (dist/cli/main.js once built).
import { main } from './cli.js';

process.exitCode = await main(process.argv.slice(2));
