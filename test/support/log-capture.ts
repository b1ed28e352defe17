import { pino } from 'pino';
import type { Logger } from '../../src/core/log.js';

/** A real pino logger whose JSON lines are kept in memory, so tests can check what was logged. */
export function captureLogger(level = 'debug'): { log: Logger; lines: Array<Record<string, any>> } {
  const lines: Array<Record<string, any>> = [];
  const log = pino({ level }, { write: (s: string) => { lines.push(JSON.parse(s) as Record<string, any>); } });
  return { log, lines };
}
