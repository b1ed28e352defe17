/**
 * DuckDB values to JSON-safe values for query responses:
 * - 8-, 16- and 32-bit integers and finite floats stay numbers; NaN and infinities become strings;
 * - BIGINT, UBIGINT, HUGEINT, UHUGEINT, BIGNUM and DECIMAL become decimal strings (no precision loss);
 * - BLOB becomes `0x`-prefixed lowercase hex;
 * - TIMESTAMP variants become RFC 3339 in UTC (`2024-01-02T03:04:05.123456Z`; a naive TIMESTAMP is
 *   read as UTC), DATE becomes `YYYY-MM-DD`, infinite values become `infinity` / `-infinity`;
 * - TIME, TIMETZ, INTERVAL, UUID, BIT, ENUM and other scalar types use DuckDB's text form;
 * - LIST and ARRAY become arrays, STRUCT an object, MAP an array of `{key, value}`, UNION
 *   `{tag, value}`, each converted recursively.
 */
import {
  DuckDBArrayValue,
  DuckDBBlobValue,
  DuckDBDateValue,
  DuckDBDecimalValue,
  DuckDBListValue,
  DuckDBMapValue,
  DuckDBStructValue,
  DuckDBTimestampMillisecondsValue,
  DuckDBTimestampNanosecondsValue,
  DuckDBTimestampSecondsValue,
  DuckDBTimestampTZValue,
  DuckDBTimestampValue,
  DuckDBUnionValue,
  DuckDBVariantValue,
  type DuckDBValue,
} from '@duckdb/node-api';

export type JsonValue = null | boolean | number | string | JsonValue[] | { [k: string]: JsonValue };

const INT64_INF = 2n ** 63n - 1n;

/** Civil date from days since 1970-01-01 (proleptic Gregorian; H. Hinnant's algorithm). */
function civilFromDays(days: number): { y: number; m: number; d: number } {
  const z = days + 719468;
  const era = Math.floor(z / 146097);
  const doe = z - era * 146097;
  const yoe = Math.floor((doe - Math.floor(doe / 1460) + Math.floor(doe / 36524) - Math.floor(doe / 146096)) / 365);
  const doy = doe - (365 * yoe + Math.floor(yoe / 4) - Math.floor(yoe / 100));
  const mp = Math.floor((5 * doy + 2) / 153);
  const d = doy - Math.floor((153 * mp + 2) / 5) + 1;
  const m = mp < 10 ? mp + 3 : mp - 9;
  return { y: era * 400 + yoe + (m <= 2 ? 1 : 0), m, d };
}

const pad = (n: number, w = 2) => String(n).padStart(w, '0');

function formatDate(days: number): string {
  const { y, m, d } = civilFromDays(days);
  const year = y < 0 ? `-${pad(-y, 4)}` : y > 9999 ? `+${y}` : pad(y, 4);
  return `${year}-${pad(m)}-${pad(d)}`;
}

/** RFC 3339 in UTC from a count of `unitsPerSecond` units since the epoch. */
function formatInstant(count: bigint, unitsPerSecond: bigint, fractionDigits: number): string {
  if (count === INT64_INF) return 'infinity';
  if (count === -INT64_INF) return '-infinity';
  const perDay = 86400n * unitsPerSecond;
  let days = count / perDay;
  let rem = count % perDay;
  if (rem < 0n) {
    rem += perDay;
    days -= 1n;
  }
  const secs = Number(rem / unitsPerSecond);
  const frac = rem % unitsPerSecond;
  const hh = Math.floor(secs / 3600);
  const mm = Math.floor((secs % 3600) / 60);
  const ss = secs % 60;
  const f = frac === 0n ? '' : `.${frac.toString().padStart(fractionDigits, '0')}`;
  return `${formatDate(Number(days))}T${pad(hh)}:${pad(mm)}:${pad(ss)}${f}Z`;
}

const HEX = Array.from({ length: 256 }, (_, i) => i.toString(16).padStart(2, '0'));

function hex(bytes: Uint8Array): string {
  let out = '0x';
  for (const b of bytes) out += HEX[b];
  return out;
}

export function toJsonValue(v: DuckDBValue): JsonValue {
  if (v === null || v === undefined) return null;
  switch (typeof v) {
    case 'boolean':
    case 'string':
      return v;
    case 'number':
      return Number.isFinite(v) ? v : Number.isNaN(v) ? 'NaN' : v > 0 ? 'Infinity' : '-Infinity';
    case 'bigint':
      return v.toString();
    default:
      break;
  }
  if (v instanceof DuckDBDecimalValue) return v.toString();
  if (v instanceof DuckDBBlobValue) return hex(v.bytes);
  if (v instanceof DuckDBDateValue) {
    if (!v.isFinite) return v.days > 0 ? 'infinity' : '-infinity';
    return formatDate(v.days);
  }
  if (v instanceof DuckDBTimestampValue) return formatInstant(v.micros, 1_000_000n, 6);
  if (v instanceof DuckDBTimestampTZValue) return formatInstant(v.micros, 1_000_000n, 6);
  if (v instanceof DuckDBTimestampMillisecondsValue) return formatInstant(v.millis, 1_000n, 3);
  if (v instanceof DuckDBTimestampSecondsValue) return formatInstant(v.seconds, 1n, 0);
  if (v instanceof DuckDBTimestampNanosecondsValue) return formatInstant(v.nanos, 1_000_000_000n, 9);
  if (v instanceof DuckDBListValue || v instanceof DuckDBArrayValue) return v.items.map(toJsonValue);
  if (v instanceof DuckDBStructValue) {
    const out: { [k: string]: JsonValue } = {};
    for (const [k, x] of Object.entries(v.entries)) out[k] = toJsonValue(x);
    return out;
  }
  if (v instanceof DuckDBMapValue) return v.entries.map((e) => ({ key: toJsonValue(e.key), value: toJsonValue(e.value) }));
  if (v instanceof DuckDBUnionValue) return { tag: v.tag, value: toJsonValue(v.value) };
  if (v instanceof DuckDBVariantValue) return toJsonValue(v.value);
  // TIME, TIMETZ, INTERVAL, UUID, BIT, GEOMETRY and anything newer: DuckDB's own text form.
  return String(v);
}
