/**
 * The DAG YAML module: safe parsing, v1 validation, hashing.
 * Typical use (deploy): `const { spec, yamlHash } = parseDag(body, catalog);`
 */
import { TraceError } from '../core/errors.js';
import type { OperatorCatalog } from './catalog-types.js';
import type { DagSpec } from './types.js';
import { SAFE_YAML_DEFAULTS, lineFor, parseYamlWithLines, type SafeYamlOptions } from './safe-yaml.js';
import { validateDag, type ValidateOptions } from './validate.js';
import { yamlHash } from './hash.js';
import { dagInvalid, yamlMalformed, type DagProblem } from './problems.js';

export type { OperatorCatalog, OperatorInfo, OperatorRuntime, OperatorActivation } from './catalog-types.js';
export type { DagSpec, JobSpec, InputEdge, PublishSpec, Scalar, SourceSpec, JobOutputRef, DatasetRef } from './types.js';
export { isDatasetRef } from './types.js';
export { parseYamlSafely, SAFE_YAML_DEFAULTS, FORBIDDEN_KEYS, type SafeYamlOptions } from './safe-yaml.js';
export { validateDag, type ValidateOptions } from './validate.js';
export { yamlHash, jobConfigHash, lineageHashes, topoOrder } from './hash.js';
export { type DagProblem, MAX_PROBLEMS } from './problems.js';

export type ParseDagOptions = SafeYamlOptions & ValidateOptions;

/**
 * Safe parse + validate. `text` may be the raw request bytes (hashed as given, decoded as strict
 * UTF-8) or a string (hashed as its UTF-8 encoding). Validation problems carry the line of the
 * field, or of its nearest enclosing field, when the YAML gives one.
 * Throws 400 YAML_MALFORMED or 422 DAG_INVALID.
 */
export function parseDag(text: string | Uint8Array, catalog: OperatorCatalog, opts: ParseDagOptions = {}): { spec: DagSpec; yamlHash: string } {
  let source: string;
  if (typeof text === 'string') source = text;
  else {
    const maxBytes = opts.maxBytes ?? SAFE_YAML_DEFAULTS.maxBytes;
    if (text.byteLength > maxBytes) {
      throw yamlMalformed([{ path: '$', message: `YAML is ${text.byteLength} bytes; the limit is ${maxBytes}` }]);
    }
    try {
      source = new TextDecoder('utf-8', { fatal: true }).decode(text);
    } catch {
      throw yamlMalformed([{ path: '$', message: 'YAML must be UTF-8 text' }]);
    }
  }
  const { value, lines } = parseYamlWithLines(source, opts);
  let spec: DagSpec;
  try {
    spec = validateDag(value, catalog, opts);
  } catch (e) {
    if (e instanceof TraceError && e.code === 'DAG_INVALID' && e.problems) {
      const withLines = e.problems.map((p): DagProblem => {
        const line = lineFor(lines, p.path);
        return line === undefined ? { ...p } : { ...p, line };
      });
      // document order (stable; problems without a line keep their place at the end)
      withLines.sort((a, b) => (a.line ?? Number.MAX_SAFE_INTEGER) - (b.line ?? Number.MAX_SAFE_INTEGER));
      throw dagInvalid(withLines);
    }
    throw e;
  }
  return { spec, yamlHash: yamlHash(text) };
}
