/**
 * Stage 1 of the SQL gate (specs/query_sql_gating.md): a comment-, string- and
 * quoted-identifier-aware scanner. Pure TypeScript with no engine, so the Query Service can run
 * it on its own thread before a query is handed to an executor, and the executor runs it again
 * as part of the full gate (gate.ts). Size cap, one statement, first keyword SELECT or WITH, no
 * denylisted keywords or reader-function call sites outside literals, no string-literal
 * relations, ASCII only outside string literals, no dollar quoting.
 *
 * Rejections are TraceError 400 `SQL_REJECTED` whose message names the rule that fired and
 * never echoes the SQL (only fixed vocabulary such as a denied keyword, and byte positions).
 */
import { TraceError } from '../../core/errors.js';

export const GATE_LIMITS = {
  /** Largest accepted SQL text, in UTF-8 bytes. */
  maxSqlBytes: 100 * 1024,
  /** Deepest accepted parenthesis nesting. */
  maxParenDepth: 100,
} as const;

/** The relation name trusted code attaches the granted dataset under. */
export const DATASET_RELATION = 'dataset';

export type GateRule =
  | 'empty'
  | 'too_large'
  | 'non_ascii'
  | 'control_character'
  | 'unterminated'
  | 'dollar_quoting'
  | 'unicode_escape'
  | 'unsupported_character'
  | 'multiple_statements'
  | 'unbalanced_parentheses'
  | 'too_deep'
  | 'not_select'
  | 'denied_keyword'
  | 'denied_function'
  | 'string_literal_relation'
  | 'parse_error'
  | 'statement_count'
  | 'table_reference'
  | 'table_function'
  | 'qualified_reference'
  | 'time_travel'
  | 'cte_name'
  | 'unknown_function'
  | 'unsupported_construct';

export class SqlRejected extends TraceError {
  readonly rule: GateRule;
  constructor(rule: GateRule, detail: string) {
    super(400, 'SQL_REJECTED', `SQL rejected (rule ${rule}): ${detail}`, { extra: { rule } });
    this.name = 'SqlRejected';
    this.rule = rule;
  }
}

export const reject = (rule: GateRule, detail: string): never => {
  throw new SqlRejected(rule, detail);
};

/** Keywords that start or belong to statements other than a read-only SELECT. */
export const DENIED_KEYWORDS: ReadonlySet<string> = new Set([
  'INSERT', 'UPDATE', 'DELETE', 'MERGE', 'UPSERT', 'CREATE', 'DROP', 'ALTER', 'ATTACH', 'DETACH',
  'COPY', 'EXPORT', 'IMPORT', 'INSTALL', 'LOAD', 'PRAGMA', 'SET', 'RESET', 'CALL', 'CHECKPOINT',
  'VACUUM', 'ANALYZE', 'USE', 'TRUNCATE', 'GRANT', 'REVOKE', 'BEGIN', 'COMMIT', 'ROLLBACK',
  'ABORT', 'PREPARE', 'EXECUTE', 'DEALLOCATE', 'DESCRIBE', 'SHOW', 'SUMMARIZE', 'EXPLAIN',
]);

const DENIED_FUNCTIONS: ReadonlySet<string> = new Set([
  'glob', 'getenv', 'current_setting', 'getvariable', 'query', 'query_table', 'sniff_csv',
  'load', 'install', 'current_query', 'current_query_id', 'write_log', 'pg_sleep', 'sleep',
  'json_serialize_sql', 'json_deserialize_sql', 'json_execute_serialized_sql', 'json_serialize_plan',
  'which_secret', 'checkpoint', 'force_checkpoint', 'summary', 'import_database', 'export_database',
  'from_substrait', 'get_substrait', 'get_substrait_json', 'test_all_types', 'enable_logging',
  'disable_logging', 'truncate_duckdb_logs', 'set_variable', 'copy_database',
]);
const DENIED_FUNCTION_PREFIXES = [
  'read_', 'pragma_', 'duckdb_', 'parquet_', 'sqlite_', 'postgres_', 'mysql_', 'iceberg_', 'delta_',
  'http', 's3_', 'arrow', 'json_execute', 'pg_get_', 'ducklake_',
];
const DENIED_FUNCTION_SUFFIXES = ['_scan', '_scan_dumb'];

/** True for reader, scanner, file, settings, metadata and other functions the gate never allows. */
export function isDeniedFunctionName(name: string): boolean {
  const n = name.toLowerCase();
  if (DENIED_FUNCTIONS.has(n)) return true;
  return DENIED_FUNCTION_PREFIXES.some((p) => n.startsWith(p)) || DENIED_FUNCTION_SUFFIXES.some((s) => n.endsWith(s));
}

// ---------------------------------------------------------------------------------------------
// Stage 1: scanner
// ---------------------------------------------------------------------------------------------

type TokKind = 'word' | 'qident' | 'string' | 'number' | 'punct';
interface Tok {
  kind: TokKind;
  /** Upper-cased word, unquoted identifier text, or the punctuation character. */
  text: string;
  start: number;
  end: number;
}

export interface ScanResult {
  /** The statement without a trailing `;` and without trailing comments or whitespace. */
  body: string;
}

const isWs = (c: number) => c === 0x20 || c === 0x09 || c === 0x0a || c === 0x0d || c === 0x0c || c === 0x0b;
const isWordStart = (c: number) => (c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a) || c === 0x5f;
const isWordChar = (c: number) => isWordStart(c) || (c >= 0x30 && c <= 0x39);
const isDigit = (c: number) => c >= 0x30 && c <= 0x39;

function checkAsciiSpan(sql: string, from: number, to: number, what: string): void {
  for (let i = from; i < to; i++) {
    const c = sql.charCodeAt(i);
    if (c > 0x7e) reject('non_ascii', `non-ASCII character in ${what} at position ${i}; only string literals may contain non-ASCII text`);
    if (c < 0x20 && !isWs(c)) reject('control_character', `control character at position ${i}`);
  }
}

/** Lexes `sql` the way DuckDB's (Postgres-derived) lexer does, refusing anything ambiguous. */
function tokenize(sql: string): Tok[] {
  const toks: Tok[] = [];
  const n = sql.length;
  let i = 0;
  while (i < n) {
    const c = sql.charCodeAt(i);
    if (isWs(c)) { i++; continue; }
    // -- line comment
    if (c === 0x2d && sql.charCodeAt(i + 1) === 0x2d) {
      let j = i + 2;
      while (j < n && sql.charCodeAt(j) !== 0x0a && sql.charCodeAt(j) !== 0x0d) j++;
      checkAsciiSpan(sql, i, j, 'a comment');
      i = j;
      continue;
    }
    // /* block comment */ (nests, as in Postgres and DuckDB)
    if (c === 0x2f && sql.charCodeAt(i + 1) === 0x2a) {
      let depth = 1;
      let j = i + 2;
      while (j < n && depth > 0) {
        if (sql.charCodeAt(j) === 0x2f && sql.charCodeAt(j + 1) === 0x2a) { depth++; j += 2; continue; }
        if (sql.charCodeAt(j) === 0x2a && sql.charCodeAt(j + 1) === 0x2f) { depth--; j += 2; continue; }
        j++;
      }
      if (depth > 0) reject('unterminated', `unterminated block comment starting at position ${i}`);
      checkAsciiSpan(sql, i, j, 'a comment');
      i = j;
      continue;
    }
    if (c === 0x27) { i = readString(sql, i, false, toks); continue; }
    if (c === 0x22) {
      let j = i + 1;
      let text = '';
      for (;;) {
        if (j >= n) reject('unterminated', `unterminated quoted identifier starting at position ${i}`);
        const d = sql.charCodeAt(j);
        if (d === 0x22) {
          if (sql.charCodeAt(j + 1) === 0x22) { text += '"'; j += 2; continue; }
          break;
        }
        text += sql[j];
        j++;
      }
      checkAsciiSpan(sql, i, j + 1, 'a quoted identifier');
      toks.push({ kind: 'qident', text, start: i, end: j + 1 });
      i = j + 1;
      continue;
    }
    if (isWordStart(c)) {
      let j = i + 1;
      while (j < n && isWordChar(sql.charCodeAt(j))) j++;
      const word = sql.slice(i, j);
      const next = sql.charCodeAt(j);
      if (next === 0x27 && (word === 'e' || word === 'E')) { i = readString(sql, j, true, toks, i); continue; }
      if (next === 0x27 && /^[xXbBnN]$/.test(word)) { i = readString(sql, j, false, toks, i); continue; }
      if (next === 0x26 && (word === 'u' || word === 'U')) reject('unicode_escape', `unicode escape strings or identifiers (U&) are not allowed (position ${i})`);
      toks.push({ kind: 'word', text: word.toUpperCase(), start: i, end: j });
      i = j;
      continue;
    }
    if (isDigit(c) || (c === 0x2e && isDigit(sql.charCodeAt(i + 1)))) {
      let j = i + 1;
      while (j < n && (isWordChar(sql.charCodeAt(j)) || sql.charCodeAt(j) === 0x2e)) j++;
      toks.push({ kind: 'number', text: sql.slice(i, j), start: i, end: j });
      i = j;
      continue;
    }
    if (c === 0x24) reject('dollar_quoting', `dollar-quoted strings and $ parameters are not allowed (position ${i})`);
    if (c > 0x7e) reject('non_ascii', `non-ASCII character at position ${i}; only string literals may contain non-ASCII text`);
    if (c < 0x20) reject('control_character', `control character at position ${i}`);
    if (c === 0x60 || c === 0x5c) reject('unsupported_character', `unsupported character ${c === 0x60 ? 'backtick' : 'backslash'} at position ${i}`);
    toks.push({ kind: 'punct', text: sql[i]!, start: i, end: i + 1 });
    i++;
  }
  return toks;
}

/** Reads a '...' literal starting at the quote `q`; `escapes` for E'...' (backslash escapes). */
function readString(sql: string, q: number, escapes: boolean, toks: Tok[], tokenStart = q): number {
  const n = sql.length;
  let j = q + 1;
  for (;;) {
    if (j >= n) reject('unterminated', `unterminated string literal starting at position ${tokenStart}`);
    const d = sql.charCodeAt(j);
    if (escapes && d === 0x5c) { j += 2; continue; }
    if (d === 0x27) {
      if (sql.charCodeAt(j + 1) === 0x27) { j += 2; continue; }
      break;
    }
    if (d === 0) reject('control_character', `NUL character inside a string literal at position ${j}`);
    j++;
  }
  toks.push({ kind: 'string', text: '', start: tokenStart, end: j + 1 });
  return j + 1;
}

/**
 * Words that may precede a `(` without making it a function call. A string right after FROM is a
 * relation unless FROM sits inside a call such as `extract(year FROM '...')` or `trim(x FROM '..')`.
 */
const NON_CALL_WORDS = new Set([
  'FROM', 'JOIN', 'IN', 'AS', 'EXISTS', 'ON', 'USING', 'SELECT', 'WHERE', 'AND', 'OR', 'NOT', 'ANY',
  'ALL', 'SOME', 'LATERAL', 'VALUES', 'WITH', 'RECURSIVE', 'MATERIALIZED', 'UNION', 'EXCEPT',
  'INTERSECT', 'BY', 'HAVING', 'THEN', 'ELSE', 'WHEN', 'CASE', 'IS', 'LIKE', 'ILIKE', 'OVER',
  'FILTER', 'WINDOW', 'QUALIFY', 'LIMIT', 'OFFSET', 'BETWEEN', 'DISTINCT', 'PIVOT', 'UNPIVOT', 'FOR',
  'RETURNING', 'GLOB', 'SIMILAR', 'TO', 'ORDER', 'GROUP',
]);

/** Stage 1. Pure and synchronous; throws SqlRejected. */
export function scanSql(sql: string): ScanResult {
  if (typeof sql !== 'string') reject('empty', 'SQL must be a string');
  if (Buffer.byteLength(sql, 'utf8') > GATE_LIMITS.maxSqlBytes) reject('too_large', `SQL is larger than ${GATE_LIMITS.maxSqlBytes} bytes`);
  const toks = tokenize(sql);
  // Statement structure: one `;` may end the statement; only comments and whitespace may follow
  // it. An empty statement counts as a statement (`SELECT 1;;` is two), as in the reference gate.
  const semi = toks.findIndex((t) => t.kind === 'punct' && t.text === ';');
  if (semi >= 0 && semi < toks.length - 1) {
    reject('multiple_statements', 'only one statement is allowed (a single `;` may only end the statement)');
  }
  const body = semi >= 0 ? toks.slice(0, semi) : toks;
  if (body.length === 0) reject('empty', 'no SQL statement');
  const first = body.find((t) => !(t.kind === 'punct' && t.text === '('));
  if (!first || first.kind !== 'word' || (first.text !== 'SELECT' && first.text !== 'WITH')) {
    reject('not_select', 'the statement must start with SELECT or WITH');
  }
  /** One entry per open parenthesis: true when it opens a function call's argument list. */
  const parens: boolean[] = [];
  for (let k = 0; k < body.length; k++) {
    const t = body[k]!;
    const prev = body[k - 1];
    const next = body[k + 1];
    if (t.kind === 'punct' && t.text === '(') {
      parens.push(prev !== undefined && (prev.kind === 'qident' || (prev.kind === 'word' && !NON_CALL_WORDS.has(prev.text))));
      if (parens.length > GATE_LIMITS.maxParenDepth) reject('too_deep', `parentheses nest deeper than ${GATE_LIMITS.maxParenDepth}`);
    } else if (t.kind === 'punct' && t.text === ')') {
      if (parens.pop() === undefined) reject('unbalanced_parentheses', `unbalanced ')' at position ${t.start}`);
    } else if (t.kind === 'word' && DENIED_KEYWORDS.has(t.text)) {
      reject('denied_keyword', `the keyword ${t.text} is not allowed (position ${t.start})`);
    }
    if ((t.kind === 'word' || t.kind === 'qident') && next?.kind === 'punct' && next.text === '(' && isDeniedFunctionName(t.text)) {
      reject('denied_function', `the function ${t.text.toLowerCase()} is not allowed (position ${t.start})`);
    }
    const inCall = parens[parens.length - 1] === true;
    if (t.kind === 'word' && (t.text === 'JOIN' || (t.text === 'FROM' && !inCall)) && next?.kind === 'string') {
      reject('string_literal_relation', `a string literal cannot be used as a relation (position ${next.start}); query the relation ${DATASET_RELATION}`);
    }
  }
  if (parens.length !== 0) reject('unbalanced_parentheses', 'unbalanced parentheses');
  const last = body[body.length - 1]!;
  return { body: sql.slice(0, last.end) };
}

