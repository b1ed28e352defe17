import { CronExpressionParser } from 'cron-parser';

/**
 * Next tick of a source schedule strictly after `after`: a 5-field cron expression (UTC) or
 * `@every <N>s|m|h`. Ticks missed while the Dispatcher was down collapse into one firing.
 */
export function nextTick(schedule: string, after: Date): Date {
  const every = /^@every\s+(\d+)\s*(s|m|h)$/.exec(schedule.trim());
  if (every) {
    const ms = Number(every[1]) * (every[2] === 's' ? 1000 : every[2] === 'm' ? 60_000 : 3_600_000);
    return new Date((Math.floor(after.getTime() / ms) + 1) * ms);
  }
  return CronExpressionParser.parse(schedule, { currentDate: after, tz: 'UTC' }).next().toDate();
}
