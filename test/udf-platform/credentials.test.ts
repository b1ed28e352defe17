/**
 * Credential minting (contracts/credential_minting.md): prefix canonicalization, deny-by-default
 * scope derivation, the STS session policy and AssumeRole request shape (stubbed client), the
 * attempt scopes in capability tokens, and `POST /v1/task/credentials` over HTTP in the
 * embedded profile (file grants plus signed uploads into the attempt's own prefixes).
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { AssumeRoleCommand } from '@aws-sdk/client-sts';
import { TraceError } from '../../src/core/errors.js';
import {
  StsCredentialMinter, attemptScopes, buildSessionPolicy, canonicalizePrefix, deriveScope, withAttemptScopes,
} from '../../src/dispatcher/udf/index.js';
import { createCapabilityIssuer } from '../../src/auth/capability.js';
import type { CapabilityClaims } from '../../src/auth/capability-claims.js';
import { BACKENDS } from '../support/db.js';
import { buildUdfPlatform, deployDag, triggerJob, TEST_SECRETS, type UdfPlatform } from './support.js';

const TASK = '11111111-2222-4333-8444-555555555555';
const ORG = '99999999-2222-4333-8444-555555555555';
const ROOT = 's3://trace-scratch/env1/';

function code(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    if (e instanceof TraceError) return e.code;
    throw e;
  }
  return 'OK';
}

function claims(s3: { read_prefixes: string[]; write_prefixes: string[] }, expIn = 3600): CapabilityClaims {
  const now = Math.floor(Date.now() / 1000);
  return { iss: 'trace-dispatcher', aud: 'trace.task', sub: `task:${TASK}`, exp: now + expIn, iat: now, org_id: ORG, task_id: TASK, attempt: 2, datasets: [], s3 };
}

describe('prefix canonicalization and scope derivation', () => {
  it('canonicalizes s3 and file prefixes as directories', () => {
    assert.deepEqual(canonicalizePrefix('s3://trace-scratch/env1/buffers/t/1'), { scheme: 's3', url: 's3://trace-scratch/env1/buffers/t/1/', bucket: 'trace-scratch', prefix: 'env1/buffers/t/1/' });
    assert.deepEqual(canonicalizePrefix('s3://trace-scratch/a/'), { scheme: 's3', url: 's3://trace-scratch/a/', bucket: 'trace-scratch', prefix: 'a/' });
    const f = canonicalizePrefix('file:///var/trace/objects/scratch/t/1/');
    assert.equal(f.scheme, 'file');
    assert.equal(f.url, 'file:///var/trace/objects/scratch/t/1/');
  });

  it('refuses .., empty prefixes, wildcards, bad buckets and other schemes', () => {
    for (const bad of [
      's3://trace-scratch/a/../b/', 's3://trace-scratch/a/%2e%2e/b/', 's3://trace-scratch/a..b/', // ..
      's3://trace-scratch/', 's3://trace-scratch', '', // empty prefix
      's3://trace-scratch/a*/', 's3://trace-scratch/a/?/', 's3://trace-scratch/a%2A/', 's3://trace-scratch/*', // wildcard widening
      's3:///a/', 's3://Bad_Bucket/a/', 'https://trace-scratch.s3.amazonaws.com/a/', 'file:///', 'file://host/a/', 'a/b/', // scheme, bucket
      's3://trace-scratch/a//b/', 's3://trace-scratch/./a/', 's3://trace-scratch/a\nb/',
    ]) {
      assert.equal(code(() => canonicalizePrefix(bad)), 'CREDENTIAL_SCOPE_INVALID', bad);
    }
  });

  it('derives deny by default: wrong bucket, outside the root, or one bad prefix refuses all', () => {
    const ok = deriveScope({ read_prefixes: [`${ROOT}buffers/t/1/`, `${ROOT}scratch/t/1/`], write_prefixes: [`${ROOT}buffers/t/1/`] }, ROOT);
    assert.deepEqual(ok.read.map((p) => p.url), [`${ROOT}buffers/t/1/`, `${ROOT}scratch/t/1/`]);
    assert.deepEqual(ok.write.map((p) => p.url), [`${ROOT}buffers/t/1/`]);
    assert.equal(code(() => deriveScope({ read_prefixes: ['s3://other-bucket/env1/buffers/t/1/'], write_prefixes: [] }, ROOT)), 'CREDENTIAL_SCOPE_INVALID');
    assert.equal(code(() => deriveScope({ read_prefixes: ['s3://trace-scratch/env2/x/'], write_prefixes: [] }, ROOT)), 'CREDENTIAL_SCOPE_INVALID');
    assert.equal(code(() => deriveScope({ read_prefixes: [`${ROOT}ok/`], write_prefixes: [`${ROOT}a/*`] }, ROOT)), 'CREDENTIAL_SCOPE_INVALID');
    assert.equal(code(() => deriveScope({ read_prefixes: ['file:///tmp/x/'], write_prefixes: [] }, ROOT)), 'CREDENTIAL_SCOPE_INVALID');
    assert.equal(code(() => deriveScope({ read_prefixes: [], write_prefixes: [] }, ROOT)), 'NO_OBJECT_STORE_SCOPE');
    assert.equal(code(() => deriveScope(undefined, ROOT)), 'CREDENTIAL_SCOPE_INVALID');
    // The root itself is never a grant (only strictly inside it).
    assert.equal(code(() => deriveScope({ read_prefixes: [ROOT], write_prefixes: [] }, ROOT)), 'CREDENTIAL_SCOPE_INVALID');
    // Nested prefixes collapse to the outer one.
    const n = deriveScope({ read_prefixes: [`${ROOT}a/`, `${ROOT}a/b/`, `${ROOT}a/`], write_prefixes: [] }, ROOT);
    assert.deepEqual(n.read.map((p) => p.url), [`${ROOT}a/`]);
  });
});

describe('STS session policy and AssumeRole request', () => {
  const scope = deriveScope({ read_prefixes: [`${ROOT}buffers/t/2/`, `${ROOT}datasets/d/v/`], write_prefixes: [`${ROOT}buffers/t/2/`] }, ROOT);

  it('grants object-level Get/Put within the prefixes and List only under an s3:prefix condition', () => {
    assert.deepEqual(buildSessionPolicy(scope), {
      Version: '2012-10-17',
      Statement: [
        { Sid: 'TraceTaskRead', Effect: 'Allow', Action: ['s3:GetObject'], Resource: ['arn:aws:s3:::trace-scratch/env1/buffers/t/2/*', 'arn:aws:s3:::trace-scratch/env1/datasets/d/v/*'] },
        { Sid: 'TraceTaskWrite', Effect: 'Allow', Action: ['s3:PutObject'], Resource: ['arn:aws:s3:::trace-scratch/env1/buffers/t/2/*'] },
        {
          Sid: 'TraceTaskList0', Effect: 'Allow', Action: ['s3:ListBucket'], Resource: ['arn:aws:s3:::trace-scratch'],
          Condition: { StringLike: { 's3:prefix': ['env1/buffers/t/2/*', 'env1/datasets/d/v/*'] } },
        },
      ],
    });
    const text = JSON.stringify(buildSessionPolicy(scope));
    assert.ok(!/"\*"|:::\*|trace-scratch\/\*"/.test(text), 'no bucket-wide or account-wide resource');
  });

  it('builds the AssumeRole input (policy, clamped duration, session name, tags) and maps the answer', async () => {
    const sent: AssumeRoleCommand[] = [];
    const expiration = new Date(Date.now() + 900_000);
    const minter = new StsCredentialMinter({
      client: { send: async (cmd) => { sent.push(cmd); return { $metadata: {}, Credentials: { AccessKeyId: 'ASIAEXAMPLE', SecretAccessKey: 'secret', SessionToken: 'session', Expiration: expiration } }; } },
      roleArn: 'arn:aws:iam::123456789012:role/trace-task-scratch',
      rootUrl: ROOT,
      durationSeconds: 7200,
      region: 'eu-west-1',
    });
    const c = claims({ read_prefixes: [`${ROOT}buffers/t/2/`], write_prefixes: [`${ROOT}buffers/t/2/`] }, 7200);
    const input = minter.buildRequest(c, deriveScope(c.s3, ROOT));
    assert.equal(input.RoleArn, 'arn:aws:iam::123456789012:role/trace-task-scratch');
    assert.equal(input.DurationSeconds, 3600, 'clamped to one hour');
    // Never longer than the capability token itself.
    assert.ok(minter.buildRequest(claims(c.s3, 2000), deriveScope(c.s3, ROOT)).DurationSeconds! <= 2000);
    assert.equal(input.RoleSessionName, `trace-${TASK.replace(/-/g, '')}-2`);
    assert.deepEqual(JSON.parse(input.Policy!), buildSessionPolicy(deriveScope(c.s3, ROOT)));
    assert.deepEqual(input.Tags, [{ Key: 'trace_org_id', Value: ORG }, { Key: 'trace_task_id', Value: TASK }, { Key: 'trace_attempt', Value: '2' }]);
    // A token about to expire still gets the STS minimum (900 s).
    assert.equal(minter.buildRequest(claims(c.s3, 60), deriveScope(c.s3, ROOT)).DurationSeconds, 900);

    const grant = await minter.mint(c, deriveScope(c.s3, ROOT));
    assert.equal(sent.length, 1);
    assert.ok(sent[0] instanceof AssumeRoleCommand);
    assert.deepEqual(sent[0]!.input, input);
    assert.deepEqual(grant, {
      scheme: 's3', expires_at: expiration.toISOString(), access_key_id: 'ASIAEXAMPLE', secret_access_key: 'secret', session_token: 'session',
      read_prefixes: [`${ROOT}buffers/t/2/`], write_prefixes: [`${ROOT}buffers/t/2/`], region: 'eu-west-1',
    });

    const failing = new StsCredentialMinter({ client: { send: async () => { throw Object.assign(new Error('denied'), { name: 'AccessDenied' }); } }, roleArn: 'arn:aws:iam::123456789012:role/x', rootUrl: ROOT });
    await assert.rejects(failing.mint(c, deriveScope(c.s3, ROOT)), (e: TraceError) => e.code === 'CREDENTIALS_UNAVAILABLE' && !e.message.includes('secret'));
    assert.throws(() => new StsCredentialMinter({ client: { send: async () => ({ $metadata: {} }) }, roleArn: 'arn:aws:iam::123456789012:role/x', rootUrl: 'file:///tmp/x/' }));
  });

  it('refuses a file scope in an STS policy and a policy too large for STS', () => {
    const fileScope = deriveScope({ read_prefixes: ['file:///srv/objects/a/'], write_prefixes: [] }, 'file:///srv/objects/');
    assert.equal(code(() => buildSessionPolicy(fileScope)), 'CREDENTIAL_PROFILE_MISMATCH');
    const many = Array.from({ length: 60 }, (_, i) => `${ROOT}datasets/${'d'.repeat(20)}${i}/`);
    assert.equal(code(() => buildSessionPolicy(deriveScope({ read_prefixes: many, write_prefixes: [] }, ROOT))), 'CREDENTIAL_SCOPE_TOO_LARGE');
  });
});

describe('attempt scopes in the capability token', () => {
  it('grants the attempt its own buffer and scratch prefixes, plus S3 dataset prefixes to read', async () => {
    const s = attemptScopes({ task_id: TASK, attempt: 3 }, {
      rootUrl: ROOT,
      datasets: [
        { dataset_uuid: TASK, dataset_version: TASK, storage_ref: { scheme: 's3', bucket: 'cold-data', prefix: 'datasets/x/v1/', glob: '*.parquet' } },
        { dataset_uuid: TASK, dataset_version: TASK, storage_ref: { scheme: 'file', prefix: '/srv/d/', glob: '*.parquet' } },
      ],
    });
    assert.deepEqual(s.write_prefixes, [`${ROOT}buffers/${TASK}/3/`, `${ROOT}scratch/${TASK}/3/`]);
    assert.deepEqual(s.read_prefixes, [`${ROOT}buffers/${TASK}/3/`, `${ROOT}scratch/${TASK}/3/`, 's3://cold-data/datasets/x/v1/']);
    const issuer = withAttemptScopes(await createCapabilityIssuer({ alg: 'HS256', current: { kid: 'k', secret: 's'.repeat(40) } }), 'file:///srv/objects/');
    const token = await issuer.sign({ org_id: ORG, task_id: TASK, attempt: 1, datasets: [], s3: { read_prefixes: [], write_prefixes: [] } }, 60);
    const verified = await issuer.verifier().verify(token);
    assert.deepEqual(verified.s3.write_prefixes, [`file:///srv/objects/buffers/${TASK}/1/`, `file:///srv/objects/scratch/${TASK}/1/`]);
  });
});

for (const backend of BACKENDS) {
  describe(`POST /v1/task/credentials (${backend})`, () => {
    let p: UdfPlatform;
    before(async () => {
      p = await buildUdfPlatform(backend, { worker: false, sink: false, delivery: false, query: false, settings: { leaseSeconds: 30 } });
      await deployDag(p, `name: creds
jobs:
  - name: src
    activation: source
    runtime: ecs_platform
    operator: noop
    source: { kind: manual }
    outputs: 1
    max_attempts: 3
`);
    });
    after(async () => { await p.close(); });

    const claim = async (taskId: string) => {
      const r = await fetch(`${p.url}/internal/task-claim`, { method: 'POST', headers: { 'content-type': 'application/json', 'x-trace-worker-token': TEST_SECRETS.worker }, body: JSON.stringify({ task_id: taskId, worker_id: 't' }) });
      const b = await r.json() as any;
      assert.equal(b.status, 'Claimed');
      return b as { attempt: number; lease_token: string; capability_token: string };
    };
    const call = async (path: string, lease: { attempt: number; lease_token: string; capability_token: string }, taskId: string, extra: Record<string, unknown> = {}, token = lease.capability_token) => {
      const r = await fetch(`${p.url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json', 'x-trace-task-capability': token }, body: JSON.stringify({ task_id: taskId, attempt: lease.attempt, lease_token: lease.lease_token, ...extra }) });
      return { status: r.status, body: await r.json() as any };
    };

    it('mints file grants for exactly the attempt prefixes and signed uploads inside them', async () => {
      const taskId = await triggerJob(p, 'creds', 'src', {});
      const lease = await claim(taskId);
      const r = await call('/v1/task/credentials', lease, taskId, { uploads: [{ name: 'alerts.jsonl' }, { name: 'part/0.bin', area: 'scratch', max_bytes: 10 }] });
      assert.equal(r.status, 200, JSON.stringify(r.body));
      const root = p.store.localDir('');
      assert.deepEqual(r.body.credentials.write_prefixes, [`${root}/buffers/${taskId}/1/`, `${root}/scratch/${taskId}/1/`]);
      assert.equal(r.body.credentials.scheme, 'file');
      const [a, b] = r.body.uploads;
      assert.equal(a.uri, p.store.url(`buffers/${taskId}/1/alerts.jsonl`));
      assert.equal(b.uri, p.store.url(`scratch/${taskId}/1/part/0.bin`));
      assert.equal(b.max_bytes, 10);
      assert.equal((await fetch(a.url, { method: 'PUT', body: '{"x":1}\n' })).status, 200);
      assert.equal(Buffer.from(await p.store.get(`buffers/${taskId}/1/alerts.jsonl`)).toString(), '{"x":1}\n');
      assert.equal((await fetch(b.url, { method: 'PUT', body: 'x'.repeat(11) })).status, 413, 'the signed cap holds');
    });

    it('refuses unsafe upload names, foreign tokens, stale attempts and finished tasks', async () => {
      const taskId = await triggerJob(p, 'creds', 'src', {});
      const lease = await claim(taskId);
      for (const name of ['../x', '/abs', 'a/../../b', 'a*', '']) {
        const r = await call('/v1/task/credentials', lease, taskId, { uploads: [{ name }] });
        assert.equal(r.status, 400, name);
      }
      const none = await fetch(`${p.url}/v1/task/credentials`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ task_id: taskId, attempt: 1, lease_token: lease.lease_token }) });
      assert.equal(none.status, 401);
      const other = await claim(await triggerJob(p, 'creds', 'src', {}));
      const mismatch = await call('/v1/task/credentials', lease, taskId, {}, other.capability_token);
      assert.equal(mismatch.status, 403);
      assert.equal(mismatch.body.code, 'CAPABILITY_MISMATCH');
      // Fail attempt 1, let the retry claim attempt 2: attempt 1's lease is stale.
      assert.equal((await call('/v1/task/complete', lease, taskId, { status: 'Failed', error_message: 'x' })).status, 200);
      const finished = await call('/v1/task/credentials', lease, taskId);
      assert.equal(finished.status, 409);
      await new Promise((r) => setTimeout(r, 400));
      const second = await claim(taskId);
      assert.equal(second.attempt, 2);
      const stale = await call('/v1/task/credentials', lease, taskId);
      assert.equal(stale.status, 403);
      const fresh = await call('/v1/task/credentials', second, taskId, { uploads: [{ name: 'b.jsonl' }] });
      assert.equal(fresh.status, 200);
      assert.ok(fresh.body.uploads[0].uri.includes(`/buffers/${taskId}/2/`));
    });
  });
}
