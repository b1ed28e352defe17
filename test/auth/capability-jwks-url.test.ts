// Capability verification against the task-JWKS served over real HTTP on 127.0.0.1.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { createCapabilityIssuer, createCapabilityVerifier, type TaskJwks } from '../../src/auth/index.js';
import { capabilityPayload, grant, rawHs256, rejects } from './support.js';

interface JwksServer {
  url: string;
  hits: () => number;
  publish: (jwks: TaskJwks) => void;
  close: () => Promise<void>;
}

async function serveJwks(initial: TaskJwks): Promise<JwksServer> {
  let doc = initial;
  let hits = 0;
  const server: Server = createServer((req, res) => {
    hits++;
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify(doc));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}/internal/jwks/task`,
    hits: () => hits,
    publish: (j) => {
      doc = j;
    },
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

const servers: JwksServer[] = [];
after(async () => {
  await Promise.all(servers.map((s) => s.close()));
});

test('verifies via the JWKS URL, caches it, refetches an unknown kid at most once per cooldown', async () => {
  const one = await createCapabilityIssuer({ alg: 'ES256' });
  const two = await createCapabilityIssuer({ alg: 'ES256' });
  const three = await createCapabilityIssuer({ alg: 'ES256' });
  const srv = await serveJwks(one.jwks());
  servers.push(srv);
  const v = createCapabilityVerifier({ jwksUrl: srv.url, cooldownSeconds: 0.4 });

  const g = grant();
  assert.equal((await v.verify(await one.sign(g, 60))).task_id, g.task_id);
  assert.equal(srv.hits(), 1);
  await v.verify(await one.sign(grant(), 60));
  assert.equal(srv.hits(), 1, 'cached');

  // Unknown kid inside the cooldown: refused without hammering the endpoint.
  const tokenTwo = await two.sign(grant(), 60);
  for (let i = 0; i < 5; i++) await rejects(v.verify(tokenTwo), 401, 'INVALID_CAPABILITY');
  assert.equal(srv.hits(), 1);

  // The new key is published; after the cooldown one refetch picks it up.
  srv.publish({ keys: [...one.jwks().keys, ...two.jwks().keys] });
  await sleep(500);
  assert.ok(await v.verify(tokenTwo));
  assert.equal(srv.hits(), 2);

  // A burst of unknown kids right after a fetch causes no further fetches.
  const tokenThree = await three.sign(grant(), 60);
  for (let i = 0; i < 5; i++) await rejects(v.verify(tokenThree), 401, 'INVALID_CAPABILITY');
  assert.equal(srv.hits(), 2);
  // After the cooldown: exactly one more fetch for the whole burst.
  await sleep(500);
  await Promise.all(Array.from({ length: 5 }, () => rejects(v.verify(tokenThree), 401, 'INVALID_CAPABILITY')));
  assert.equal(srv.hits(), 3);

  // HS256 is refused before any fetch, whatever the secret.
  const before = srv.hits();
  const forged = rawHs256({ alg: 'HS256', kid: one.kid, typ: 'trace-task+jwt' }, capabilityPayload(), JSON.stringify(one.jwks().keys[0]));
  await rejects(v.verify(forged), 401, 'INVALID_CAPABILITY');
  assert.equal(srv.hits(), before);
});

test('never fetches a URL named by the token (jku / x5u)', async () => {
  const issuer = await createCapabilityIssuer({ alg: 'ES256' });
  const trusted = await serveJwks(issuer.jwks());
  const evil = await serveJwks(issuer.jwks());
  servers.push(trusted, evil);
  const v = createCapabilityVerifier({ jwksUrl: trusted.url });
  const good = await issuer.sign(grant(), 60);
  const [h, p, s] = good.split('.');
  for (const extra of [{ jku: evil.url }, { x5u: evil.url }]) {
    const header = { ...JSON.parse(Buffer.from(h!, 'base64url').toString()), ...extra };
    const token = `${Buffer.from(JSON.stringify(header)).toString('base64url')}.${p}.${s}`;
    await rejects(v.verify(token), 401, 'INVALID_CAPABILITY');
  }
  assert.equal(evil.hits(), 0);
});

test('an unreachable JWKS URL is 503 TASK_JWKS_UNAVAILABLE, not a credential error', async () => {
  const issuer = await createCapabilityIssuer({ alg: 'ES256' });
  const srv = await serveJwks(issuer.jwks());
  const url = srv.url;
  await srv.close();
  const v = createCapabilityVerifier({ jwksUrl: url, timeoutMs: 2000 });
  await rejects(v.verify(await issuer.sign(grant(), 60)), 503, 'TASK_JWKS_UNAVAILABLE');
  // Garbage is still a 401 and needs no fetch.
  await rejects(v.verify('garbage'), 401, 'INVALID_CAPABILITY');
});
