/**
 * The console pages: each one reads through the user API (api.ts) with the signed-in user's token
 * and renders escaped HTML (html.ts). A section the API refuses with 403 (an admin route for a
 * member) shows the refusal instead of data; the admin actions are rendered only inside sections
 * the admin routes answered.
 */
import { z } from 'zod';
import { PARAM_RE } from '../routes.js';
import { ApiError, schemas, type ApiClient } from './api.js';
import { html, href, type Safe } from './html.js';

export interface PageContext {
  api: ApiClient;
  query: URLSearchParams;
  /** The CSRF token forms of this session carry. */
  csrf: string;
}

export interface Rendered {
  title: string;
  section: string;
  body: Safe;
}

export const TASK_STATUSES = ['Queued', 'Running', 'Completed', 'Failed', 'Canceled'] as const;

const pill = (v: string) => html`<span class="pill ${v}">${v}</span>`;
const short = (id: string) => id.slice(0, 8);
const when = (v: string | null | undefined) => (v ? html`<span class="mono">${v.replace('T', ' ').replace(/\.\d+Z$/, 'Z')}</span>` : html`<span class="muted">-</span>`);
const num = (v: number | null | undefined) => (v === null || v === undefined ? '-' : v.toLocaleString('en-US'));
/** A link to a console page about `name`, or the plain name when it is not a routable name. */
const link = (segments: string[], text: string) => (segments.every((s) => PARAM_RE.test(s)) ? html`<a href="${href(segments)}">${text}</a>` : html`${text}`);

/** Renders `fn`, or the API's refusal when it answers 403 (a member on an admin route, say). */
async function guarded(fn: () => Promise<Safe>): Promise<Safe> {
  try {
    return await fn();
  } catch (e) {
    if (e instanceof ApiError && e.status === 403) return html`<p class="notice">Not available to you: ${e.message} <code>${e.code}</code></p>`;
    throw e;
  }
}

export async function overview(c: PageContext): Promise<Rendered> {
  const [dags, datasets, alerts] = await Promise.all([
    c.api.get('/v1/dags', schemas.dags), c.api.get('/v1/datasets', schemas.datasets), c.api.get('/v1/alerts', schemas.alerts),
  ]);
  const tasks = await guarded(async () => {
    const t = await c.api.get('/v1/tasks', schemas.tasks, { limit: '200' });
    const by = new Map<string, number>();
    for (const x of t.tasks) by.set(x.status, (by.get(x.status) ?? 0) + 1);
    return html`<div class="cards">${TASK_STATUSES.map((s) => html`<div class="card"><b>${num(by.get(s) ?? 0)}</b><a href="${href(['tasks'], { status: s })}">${s}</a></div>`)}</div>
<p class="muted">Of the ${num(t.tasks.length)} most recent tasks.</p>`;
  });
  const sync = await guarded(async () => {
    const s = await c.api.get('/v1/chain-sync', schemas.chainSync);
    if (s.jobs.length === 0) return html`<p class="muted">No chain sync is applied.</p>`;
    return html`<p>${s.jobs.map((j) => html`<a href="/console/chain-sync">${j.name}</a> ${pill(j.state)} `)}</p>`;
  });
  return {
    title: 'Overview',
    section: 'overview',
    body: html`<h1>Overview</h1>
<div class="cards">
<div class="card"><b>${num(dags.dags.length)}</b><a href="/console/dags">DAGs</a></div>
<div class="card"><b>${num(dags.dags.filter((d) => d.active_version !== null).length)}</b>active DAGs</div>
<div class="card"><b>${num(datasets.datasets.length)}</b><a href="/console/datasets">datasets</a></div>
<div class="card"><b>${num(alerts.alerts.length)}</b><a href="/console/alerts">alerts</a></div>
</div>
<h2>Tasks</h2>${tasks}
<h2>Chain sync</h2>${sync}`,
  };
}

export async function dagsPage(c: PageContext): Promise<Rendered> {
  const { dags } = await c.api.get('/v1/dags', schemas.dags);
  return {
    title: 'DAGs',
    section: 'dags',
    body: html`<h1>DAGs</h1>
${dags.length === 0 ? html`<p class="notice">No DAG is deployed.</p>` : ''}
${dags.map((d) => html`<h2 id="dag-${d.dag_name}">${d.dag_name} ${d.active_version ? pill('active') : html`<span class="pill">inactive</span>`}</h2>
<table><thead><tr><th>Version</th><th>YAML hash</th><th>Jobs</th><th>Deployed</th><th>Active</th></tr></thead><tbody>
${d.versions.map((v) => html`<tr><td class="mono">${v.dag_version_id}</td><td class="mono">${v.yaml_hash.slice(0, 16)}</td><td>${v.jobs}</td><td>${when(v.created_at)}</td><td>${v.active ? pill('active') : ''}</td></tr>`)}
</tbody></table>`)}`,
  };
}

export async function tasksPage(c: PageContext): Promise<Rendered> {
  const raw = c.query.get('status') ?? undefined;
  const status = z.enum(TASK_STATUSES).optional().safeParse(raw === '' ? undefined : raw);
  const filter = status.success ? status.data : undefined;
  const body = await guarded(async () => {
    const { tasks } = await c.api.get('/v1/tasks', schemas.tasks, { status: filter, limit: '200' });
    return html`<table><thead><tr><th>Task</th><th>DAG.job</th><th>Status</th><th>Attempt</th><th>Worker</th><th>Lease expires</th><th>Created</th><th>Error</th></tr></thead><tbody>
${tasks.map((t) => html`<tr><td class="mono"><a href="${href(['tasks', t.task_id])}">${short(t.task_id)}</a></td><td>${t.dag_name}.${t.job_name}</td><td>${pill(t.status)}</td>
<td>${t.attempt}/${t.max_attempts}</td><td class="mono">${t.worker_id ?? ''}</td><td>${t.status === 'Running' ? when(t.lease_expires_at) : ''}</td><td>${when(t.created_at)}</td><td class="err">${t.error_message ?? ''}</td></tr>`)}
</tbody></table><p class="muted">${num(tasks.length)} task(s), newest first (at most 200).</p>`;
  });
  return {
    title: 'Tasks',
    section: 'tasks',
    body: html`<h1>Tasks${filter ? html` (${filter})` : ''}</h1>
<nav class="filter">Status: <a href="/console/tasks" class="${filter ? '' : 'on'}">all</a>${TASK_STATUSES.map((s) => html`<a href="${href(['tasks'], { status: s })}">${s}</a>`)}</nav>
${!status.success ? html`<p class="notice">Unknown status filter; showing all tasks.</p>` : ''}
${body}`,
  };
}

export async function taskPage(c: PageContext, id: string): Promise<Rendered> {
  const body = await guarded(async () => {
    const t = (await c.api.get(`/v1/tasks/${id}`, schemas.tasks.shape.tasks.element));
    return html`<table><tbody>
<tr><th>DAG.job</th><td>${t.dag_name}.${t.job_name}</td></tr>
<tr><th>Status</th><td>${pill(t.status)}${t.waiting_on ? html` waiting on ${t.waiting_on}` : ''}</td></tr>
<tr><th>Attempt</th><td>${t.attempt} of ${t.max_attempts}</td></tr>
<tr><th>Lease</th><td>${t.status === 'Running' && t.worker_id ? html`<span class="mono">${t.worker_id}</span> until ${when(t.lease_expires_at)}` : html`<span class="muted">none</span>`}</td></tr>
<tr><th>Next retry</th><td>${when(t.next_retry_at)}</td></tr>
<tr><th>Created / started / completed</th><td>${when(t.created_at)} / ${when(t.started_at)} / ${when(t.completed_at)}</td></tr>
<tr><th>Error</th><td class="err">${t.error_message ?? ''}</td></tr>
<tr><th>Trigger</th><td><code>${JSON.stringify(t.trigger)}</code></td></tr>
<tr><th>Inputs</th><td><code>${JSON.stringify(t.inputs)}</code></td></tr>
</tbody></table>
<h2>Attempts</h2>
<table><thead><tr><th>#</th><th>Status</th><th>Worker</th><th>Started</th><th>Finished</th><th>Error</th></tr></thead><tbody>
${t.attempts.map((a) => html`<tr><td>${a.attempt}</td><td>${pill(a.status)}</td><td class="mono">${a.worker_id ?? ''}</td><td>${when(a.started_at)}</td><td>${when(a.finished_at)}</td><td class="err">${a.error_message ?? ''}</td></tr>`)}
</tbody></table>`;
  });
  return { title: `Task ${short(id)}`, section: 'tasks', body: html`<h1>Task <span class="mono">${id}</span></h1>${body}` };
}

export async function datasetsPage(c: PageContext): Promise<Rendered> {
  const { datasets } = await c.api.get('/v1/datasets', schemas.datasets);
  return {
    title: 'Datasets',
    section: 'datasets',
    body: html`<h1>Datasets</h1>
<table><thead><tr><th>Name</th><th>Kind</th><th>Produced by</th><th>Current version</th><th>Updated</th></tr></thead><tbody>
${datasets.map((d) => html`<tr><td>${link(['datasets', d.name], d.name)}</td><td>${d.kind}</td>
<td>${d.producer ? html`${d.producer.dag_name}.${d.producer.job_name} #${d.producer.output_index}` : html`<span class="muted">-</span>`}</td>
<td class="mono">${d.current_version ?? '-'}</td><td>${when(d.updated_at)}</td></tr>`)}
</tbody></table>`,
  };
}

export async function datasetPage(c: PageContext, name: string): Promise<Rendered> {
  const d = await c.api.get(`/v1/datasets/${name}/versions`, schemas.datasetVersions, { limit: '100' });
  return {
    title: name,
    section: 'datasets',
    body: html`<h1>Dataset ${name}</h1>
<p class="muted mono">${d.dataset_uuid}</p>
${d.versions.length === 0 ? html`<p class="notice">No version yet.</p>` : ''}
${d.versions.map((v) => html`<h2 class="mono">${v.dataset_version} ${v.current ? pill('active') : ''}</h2>
<p>Created ${when(v.created_at)}${v.config_hash ? html`, config <span class="mono">${v.config_hash.slice(0, 24)}</span>` : ''}${v.range_start !== null ? html`, blocks ${num(v.range_start)} to ${num(v.range_end)}` : ''}${v.storage_location ? html`, at <span class="mono">${v.storage_location}</span>` : ''}</p>
${v.partitions.length === 0 ? html`<p class="muted">No partitions recorded.</p>` : html`<table><thead><tr><th>Partition</th><th>Rows</th><th>Bytes</th><th>Materialized</th><th>Produced by task</th><th>From inputs</th></tr></thead><tbody>
${v.partitions.map((p) => html`<tr><td class="mono">${p.partition_key}</td><td>${num(p.row_count)}</td><td>${num(p.bytes)}</td><td>${when(p.materialized_at)}</td>
<td>${p.producer ? html`<a class="mono" href="${href(['tasks', p.producer.task_id])}">${short(p.producer.task_id)}</a> ${p.producer.dag_name}.${p.producer.job_name}${p.producer.attempt ? html` (attempt ${p.producer.attempt})` : ''} ${pill(p.producer.status)}` : html`<span class="muted">-</span>`}</td>
<td>${p.producer && p.producer.inputs.length > 0
    ? p.producer.inputs.map((i) => html`<div>${i.dataset_name ? link(['datasets', i.dataset_name], i.dataset_name) : html`<span class="mono">${i.dataset_uuid}</span>`}${i.partition_key ? html` [${i.partition_key}]` : ''}${i.dataset_version ? html` <span class="mono muted">${short(i.dataset_version)}</span>` : ''}</div>`)
    : html`<span class="muted">-</span>`}</td></tr>`)}
</tbody></table>`}`)}`,
  };
}

export async function chainSyncPage(c: PageContext): Promise<Rendered> {
  const body = await guarded(async () => {
    const { jobs } = await c.api.get('/v1/chain-sync', schemas.chainSync);
    if (jobs.length === 0) return html`<p class="notice">No chain sync is applied.</p>`;
    return html`${jobs.map((j) => {
      const heads = (j.head ?? []).map((h) => h.head_block).filter((b): b is number => b !== null);
      const head = heads.length > 0 ? Math.max(...heads) : null;
      return html`<h2>${j.name} <span class="muted">chain ${j.chain_id}</span> ${pill(j.state)}${j.paused ? ' paused' : ''}</h2>
${j.reason ? html`<p class="err">${j.reason}</p>` : ''}
<p>Head: ${head === null ? html`<span class="muted">not observed</span>` : html`<b>${num(head)}</b>`}${(j.head ?? []).map((h) => html` <span class="muted">(${h.rpc_pool}: ${num(h.head_block)}${h.age_seconds !== null ? `, ${h.age_seconds}s ago` : ''})</span>`)}</p>
<table><thead><tr><th>Stream</th><th>Dataset</th><th>State</th><th>Committed through</th><th>Lag (blocks)</th><th>Planned to</th><th>In flight</th><th>Rows</th><th>Blocks/s</th><th>Last error</th></tr></thead><tbody>
${j.streams.map((s) => html`<tr><td>${s.dataset_key}</td><td>${link(['datasets', s.dataset_name], s.dataset_name)}</td><td>${pill(s.state)}</td><td>${num(s.committed_through)}</td>
<td>${head === null ? '-' : num(Math.max(0, head - s.committed_through))}</td><td>${num(s.target ?? s.next_block)}</td>
<td>${s.inflight.total}${s.inflight.retrying > 0 ? html` (${s.inflight.retrying} retrying)` : ''}${s.inflight.gave_up > 0 ? html` <span class="err">${s.inflight.gave_up} gave up</span>` : ''}</td>
<td>${num(s.rows)}</td><td>${s.rate_blocks_per_second.toFixed(1)}</td><td class="err">${s.blocked_reason ?? s.last_error?.message ?? ''}</td></tr>`)}
</tbody></table>`;
    })}`;
  });
  return { title: 'Chain sync', section: 'chain-sync', body: html`<h1>Chain sync</h1>${body}` };
}

export async function alertsPage(c: PageContext): Promise<Rendered> {
  const { alerts } = await c.api.get('/v1/alerts', schemas.alerts);
  return {
    title: 'Alerts',
    section: 'alerts',
    body: html`<h1>Alerts</h1>
<table><thead><tr><th>Name</th><th>Enabled</th><th>Visibility</th><th>Channels</th></tr></thead><tbody>
${alerts.map((a) => html`<tr><td><a href="${href(['alerts', a.id])}">${a.name}</a></td><td>${a.enabled ? 'yes' : 'no'}</td><td>${a.visibility}</td>
<td>${a.channels.map((ch) => html`<span class="pill">${ch.name} (${ch.type})</span> `)}</td></tr>`)}
</tbody></table>`,
  };
}

export async function alertPage(c: PageContext, id: string): Promise<Rendered> {
  const a = await c.api.get(`/v1/alerts/${id}`, schemas.alert);
  const { deliveries } = await c.api.get(`/v1/alerts/${id}/deliveries`, schemas.deliveries, { limit: '200' });
  return {
    title: a.name,
    section: 'alerts',
    body: html`<h1>Alert ${a.name}</h1>
<h2>Deliveries</h2>
<table><thead><tr><th>Event</th><th>Severity</th><th>Channel</th><th>Status</th><th>Attempt</th><th>HTTP</th><th>Created</th><th>Delivered</th><th>Error</th></tr></thead><tbody>
${deliveries.map((d) => html`<tr><td class="mono">${d.event.dedupe_key}</td><td>${d.event.severity}</td><td>${d.channel}</td><td>${pill(d.status)}</td><td>${d.attempt}/${d.max_attempts}</td>
<td>${d.last_status_code ?? ''}</td><td>${when(d.created_at)}</td><td>${when(d.delivered_at)}</td><td class="err">${d.error_message ?? ''}</td></tr>`)}
</tbody></table>${deliveries.length === 0 ? html`<p class="muted">No deliveries yet.</p>` : ''}`,
  };
}

export async function deadLettersPage(c: PageContext): Promise<Rendered> {
  const replayed = c.query.get('replayed');
  const body = await guarded(async () => {
    const { queue, dead_letters } = await c.api.get('/v1/sink/dead-letters', schemas.deadLetters, { limit: '200' });
    return html`<p class="muted">Queue <span class="mono">${queue}</span>: ${num(dead_letters.length)} dead letter(s).</p>
<table><thead><tr><th>Id</th><th>Receives</th><th>Dead since</th><th>Last error</th><th>Message</th><th></th></tr></thead><tbody>
${dead_letters.map((d) => html`<tr><td class="mono">${d.id}</td><td>${d.receive_count}</td><td>${when(d.dead_at)}</td><td class="err">${d.last_error ?? ''}</td><td><code>${JSON.stringify(d.message)}</code></td>
<td>${PARAM_RE.test(d.id) ? html`<form class="inline" method="post" action="${href(['dead-letters', d.id, 'replay'])}"><input type="hidden" name="csrf" value="${c.csrf}"><button type="submit">Replay</button></form>` : ''}</td></tr>`)}
</tbody></table>`;
  });
  return {
    title: 'Dead letters',
    section: 'dead-letters',
    body: html`<h1>Sink dead letters</h1>${replayed ? html`<p class="notice">Dead letter <span class="mono">${replayed}</span> was put back on the queue.</p>` : ''}${body}`,
  };
}
