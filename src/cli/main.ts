import { TraceError } from '../core/errors.js';
import { type Command, UsageError, helpText, parseCommandArgs } from './args.js';
import { ApiError } from './client.js';
import { dagActivate, dagDeploy, dagTrigger, dagVersions } from './commands/dag.js';
import { tasks } from './commands/tasks.js';
import { udfCommands } from './commands/udf.js';
import { chainSyncCommands } from './commands/chain-sync.js';
import { sinkCommands } from './commands/sink.js';
import { datasetsList, datasetsRegister, queryCmd, queryServiceCmd } from './commands/query.js';
import { deliveryCmd, dispatcherCmd, gatewayCmd, liteUp, migrateCmd, rpcGatewayCmd, tokenDevUser, workerCmd } from './commands/platform.js';

/** Every command of the `trace` binary, by its words. */
const COMMANDS: Command[] = [
  liteUp, migrateCmd, dispatcherCmd, workerCmd, gatewayCmd, rpcGatewayCmd, queryServiceCmd, deliveryCmd, ...sinkCommands,
  queryCmd, datasetsList, datasetsRegister, ...chainSyncCommands,
  dagDeploy, dagVersions, dagActivate, dagTrigger, tasks, tokenDevUser, ...udfCommands,
];

function topHelp(): string {
  const w = Math.max(...COMMANDS.map((c) => c.name.length));
  return `trace: a data platform for blockchain research and operations\n\nUsage: trace <command> [options]   (trace <command> --help for details)\n\nCommands:\n${
    COMMANDS.map((c) => `  ${c.name.padEnd(w)}  ${c.summary.split('. ')[0]!.replace(/\.$/, '')}`).join('\n')}\n`;
}

export async function main(argv: string[]): Promise<number> {
  if (argv.length === 0 || argv[0] === '--help' || argv[0] === '-h' || argv[0] === 'help') {
    process.stdout.write(topHelp());
    return argv.length === 0 ? 2 : 0;
  }
  // Longest match on the command words ("dag deploy" before "dag").
  const cmd = [...COMMANDS].sort((a, b) => b.name.split(' ').length - a.name.split(' ').length)
    .find((c) => c.name.split(' ').every((w, i) => argv[i] === w));
  if (!cmd) {
    const group = COMMANDS.filter((c) => c.name.startsWith(`${argv[0]} `));
    if (group.length > 0) {
      process.stderr.write(`trace ${argv[0]}: expected one of: ${group.map((c) => c.name.split(' ')[1]).join(', ')}\n`);
      return 2;
    }
    process.stderr.write(`trace: unknown command "${argv[0]}" (see trace --help)\n`);
    return 2;
  }
  const rest = argv.slice(cmd.name.split(' ').length);
  try {
    const args = parseCommandArgs(cmd, rest);
    if (args.values.help) {
      process.stdout.write(helpText(cmd));
      return 0;
    }
    const code = await cmd.run(args);
    return typeof code === 'number' ? code : 0;
  } catch (e) {
    if (e instanceof UsageError) {
      process.stderr.write(`trace ${cmd.name}: ${e.message}\nUsage: ${cmd.usage}\n`);
      return 2;
    }
    if (e instanceof ApiError) {
      const problems = (e.body as { problems?: Array<{ path: string; message: string }> } | undefined)?.problems;
      process.stderr.write(`trace ${cmd.name}: ${e.message} (${e.code})\n`);
      if (problems) for (const p of problems) process.stderr.write(`  ${p.path}: ${p.message}\n`);
      return 1;
    }
    if (e instanceof TraceError) {
      process.stderr.write(`trace ${cmd.name}: ${e.message} (${e.code})\n`);
      for (const p of e.problems ?? []) process.stderr.write(`  ${p.path}: ${p.message}\n`);
      return 1;
    }
    process.stderr.write(`trace ${cmd.name}: ${e instanceof Error ? e.message : String(e)}\n`);
    return 1;
  }
}

const code = await main(process.argv.slice(2));
process.exitCode = code;
