/**
 * HTML for the console: one escaping function every interpolated value goes through, a tagged
 * template that applies it, and the page frame. No client JavaScript: the Content-Security-Policy
 * forbids every script, and the one style sheet is served from the console itself.
 */
import { createHash } from 'node:crypto';

const ESCAPES: Record<string, string> = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;', '`': '&#96;' };

/** Text for an HTML text node or a quoted attribute value. */
export function escapeHtml(v: unknown): string {
  return String(v ?? '').replace(/[&<>"'`]/g, (c) => ESCAPES[c]!);
}

/** Markup that is already safe (built by `html`). */
export class Safe {
  constructor(readonly value: string) {}
  toString(): string {
    return this.value;
  }
}

type Part = Safe | string | number | boolean | null | undefined | Date | readonly Part[];

function render(p: Part): string {
  if (p instanceof Safe) return p.value;
  if (Array.isArray(p)) return p.map(render).join('');
  if (p === null || p === undefined || p === false) return '';
  if (p instanceof Date) return escapeHtml(p.toISOString());
  return escapeHtml(p);
}

/** `html\`<td>${name}</td>\``: every value is escaped unless it is Safe (itself built by html). */
export function html(strings: TemplateStringsArray, ...values: Part[]): Safe {
  let out = strings[0]!;
  for (let i = 0; i < values.length; i++) out += render(values[i]!) + strings[i + 1]!;
  return new Safe(out);
}

/** A console URL with path segments percent-encoded and an optional query string. */
export function href(segments: readonly string[], query: Record<string, string | undefined> = {}): string {
  const path = `/console${segments.map((s) => `/${encodeURIComponent(s)}`).join('')}`;
  const qs = new URLSearchParams(Object.entries(query).filter((e): e is [string, string] => e[1] !== undefined)).toString();
  return qs === '' ? path : `${path}?${qs}`;
}

export const STYLESHEET = `
body{font:14px/1.45 system-ui,sans-serif;margin:0;color:#1d2430;background:#f6f7f9}
header{background:#1d2430;color:#fff;padding:.6em 1.2em;display:flex;gap:1.2em;align-items:center;flex-wrap:wrap}
header a{color:#cfe3ff;text-decoration:none}header a.on{color:#fff;font-weight:600}
header .who{margin-left:auto;color:#aab}header form{display:inline}
main{padding:1em 1.4em;max-width:1200px}
h1{font-size:1.35em;margin:.2em 0 .6em}h2{font-size:1.1em;margin:1.2em 0 .4em}
table{border-collapse:collapse;background:#fff;width:100%;margin:.4em 0 1em}
th,td{border:1px solid #dde1e7;padding:.3em .55em;text-align:left;vertical-align:top}
th{background:#eef1f5;font-weight:600}
code,.mono{font-family:ui-monospace,monospace;font-size:.92em;word-break:break-all}
.pill{display:inline-block;padding:0 .5em;border-radius:1em;background:#e4e8ee;font-size:.85em}
.Completed,.Delivered,.caught_up,.running{background:#d6f5dd}.Failed,.halted,.blocked{background:#fbd9d9}
.Running,.Pending,.planning{background:#fff1c7}.active{background:#cfe3ff}
.err{color:#a40000;white-space:pre-wrap}.muted{color:#667}
.notice{background:#fff;border:1px solid #dde1e7;padding:.8em 1em;margin:.6em 0}
.cards{display:flex;gap:1em;flex-wrap:wrap}.card{background:#fff;border:1px solid #dde1e7;padding:.8em 1.2em;min-width:10em}
.card b{display:block;font-size:1.6em}
form.inline{display:inline}button{font:inherit;padding:.2em .8em;cursor:pointer}
input[type=password],input[type=text]{font:inherit;width:36em;max-width:100%;padding:.3em}
nav.filter a{margin-right:.8em}
`;

export const STYLESHEET_ETAG = `"${createHash('sha256').update(STYLESHEET).digest('base64url').slice(0, 16)}"`;

/** The console's policy: nothing but its own style sheet, images from itself, forms to itself. */
export const CONTENT_SECURITY_POLICY =
  "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

export const SECURITY_HEADERS: Record<string, string> = {
  'content-security-policy': CONTENT_SECURITY_POLICY,
  'x-content-type-options': 'nosniff',
  'x-frame-options': 'DENY',
  // not no-referrer: with it browsers send `Origin: null` on form posts, and the same-origin check needs the origin
  'referrer-policy': 'same-origin',
  'cache-control': 'no-store',
};

export interface Frame {
  title: string;
  /** Which navigation entry is current. */
  section: string;
  /** The signed-in user and the logout form's CSRF token; absent on the login page. */
  user?: { sub: string; csrf: string };
}

const NAV: Array<[section: string, label: string, path: string[]]> = [
  ['overview', 'Overview', []],
  ['dags', 'DAGs', ['dags']],
  ['tasks', 'Tasks', ['tasks']],
  ['datasets', 'Datasets', ['datasets']],
  ['chain-sync', 'Chain sync', ['chain-sync']],
  ['alerts', 'Alerts', ['alerts']],
  ['dead-letters', 'Dead letters', ['dead-letters']],
];

export function page(f: Frame, body: Safe): string {
  const nav = f.user
    ? html`${NAV.map(([s, label, path]) => html`<a href="${href(path)}" class="${s === f.section ? 'on' : ''}">${label}</a>`)}
<span class="who">${f.user.sub}</span>
<form method="post" action="/console/logout"><input type="hidden" name="csrf" value="${f.user.csrf}"><button type="submit">Sign out</button></form>`
    : html``;
  return `<!doctype html>
${html`<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>${f.title} · Trace console</title><link rel="stylesheet" href="/console/static/console.css"></head>
<body><header><strong>Trace</strong>${nav}</header><main>${body}</main></body></html>`.value}
`;
}
