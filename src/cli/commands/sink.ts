import type { Command } from '../args.js';
import { UsageError, intOption } from '../args.js';
import { api, resolveTarget } from '../client.js';
import { renderTable } from '../table.js';
import { serveUntilSignal } from '../serve.js';


export const sinkCmd: Command = {
  name: 'sink',
  summary: 'Run the buffer sink: drains the buffers queue into Postgres data (needs TRACE_DATA_DATABASE_URL, the queue database, TRACE_WORKER_TOKEN).',
  usage: 'trace sink [--listen HOST:PORT]   (or: trace sink dlq list | trace sink dlq replay ID; --listen or TRACE_SINK_LISTEN: the ops listener, /healthz /readyz /metrics; off by default)',
  options: { listen: { type: 'string' } },
  async run({ values, positionals }) {
    if (positionals.length > 0) throw new UsageError(`unexpected "${positionals[0]!.slice(0, 40)}" (did you mean trace sink dlq list|replay?)`);
    const { runSinkProcess } = await import('../../sink/main.js');
    const handle = await runSinkProcess(process.env, values.listen !== undefined ? { listen: String(values.listen) } : {});
    if (handle.opsUrl) process.stderr.write(`sink ops listening on ${handle.opsUrl}\n`);
    return serveUntilSignal('sink', () => handle.stop());
  },
};

interface DeadLetterView {
  id: string;
  receive_count: number;
  dead_at: string;
  last_error: string | null;
  message: { publish_id?: string; task_id?: string; attempt?: number; dedupe_scope?: string; batch_uri?: string };
}

export const sinkDlqList: Command = {
  name: 'sink dlq list',
  summary: 'List buffer messages that exceeded the receive limit (admin). Rejection reasons are in buffer_rejections and the sink log.',
  usage: 'trace sink dlq list [--limit N] [--json]',
  options: { limit: { type: 'string' }, json: { type: 'boolean' } },
  async run({ values, positionals }) {
    if (positionals.length > 0) throw new UsageError('takes no arguments');
    const limit = intOption(values.limit, 'limit', 1) ?? 100;
    const r = await api<{ queue: string; dead_letters: DeadLetterView[] }>(await resolveTarget(), 'GET', `/v1/sink/dead-letters?limit=${limit}`);
    if (values.json) {
      process.stdout.write(`${JSON.stringify(r, null, 2)}\n`);
      return;
    }
    if (r.dead_letters.length === 0) {
      process.stdout.write('no dead letters\n');
      return;
    }
    process.stdout.write(`${renderTable(
      ['id', 'dataset', 'publish_id', 'task_id', 'attempt', 'receives', 'dead_at'],
      r.dead_letters.map((d) => [d.id, d.message.dedupe_scope ?? '', d.message.publish_id ?? '', d.message.task_id ?? '', d.message.attempt ?? '', d.receive_count, d.dead_at]),
    )}\n`);
  },
};

export const sinkDlqReplay: Command = {
  name: 'sink dlq replay',
  summary: 'Put one dead-lettered buffer message back on the queue with a fresh receive count (admin). Fix the cause first.',
  usage: 'trace sink dlq replay ID [--json]',
  options: { json: { type: 'boolean' } },
  async run({ values, positionals }) {
    const id = positionals[0];
    if (!id || positionals.length > 1) throw new UsageError('expected exactly one dead letter ID (see trace sink dlq list)');
    if (!/^[A-Za-z0-9_-]{1,128}$/.test(id)) throw new UsageError('ID must be a dead letter id from trace sink dlq list');
    const r = await api<{ ok: true; id: string; queue: string }>(await resolveTarget(), 'POST', `/v1/sink/dead-letters/${encodeURIComponent(id)}/replay`);
    process.stdout.write(values.json ? `${JSON.stringify(r, null, 2)}\n` : `replayed ${r.id} onto ${r.queue}\n`);
  },
};

export const sinkCommands: Command[] = [sinkCmd, sinkDlqList, sinkDlqReplay];
