/** Renders rows as an aligned plain-text table (what a person reads; `--json` is for scripts). */
export function renderTable(columns: string[], rows: Array<Array<unknown>>): string {
  const cell = (v: unknown): string => {
    if (v === null || v === undefined) return '';
    if (v instanceof Date) return v.toISOString();
    if (typeof v === 'object') return JSON.stringify(v);
    return String(v).replace(/\s+/g, ' ');
  };
  const text = rows.map((r) => r.map(cell));
  const widths = columns.map((c, i) => Math.min(60, Math.max(c.length, ...text.map((r) => (r[i] ?? '').length))));
  const line = (r: string[]) => r.map((v, i) => (v.length > widths[i]! ? `${v.slice(0, widths[i]! - 1)}…` : v.padEnd(widths[i]!))).join('  ').trimEnd();
  return [line(columns), line(widths.map((w) => '-'.repeat(w))), ...text.map(line)].join('\n');
}
