/**
 * Input edge filters (ADR 0007): a `where` map of column -> value or list of values, AND across
 * columns, a list meaning membership (IN). Pure rules shared by the deploy-time check against a
 * known upstream schema (src/dispatcher/dags.ts) and the read-time filter the query executor
 * builds (src/query/executor/engine.ts), so both accept exactly the same values for a column.
 */

export type FilterValue = string | number | boolean;
export type InputFilter = Record<string, FilterValue | FilterValue[]>;

/** At most this many columns in one filter, and values in one list. */
export const INPUT_FILTER_LIMITS = { columns: 64, values: 100, stringMax: 256 } as const;

/** Column names a filter may name (the DAG's column-name form). */
export const FILTER_COLUMN_RE = /^[A-Za-z_][A-Za-z0-9_]{0,62}$/;

export type ColumnClass = 'integer' | 'unsigned' | 'float' | 'string' | 'blob' | 'boolean' | 'other';

/** How a DuckDB type name is compared with a filter value. */
export function columnClass(duckdbType: string): ColumnClass {
  const t = duckdbType.trim().toUpperCase();
  if (/^(UTINYINT|USMALLINT|UINTEGER|UBIGINT|UHUGEINT)$/.test(t)) return 'unsigned';
  if (/^(TINYINT|SMALLINT|INTEGER|INT|BIGINT|HUGEINT)$/.test(t)) return 'integer';
  if (/^(FLOAT|REAL|DOUBLE)$/.test(t) || t.startsWith('DECIMAL')) return 'float';
  if (t === 'VARCHAR' || t === 'TEXT' || t === 'STRING') return 'string';
  if (t === 'BLOB' || t === 'BYTEA') return 'blob';
  if (t === 'BOOLEAN' || t === 'BOOL') return 'boolean';
  return 'other';
}

const INT_STRING_RE = /^-?[0-9]{1,39}$/;
const UINT_STRING_RE = /^[0-9]{1,39}$/;
export const HEX_BYTES_RE = /^0x(?:[0-9a-fA-F]{2})*$/;

/** Why `value` cannot be compared with a column of `duckdbType`, or undefined when it can. */
export function filterValueProblem(duckdbType: string, value: FilterValue): string | undefined {
  const cls = columnClass(duckdbType);
  switch (cls) {
    case 'integer':
      return (typeof value === 'number' && Number.isSafeInteger(value)) || (typeof value === 'string' && INT_STRING_RE.test(value))
        ? undefined : `must be an integer (the column is ${duckdbType})`;
    case 'unsigned':
      return (typeof value === 'number' && Number.isSafeInteger(value) && value >= 0) || (typeof value === 'string' && UINT_STRING_RE.test(value))
        ? undefined : `must be a non-negative integer (the column is ${duckdbType})`;
    case 'float':
      return typeof value === 'number' && Number.isFinite(value) ? undefined : `must be a number (the column is ${duckdbType})`;
    case 'string':
      return typeof value === 'string' ? undefined : `must be a string (the column is ${duckdbType}); quote it`;
    case 'blob':
      return typeof value === 'string' && HEX_BYTES_RE.test(value) ? undefined : `must be 0x-prefixed hex bytes (the column is ${duckdbType})`;
    case 'boolean':
      return typeof value === 'boolean' ? undefined : `must be true or false (the column is ${duckdbType})`;
    case 'other':
      return typeof value === 'boolean' ? `must be a string or a number (the column is ${duckdbType})` : undefined;
  }
}

/** Structural check of a filter from outside (a token claim, an IPC message): undefined when well formed. */
export function inputFilterShapeProblem(where: unknown): string | undefined {
  if (typeof where !== 'object' || where === null || Array.isArray(where)) return 'must be a map';
  const keys = Object.keys(where);
  if (keys.length === 0 || keys.length > INPUT_FILTER_LIMITS.columns) return `must name 1 to ${INPUT_FILTER_LIMITS.columns} columns`;
  const scalar = (v: unknown) => (typeof v === 'string' && v.length <= INPUT_FILTER_LIMITS.stringMax)
    || (typeof v === 'number' && Number.isFinite(v)) || typeof v === 'boolean';
  for (const k of keys) {
    if (!FILTER_COLUMN_RE.test(k)) return `column ${JSON.stringify(k)} is not a column name`;
    const v = (where as Record<string, unknown>)[k];
    if (Array.isArray(v)) {
      if (v.length === 0 || v.length > INPUT_FILTER_LIMITS.values || !v.every(scalar)) return `${k}: must be a value or 1 to ${INPUT_FILTER_LIMITS.values} values`;
    } else if (!scalar(v)) return `${k}: must be a string, number or boolean`;
  }
  return undefined;
}
