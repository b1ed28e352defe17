/**
 * The SQL gate (specs/query_sql_gating.md): the primary, fail-closed control in front of the
 * DuckDB sandbox. Two stages, both must pass:
 *
 * 1. `scanSql`: a comment-, string- and quoted-identifier-aware scanner. Size cap, one statement,
 *    first keyword SELECT or WITH, no denylisted keywords or reader-function call sites outside
 *    literals, no string-literal relations, ASCII only outside string literals, no dollar quoting.
 * 2. The decision: DuckDB's own parser (`json_serialize_sql` in a private, empty, locked
 *    in-memory instance) and an allowlist walk of the parse tree: one SELECT; every table
 *    reference is one of the granted relation names (by default the single relation `dataset`)
 *    or a CTE in scope; no table functions; every function is a builtin scalar, aggregate or
 *    window function that is not denylisted.
 *
 * This module runs inside the query executor process (see README.md in this folder): it opens
 * a DuckDB instance of its own to parse.
 *
 * Rejections are TraceError 400 `SQL_REJECTED` whose message names the rule that fired and
 * never echoes the SQL (only fixed vocabulary such as a denied keyword, and byte positions).
 */
import { DuckDBInstance, type DuckDBConnection } from '@duckdb/node-api';
import { TraceError } from '../../core/errors.js';
import { DATASET_RELATION, reject, isDeniedFunctionName, scanSql } from './scan.js';

export { GATE_LIMITS, DATASET_RELATION, DENIED_KEYWORDS, SqlRejected, isDeniedFunctionName, scanSql, type GateRule, type ScanResult } from './scan.js';

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
  /** The relation names trusted code attaches (lower case). */
  relations: ReadonlySet<string>;
}

const relationList = (r: ReadonlySet<string>) => [...r].join(', ');

function checkTableRef(o: Record<string, Json>, type: string, scope: ReadonlySet<string>, ctx: WalkCtx): void {
  if (!TABLE_REF_TYPES.has(type)) reject('unsupported_construct', `unsupported relation kind${pos(o)}`);
  if (type === 'TABLE_FUNCTION') reject('table_function', `table functions are not allowed${pos(o)}`);
  if (type !== 'BASE_TABLE') return;
  if (str(o.catalog_name) !== '' || str(o.schema_name) !== '') {
    reject('qualified_reference', `qualified table names are not allowed; query the relations ${relationList(ctx.relations)}${pos(o)}`);
  }
  if (o.at_clause !== null && o.at_clause !== undefined) reject('time_travel', `AT (...) clauses are not allowed${pos(o)}`);
  const at = o.query_location;
  if (typeof at === 'number' && at < ctx.bytes.length && ctx.bytes[at] === 0x27) {
    reject('string_literal_relation', `a string literal cannot be used as a relation${pos(o)}; query the relations ${relationList(ctx.relations)}`);
  }
  const name = str(o.table_name).toLowerCase();
  if (!ctx.relations.has(name) && !scope.has(name)) {
    reject('table_reference', `only the relations ${relationList(ctx.relations)} and CTEs defined in the statement may be queried${pos(o)}`);
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

/**
 * Stage 2 decision over the output of `json_serialize_sql` for `body`, for a query over the
 * relations `relations` (default: the single relation `dataset`). Exported for tests.
 */
export function checkParseTree(serialized: string, body: string, fns: FunctionCatalog, relations: readonly string[] = [DATASET_RELATION]): void {
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
  walk(stmt, new Set(), { fns, bytes: Buffer.from(body, 'utf8'), relations: new Set(relations.map((r) => r.toLowerCase())) });
}

// ---------------------------------------------------------------------------------------------
// The gate object
// ---------------------------------------------------------------------------------------------

const gatedTexts = new WeakSet<GatedSql>();

/** SQL that passed both stages. Only this module can make one; the engine checks for it. */
export interface GatedSql {
  /** The statement body, ready to be wrapped by the engine. */
  readonly sql: string;
  /** The relation names the statement was checked against (lower case, sorted). */
  readonly relations: readonly string[];
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
   * The verdict is a pure function of the text and the relation names (the function catalog is
   * fixed when the gate is created), so a statement that passed once over the same relations
   * passes again: repeated queries skip the parse.
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

  /**
   * Runs both stages for a query over `relations` (default: the single relation `dataset`);
   * returns the gated statement or throws SqlRejected.
   */
  async check(sql: string, relations: readonly string[] = [DATASET_RELATION]): Promise<GatedSql> {
    if (this.closed) throw new TraceError(500, 'SQL_GATE_CLOSED', 'the SQL gate is closed');
    const names = [...new Set(relations.map((r) => r.toLowerCase()))].sort();
    const key = `${names.join(',')}\n${sql}`;
    const hit = this.passed.get(key);
    if (hit) {
      this.passed.delete(key);
      this.passed.set(key, hit);
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
    checkParseTree(serialized, body, this.functions, names);
    const gated: GatedSql = Object.freeze({ sql: body, relations: Object.freeze(names) });
    gatedTexts.add(gated);
    if (sql.length <= GATE_CACHE.maxSqlChars) {
      this.passed.set(key, gated);
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
