import { readFile } from 'node:fs/promises';
import type { Command } from '../args.js';
import { UsageError, intOption, positionalOr } from '../args.js';
import { api, resolveTarget } from '../client.js';
import { renderTable } from '../table.js';

/** `trace alerts [show|create|delete|deliveries]`: the alert definition routes of the user API (/v1/alerts). */

interface ChannelView { name: string; type: string; url: string; header_names?: string[] }
interface AlertView {
  id: string; name: string; condition: Record<string, unknown>; channels: ChannelView[]; visibility: string; enabled: boolean;
  created_by?: string; created_at?: string; updated_at?: string;
}
interface DeliveryView {
  delivery_id: string; alert_event_id: string; channel: string; status: string; attempt: number; max_attempts: number;
  last_status_code: number | null; error_message: string | null; delivered_at: string | null; created_at: string;
  event: { severity: string; event_time: string; dedupe_key: string };
}

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

function alertId(values: Record<string, unknown>, positionals: string[]): string {
  const id = positionalOr(values, positionals, 'id', 'alert ID');
  if (!id) throw new UsageError('expected an alert ID (see trace alerts)');
  if (!UUID_RE.test(id)) throw new UsageError(`"${id.slice(0, 40)}" is not an alert ID (a UUID from trace alerts)`);
  return id;
}

const print = (values: Record<string, unknown>, body: unknown, human: () => string) =>
  process.stdout.write(values.json ? `${JSON.stringify(body, null, 2)}\n` : `${human()}\n`);

function renderAlert(a: AlertView): string {
  return [
    `alert ${a.id}  ${a.name}${a.enabled ? '' : '  (disabled)'}`,
    `  visibility ${a.visibility}`,
    `  condition  ${JSON.stringify(a.condition)}`,
    ...a.channels.map((c) => `  channel    ${c.name}: ${c.type} ${c.url}`),
  ].join('\n');
}

export const alertsList: Command = {
  name: 'alerts',
  summary: 'List the alert definitions you can see. See also: trace alerts show|create|delete|deliveries.',
  usage: 'trace alerts [--json]',
  options: { json: { type: 'boolean' } },
  async run({ values, positionals }) {
    if (positionals.length > 0) throw new UsageError(`unknown subcommand "${positionals[0]!.slice(0, 40)}" (expected: show, create, delete, deliveries)`);
    const r = await api<{ alerts: AlertView[] }>(await resolveTarget(), 'GET', '/v1/alerts');
    print(values, r, () => r.alerts.length === 0 ? 'no alert definitions (create one with: trace alerts create --name NAME --webhook URL)'
      : renderTable(['id', 'name', 'enabled', 'visibility', 'channels', 'condition'],
        r.alerts.map((a) => [a.id, a.name, a.enabled ? 'yes' : 'no', a.visibility, a.channels.map((c) => c.url).join(' '), JSON.stringify(a.condition)])));
  },
};

export const alertsShow: Command = {
  name: 'alerts show',
  summary: 'Show one alert definition: its condition and channels.',
  usage: 'trace alerts show ID [--json]',
  options: { id: { type: 'string' }, json: { type: 'boolean' } },
  async run({ values, positionals }) {
    const a = await api<AlertView>(await resolveTarget(), 'GET', `/v1/alerts/${alertId(values, positionals)}`);
    print(values, a, () => renderAlert(a));
  },
};

function jsonOption(text: string, what: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    throw new UsageError(`${what} is not valid JSON`);
  }
}

export const alertsCreate: Command = {
  name: 'alerts create',
  summary: 'Create an alert definition with a webhook channel (or the whole body from a JSON file); prints its id for a DAG\'s alert_definition_id.',
  usage: 'trace alerts create --name NAME --webhook URL [--condition JSON] [--visibility private|org|role:SLUG] [--disabled] [--json | --quiet]\n' +
    '       trace alerts create --file BODY.json [--json | --quiet]   (the POST /v1/alerts body; --quiet prints only the id)',
  options: {
    name: { type: 'string' }, webhook: { type: 'string', multiple: true }, condition: { type: 'string' }, visibility: { type: 'string' },
    disabled: { type: 'boolean' }, file: { type: 'string', short: 'f' }, json: { type: 'boolean' }, quiet: { type: 'boolean', short: 'q' },
  },
  async run({ values, positionals }) {
    if (positionals.length > 0) throw new UsageError(`unexpected "${positionals[0]!.slice(0, 40)}"; use --name and --webhook (or --file)`);
    let body: unknown;
    if (values.file !== undefined) {
      if (values.name !== undefined || values.webhook !== undefined || values.condition !== undefined) throw new UsageError('give --file alone, or --name/--webhook/--condition');
      const file = String(values.file);
      body = jsonOption(await readFile(file, 'utf8').catch(() => { throw new UsageError(`cannot read ${file}`); }), file);
    } else {
      if (values.name === undefined) throw new UsageError('--name is required (or --file)');
      const hooks = (values.webhook as string[] | undefined) ?? [];
      if (hooks.length === 0) throw new UsageError('--webhook URL is required (or --file)');
      body = {
        name: String(values.name),
        condition: values.condition === undefined ? {} : jsonOption(String(values.condition), '--condition'),
        channels: hooks.map((url, i) => ({ type: 'webhook', url, ...(hooks.length > 1 ? { name: `webhook${i + 1}` } : {}) })),
        ...(values.visibility !== undefined ? { visibility: String(values.visibility) } : {}),
        ...(values.disabled ? { enabled: false } : {}),
      };
    }
    const a = await api<AlertView>(await resolveTarget(), 'POST', '/v1/alerts', body);
    if (values.quiet) process.stdout.write(`${a.id}\n`);
    else print(values, a, () => `created alert ${a.id}\n${renderAlert(a)}`);
  },
};

export const alertsDelete: Command = {
  name: 'alerts delete',
  summary: 'Delete an alert definition (its creator or an admin); its pending deliveries are canceled.',
  usage: 'trace alerts delete ID [--json]',
  options: { id: { type: 'string' }, json: { type: 'boolean' } },
  async run({ values, positionals }) {
    const id = alertId(values, positionals);
    const r = await api<{ id: string; deleted: boolean; canceled_deliveries: number }>(await resolveTarget(), 'DELETE', `/v1/alerts/${id}`);
    print(values, r, () => `deleted alert ${id}${r.canceled_deliveries ? ` (${r.canceled_deliveries} pending deliveries canceled)` : ''}`);
  },
};

const DELIVERY_STATUSES = ['Pending', 'Delivered', 'Failed', 'Canceled'];

export const alertsDeliveries: Command = {
  name: 'alerts deliveries',
  summary: 'List the deliveries of one alert definition: channel, status, attempts, last error.',
  usage: 'trace alerts deliveries ID [--status Pending|Delivered|Failed|Canceled] [--limit N] [--json]',
  options: { id: { type: 'string' }, status: { type: 'string' }, limit: { type: 'string' }, json: { type: 'boolean' } },
  async run({ values, positionals }) {
    const id = alertId(values, positionals);
    const q = new URLSearchParams();
    if (values.status !== undefined) {
      const s = DELIVERY_STATUSES.find((x) => x.toLowerCase() === String(values.status).toLowerCase());
      if (!s) throw new UsageError(`--status must be one of ${DELIVERY_STATUSES.join(', ')}`);
      q.set('status', s);
    }
    const limit = intOption(values.limit, 'limit', 1);
    if (limit !== undefined) q.set('limit', String(limit));
    const r = await api<{ alert_id: string; deliveries: DeliveryView[] }>(await resolveTarget(), 'GET', `/v1/alerts/${id}/deliveries${q.size > 0 ? `?${q}` : ''}`);
    print(values, r, () => r.deliveries.length === 0 ? 'no deliveries yet'
      : renderTable(['delivery_id', 'channel', 'status', 'attempt', 'http', 'severity', 'dedupe_key', 'error'],
        r.deliveries.map((d) => [d.delivery_id, d.channel, d.status, `${d.attempt}/${d.max_attempts}`, d.last_status_code ?? '', d.event.severity, d.event.dedupe_key, d.error_message ?? ''])));
  },
};

export const alertCommands: Command[] = [alertsList, alertsShow, alertsCreate, alertsDelete, alertsDeliveries];
