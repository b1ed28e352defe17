import { parseArgs, type ParseArgsConfig } from 'node:util';
import { didYouMean } from '../core/suggest.js';

/**
 * A failure the CLI reports itself: one line (or `{"error","code"}` under `--json`) and a
 * non-zero exit status.
 */
export class CliError extends Error {
  constructor(readonly code: string, message: string, readonly exitCode = 1) {
    super(message);
  }
}

/** A usage error: printed as one line with the command's usage, exit code 2. */
export class UsageError extends CliError {
  constructor(message: string) {
    super('USAGE', message, 2);
  }
}

export interface Command {
  name: string;
  summary: string;
  usage: string;
  options?: ParseArgsConfig['options'];
  /**
   * Other spellings of options, `{alias: canonical}` (kept so sibling commands share one
   * spelling without breaking scripts written against the old one).
   */
  aliases?: Record<string, string>;
  run(args: { values: Record<string, unknown>; positionals: string[] }): Promise<number | void>;
}

export function parseCommandArgs(cmd: Command, argv: string[]): { values: Record<string, unknown>; positionals: string[] } {
  const options: NonNullable<ParseArgsConfig['options']> = { help: { type: 'boolean', short: 'h' }, ...cmd.options };
  for (const [alias, canonical] of Object.entries(cmd.aliases ?? {})) {
    const o = options[canonical];
    if (o) options[alias] = { type: o.type, ...(o.multiple ? { multiple: true } : {}) };
  }
  let r: { values: Record<string, unknown>; positionals: string[] };
  try {
    r = parseArgs({ args: argv, options, allowPositionals: true, strict: true }) as typeof r;
  } catch (e) {
    const msg = e instanceof Error ? e.message.split('\n')[0]! : String(e);
    const unknown = /^Unknown option '--([^']+)'/.exec(msg);
    if (unknown) {
      const known = Object.keys(options).filter((k) => !(k in (cmd.aliases ?? {})));
      throw new UsageError(`unknown option --${unknown[1]}${didYouMean(unknown[1]!, known).replace(/'([^']+)'/, "'--$1'")}`);
    }
    throw new UsageError(msg.replace(/\. To specify a positional argument.*$/, ''));
  }
  const values = { ...r.values };
  for (const [alias, canonical] of Object.entries(cmd.aliases ?? {})) {
    if (values[alias] === undefined) continue;
    if (values[canonical] !== undefined) throw new UsageError(`--${alias} and --${canonical} are the same option; give one`);
    values[canonical] = values[alias];
    delete values[alias];
  }
  return { values, positionals: r.positionals };
}

export function helpText(cmd: Command, siblings: Command[] = []): string {
  const aliases = Object.entries(cmd.aliases ?? {});
  const subs = siblings.filter((c) => c.name.startsWith(`${cmd.name} `));
  return `${cmd.summary}\n\nUsage: ${cmd.usage}\n` +
    (aliases.length > 0 ? `\nAlso accepted: ${aliases.map(([a, c]) => `--${a} for --${c}`).join(', ')}\n` : '') +
    (subs.length > 0 ? `\nSubcommands (trace ${cmd.name} <subcommand> --help):\n${subs.map((c) => `  ${c.name}  ${firstSentence(c.summary)}`).join('\n')}\n` : '');
}

/** The first sentence of a summary, without its full stop (one line of a command list). */
export function firstSentence(summary: string): string {
  return summary.split('. ')[0]!.replace(/\.$/, '');
}

export function intOption(v: unknown, name: string, min = 0): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isSafeInteger(n) || n < min) throw new UsageError(`--${name} must be an integer >= ${min}`);
  return n;
}

/** A positional argument or its option spelling (`trace x NAME` = `trace x --name NAME`), never both. */
export function positionalOr(values: Record<string, unknown>, positionals: string[], option: string, what: string): string | undefined {
  const fromOption = values[option] === undefined ? undefined : String(values[option]);
  if (fromOption !== undefined && positionals.length > 0) throw new UsageError(`give ${what} once: as an argument or as --${option}`);
  if (positionals.length > 1) throw new UsageError(`expected one ${what}, got ${positionals.length} arguments`);
  return fromOption ?? positionals[0];
}

/**
 * The listener of a service command: `--listen host:port`, else `--host`/`--port`, else its
 * `TRACE_<SERVICE>_LISTEN`, else `fallback` (`undefined`: no listener). A bad value is a usage
 * error naming the flag or the variable.
 */
export async function listenOption(
  service: 'dispatcher' | 'gateway' | 'query' | 'rpcGateway' | 'worker' | 'sink' | 'delivery',
  values: Record<string, unknown>,
  fallback: { host: string; port: number } | undefined,
): Promise<{ host: string; port: number } | undefined> {
  const port = intOption(values.port, 'port', 0);
  if (port !== undefined && port > 65535) throw new UsageError('--port must be at most 65535');
  const { resolveListen } = await import('../core/ops.js');
  try {
    return resolveListen(service, process.env, {
      ...(values.listen !== undefined ? { listen: String(values.listen) } : {}),
      ...(values.host !== undefined ? { host: String(values.host) } : {}),
      ...(port !== undefined ? { port } : {}),
    }, fallback);
  } catch (e) {
    throw new UsageError(e instanceof Error ? e.message : String(e));
  }
}
