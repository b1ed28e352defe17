/**
 * The `trace` commands and their dispatch (src/cli/main.ts runs it). Loads only what the chosen
 * command uses: every command module imports
 * nothing heavier than the HTTP client here, and services (databases, DuckDB, Fastify, the AWS
 * SDK, the dev chain) are imported inside the command that runs them. bench/cli.ts measures it.
 */
import { readFileSync } from 'node:fs';
import { TraceError } from '../core/errors.js';
import { closest } from '../core/suggest.js';
import { type Command, CliError, UsageError, firstSentence, helpText, parseCommandArgs } from './args.js';
import { ApiError } from './client.js';
import { dagActivate, dagDeploy, dagTrigger, dagVersions, dagWebhooks } from './commands/dag.js';
import { taskCommands } from './commands/tasks.js';
import { udfCommands } from './commands/udf.js';
import { chainSyncCommands } from './commands/chain-sync.js';
import { sinkCommands } from './commands/sink.js';
import { alertCommands } from './commands/alerts.js';
import { orgCommands } from './commands/orgs.js';
import { datasetsList, datasetsRegister, queryCmd, queryServiceCmd } from './commands/query.js';
import { datasetsExport, gcCmd } from './commands/export.js';
import { datasetsShow, invalidateCmd } from './commands/invalidate.js';
import { queryResultsCommands } from './commands/query-results.js';
import { deliveryCmd, dispatcherCmd, gatewayCmd, liteDown, liteInfo, liteUp, migrateCmd, rpcGatewayCmd, tokenDevUser, workerCmd } from './commands/platform.js';

/** Every command of the `trace` binary, by its words. */
export const COMMANDS: Command[] = [
  liteUp, liteDown, liteInfo, migrateCmd, dispatcherCmd, workerCmd, gatewayCmd, rpcGatewayCmd, queryServiceCmd, deliveryCmd, ...sinkCommands,
  queryCmd, datasetsList, datasetsRegister, datasetsExport, gcCmd, ...chainSyncCommands, datasetsShow, invalidateCmd, ...queryResultsCommands,
  dagDeploy, dagVersions, dagActivate, dagTrigger, dagWebhooks, ...taskCommands, ...alertCommands, tokenDevUser, ...udfCommands,
  ...orgCommands,
];

/** Group words that are not commands themselves (`trace dag`, `trace lite`, ...), with their subcommands. */
function groupOf(word: string): Command[] {
  return COMMANDS.filter((c) => c.name.startsWith(`${word} `));
}

function version(): string {
  const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };
  return pkg.version;
}

function topHelp(): string {
  const w = Math.max(...COMMANDS.map((c) => c.name.length));
  return `trace ${version()}: a data platform for blockchain research and operations\n\n` +
    'Usage: trace <command> [options]   (trace <command> --help for details; trace --version)\n\n' +
    `Commands:\n${COMMANDS.map((c) => `  ${c.name.padEnd(w)}  ${firstSentence(c.summary)}`).join('\n')}\n\n` +
    'Commands a script parses take --json; with it, failures are {"error","code"} on stderr.\n';
}

function groupHelp(word: string, subs: Command[]): string {
  const w = Math.max(...subs.map((c) => c.name.length));
  return `Usage: trace ${word} <subcommand> [options]   (trace ${word} <subcommand> --help for details)\n\n` +
    `Subcommands:\n${subs.map((c) => `  ${c.name.padEnd(w)}  ${firstSentence(c.summary)}`).join('\n')}\n`;
}

const isHelp = (a: string | undefined) => a === '--help' || a === '-h' || a === 'help';

/** Writes a failure: one line (and its problems) for people, `{"error","code",...}` under --json. */
function fail(json: boolean, prefix: string, code: string, message: string, extra: { problems?: Array<{ path: string; message: string; line?: number }>; usage?: string; status?: number } = {}): void {
  if (json) {
    const body: Record<string, unknown> = { error: message, code };
    if (extra.status !== undefined) body.status = extra.status;
    if (extra.problems) body.problems = extra.problems;
    process.stderr.write(`${JSON.stringify(body)}\n`);
    return;
  }
  let text = `${prefix}: ${message}${code === 'USAGE' || code === 'UNKNOWN_COMMAND' ? '' : ` (${code})`}\n`;
  for (const p of extra.problems ?? []) text += `  ${p.path}${p.line !== undefined ? ` (line ${p.line})` : ''}: ${p.message}\n`;
  if (extra.usage) text += `Usage: ${extra.usage}\n`;
  process.stderr.write(text);
}

export async function main(argv: string[]): Promise<number> {
  const json = argv.includes('--json');
  if (argv.length === 0 || isHelp(argv[0])) {
    process.stdout.write(topHelp());
    return argv.length === 0 ? 2 : 0;
  }
  if (argv[0] === '--version' || argv[0] === '-V' || argv[0] === 'version') {
    process.stdout.write(json ? `${JSON.stringify({ version: version() })}\n` : `trace ${version()}\n`);
    return 0;
  }
  // Longest match on the command words ("dag deploy" before "dag").
  const cmd = [...COMMANDS].sort((a, b) => b.name.split(' ').length - a.name.split(' ').length)
    .find((c) => c.name.split(' ').every((w, i) => argv[i] === w));
  if (!cmd) {
    const group = groupOf(argv[0]!);
    if (group.length > 0) {
      if (argv.length === 1 || isHelp(argv[1])) {
        if (argv.length > 1) {
          process.stdout.write(groupHelp(argv[0]!, group));
          return 0;
        }
        process.stderr.write(groupHelp(argv[0]!, group));
        return 2;
      }
      const subs = group.map((c) => c.name.split(' ')[1]!);
      const near = closest(argv[1]!, subs);
      fail(json, `trace ${argv[0]}`, 'UNKNOWN_COMMAND', `unknown subcommand "${argv[1]!.slice(0, 40)}"${near ? `; did you mean "trace ${argv[0]} ${near}"?` : ''} (expected one of: ${subs.join(', ')})`);
      return 2;
    }
    const words = [...new Set(COMMANDS.map((c) => c.name.split(' ')[0]!))];
    const near = argv[0]!.startsWith('-') ? undefined : closest(argv[0]!, words);
    fail(json, 'trace', 'UNKNOWN_COMMAND', `unknown command "${argv[0]!.slice(0, 40)}"${near ? `; did you mean "trace ${near}"?` : ''} (see trace --help)`);
    return 2;
  }
  const rest = argv.slice(cmd.name.split(' ').length);
  const prefix = `trace ${cmd.name}`;
  try {
    const args = parseCommandArgs(cmd, rest);
    if (args.values.help) {
      process.stdout.write(helpText(cmd, COMMANDS));
      return 0;
    }
    const code = await cmd.run(args);
    return typeof code === 'number' ? code : 0;
  } catch (e) {
    if (e instanceof UsageError) {
      fail(json, prefix, e.code, e.message, { usage: cmd.usage });
      return e.exitCode;
    }
    if (e instanceof CliError) {
      fail(json, prefix, e.code, e.message);
      return e.exitCode;
    }
    if (e instanceof ApiError) {
      const problems = (e.body as { problems?: Array<{ path: string; message: string; line?: number }> } | undefined)?.problems;
      fail(json, prefix, e.code, e.message, { status: e.status, ...(problems ? { problems } : {}) });
      return 1;
    }
    if (e instanceof TraceError) {
      fail(json, prefix, e.code, e.message, e.problems ? { problems: e.problems } : {});
      return 1;
    }
    fail(json, prefix, 'FAILED', e instanceof Error ? e.message : String(e));
    return 1;
  }
}
