/**
 * Problem collection and the two error shapes of the DAG module:
 *  - 400 `YAML_MALFORMED`: the text is not YAML we will read at all (syntax errors, not UTF-8,
 *    control characters, or a resource cap: bytes, nesting depth, aliases, node count).
 *  - 422 `DAG_INVALID`: well-formed YAML whose content is refused (refused YAML features such as
 *    tags, merge keys, directives, several documents, duplicate or prototype keys; schema errors).
 * Both carry `problems: [{path, message, line?}]`.
 */
import { TraceError, formatPath, type Problem } from '../core/errors.js';

export interface DagProblem extends Problem {
  /** 1-based line in the YAML text, when known. */
  line?: number;
}

export type PathSeg = string | number;
export type Path = ReadonlyArray<PathSeg>;

/** At most this many problems are returned; a final entry says how many were left out. */
export const MAX_PROBLEMS = 100;

export class ProblemList {
  readonly items: DagProblem[] = [];
  private dropped = 0;

  add(path: Path | string, message: string, line?: number): void {
    if (this.items.length >= MAX_PROBLEMS) {
      this.dropped++;
      return;
    }
    const p: DagProblem = { path: typeof path === 'string' ? path : formatPath(path), message };
    if (line !== undefined) p.line = line;
    this.items.push(p);
  }

  get size(): number {
    return this.items.length + this.dropped;
  }

  list(): DagProblem[] {
    if (this.dropped === 0) return [...this.items];
    return [...this.items, { path: '$', message: `${this.dropped} more problem(s) not shown` }];
  }
}

function summary(prefix: string, problems: DagProblem[]): string {
  const first = problems[0];
  if (!first) return prefix;
  const more = problems.length > 1 ? ` (and ${problems.length - 1} more problem${problems.length > 2 ? 's' : ''})` : '';
  return `${prefix}: ${first.path}: ${first.message}${more}`;
}

export function dagInvalid(problems: DagProblem[]): TraceError {
  return new TraceError(422, 'DAG_INVALID', summary('invalid DAG', problems), { problems });
}

export function yamlMalformed(problems: DagProblem[]): TraceError {
  return new TraceError(400, 'YAML_MALFORMED', summary('malformed YAML', problems), { problems });
}

/** Joins a path from an operator's config validator onto `jobs[i].config`. */
export function joinPath(prefix: string, rel: string): string {
  const r = rel.trim();
  if (r === '' || r === '$') return prefix;
  const tail = r.startsWith('$') ? r.slice(1) : r;
  if (tail === '') return prefix;
  if (tail.startsWith('[') || tail.startsWith('.')) return `${prefix}${tail}`;
  return `${prefix}.${tail}`;
}
