/**
 * Relation names a query may be given for its datasets (`{"datasets": {"blocks": ..., "logs":
 * ...}}`). Pure code: the Query Service validates request bodies with it, and the executor checks
 * the same rules again before it creates a view under a name.
 *
 * A relation name is an unquoted SQL identifier: a letter or `_`, then letters, digits or `_`, at
 * most 63 characters, compared case-insensitively (it is stored lower case). It must not be an SQL
 * keyword that cannot name a table unquoted (every DuckDB keyword outside the `unreserved`
 * category) nor a keyword the gate refuses anywhere in a statement (`load`, `copy`, ...), since a
 * query could not name such a relation.
 */
import { DENIED_KEYWORDS } from './scan.js';

/** Most datasets one query may attach. */
export const MAX_RELATIONS = 8;

export const RELATION_NAME_RE = /^[A-Za-z_][A-Za-z0-9_]{0,62}$/;

/**
 * DuckDB keywords of the categories `reserved`, `type_function` and `column_name`, as listed by
 * `duckdb_keywords()` (a test compares this list with the engine's own).
 */
export const SQL_KEYWORDS: ReadonlySet<string> = new Set([
  'all', 'analyse', 'analyze', 'and', 'anti', 'any', 'array', 'as', 'asc', 'asof', 'asymmetric',
  'at', 'authorization', 'between', 'bigint', 'binary', 'bit', 'boolean', 'both', 'by', 'case',
  'cast', 'char', 'character', 'check', 'coalesce', 'collate', 'collation', 'column', 'columns',
  'concurrently', 'constraint', 'create', 'cross', 'dec', 'decimal', 'default', 'deferrable',
  'desc', 'describe', 'distinct', 'do', 'else', 'end', 'except', 'exists', 'extract', 'false',
  'fetch', 'float', 'for', 'foreign', 'freeze', 'from', 'full', 'generated', 'glob', 'group',
  'grouping', 'grouping_id', 'having', 'ilike', 'in', 'initially', 'inner', 'inout', 'int',
  'integer', 'intersect', 'interval', 'into', 'is', 'isnull', 'join', 'lambda', 'lateral',
  'leading', 'left', 'like', 'limit', 'map', 'national', 'natural', 'nchar', 'none', 'not',
  'notnull', 'null', 'nullif', 'numeric', 'offset', 'on', 'only', 'or', 'order', 'out', 'outer',
  'overlaps', 'overlay', 'pivot', 'pivot_longer', 'pivot_wider', 'placing', 'position',
  'positional', 'precision', 'primary', 'qualify', 'real', 'references', 'returning', 'right',
  'row', 'select', 'semi', 'setof', 'show', 'similar', 'smallint', 'some', 'struct', 'substring',
  'summarize', 'symmetric', 'table', 'tablesample', 'then', 'time', 'timestamp', 'to', 'trailing',
  'treat', 'trim', 'true', 'try_cast', 'union', 'unique', 'unpack', 'unpivot', 'using', 'values',
  'varchar', 'variadic', 'verbose', 'when', 'where', 'window', 'with', 'xmlattributes',
  'xmlconcat', 'xmlelement', 'xmlexists', 'xmlforest', 'xmlnamespaces', 'xmlparse', 'xmlpi',
  'xmlroot', 'xmlserialize', 'xmltable',
]);

/** Why `name` cannot be a relation name, or undefined when it can. */
export function relationNameProblem(name: string): string | undefined {
  if (!RELATION_NAME_RE.test(name)) return 'must be an identifier: a letter or _, then letters, digits or _ (at most 63)';
  const lower = name.toLowerCase();
  if (SQL_KEYWORDS.has(lower)) return `${JSON.stringify(lower)} is an SQL keyword; choose another relation name`;
  if (DENIED_KEYWORDS.has(lower.toUpperCase())) return `${JSON.stringify(lower)} is a keyword the SQL gate refuses; choose another relation name`;
  return undefined;
}

/** One dataset bound to the relation name a query uses for it. */
export interface NamedRef<T> {
  /** Lower case. */
  name: string;
  ref: T;
}

/**
 * Validates and orders `{alias: ref}` pairs: every name valid, no two equal once lower-cased,
 * at most MAX_RELATIONS. Returns them sorted by name, or the list of problems (field paths are
 * `datasets.<name>`).
 */
export function namedRelations<T>(pairs: Array<[string, T]>): { ok: true; relations: Array<NamedRef<T>> } | { ok: false; problems: Array<{ path: string; message: string }> } {
  const problems: Array<{ path: string; message: string }> = [];
  if (pairs.length === 0) problems.push({ path: 'datasets', message: 'must name at least one dataset' });
  if (pairs.length > MAX_RELATIONS) problems.push({ path: 'datasets', message: `may name at most ${MAX_RELATIONS} datasets` });
  const seen = new Map<string, string>();
  const out: Array<NamedRef<T>> = [];
  for (const [name, ref] of pairs) {
    const why = relationNameProblem(name);
    if (why) {
      problems.push({ path: `datasets.${name}`, message: why });
      continue;
    }
    const lower = name.toLowerCase();
    const prev = seen.get(lower);
    if (prev !== undefined) {
      problems.push({ path: `datasets.${name}`, message: `duplicates the relation name ${JSON.stringify(prev)} (names are case-insensitive)` });
      continue;
    }
    seen.set(lower, name);
    out.push({ name: lower, ref });
  }
  if (problems.length > 0) return { ok: false, problems };
  out.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  return { ok: true, relations: out };
}
