/**
 * The SQL gate (specs/query_sql_gating.md): the primary, fail-closed control in front of the
 * DuckDB sandbox. Two stages, both must pass:
 *
 * 1. `scanSql`: a comment-, string- and quoted-identifier-aware scanner. Size cap, one statement,
 *    first keyword SELECT or WITH, no denylisted keywords or reader-function call sites outside
 *    literals, no string-literal relations, ASCII only outside string literals, no dollar quoting.
 * 2. The decision: DuckDB's own parser (`json_serialize_sql` in a private, empty, locked
 *    in-memory instance) and an allowlist walk of the parse tree: one SELECT; every table
 *    reference is the unqualified relation `dataset` or a CTE in scope; no table functions; every
 *    function is a builtin scalar, aggregate or window function that is not denylisted.
 *
 * Rejections are TraceError 400 `SQL_REJECTED` whose message names the rule that fired and
 * never echoes the SQL (only fixed vocabulary such as a denied keyword, and byte positions).
 */
import { DuckDBInstance, type DuckDBConnection } from '@duckdb/node-api';
import { TraceError } from '../core/errors.js';

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

const reject = (rule: GateRule, detail: string): never => {
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
  // Statement structure: everything after the first `;` must be more `;`.
  const semi = toks.findIndex((t) => t.kind === 'punct' && t.text === ';');
  if (semi >= 0 && toks.slice(semi).some((t) => !(t.kind === 'punct' && t.text === ';'))) {
    reject('multiple_statements', 'only one statement is allowed (a `;` may only end the statement)');
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

// ---------------------------------------------------------------------------------------------
// Stage 2: the engine's parse tree, walked with an allowlist
// ---------------------------------------------------------------------------------------------

/** Which function names a query may call, read from the engine's own catalog. */
export interface FunctionCatalog {
  /** Builtin scalar, aggregate (and window) functions and scalar macros in schema main. */
  allowed: ReadonlySet<string>;
  /** Names that exist as table functions, table macros or pragmas. */
  tableLike: ReadonlySet<string>;
}

/** Allowed in expression position although the catalog lists them as table functions. */
const SCALAR_POSITION_EXCEPTIONS = new Set(['unnest']);
/** Harmless pg_catalog macros analysts use. */
const EXTRA_ALLOWED = new Set(['pg_typeof']);

const QUERY_NODE_TYPES = new Set(['SELECT_NODE', 'SET_OPERATION_NODE', 'RECURSIVE_CTE_NODE', 'CTE_NODE']);
const TABLE_REF_TYPES = new Set(['BASE_TABLE', 'SUBQUERY', 'JOIN', 'EMPTY', 'EXPRESSION_LIST', 'PIVOT', 'TABLE_FUNCTION']);
const EXPRESSION_CLASSES = new Set([
  'BETWEEN', 'CASE', 'CAST', 'COLLATE', 'COLUMN_REF', 'COMPARISON', 'CONJUNCTION', 'CONSTANT',
  'FUNCTION', 'LAMBDA', 'LAMBDA_REF', 'OPERATOR', 'POSITIONAL_REFERENCE', 'STAR', 'SUBQUERY', 'WINDOW',
]);
const PLAIN_CTE_NAME = /^[a-z_][a-z0-9_]*$/;

type Json = unknown;
const isObj = (v: Json): v is Record<string, Json> => typeof v === 'object' && v !== null && !Array.isArray(v);
const pos = (o: Record<string, Json>) => {
  const p = o.query_location;
  return typeof p === 'number' && p < Number.MAX_SAFE_INTEGER ? ` (position ${p})` : '';
};
const str = (v: Json) => (typeof v === 'string' ? v : '');

function checkFunction(o: Record<string, Json>, fns: FunctionCatalog): void {
  const name = str(o.function_name).toLowerCase();
  // The parser itself emits `main.list_value(...)` for list literals; other qualifiers are refused.
  const schema = str(o.schema).toLowerCase();
  const catalog = str(o.catalog).toLowerCase();
  if ((schema !== '' && schema !== 'main') || (catalog !== '' && catalog !== 'system')) {
    reject('qualified_reference', `schema- or catalog-qualified function calls are not allowed${pos(o)}`);
  }
  if (isDeniedFunctionName(name)) reject('denied_function', `the function ${name} is not allowed${pos(o)}`);
  if (SCALAR_POSITION_EXCEPTIONS.has(name)) return;
  if (fns.tableLike.has(name)) reject('table_function', `table functions are not allowed${pos(o)}`);
  if (!fns.allowed.has(name) && !EXTRA_ALLOWED.has(name)) {
    reject('unknown_function', `only builtin scalar, aggregate and window functions are allowed${pos(o)}`);
  }
}

/** The statement text as UTF-8: the parser's `query_location` values are byte offsets into it. */
interface WalkCtx {
  fns: FunctionCatalog;
  bytes: Buffer;
}

function checkTableRef(o: Record<string, Json>, type: string, scope: ReadonlySet<string>, ctx: WalkCtx): void {
  if (!TABLE_REF_TYPES.has(type)) reject('unsupported_construct', `unsupported relation kind${pos(o)}`);
  if (type === 'TABLE_FUNCTION') reject('table_function', `table functions are not allowed${pos(o)}`);
  if (type !== 'BASE_TABLE') return;
  if (str(o.catalog_name) !== '' || str(o.schema_name) !== '') {
    reject('qualified_reference', `qualified table names are not allowed; query the relation ${DATASET_RELATION}${pos(o)}`);
  }
  if (o.at_clause !== null && o.at_clause !== undefined) reject('time_travel', `AT (...) clauses are not allowed${pos(o)}`);
  const at = o.query_location;
  if (typeof at === 'number' && at < ctx.bytes.length && ctx.bytes[at] === 0x27) {
    reject('string_literal_relation', `a string literal cannot be used as a relation${pos(o)}; query the relation ${DATASET_RELATION}`);
  }
  const name = str(o.table_name).toLowerCase();
  if (name !== DATASET_RELATION && !scope.has(name)) {
    reject('table_reference', `only the relation ${DATASET_RELATION} and CTEs defined in the statement may be queried${pos(o)}`);
  }
}

function cteNames(o: Record<string, Json>): string[] {
  const cm = o.cte_map;
  if (!isObj(cm) || !Array.isArray(cm.map)) return [];
  const names: string[] = [];
  for (const e of cm.map) {
    if (!isObj(e)) continue;
    const key = str(e.key).toLowerCase();
    if (!PLAIN_CTE_NAME.test(key)) reject('cte_name', 'CTE names must be plain identifiers (letters, digits, _)');
    names.push(key);
  }
  return names;
}

/**
 * Walks every node of one parsed statement. CTE names are scoped: a CTE defined on a query node
 * is visible inside that node (its own body included, for recursive CTEs) and nowhere else.
 */
function walk(v: Json, scope: ReadonlySet<string>, ctx: WalkCtx): void {
  if (Array.isArray(v)) {
    for (const x of v) walk(x, scope, ctx);
    return;
  }
  if (!isObj(v)) return;
  let inner = scope;
  if (typeof v.class === 'string') {
    if (!EXPRESSION_CLASSES.has(v.class)) reject('unsupported_construct', `unsupported expression kind${pos(v)}`);
    if (v.class === 'FUNCTION' || v.class === 'WINDOW') checkFunction(v, ctx.fns);
  } else if (typeof v.type === 'string' && 'modifiers' in v) {
    if (!QUERY_NODE_TYPES.has(v.type)) reject('unsupported_construct', 'unsupported query kind');
    const names = cteNames(v);
    if (names.length > 0) inner = new Set([...scope, ...names]);
  } else if (typeof v.type === 'string' && (('sample' in v && 'alias' in v) || 'table_name' in v)) {
    checkTableRef(v, v.type, scope, ctx);
  } else if ('function_name' in v || 'table_name' in v) {
    // Fail closed if the serialization ever nests a call or a table somewhere unrecognised.
    reject('unsupported_construct', `unsupported construct${pos(v)}`);
  }
  for (const x of Object.values(v)) walk(x, inner, ctx);
}

/** Stage 2 decision over the output of `json_serialize_sql` for `body`. Exported for tests. */
export function checkParseTree(serialized: string, body: string, fns: FunctionCatalog): void {
  let tree: Json;
  try {
    tree = JSON.parse(serialized);
  } catch {
    return reject('parse_error', 'the statement could not be parsed');
  }
  if (!isObj(tree)) return reject('parse_error', 'the statement could not be parsed');
  if (tree.error !== false) {
    const p = typeof tree.position === 'string' || typeof tree.position === 'number' ? ` near position ${String(tree.position)}` : '';
    const kind = str(tree.error_type) === 'parser' ? 'syntax error' : 'not a SELECT statement';
    return reject('parse_error', `${kind}${p}`);
  }
  const stmts = tree.statements;
  if (!Array.isArray(stmts) || stmts.length !== 1) return reject('statement_count', 'exactly one SELECT statement is required');
  const stmt = stmts[0];
  if (!isObj(stmt) || !isObj(stmt.node) || typeof stmt.node.type !== 'string' || !QUERY_NODE_TYPES.has(stmt.node.type)) {
    return reject('not_select', 'the statement must be a SELECT');
  }
  walk(stmt, new Set(), { fns, bytes: Buffer.from(body, 'utf8') });
}

// ---------------------------------------------------------------------------------------------
// The gate object
// ---------------------------------------------------------------------------------------------

const gatedTexts = new WeakSet<GatedSql>();

/** SQL that passed both stages. Only this module can make one; the engine checks for it. */
export interface GatedSql {
  /** The statement body, ready to be wrapped by the engine. */
  readonly sql: string;
}

export function isGatedSql(v: unknown): v is GatedSql {
  return typeof v === 'object' && v !== null && gatedTexts.has(v as GatedSql);
}

async function readCatalog(conn: DuckDBConnection): Promise<FunctionCatalog> {
  const r = await conn.runAndReadAll(
    `SELECT DISTINCT lower(function_name) AS name, function_type AS type, schema_name AS schema FROM duckdb_functions()`,
  );
  const allowed = new Set<string>();
  const tableLike = new Set<string>();
  for (const [name, type, schema] of r.getRowsJson() as Array<[string, string, string]>) {
    if (type === 'table' || type === 'table_macro' || type === 'pragma') tableLike.add(name);
    else if ((type === 'scalar' || type === 'aggregate' || type === 'macro') && schema === 'main') allowed.add(name);
  }
  for (const n of tableLike) allowed.delete(n);
  return { allowed, tableLike };
}

/** Verdicts kept per gate: passing statements by exact text (LRU). */
export const GATE_CACHE = { maxEntries: 512, maxSqlChars: 16 * 1024 } as const;

export class SqlGate {
  private closed = false;
  /**
   * The verdict is a pure function of the text (the function catalog is fixed when the gate is
   * created), so a statement that passed once passes again: repeated queries skip the parse.
   */
  private readonly passed = new Map<string, GatedSql>();
  private constructor(
    private readonly instance: DuckDBInstance,
    readonly functions: FunctionCatalog,
  ) {}

  /** Opens a private, empty, locked in-memory DuckDB used only for parsing. */
  static async create(): Promise<SqlGate> {
    const instance = await DuckDBInstance.create(':memory:', {
      threads: '1',
      memory_limit: '64MB',
      autoinstall_known_extensions: 'false',
      autoload_known_extensions: 'false',
    });
    const conn = await instance.connect();
    try {
      const fns = await readCatalog(conn);
      await conn.run('SET enable_external_access = false');
      await conn.run('SET lock_configuration = true');
      return new SqlGate(instance, fns);
    } finally {
      conn.closeSync();
    }
  }

  /** Runs both stages; returns the gated statement or throws SqlRejected. */
  async check(sql: string): Promise<GatedSql> {
    if (this.closed) throw new TraceError(500, 'SQL_GATE_CLOSED', 'the SQL gate is closed');
    const hit = this.passed.get(sql);
    if (hit) {
      this.passed.delete(sql);
      this.passed.set(sql, hit);
      return hit;
    }
    const { body } = scanSql(sql);
    const conn = await this.instance.connect();
    let serialized: string;
    try {
      const r = await conn.runAndReadAll('SELECT json_serialize_sql($1::VARCHAR)', [body]);
      serialized = String(r.getRowsJson()[0]?.[0] ?? '');
    } catch {
      return reject('parse_error', 'the statement could not be parsed');
    } finally {
      conn.closeSync();
    }
    checkParseTree(serialized, body, this.functions);
    const gated: GatedSql = Object.freeze({ sql: body });
    gatedTexts.add(gated);
    if (sql.length <= GATE_CACHE.maxSqlChars) {
      this.passed.set(sql, gated);
      if (this.passed.size > GATE_CACHE.maxEntries) this.passed.delete(this.passed.keys().next().value!);
    }
    return gated;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.instance.closeSync();
  }
}

let shared: Promise<SqlGate> | undefined;

/** The process-wide gate (created on first use). */
export function sharedGate(): Promise<SqlGate> {
  shared ??= SqlGate.create().catch((e: unknown) => {
    shared = undefined;
    throw e;
  });
  return shared;
}

/** `validate_sql`: both stages with the shared gate. Throws SqlRejected (400 SQL_REJECTED). */
export async function validateSql(sql: string): Promise<GatedSql> {
  return (await sharedGate()).check(sql);
}
