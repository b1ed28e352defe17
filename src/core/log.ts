import { pino, type Logger } from 'pino';

export type { Logger };

/**
 * JSON-lines logger. Every line may carry org_id, job, task_id and attempt through child
 * loggers; tokens, secrets and SQL are redacted by key wherever they appear.
 */
export function createLogger(name: string, level = process.env.TRACE_LOG_LEVEL ?? (process.env.NODE_ENV === 'test' ? 'silent' : 'info')): Logger {
  return pino({
    name,
    level,
    base: { service: name },
    timestamp: pino.stdTimeFunctions.isoTime,
    redact: {
      paths: [
        '*.capability_token', '*.lease_token', '*.token', '*.password', '*.secret', '*.sql',
        'capability_token', 'lease_token', 'token', 'sql', 'req.headers.authorization',
        'req.headers["x-trace-worker-token"]', 'req.headers["x-trace-task-capability"]',
      ],
      censor: '[redacted]',
    },
  });
}

export const silentLogger: Logger = pino({ level: 'silent' });
