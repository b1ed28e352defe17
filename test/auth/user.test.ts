import { test, describe, after } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { generateKeyPairSync } from 'node:crypto';
import { SignJWT, exportJWK } from 'jose';
import {
  createCapabilityIssuer,
  createUserVerifier,
  mintDevUserToken,
  userVerifierConfigFromEnv,
  DEV_USER_KID,
  type UserVerifier,
} from '../../src/auth/index.js';
import { readEnv } from '../../src/core/config.js';
import { grant, nowSec, rawEs256, rawHs256, rawUnsigned, rejects, SECRET, USER_SECRET } from './support.js';

const refused = (v: UserVerifier, header: string | undefined) => rejects(v.verify(header), 401, 'UNAUTHORIZED');
const bearer = (t: string) => `Bearer ${t}`;

const DEV_HEADER = { alg: 'HS256', kid: DEV_USER_KID, typ: 'JWT' };
const devPayload = (o: Record<string, unknown> = {}) => {
  const iat = nowSec();
  return { iss: 'trace-dev', aud: 'trace.user', sub: 'alice', iat, exp: iat + 600, ...o };
};

describe('dev mode (HS256, TRACE_USER_JWT_SECRET)', () => {
  const v = createUserVerifier({ mode: 'dev', secret: USER_SECRET });

  test('round trip through mintDevUserToken', async () => {
    const token = await mintDevUserToken(USER_SECRET, 'alice', { email: 'alice@example.com' });
    const id = await v.verify(bearer(token));
    assert.equal(id.sub, 'alice');
    assert.equal(id.iss, 'trace-dev');
    assert.equal(id.email, 'alice@example.com');
    assert.equal(id.claims.aud, 'trace.user');
    assert.equal((id.claims.exp ?? 0) - (id.claims.iat ?? 0), 24 * 3600);
    assert.equal((await v.verify(`bearer ${await mintDevUserToken(USER_SECRET, 'bob', { ttlSeconds: 60 })}`)).sub, 'bob');
    assert.equal((await v.verify(bearer(rawHs256(DEV_HEADER, devPayload(), USER_SECRET)))).email, undefined);
  });

  test('missing, malformed and non-Bearer headers', async () => {
    for (const h of [undefined, '', '   ', 'Bearer', 'Bearer ', 'Basic YWxpY2U6cHc=', 'Bearer garbage', 'Bearer a.b.c', 'Bearer a.b.c d']) {
      await refused(v, h);
    }
    await rejects(v.verify(null), 401, 'UNAUTHORIZED');
  });

  test('wrong secret, forged signature, expired, future iat', async () => {
    await refused(v, bearer(await mintDevUserToken('another-user-secret-of-enough-length-0000', 'alice')));
    const t = await mintDevUserToken(USER_SECRET, 'alice');
    await refused(v, bearer(`${t.slice(0, -4)}${t.endsWith('AAAA') ? 'BBBB' : 'AAAA'}`));
    const err = await refused(v, bearer(await mintDevUserToken(USER_SECRET, 'alice', { ttlSeconds: 60, clock: () => Date.now() - 3_600_000 })));
    assert.match(err.message, /expired/);
    await refused(v, bearer(await mintDevUserToken(USER_SECRET, 'alice', { clock: () => Date.now() + 120_000 })));
    // Within 60 s of skew: accepted.
    assert.ok(await v.verify(bearer(await mintDevUserToken(USER_SECRET, 'alice', { clock: () => Date.now() + 30_000 }))));
  });

  test('header hardening: alg none, header keys, unknown kid, other algorithms', async () => {
    for (const alg of ['none', 'NONE']) {
      await refused(v, bearer(rawUnsigned({ ...DEV_HEADER, alg }, devPayload())));
      await refused(v, bearer(rawUnsigned({ ...DEV_HEADER, alg }, devPayload(), 'AAAA')));
    }
    for (const extra of [
      { jwk: { kty: 'oct', k: Buffer.from(USER_SECRET).toString('base64url') } },
      { jku: 'http://127.0.0.1:9/jwks' },
      { x5u: 'http://127.0.0.1:9/x' },
      { x5c: ['MIIB'] },
      { crit: ['exp'] },
    ]) {
      await refused(v, bearer(rawHs256({ ...DEV_HEADER, ...extra }, devPayload(), USER_SECRET)));
    }
    await refused(v, bearer(rawHs256({ ...DEV_HEADER, kid: 'other' }, devPayload(), USER_SECRET)));
    await refused(v, bearer(rawHs256({ alg: 'HS256', typ: 'JWT' }, devPayload(), USER_SECRET)));
    await refused(v, bearer(rawHs256({ ...DEV_HEADER, alg: 'HS512' }, devPayload(), USER_SECRET)));
    const pair = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    await refused(v, bearer(rawEs256({ ...DEV_HEADER, alg: 'ES256' }, devPayload(), pair.privateKey)));
  });

  test('required claims, wrong iss/aud, non-finite exp', async () => {
    for (const claim of ['iss', 'aud', 'sub', 'exp']) {
      const p: Record<string, unknown> = devPayload();
      delete p[claim];
      await refused(v, bearer(rawHs256(DEV_HEADER, p, USER_SECRET)));
    }
    await refused(v, bearer(rawHs256(DEV_HEADER, devPayload({ iss: 'trace-dispatcher' }), USER_SECRET)));
    await refused(v, bearer(rawHs256(DEV_HEADER, devPayload({ aud: 'trace.other' }), USER_SECRET)));
    await refused(v, bearer(rawHs256(DEV_HEADER, devPayload({ sub: '' }), USER_SECRET)));
    await refused(v, bearer(rawHs256(DEV_HEADER, devPayload({ sub: 42 }), USER_SECRET)));
    await refused(v, bearer(rawHs256(DEV_HEADER, JSON.stringify(devPayload({ exp: 0 })).replace('"exp":0', '"exp":1e400'), USER_SECRET)));
    await refused(v, bearer(rawHs256(DEV_HEADER, devPayload({ exp: String(nowSec() + 60) }), USER_SECRET)));
    await refused(v, bearer(rawHs256(DEV_HEADER, devPayload({ nbf: nowSec() + 300 }), USER_SECRET)));
  });

  test('a capability token is never a user token', async () => {
    // A real capability token, even when the capability and user secrets are the same.
    const issuer = await createCapabilityIssuer({ alg: 'HS256', current: { kid: DEV_USER_KID, secret: USER_SECRET } });
    await refused(v, bearer(await issuer.sign(grant(), 60)));
    const e = await refused(createUserVerifier({ mode: 'dev', secret: SECRET }), bearer(await (await createCapabilityIssuer({ alg: 'HS256', current: { kid: 'k1', secret: SECRET } })).sign(grant(), 60)));
    assert.ok(!e.message.includes(SECRET));
    // User claims signed by the user key, but typed as a capability token: refused (control: without the typ it passes).
    assert.ok(await v.verify(bearer(rawHs256(DEV_HEADER, devPayload(), USER_SECRET))));
    const typed = await refused(v, bearer(rawHs256({ ...DEV_HEADER, typ: 'trace-task+jwt' }, devPayload(), USER_SECRET)));
    assert.match(typed.message, /capability/);
    await refused(v, bearer(rawHs256({ ...DEV_HEADER, typ: 'application/trace-task+jwt' }, devPayload(), USER_SECRET)));
    // An audience list that also names the task audience: refused.
    await refused(v, bearer(rawHs256(DEV_HEADER, devPayload({ aud: ['trace.user', 'trace.task'] }), USER_SECRET)));
    await refused(v, bearer(rawHs256(DEV_HEADER, devPayload({ sub: 'task:7d1f0e52-0000-4000-8000-000000000000' }), USER_SECRET)));
  });

  test('configuration errors', async () => {
    assert.throws(() => createUserVerifier({ mode: 'dev', secret: 'short' }), /32 bytes/);
    await assert.rejects(mintDevUserToken('short', 'alice'), /32 bytes/);
    await assert.rejects(mintDevUserToken(USER_SECRET, ''), TypeError);
    assert.throws(() => createUserVerifier({ mode: 'dev', secret: USER_SECRET, clockToleranceSeconds: 120 }));
    assert.throws(() => createUserVerifier({ mode: 'oidc', issuer: 'https://idp', audience: 'trace.task', jwksUrl: 'http://127.0.0.1:1/' }), /task audience/);
    assert.deepEqual(userVerifierConfigFromEnv(readEnv({ TRACE_USER_JWT_SECRET: USER_SECRET })), { mode: 'dev', secret: USER_SECRET });
    assert.equal(userVerifierConfigFromEnv(readEnv({})), undefined);
    assert.throws(() => userVerifierConfigFromEnv(readEnv({ TRACE_OIDC_ISSUER: 'https://idp' })), /together/);
    assert.deepEqual(
      userVerifierConfigFromEnv(readEnv({ TRACE_OIDC_ISSUER: 'https://idp', TRACE_OIDC_AUDIENCE: 'trace', TRACE_OIDC_JWKS_URL: 'http://127.0.0.1:1/jwks', TRACE_USER_JWT_SECRET: USER_SECRET })),
      { mode: 'oidc', issuer: 'https://idp', audience: 'trace', jwksUrl: 'http://127.0.0.1:1/jwks' },
    );
  });
});

describe('OIDC mode (RS256/ES256 from a JWKS URL)', () => {
  const ISS = 'https://idp.example.test/';
  const AUD = 'trace-api';
  const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const ec = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  let server: Server;
  let hits = 0;
  let url = '';

  const ready = (async () => {
    const keys = [
      { ...(await exportJWK(rsa.publicKey)), kid: 'rsa-1', alg: 'RS256', use: 'sig' },
      { ...(await exportJWK(ec.publicKey)), kid: 'ec-1', alg: 'ES256', use: 'sig' },
    ];
    server = createServer((_req, res) => {
      hits++;
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ keys }));
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/.well-known/jwks.json`;
  })();
  after(() => new Promise<void>((resolve) => (server ? server.close(() => resolve()) : resolve())));

  const idpToken = (alg: 'RS256' | 'ES256', claims: Record<string, unknown> = {}, header: Record<string, unknown> = {}) =>
    new SignJWT({ iss: ISS, aud: AUD, sub: 'idp|carol', iat: nowSec(), exp: nowSec() + 600, email: 'carol@example.com', ...claims })
      .setProtectedHeader({ alg, kid: alg === 'RS256' ? 'rsa-1' : 'ec-1', typ: 'JWT', ...header })
      .sign(alg === 'RS256' ? rsa.privateKey : ec.privateKey);

  test('accepts RS256 and ES256 tokens from the configured IdP', async () => {
    await ready;
    const v = createUserVerifier({ mode: 'oidc', issuer: ISS, audience: AUD, jwksUrl: url });
    for (const alg of ['RS256', 'ES256'] as const) {
      const id = await v.verify(bearer(await idpToken(alg)));
      assert.equal(id.sub, 'idp|carol');
      assert.equal(id.iss, ISS);
      assert.equal(id.email, 'carol@example.com');
    }
    assert.equal(hits, 1, 'JWKS fetched once and cached');
  });

  test('refuses wrong iss/aud, unknown kid, other algorithms, key confusion and header keys', async () => {
    await ready;
    const v = createUserVerifier({ mode: 'oidc', issuer: ISS, audience: AUD, jwksUrl: url });
    await refused(v, bearer(await idpToken('RS256', { iss: 'https://evil.example.test/' })));
    await refused(v, bearer(await idpToken('RS256', { aud: 'other-api' })));
    await refused(v, bearer(await idpToken('RS256', { exp: nowSec() - 3600 })));
    await refused(v, bearer(await idpToken('ES256', { iat: nowSec() + 600, exp: nowSec() + 1200 })));
    await refused(v, bearer(await idpToken('RS256', {}, { kid: 'rsa-9' })));
    // PS256 with the same RSA key: not an allowed algorithm.
    await refused(v, bearer(await new SignJWT({}).setProtectedHeader({ alg: 'PS256', kid: 'rsa-1' }).setIssuer(ISS).setAudience(AUD).setSubject('x').setExpirationTime('5m').sign(rsa.privateKey)));
    // HS256 keyed with the IdP's public key (the classic confusion attack).
    const pub = rsa.publicKey.export({ format: 'pem', type: 'spki' }).toString();
    const payload = { iss: ISS, aud: AUD, sub: 'idp|mallory', iat: nowSec(), exp: nowSec() + 600 };
    await refused(v, bearer(rawHs256({ alg: 'HS256', kid: 'rsa-1' }, payload, pub)));
    await refused(v, bearer(rawUnsigned({ alg: 'none', kid: 'rsa-1' }, payload)));
    // Embedded key: the attacker's own EC key in the header.
    const mallory = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    await refused(v, bearer(rawEs256({ alg: 'ES256', kid: 'ec-1', jwk: mallory.publicKey.export({ format: 'jwk' }) }, payload, mallory.privateKey)));
    await refused(v, bearer(rawEs256({ alg: 'ES256', kid: 'ec-1' }, payload, mallory.privateKey)));
    // Restricting to ES256 refuses RS256.
    const esOnly = createUserVerifier({ mode: 'oidc', issuer: ISS, audience: AUD, jwksUrl: url, algorithms: ['ES256'] });
    await refused(esOnly, bearer(await idpToken('RS256')));
    assert.ok(await esOnly.verify(bearer(await idpToken('ES256'))));
    // A capability-typed token from the IdP's own key is still refused.
    await refused(v, bearer(await idpToken('ES256', {}, { typ: 'trace-task+jwt' })));
  });

  test('an unreachable IdP JWKS is 503, not 401', async () => {
    const v = createUserVerifier({ mode: 'oidc', issuer: ISS, audience: AUD, jwksUrl: 'http://127.0.0.1:1/jwks', timeoutMs: 2000 });
    await ready;
    await rejects(v.verify(bearer(await idpToken('ES256'))), 503, 'USER_JWKS_UNAVAILABLE');
  });
});
