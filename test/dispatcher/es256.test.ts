import { test } from 'node:test';
import assert from 'node:assert/strict';
import { generateKeyPairSync, createHmac } from 'node:crypto';
import { startPlatform, waitFor } from '../support/platform.js';
import { claimOk, deploy, taskCall, taskRow, trigger, twoJobDag } from '../support/drive.js';

test('ES256 profile: tokens verify against the published task JWKS; HS256 is refused', async () => {
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const next = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const p = await startPlatform('pglite', {
    workers: 1,
    env: {
      TRACE_TASK_CAPABILITY_ES256_PRIVATE_KEY: privateKey.export({ format: 'pem', type: 'pkcs8' }).toString(),
      TRACE_TASK_CAPABILITY_KID: 'es-current',
      TRACE_TASK_CAPABILITY_ES256_NEXT_PUBLIC_KEY: next.publicKey.export({ format: 'pem', type: 'spki' }).toString(),
      TRACE_TASK_CAPABILITY_NEXT_KID: 'es-next',
    },
  });
  try {
    const jwks = await (await fetch(`${p.url}/internal/jwks/task`, { headers: { 'x-trace-worker-token': p.info.worker_token } })).json() as { keys: Array<Record<string, unknown>> };
    assert.deepEqual(jwks.keys.map((k) => k.kid).sort(), ['es-current', 'es-next']);
    for (const k of jwks.keys) assert.equal(k.d, undefined, 'no private material in the JWKS');
    void publicKey;
    await deploy(p, twoJobDag());
    const id = await trigger(p, 'life', 'src');
    await waitFor('completed with ES256 tokens', async () => (await taskRow(p, id)).status === 'Completed');

    // Hand-claim one and forge an HS256 token with the ES256 kid: refused.
    await p.workers[0]!.stop();
    const id2 = await trigger(p, 'life', 'src');
    const lease = await claimOk(p, id2);
    const header = JSON.parse(Buffer.from(lease.capability_token.split('.')[0]!, 'base64url').toString());
    assert.equal(header.alg, 'ES256');
    assert.equal(header.kid, 'es-current');
    const body = lease.capability_token.split('.')[1]!;
    const forgedHeader = Buffer.from(JSON.stringify({ alg: 'HS256', kid: 'es-current', typ: 'trace-task+jwt' })).toString('base64url');
    const sig = createHmac('sha256', publicKey.export({ format: 'pem', type: 'spki' }).toString()).update(`${forgedHeader}.${body}`).digest('base64url');
    const r = await taskCall(p, 'heartbeat', lease, {}, `${forgedHeader}.${body}.${sig}`);
    assert.equal(r.status, 401);
    assert.equal((await taskCall(p, 'heartbeat', lease)).status, 200);
  } finally {
    await p.close();
  }
});
