import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { InvokeCommand, type InvokeCommandOutput } from '@aws-sdk/client-lambda';
import type { LambdaInvocationPayload } from '../../src/udf/invocation.js';
import { AwsLambdaInvoker, completionFromResult, LocalProcessInvoker, type InvokeResult, type LoadedBundle } from '../../src/udf/invoker.js';
import type { UdfSandbox } from '../../src/udf/sandbox/sandbox.js';
import { goodBundle, sha256, type BundleEntry, type ManifestOpts } from './support/zips.js';
import { runDirs, startTestSandbox } from './support/sandbox.js';

const ROOT = new URL('../../', import.meta.url).pathname;
const NODE_SDK = readFileSync(join(ROOT, 'sdk/node/trace-udf.mjs'), 'utf8');
const PY_SDK = readFileSync(join(ROOT, 'sdk/python/trace_udf.py'), 'utf8');

const TOKEN = 'eyJhbGciOiJIUzI1NiJ9.' + 'c'.repeat(60) + '.sig';
const TASK = '11111111-1111-4111-8111-111111111111';
const LEASE = '22222222-2222-4222-8222-222222222222';
const DATASET = '33333333-3333-4333-8333-333333333333';

interface Seen {
  path: string;
  capability: string | undefined;
  body: Record<string, unknown>;
}

let server: Server;
let baseUrl: string;
let seen: Seen[] = [];
/** Per-path canned answers; default 200 with an echo. */
let answers: Record<string, { status: number; body: unknown }> = {};
let boxed: UdfSandbox & { dispose(): Promise<void> };
let unsafe: UdfSandbox & { dispose(): Promise<void> };

function readBody(req: IncomingMessage): Promise<string> {
  return new Promise((res) => {
    let s = '';
    req.on('data', (c) => (s += c));
    req.on('end', () => res(s));
  });
}

before(async () => {
  boxed = await startTestSandbox();
  unsafe = await startTestSandbox({ mode: 'unsafe-none' });
  server = createServer(async (req, res) => {
    const body = JSON.parse((await readBody(req)) || '{}') as Record<string, unknown>;
    const path = req.url ?? '';
    seen.push({ path, capability: req.headers['x-trace-task-capability'] as string | undefined, body });
    const canned = answers[path];
    const out = canned ?? { status: 200, body: path === '/v1/task/query' ? { columns: [{ name: 'n', type: 'BIGINT' }], rows: [[3]], truncated: false } : { ok: true } };
    res.writeHead(out.status, { 'content-type': 'application/json' });
    res.end(JSON.stringify(out.body));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  baseUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});
after(async () => {
  await new Promise<void>((r) => server.close(() => r()));
  await boxed?.dispose();
  await unsafe?.dispose();
});

function payload(over: Partial<LambdaInvocationPayload> & { udf?: LambdaInvocationPayload['udf'] } = {}): LambdaInvocationPayload {
  return {
    task_id: TASK,
    attempt: 2,
    lease_token: LEASE,
    lease_expires_at: '2030-01-01T00:00:00Z',
    capability_token: TOKEN,
    udf: { bundle_id: 'bundle-1', entrypoint: 'index.mjs' },
    job: { dag_name: 'demo', name: 'alerts' },
    operator: 'udf',
    config: { threshold: 5 },
    inputs: [{ dataset_uuid: DATASET, dataset_version: DATASET, cursor: 10 }],
    ...over,
  };
}

async function invokerFor(files: BundleEntry[], opts: ManifestOpts = {}, extra: Partial<ConstructorParameters<typeof LocalProcessInvoker>[0]> = {}) {
  const bytes = await goodBundle(files, opts);
  const loaded: LoadedBundle = { bytes, sha256: sha256(bytes) };
  const calls: string[] = [];
  const inv = new LocalProcessInvoker({
    sandbox: boxed,
    loadBundle: async (id) => {
      calls.push(id);
      return loaded;
    },
    dispatcherUrl: baseUrl,
    queryUrl: `${baseUrl}/`,
    timeoutMs: 20_000,
    ...extra,
  });
  return { inv, calls, sha: loaded.sha256 };
}

function succeeded(r: InvokeResult): Extract<InvokeResult, { status: 'succeeded' }> {
  assert.equal(r.status, 'succeeded', JSON.stringify(r).slice(0, 800));
  return r as Extract<InvokeResult, { status: 'succeeded' }>;
}
function failedWith(r: InvokeResult, failure: string, retryable: boolean): void {
  assert.equal(r.status, 'failed', JSON.stringify(r).slice(0, 800));
  const f = r as Extract<InvokeResult, { status: 'failed' }>;
  assert.equal(f.failure, failure, JSON.stringify(r).slice(0, 800));
  assert.equal(f.retryable, retryable);
}

const NODE_UDF = `
import { run, query, emit, publishBuffer, heartbeat, TraceTaskError } from './trace-udf.mjs';
run(async (inv) => {
  console.log('this goes to stderr, not stdout');
  const q = await query('SELECT count(*) AS n FROM dataset', { dataset_uuid: inv.inputs[0].dataset_uuid, limit: 10 });
  await emit([{ dataset_uuid: inv.inputs[0].dataset_uuid, dataset_version: inv.inputs[0].dataset_version, cursor: 11 }]);
  await publishBuffer({ batch_uri: 's3://scratch/buffers/x/batch.jsonl', batch_size_bytes: 12, dedupe_scope: 'alert_events' });
  let hb;
  try { await heartbeat(); hb = 'ok'; } catch (e) { hb = e instanceof TraceTaskError ? { status: e.status, code: e.code, message: e.message } : String(e); }
  return { n: q.rows[0][0], heartbeat: hb, sawBundleUrl: 'bundle_url' in inv, threshold: inv.config.threshold,
           events: [{ dataset_uuid: inv.inputs[0].dataset_uuid, dataset_version: inv.inputs[0].dataset_version, cursor: 12 }] };
});
`;

const PY_UDF = `
import trace_udf

def handler(inv):
    print("this goes to stderr, not stdout")
    q = trace_udf.query("SELECT count(*) AS n FROM dataset", dataset_uuid=inv["inputs"][0]["dataset_uuid"], limit=10)
    trace_udf.emit([{"dataset_uuid": inv["inputs"][0]["dataset_uuid"], "dataset_version": inv["inputs"][0]["dataset_version"], "cursor": 11}])
    trace_udf.publish_buffer("s3://scratch/buffers/x/batch.jsonl", 12, "alert_events")
    try:
        trace_udf.heartbeat()
        hb = "ok"
    except trace_udf.TraceTaskError as e:
        hb = {"status": e.status, "code": e.code, "message": str(e)}
    return {"n": q["rows"][0][0], "heartbeat": hb, "sawBundleUrl": "bundle_url" in inv, "threshold": inv["config"]["threshold"],
            "events": [{"dataset_uuid": inv["inputs"][0]["dataset_uuid"], "dataset_version": inv["inputs"][0]["dataset_version"], "cursor": 12}]}

trace_udf.run(handler)
`;

function checkCalls(): void {
  const paths = seen.map((s) => s.path);
  assert.deepEqual(paths, ['/v1/task/query', '/v1/task/events', '/v1/task/buffer-publish', '/v1/task/heartbeat']);
  for (const s of seen) assert.equal(s.capability, TOKEN, `${s.path} must carry the capability token`);
  assert.deepEqual(seen[0]!.body, { task_id: TASK, attempt: 2, lease_token: LEASE, sql: 'SELECT count(*) AS n FROM dataset', dataset_id: DATASET, limit: 10 });
  for (const s of seen.slice(1)) {
    assert.equal(s.body.task_id, TASK);
    assert.equal(s.body.attempt, 2);
    assert.equal(s.body.lease_token, LEASE);
  }
  assert.deepEqual(seen[1]!.body.events, [{ dataset_uuid: DATASET, dataset_version: DATASET, cursor: 11 }]);
  assert.deepEqual(seen[2]!.body, { task_id: TASK, attempt: 2, lease_token: LEASE, batch_uri: 's3://scratch/buffers/x/batch.jsonl', content_type: 'application/jsonl', batch_size_bytes: 12, dedupe_scope: 'alert_events' });
}

describe('LocalProcessInvoker with the SDKs against real HTTP endpoints', () => {
  for (const [lang, mode] of [['node', 'bubblewrap'], ['python', 'bubblewrap'], ['node', 'unsafe-none'], ['python', 'unsafe-none']] as const) {
    it(`${lang} (${mode}): query, emit, publish_buffer and heartbeat through the task-scoped endpoints (${mode === 'bubblewrap' ? 'over the task channel socket' : 'over the URLs, as on Lambda'})`, async () => {
      seen = [];
      answers = { '/v1/task/heartbeat': { status: 403, body: { error: 'stale lease', code: 'STALE_LEASE' } } };
      const files = lang === 'node'
        ? [{ name: 'index.mjs', data: NODE_UDF }, { name: 'trace-udf.mjs', data: NODE_SDK }]
        : [{ name: 'main.py', data: PY_UDF }, { name: 'trace_udf.py', data: PY_SDK }];
      const { inv, calls } = await invokerFor(files, { runtime: lang }, mode === 'unsafe-none' ? { sandbox: unsafe } : {});
      const entry = files[0]!.name;
      const r = succeeded(await inv.invoke(payload({ bundle_url: 'https://bundles.example/b.zip', udf: { bundle_id: 'bundle-1', entrypoint: entry } })));
      assert.deepEqual(calls, ['bundle-1']);
      checkCalls();
      assert.equal(r.output.n, 3);
      assert.equal(r.output.threshold, 5);
      assert.equal(r.output.sawBundleUrl, false, 'bundle_url is not passed to the UDF');
      assert.deepEqual(r.output.heartbeat, { status: 403, code: 'STALE_LEASE', message: '/v1/task/heartbeat: stale lease' });
      assert.match(r.stderr, /this goes to stderr/);
      assert.deepEqual(completionFromResult(r), { status: 'Completed', events: [{ dataset_uuid: DATASET, dataset_version: DATASET, cursor: 12 }] });
      assert.deepEqual(runDirs(mode === 'unsafe-none' ? unsafe : boxed), []);
    });
  }

  it('a handler that throws exits non-zero with its message on stderr (node and python)', async () => {
    const node = await invokerFor([{ name: 'index.mjs', data: "import { run } from './trace-udf.mjs'; run(() => { throw new Error('no data for window'); });" }, { name: 'trace-udf.mjs', data: NODE_SDK }]);
    const r = await node.inv.invoke(payload());
    failedWith(r, 'exit_nonzero', true);
    assert.match((r as { stderr?: string }).stderr ?? '', /udf failed: no data for window/);
    assert.deepEqual(completionFromResult(r), { status: 'Failed', error_message: 'exit_nonzero: the UDF exited with code 1' });
    const py = await invokerFor([{ name: 'main.py', data: 'import trace_udf\ndef h(inv):\n    raise KeyError("dataset")\ntrace_udf.run(h)\n' }, { name: 'trace_udf.py', data: PY_SDK }], { runtime: 'python' });
    const r2 = await py.inv.invoke(payload({ udf: { bundle_id: 'b', entrypoint: 'main.py' } }));
    failedWith(r2, 'exit_nonzero', true);
    assert.match((r2 as { stderr?: string }).stderr ?? '', /udf failed: KeyError/);
  });

  it('a UDF may report its own failure in its output', async () => {
    const { inv } = await invokerFor([{ name: 'index.mjs', data: "process.stdout.write(JSON.stringify({ status: 'Failed', error_message: 'window incomplete' }))" }]);
    const r = succeeded(await inv.invoke(payload()));
    assert.deepEqual(completionFromResult(r), { status: 'Failed', error_message: 'window incomplete' });
  });

  it('refuses a malformed payload without loading the bundle', async () => {
    const { inv, calls } = await invokerFor([{ name: 'index.mjs', data: 'process.stdout.write("{}")' }]);
    const bad = { ...payload(), task_id: 'not-a-uuid' } as LambdaInvocationPayload;
    const r = await inv.invoke(bad);
    failedWith(r, 'bad_payload', false);
    assert.ok((r as { problems?: Array<{ path: string }> }).problems?.some((p) => p.path === 'task_id'));
    failedWith(await inv.invoke({ ...payload(), udf: undefined } as unknown as LambdaInvocationPayload), 'bad_payload', false);
    assert.deepEqual(calls, []);
  });

  it('reports an unloadable bundle as retryable, a pin mismatch and a wrong entrypoint as permanent', async () => {
    const failing = new LocalProcessInvoker({ sandbox: boxed, loadBundle: async () => { throw new Error('object store down'); }, dispatcherUrl: baseUrl, queryUrl: baseUrl });
    failedWith(await failing.invoke(payload()), 'bundle_unavailable', true);
    const { inv, sha } = await invokerFor([{ name: 'index.mjs', data: 'process.stdout.write("{}")' }]);
    failedWith(await inv.invoke(payload({ udf: { bundle_id: 'b', entrypoint: 'index.mjs', sha256: 'f'.repeat(64) } })), 'hash_mismatch', false);
    succeeded(await inv.invoke(payload({ udf: { bundle_id: 'b', entrypoint: 'index.mjs', sha256: sha } })));
    failedWith(await inv.invoke(payload({ udf: { bundle_id: 'b', entrypoint: 'main.js' } })), 'invalid_bundle', false);
    failedWith(await inv.invoke(payload({ udf: { bundle_id: 'b', entrypoint: 'index.mjs', runtime: 'python' } })), 'invalid_bundle', false);
  });

  it('bounds the run by the payload timeout_seconds, capped by maxTimeoutMs', async () => {
    const { inv } = await invokerFor([{ name: 'index.mjs', data: 'setInterval(() => {}, 1000)' }], {}, { maxTimeoutMs: 500 });
    const t0 = Date.now();
    failedWith(await inv.invoke(payload({ timeout_seconds: 3600 })), 'timeout', true);
    assert.ok(Date.now() - t0 < 5000);
  });
});

describe('AwsLambdaInvoker', () => {
  class StubLambda {
    commands: InvokeCommand[] = [];
    constructor(private readonly reply: (cmd: InvokeCommand) => Promise<Partial<InvokeCommandOutput>>) {}
    async send(cmd: InvokeCommand): Promise<InvokeCommandOutput> {
      this.commands.push(cmd);
      return { $metadata: { requestId: 'req-1' }, ...(await this.reply(cmd)) } as InvokeCommandOutput;
    }
  }
  const decode = (cmd: InvokeCommand) => JSON.parse(new TextDecoder().decode(cmd.input.Payload as Uint8Array)) as Record<string, unknown>;

  it('sends an Event invoke with the full payload and a pre-signed bundle_url', async () => {
    const client = new StubLambda(async () => ({ StatusCode: 202 }));
    const presigned: string[] = [];
    const inv = new AwsLambdaInvoker({
      client,
      functionName: 'trace-udf-runner-node',
      qualifier: 'live',
      presignBundleUrl: async (id) => {
        presigned.push(id);
        return `https://s3.example/udf/${id}.zip?X-Amz-Signature=abc`;
      },
    });
    const r = await inv.invoke(payload());
    assert.deepEqual(r, { status: 'accepted', requestId: 'req-1' });
    assert.equal(client.commands.length, 1);
    const cmd = client.commands[0]!;
    assert.ok(cmd instanceof InvokeCommand);
    assert.equal(cmd.input.FunctionName, 'trace-udf-runner-node');
    assert.equal(cmd.input.InvocationType, 'Event');
    assert.equal(cmd.input.Qualifier, 'live');
    assert.deepEqual(presigned, ['bundle-1']);
    assert.deepEqual(decode(cmd), { ...payload(), bundle_url: 'https://s3.example/udf/bundle-1.zip?X-Amz-Signature=abc' });
  });

  it('keeps a bundle_url the Dispatcher already supplied', async () => {
    const client = new StubLambda(async () => ({ StatusCode: 202 }));
    const inv = new AwsLambdaInvoker({ client, functionName: 'f', presignBundleUrl: async () => assert.fail('must not pre-sign') });
    await inv.invoke(payload({ bundle_url: 'https://given.example/b.zip' }));
    assert.equal(decode(client.commands[0]!).bundle_url, 'https://given.example/b.zip');
    assert.equal(client.commands[0]!.input.Qualifier, undefined);
  });

  it('RequestResponse: maps the runner Lambda result, function errors and SDK errors', async () => {
    const enc = (v: unknown) => new TextEncoder().encode(JSON.stringify(v));
    let reply: Partial<InvokeCommandOutput> = { StatusCode: 200, Payload: enc({ ok: true, output: { x: 1 }, stderr: '', stderrTruncated: false, exitCode: 0, durationMs: 12 }) as InvokeCommandOutput['Payload'] };
    const client = new StubLambda(async () => reply);
    const inv = new AwsLambdaInvoker({ client, functionName: 'f', invocationType: 'RequestResponse' });
    const p = payload({ bundle_url: 'https://given.example/b.zip' });
    assert.deepEqual(await inv.invoke(p), { status: 'succeeded', output: { x: 1 }, stderr: '', durationMs: 12 });
    assert.equal(client.commands[0]!.input.InvocationType, 'RequestResponse');

    reply = { StatusCode: 200, Payload: enc({ ok: false, failure: 'invalid_bundle', message: 'UDF bundle is invalid', stderr: '', stderrTruncated: false, exitCode: null, signal: null, durationMs: 0 }) as InvokeCommandOutput['Payload'] };
    failedWith(await inv.invoke(p), 'invalid_bundle', false);
    reply = { StatusCode: 200, FunctionError: 'Unhandled', Payload: enc({ errorType: 'Runtime.OOM', errorMessage: `leak ${TOKEN}` }) as InvokeCommandOutput['Payload'] };
    const fe = await inv.invoke(p);
    failedWith(fe, 'function_error', true);
    assert.ok(!JSON.stringify(fe).includes(TOKEN));
    reply = { StatusCode: 200, Payload: enc([1, 2]) as InvokeCommandOutput['Payload'] };
    failedWith(await inv.invoke(p), 'bad_output', true);

    const throwing = new AwsLambdaInvoker({ client: { send: async () => { const e = new Error('throttled'); e.name = 'TooManyRequestsException'; throw e; } }, functionName: 'f' });
    const te = await throwing.invoke(p);
    failedWith(te, 'invoke_error', true);
    assert.match((te as { message: string }).message, /TooManyRequestsException/);
  });

  it('refuses payloads it cannot send', async () => {
    const client = new StubLambda(async () => ({ StatusCode: 202 }));
    const noUrl = new AwsLambdaInvoker({ client, functionName: 'f' });
    failedWith(await noUrl.invoke(payload()), 'bad_payload', false);
    const small = new AwsLambdaInvoker({ client, functionName: 'f', maxPayloadBytes: 200 });
    failedWith(await small.invoke(payload({ bundle_url: 'https://given.example/b.zip' })), 'bad_payload', false);
    failedWith(await noUrl.invoke({ ...payload(), attempt: 0 }), 'bad_payload', false);
    assert.equal(client.commands.length, 0);
    const event = new AwsLambdaInvoker({ client: new StubLambda(async () => ({ StatusCode: 500 })), functionName: 'f' });
    failedWith(await event.invoke(payload({ bundle_url: 'https://given.example/b.zip' })), 'invoke_error', true);
  });
});
