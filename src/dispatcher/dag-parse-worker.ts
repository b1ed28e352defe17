/**
 * Worker thread of the DAG parser (dag-parser.ts): parses and validates DAG YAML off the
 * Dispatcher's event loop. The operator catalog is rebuilt here from the registry with the same
 * options the Dispatcher built its own with (`workerData.includeTestOperators`).
 */
import { parentPort, workerData } from 'node:worker_threads';
import { TraceError } from '../core/errors.js';
import { operatorCatalog } from '../operators/registry.js';
import { parseAndHash, type DagParseReply, type DagParseRequest } from './dag-parser.js';

const catalog = operatorCatalog({ includeTestOperators: (workerData as { includeTestOperators?: boolean } | undefined)?.includeTestOperators === true });
const port = parentPort!;

port.on('message', (m: DagParseRequest) => {
  let reply: DagParseReply;
  try {
    const { spec, yamlHash, configHashes, lineageHashes } = parseAndHash(m.text, catalog, m.opts);
    reply = { id: m.id, ok: true, specJson: JSON.stringify(spec), yamlHash, configHashes, lineageHashes };
  } catch (e) {
    if (e instanceof TraceError) {
      reply = { id: m.id, ok: false, error: { status: e.status, code: e.code, message: e.message, ...(e.problems ? { problems: e.problems } : {}) } };
    } else {
      reply = { id: m.id, ok: false, error: { status: 500, code: 'DAG_PARSE_FAILED', message: 'the DAG could not be parsed' } };
    }
  }
  port.postMessage(reply);
});
port.postMessage({ ready: true });
