/** `trace query-service` names every missing or invalid setting in one startup error, before it opens anything. */
import { it } from 'node:test';
import assert from 'node:assert/strict';
import { runQueryServiceProcess } from '../../src/query/main.js';
import { queryConfigFromEnv } from '../../src/query/settings.js';
import { QUERY_SERVICE_DEFAULTS } from '../../src/query/service.js';

it('refuses to start without the Dispatcher (lease checks) and with bad executor settings', async () => {
  await assert.rejects(runQueryServiceProcess({}), (e: unknown) => {
    const m = (e as Error).message;
    for (const name of ['TRACE_STATE_DATABASE_URL', 'TRACE_DATA_DATABASE_URL', 'TRACE_DISPATCHER_URL', 'TRACE_USER_JWT_SECRET']) assert.ok(m.includes(name), m);
    return true;
  });
  await assert.rejects(runQueryServiceProcess({
    TRACE_STATE_DATABASE_URL: 'postgres://x@127.0.0.1:1/s', TRACE_DATA_DATABASE_URL: 'postgres://x@127.0.0.1:1/d',
    TRACE_DISPATCHER_URL: 'http://127.0.0.1:1', TRACE_TASK_CAPABILITY_SECRET: 'k'.repeat(48), TRACE_USER_JWT_SECRET: 'u'.repeat(48),
    TRACE_QUERY_EXECUTORS: '0', TRACE_QUERY_EXECUTOR_MEMORY_MB: 'lots', TRACE_QUERY_RESULT_RETENTION_SECONDS: '5',
  }), (e: unknown) => {
    const m = (e as Error).message;
    assert.match(m, /TRACE_QUERY_EXECUTORS must be an integer from 1 to 64/);
    assert.match(m, /TRACE_QUERY_EXECUTOR_MEMORY_MB must be an integer from 128/);
    assert.match(m, /TRACE_QUERY_RESULT_RETENTION_SECONDS must be an integer from 60/);
    return true;
  });
});

it('TRACE_QUERY_RESULT_RETENTION_SECONDS sets how long batch query results are kept (default 7 days)', () => {
  assert.equal(QUERY_SERVICE_DEFAULTS.resultRetentionSeconds, 7 * 24 * 3600);
  assert.equal(queryConfigFromEnv({ TRACE_QUERY_RESULT_RETENTION_SECONDS: '3600' }).resultRetentionSeconds, 3600);
  assert.equal(queryConfigFromEnv({}).resultRetentionSeconds, undefined);
});
