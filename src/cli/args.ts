import { parseArgs, type ParseArgsConfig } from 'node:util';

/** A usage error: printed as one line, exit code 2. */
export class UsageError extends Error {}

export interface Command {
  name: string;
  summary: string;
  usage: string;
  options?: ParseArgsConfig['options'];
  run(args: { values: Record<string, unknown>; positionals: string[] }): Promise<number | void>;
}

export function parseCommandArgs(cmd: Command, argv: string[]): { values: Record<string, unknown>; positionals: string[] } {
  try {
    const r = parseArgs({ args: argv, options: { help: { type: 'boolean', short: 'h' }, ...cmd.options }, allowPositionals: true, strict: true });
    return { values: r.values as Record<string, unknown>, positionals: r.positionals };
  } catch (e) {
    throw new UsageError(e instanceof Error ? e.message.split('\n')[0]! : String(e));
  }
}

export function helpText(cmd: Command): string {
  return `${cmd.summary}\n\nUsage: ${cmd.usage}\n`;
}

export function intOption(v: unknown, name: string, min = 0): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isSafeInteger(n) || n < min) throw new UsageError(`--${name} must be an integer >= ${min}`);
  return n;
}
