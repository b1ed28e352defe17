/**
 * How every long-running `trace` service ends: on SIGINT or SIGTERM it drains (each service's
 * own stop: no new work, in-flight work finished within the grace period, leases released),
 * then the process exits 0. A second signal while draining exits at once with 130.
 */

/** Resolves with the signal's name when SIGINT or SIGTERM arrives. */
export function untilSignal(): Promise<string> {
  return new Promise((resolve) => {
    const on = (s: string) => () => resolve(s);
    process.once('SIGINT', on('SIGINT'));
    process.once('SIGTERM', on('SIGTERM'));
  });
}

/** Waits for a signal, runs `stop`, and makes sure nothing left behind keeps the process alive. */
export async function serveUntilSignal(name: string, stop: () => Promise<void>): Promise<number> {
  await untilSignal();
  drainingExit(name);
  await stop();
  exitSoon(0);
  return 0;
}

/** A second signal during a drain ends the process at once. */
export function drainingExit(name: string): void {
  const now = () => {
    process.stderr.write(`trace ${name}: second signal while draining; exiting now\n`);
    process.exit(130);
  };
  process.once('SIGINT', now);
  process.once('SIGTERM', now);
}

/** Exits with `code` shortly, even if an idle keep-alive socket or timer would hold the loop open. */
export function exitSoon(code: number): void {
  process.exitCode = code;
  setTimeout(() => process.exit(code), 2_000).unref();
}
