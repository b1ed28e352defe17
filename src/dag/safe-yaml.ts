/**
 * Hostile-input-safe YAML reading for DAG documents.
 *
 * Order of checks (cheapest first, each one bounded):
 *  1. byte cap and control characters (no parsing at all);
 *  2. a lexer pre-scan (the `yaml` Lexer is a flat state machine, no recursion) that estimates
 *     nesting depth from indentation and brackets, counts aliases, and finds tags and
 *     directives; the depth and alias caps fail here, before the recursive composer runs;
 *  3. composition with the YAML 1.2 core schema (no merge keys, no 1.1 tags);
 *  4. our own conversion of the AST into plain data: objects have a null prototype; keys
 *     `__proto__`/`constructor`/`prototype`, duplicate keys, merge keys `<<` and every explicit
 *     tag are refused; aliases are expanded under a small budget; the exact depth cap applies.
 *
 * Errors: 400 `YAML_MALFORMED` for syntax errors and resource caps, 422 `DAG_INVALID` for refused
 * features in otherwise well-formed YAML (see problems.ts). Every refused feature found is
 * reported together in one error.
 */
import { CST, Lexer, LineCounter, isAlias, isMap, isScalar, isSeq, parseAllDocuments, visit, type Alias, type Document, type Node as YamlNode } from 'yaml';
import { DEFAULTS } from '../core/config.js';
import { formatPath } from '../core/errors.js';
import { ProblemList, dagInvalid, yamlMalformed, type Path } from './problems.js';

export interface SafeYamlOptions {
  /** UTF-8 byte cap of the text (default 256 KiB). */
  maxBytes?: number;
  /** Maximum nesting of mappings/sequences (default 32). */
  maxDepth?: number;
  /** Maximum alias dereferences while building the value (default 50; 0 forbids aliases). */
  maxAliases?: number;
  /** Maximum number of nodes in the built value, aliases expanded (default 100 000). */
  maxNodes?: number;
}

export const SAFE_YAML_DEFAULTS = {
  maxBytes: DEFAULTS.maxDagYamlBytes,
  maxDepth: 32,
  maxAliases: 50,
  maxNodes: 100_000,
} as const;

/** Keys that must never become properties of an object built from untrusted input. */
export const FORBIDDEN_KEYS: ReadonlySet<string> = new Set(['__proto__', 'constructor', 'prototype']);

/** Yaml library error codes whose cause our own checks always report with a better path. */
const COVERED_CODES = new Set(['DUPLICATE_KEY', 'TAG_RESOLVE_FAILED', 'BAD_DIRECTIVE', 'MULTIPLE_TAGS']);

// C0 controls other than TAB, LF, CR, and DEL: never valid in a YAML stream we accept.
// eslint-disable-next-line no-control-regex -- matching control characters is the point
const CONTROL_RE = /[\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F]/;

class CapExceeded extends Error {}

function lineOf(text: string, index: number): number {
  let line = 1;
  for (let i = 0; i < index && i < text.length; i++) if (text.charCodeAt(i) === 10) line++;
  return line;
}

interface Limits {
  maxBytes: number;
  maxDepth: number;
  maxAliases: number;
  maxNodes: number;
}

function limitsOf(opts: SafeYamlOptions): Limits {
  const pick = (v: number | undefined, d: number, min: number) =>
    v === undefined || !Number.isFinite(v) ? d : Math.max(min, Math.floor(v));
  return {
    maxBytes: pick(opts.maxBytes, SAFE_YAML_DEFAULTS.maxBytes, 0),
    maxDepth: pick(opts.maxDepth, SAFE_YAML_DEFAULTS.maxDepth, 1),
    maxAliases: pick(opts.maxAliases, SAFE_YAML_DEFAULTS.maxAliases, 0),
    maxNodes: pick(opts.maxNodes, SAFE_YAML_DEFAULTS.maxNodes, 1),
  };
}

interface PreScan {
  tagLines: number[];
  directiveLines: number[];
}

const CONTROL_TOKENS = new Set(['\u0002', '\u0018', '\u001f']);

/**
 * Walks lexer tokens once. Depth estimate: open flow brackets plus a stack of block indentation
 * columns (a `- ` sequence at the same column as its parent key counts as a separate level;
 * a node after `- ` or `? ` on the same line opens a level). The estimate may exceed the true
 * depth by one (a scalar after `- `) and is never far below it; the exact cap is applied on the
 * composed document, so the pre-scan threshold is `maxDepth + 1`.
 */
function preScan(text: string, lim: Limits): PreScan {
  const out: PreScan = { tagLines: [], directiveLines: [] };
  const stack: Array<{ col: number; seq: boolean }> = [];
  let flow = 0;
  let col = 0;
  let line = 1;
  let lineHasNode = false; // a node or indicator already seen on this line
  let afterIndicator = false; // previous significant token on this line was `-` or `?`
  let scalarNext = false; // the lexer marks scalar content with a control token first
  let blockScalar = false; // a `|` or `>` header was seen; its content is a leaf on that node
  let aliases = 0;

  const tooDeep = () => {
    throw new CapExceeded(
      `nesting deeper than ${lim.maxDepth} levels near line ${line}`,
    );
  };

  const advance = (tok: string) => {
    const nl = tok.lastIndexOf('\n');
    if (nl === -1) col += tok.length;
    else {
      for (let i = 0; i < tok.length; i++) if (tok.charCodeAt(i) === 10) line++;
      col = tok.length - nl - 1;
    }
  };

  const blockNode = (isSeqIndicator: boolean) => {
    if (flow > 0) return;
    if (!lineHasNode) {
      while (stack.length > 0 && stack[stack.length - 1]!.col > col) stack.pop();
      const top = stack[stack.length - 1];
      if (top && top.col === col) {
        if (top.seq !== isSeqIndicator) {
          if (isSeqIndicator) stack.push({ col, seq: true }); // `key:` then `- item` at the same column
          else {
            stack.pop(); // leaving a same-column sequence back to its parent mapping
            const parent = stack[stack.length - 1];
            if (!parent || parent.col !== col) stack.push({ col, seq: false });
          }
        }
      } else stack.push({ col, seq: isSeqIndicator });
    } else if (afterIndicator) {
      stack.push({ col, seq: isSeqIndicator });
    }
    if (stack.length > lim.maxDepth + 1) tooDeep();
  };

  for (const tok of new Lexer().lex(text)) {
    if (CONTROL_TOKENS.has(tok)) {
      if (tok === '\u001f') scalarNext = true;
      continue;
    }
    if (scalarNext) {
      // plain or block scalar content (may span lines)
      scalarNext = false;
      if (blockScalar) {
        blockScalar = false;
        advance(tok);
        continue;
      }
      blockNode(false);
      lineHasNode = true;
      afterIndicator = false;
      advance(tok);
      continue;
    }
    const type = CST.tokenType(tok);
    switch (type) {
      case 'newline':
        line++;
        col = 0;
        lineHasNode = false;
        afterIndicator = false;
        continue;
      case 'space':
      case 'comment':
      case 'byte-order-mark':
      case 'comma':
        advance(tok);
        continue;
      case 'directive-line':
        out.directiveLines.push(line);
        advance(tok);
        continue;
      case 'doc-start':
      case 'doc-end':
      case 'doc-mode':
        stack.length = 0;
        flow = 0;
        advance(tok);
        continue;
      case 'flow-seq-start':
      case 'flow-map-start':
        if (flow === 0 && !lineHasNode) blockNode(false);
        flow++;
        lineHasNode = true;
        afterIndicator = false;
        if (stack.length + flow > lim.maxDepth + 1) tooDeep();
        advance(tok);
        continue;
      case 'flow-seq-end':
      case 'flow-map-end':
        if (flow > 0) flow--;
        advance(tok);
        continue;
      case 'seq-item-ind':
      case 'explicit-key-ind':
        blockNode(type === 'seq-item-ind');
        lineHasNode = true;
        afterIndicator = true;
        advance(tok);
        continue;
      case 'map-value-ind':
        if (!lineHasNode) {
          blockNode(false);
          lineHasNode = true;
          afterIndicator = true;
        } else afterIndicator = false;
        advance(tok);
        continue;
      case 'tag':
        out.tagLines.push(line);
        advance(tok);
        continue;
      case 'alias':
        if (++aliases > lim.maxAliases) {
          throw new CapExceeded(`more than ${lim.maxAliases} alias references (near line ${line})`);
        }
        blockNode(false);
        lineHasNode = true;
        afterIndicator = false;
        advance(tok);
        continue;
      case 'anchor':
        advance(tok);
        continue;
      case 'block-scalar-header':
        blockNode(false);
        lineHasNode = true;
        afterIndicator = false;
        blockScalar = true;
        advance(tok);
        continue;
      default:
        // quoted scalars, block scalar headers and anything else that starts a node
        blockNode(false);
        lineHasNode = true;
        afterIndicator = false;
        advance(tok);
        continue;
    }
  }
  return out;
}

/** Converts the composed AST into plain data under the caps, collecting refused features. */
class Converter {
  private aliases = 0;
  private nodes = 0;
  private readonly reported = new WeakSet<object>();
  tagProblems = 0;
  /** Line of the key (mappings) or item (sequences) behind each path, first occurrence wins. */
  readonly lines = new Map<string, number>();

  constructor(
    private readonly doc: Document,
    private readonly lc: LineCounter,
    private readonly lim: Limits,
    private readonly problems: ProblemList,
  ) {}

  private mark(path: Path, node: unknown): void {
    const key = formatPath(path);
    if (this.lines.has(key)) return;
    const l = this.line(node);
    if (l !== undefined) this.lines.set(key, l);
  }

  private line(node: unknown): number | undefined {
    const range = (node as { range?: [number, number, number] } | null)?.range;
    return range ? this.lc.linePos(range[0]).line : undefined;
  }

  /** Reports a problem once per AST node, even when aliases make the node appear again. */
  private report(node: object, path: Path, message: string): void {
    if (this.reported.has(node)) return;
    this.reported.add(node);
    this.problems.add(path, message, this.line(node));
  }

  private checkTag(node: object & { tag?: string | null }, path: Path, what: string): void {
    if (typeof node.tag === 'string' && node.tag !== '') {
      this.tagProblems++;
      this.report(node, path, `explicit YAML tags are not allowed (found ${JSON.stringify(node.tag)} on ${what})`);
    }
  }

  convert(node: unknown, path: Path, depth: number): unknown {
    if (++this.nodes > this.lim.maxNodes) {
      throw new CapExceeded(`document expands to more than ${this.lim.maxNodes} nodes`);
    }
    if (node === null || node === undefined) return null;
    if (isAlias(node)) {
      if (++this.aliases > this.lim.maxAliases) {
        throw new CapExceeded(`more than ${this.lim.maxAliases} alias expansions`);
      }
      const target = this.resolve(node);
      if (!target) {
        this.report(node, path, `alias *${node.source} does not name an anchor`);
        return null;
      }
      return this.convert(target, path, depth);
    }
    if (isScalar(node)) {
      this.checkTag(node, path, 'a value');
      const v = node.value;
      if (typeof v === 'number') {
        if (!Number.isFinite(v)) this.report(node, path, 'non-finite numbers (.inf, .nan) are not allowed');
        else if (Number.isInteger(v) && !Number.isSafeInteger(v)) {
          this.report(node, path, 'integer is too large to represent exactly; quote it if it is an identifier or address');
        }
        return v;
      }
      if (typeof v === 'string' || typeof v === 'boolean' || v === null) return v;
      this.report(node, path, 'unsupported scalar value');
      return null;
    }
    if (isMap(node)) {
      this.checkTag(node, path, 'a mapping');
      if (depth + 1 > this.lim.maxDepth) throw new CapExceeded(`nesting deeper than ${this.lim.maxDepth} levels at ${formatPath(path)}`);
      const obj: Record<string, unknown> = Object.create(null) as Record<string, unknown>;
      for (const pair of node.items) {
        const keyNode = pair.key as unknown;
        const key = this.keyOf(keyNode, path);
        if (key === undefined) continue;
        const here = [...path, key];
        this.checkTag(keyNode as object, here, 'a key');
        if (key === '<<') {
          this.report(keyNode as object, here, 'merge keys (<<) are not allowed');
          continue;
        }
        if (FORBIDDEN_KEYS.has(key)) {
          this.report(keyNode as object, here, `key ${JSON.stringify(key)} is not allowed`);
          continue;
        }
        if (Object.hasOwn(obj, key)) {
          this.report(keyNode as object, here, `duplicate key ${JSON.stringify(key)}`);
          continue;
        }
        this.mark(here, keyNode);
        obj[key] = this.convert(pair.value, here, depth + 1);
      }
      return obj;
    }
    if (isSeq(node)) {
      this.checkTag(node, path, 'a sequence');
      if (depth + 1 > this.lim.maxDepth) throw new CapExceeded(`nesting deeper than ${this.lim.maxDepth} levels at ${formatPath(path)}`);
      return node.items.map((item, i) => {
        this.mark([...path, i], item);
        return this.convert(item, [...path, i], depth + 1);
      });
    }
    this.report(node as object, path, 'unsupported YAML node');
    return null;
  }

  private anchorsAndAliases: YamlNode[] | undefined;

  /**
   * The node an alias names: the last node with that anchor before the alias in document order
   * (YAML's rule). Like the library's Alias.resolve, but the document is walked once, not once
   * per alias.
   */
  private resolve(alias: Alias): YamlNode | undefined {
    if (!this.anchorsAndAliases) {
      const found: YamlNode[] = [];
      visit(this.doc, {
        Node: (_key, n) => {
          if (isAlias(n) || (typeof (n as { anchor?: unknown }).anchor === 'string')) found.push(n);
        },
      });
      this.anchorsAndAliases = found;
    }
    let target: YamlNode | undefined;
    for (const n of this.anchorsAndAliases) {
      if (n === alias) break;
      if (!isAlias(n) && (n as { anchor?: string }).anchor === alias.source) target = n;
    }
    return target;
  }

  private keyOf(keyNode: unknown, path: Path): string | undefined {
    if (keyNode === null || keyNode === undefined) {
      this.problems.add(path, 'mapping keys must not be empty');
      return undefined;
    }
    if (isAlias(keyNode)) {
      this.report(keyNode, path, 'aliases may not be used as mapping keys');
      return undefined;
    }
    if (!isScalar(keyNode)) {
      this.report(keyNode as object, path, 'mapping keys must be plain strings, not collections');
      return undefined;
    }
    const v = keyNode.value;
    if (typeof v === 'string') return v;
    if (typeof v === 'number' && Number.isSafeInteger(v)) return String(v);
    this.report(keyNode, path, `mapping keys must be strings (got ${v === null ? 'null' : typeof v})`);
    return undefined;
  }
}

/**
 * Parses untrusted YAML text into plain data (null-prototype objects, arrays, strings, numbers,
 * booleans, null). An empty document yields `null`. Throws TraceError (see file comment).
 */
export function parseYamlSafely(text: string, opts: SafeYamlOptions = {}): unknown {
  return parseYamlWithLines(text, opts).value;
}

/**
 * Like parseYamlSafely, plus the 1-based line behind each path (`jobs[1].name` -> 7), so later
 * validation problems can point at a line.
 */
export function parseYamlWithLines(text: string, opts: SafeYamlOptions = {}): { value: unknown; lines: ReadonlyMap<string, number> } {
  const lim = limitsOf(opts);
  if (typeof text !== 'string') {
    throw yamlMalformed([{ path: '$', message: 'YAML must be text' }]);
  }
  const bytes = Buffer.byteLength(text, 'utf8');
  if (bytes > lim.maxBytes) {
    throw yamlMalformed([{ path: '$', message: `YAML is ${bytes} bytes; the limit is ${lim.maxBytes}` }]);
  }
  const ctl = CONTROL_RE.exec(text);
  if (ctl) {
    throw yamlMalformed([{ path: '$', message: 'control characters are not allowed in YAML', line: lineOf(text, ctl.index) }]);
  }

  let scan: PreScan;
  try {
    scan = preScan(text, lim);
  } catch (e) {
    if (e instanceof CapExceeded) throw yamlMalformed([{ path: '$', message: e.message }]);
    throw e;
  }

  const lc = new LineCounter();
  const docs = parseAllDocuments(text, {
    version: '1.2',
    schema: 'core',
    merge: false,
    // Duplicate keys are refused by the Converter (one hash lookup per key, with the key's path).
    // The library's own `uniqueKeys: true` compares every key with every earlier key of its
    // mapping: 30 000 keys (well under the byte cap) take seconds, a denial of service.
    uniqueKeys: false,
    resolveKnownTags: false,
    strict: true,
    prettyErrors: false,
    intAsBigInt: false,
    lineCounter: lc,
  });
  const list: Document[] = Array.isArray(docs) ? docs : [];
  const lineAt = (pos: number | undefined) => (pos === undefined ? undefined : lc.linePos(pos).line);

  // Syntax errors first: a stream that does not parse is malformed, whatever else it holds.
  const syntax = new ProblemList();
  const covered: Array<{ message: string; line: number | undefined }> = [];
  for (const d of list) {
    for (const err of d.errors) {
      if (COVERED_CODES.has(err.code)) covered.push({ message: err.message, line: lineAt(err.pos[0]) });
      else syntax.add('$', err.message, lineAt(err.pos[0]));
    }
  }
  if (syntax.size > 0) throw yamlMalformed(syntax.list());

  const problems = new ProblemList();
  for (const l of scan.directiveLines) problems.add('$', 'YAML directives (%YAML, %TAG) are not allowed', l);
  if (list.length > 1) {
    const second = list[1]!;
    problems.add('$', `exactly one YAML document is allowed (found ${list.length})`, lineAt(second.range?.[0]));
  }
  for (const d of list) {
    for (const w of d.warnings) {
      if (!COVERED_CODES.has(w.code)) problems.add('$', w.message, lineAt(w.pos[0]));
    }
  }

  const first = list[0];
  let value: unknown = null;
  let lines: ReadonlyMap<string, number> = new Map();
  if (first) {
    const conv = new Converter(first, lc, lim, problems);
    lines = conv.lines;
    try {
      value = conv.convert(first.contents, [], 0);
    } catch (e) {
      if (e instanceof CapExceeded) throw yamlMalformed([{ path: '$', message: e.message }]);
      throw e;
    }
    // Backstop: a tag the AST did not carry (for example on a document-level empty node).
    if (conv.tagProblems === 0 && scan.tagLines.length > 0) {
      problems.add('$', 'explicit YAML tags are not allowed', scan.tagLines[0]);
    }
  }
  if (problems.size === 0 && covered.length > 0) {
    for (const c of covered) problems.add('$', c.message, c.line);
  }
  if (problems.size > 0) throw dagInvalid(problems.list());
  return { value, lines };
}

/** The line of `path` or of its nearest ancestor that has one. */
export function lineFor(lines: ReadonlyMap<string, number>, path: string): number | undefined {
  let p = path;
  for (;;) {
    const l = lines.get(p);
    if (l !== undefined) return l;
    const cut = Math.max(p.lastIndexOf('.'), p.lastIndexOf('['));
    if (cut <= 0) return undefined;
    p = p.slice(0, cut);
  }
}
