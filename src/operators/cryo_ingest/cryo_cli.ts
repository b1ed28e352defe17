import { spawn } from 'node:child_process';
import { TraceError } from '../../core/errors.js';

/**
 * Runs the real Cryo binary (`mode: 'cryo'`) as
 *   cryo <dataset...> --rpc <url> --blocks <start>:<end> --output-dir <dir>
 * `--blocks start:end` is end-exclusive in Cryo, like Trace ranges, so the range is passed as
 * is. The URL is the gateway pool endpoint, never a provider URL. Exit code 2 (bad arguments
 * or dataset name) is fatal; any other failure is retryable.
 */

export interface CryoRunOptions {
  bin: string;
  datasets: readonly string[];
  rpcUrl: string;
  start: number;
  end: number;
  outDir: string;
  /** Kill the process after this long. Default: no limit (the task lease bounds it). */
  timeoutMs?: number;
  signal?: AbortSignal;
  env?: NodeJS.ProcessEnv;
}

export function cryoArgs(o: Pick<CryoRunOptions, 'datasets' | 'rpcUrl' | 'start' | 'end' | 'outDir'>): string[] {
  return [...o.datasets, '--rpc', o.rpcUrl, '--blocks', `${o.start}:${o.end}`, '--output-dir', o.outDir];
}

const STDERR_KEEP = 4096;

export function runCryo(o: CryoRunOptions): Promise<void> {
  return new Promise((resolve, reject) => {
    let stderr = '';
    let settled = false;
    const finish = (e?: TraceError) => {
      if (settled) return;
      settled = true;
      if (timer) clearTimeout(timer);
      if (e) reject(e);
      else resolve();
    };
    const child = spawn(o.bin, cryoArgs(o), {
      stdio: ['ignore', 'ignore', 'pipe'],
      env: o.env ?? process.env,
      signal: o.signal,
    });
    const timer = o.timeoutMs
      ? setTimeout(() => {
          child.kill('SIGKILL');
          finish(new TraceError(504, 'CRYO_TIMEOUT', `cryo did not finish within ${o.timeoutMs} ms`, { extra: { retryable: true } }));
        }, o.timeoutMs)
      : undefined;
    child.stderr?.setEncoding('utf8');
    child.stderr?.on('data', (d: string) => {
      stderr = (stderr + d).slice(-STDERR_KEEP);
    });
    child.on('error', (e: NodeJS.ErrnoException) => {
      if (e.code === 'ENOENT') {
        finish(
          new TraceError(500, 'CRYO_BINARY_NOT_FOUND', `the cryo binary "${o.bin}" was not found; install cryo (cargo install cryo_cli) or set TRACE_CRYO_BIN`, {
            extra: { retryable: false },
          }),
        );
      } else if (e.name === 'AbortError') {
        finish(new TraceError(499, 'CRYO_ABORTED', 'cryo was aborted', { extra: { retryable: true } }));
      } else {
        finish(new TraceError(500, 'CRYO_SPAWN_FAILED', `could not start cryo (${e.code ?? e.name})`, { extra: { retryable: true } }));
      }
    });
    child.on('close', (code, signal) => {
      if (code === 0) return finish();
      const tail = redact(stderr.trim(), o.rpcUrl).split('\n').slice(-5).join(' | ').slice(-1024);
      const why = tail ? `: ${tail}` : '';
      if (code === 2) {
        finish(new TraceError(422, 'CRYO_INVALID_ARGS', `cryo rejected its arguments (exit 2)${why}`, { extra: { retryable: false } }));
      } else {
        finish(
          new TraceError(502, 'CRYO_FAILED', `cryo failed (${code === null ? `signal ${signal}` : `exit ${code}`})${why}`, {
            extra: { retryable: true },
          }),
        );
      }
    });
  });
}

/** Removes the RPC URL (and anything that looks like a URL query) from Cryo's stderr. */
function redact(text: string, url: string): string {
  return text.split(url).join('<rpc>').replace(/(https?:\/\/[^\s?#]+)[?#]\S*/g, '$1?<redacted>');
}
