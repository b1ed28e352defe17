import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { generateKeyPairSync, randomUUID } from 'node:crypto';
import { decodeProtectedHeader, jwtVerify } from 'jose';
import {
  bindTaskRequest,
  capabilityKeyConfigFromEnv,
  capabilityTtlSeconds,
  createCapabilityIssuer,
  createCapabilityVerifier,
  mintDevUserToken,
  type CapabilityGrant,
  type CapabilityVerifier,
} from '../../src/auth/index.js';
import { readEnv } from '../../src/core/config.js';
import { TraceError } from '../../src/core/errors.js';
import { capabilityPayload, grant, NEXT_SECRET, nowSec, rawEs256, rawHs256, rawUnsigned, rejects, SECRET } from './support.js';

const HEADER = { alg: 'HS256', kid: 'k1', typ: 'trace-task+jwt' };
const hsVerifier = (extra: Record<string, unknown> = {}) =>
  createCapabilityVerifier({ hs256: { current: { kid: 'k1', secret: SECRET } }, ...extra });

const refused = (v: CapabilityVerifier, token: string | undefined) => rejects(v.verify(token), 401, 'INVALID_CAPABILITY');

describe('capability tokens: round trips', () => {
  test('HS256: issue, verify, claims and header per contract', async () => {
    const issuer = await createCapabilityIssuer({ alg: 'HS256', current: { kid: 'k1', secret: SECRET } });
    const g = grant({ attempt: 2 });
    const token = await issuer.sign(g, 900);
    assert.deepEqual(decodeProtectedHeader(token), { alg: 'HS256', kid: 'k1', typ: 'trace-task+jwt' });
    const claims = await hsVerifier().verify(token);
    assert.equal(claims.iss, 'trace-dispatcher');
    assert.equal(claims.aud, 'trace.task');
    assert.equal(claims.sub, `task:${g.task_id}`);
    assert.equal(claims.task_id, g.task_id);
    assert.equal(claims.org_id, g.org_id);
    assert.equal(claims.attempt, 2);
    assert.deepEqual(claims.datasets, g.datasets);
    assert.deepEqual(claims.s3, g.s3);
    assert.equal(claims.exp - claims.iat, 900);
    assert.ok(Math.abs(claims.iat - nowSec()) <= 2);
    assert.equal(typeof claims.jti, 'string');
    assert.deepEqual(issuer.jwks(), { keys: [] }, 'HS256 secrets are never published');
    // The issuer's own verifier agrees.
    assert.equal((await issuer.verifier().verify(token)).task_id, g.task_id);
  });

  test('HS256: configurable issuer, verified against the same iss only', async () => {
    const issuer = await createCapabilityIssuer({ alg: 'HS256', issuer: 'dispatcher-a', current: { kid: 'k1', secret: SECRET } });
    const token = await issuer.sign(grant(), 60);
    assert.equal((await hsVerifier({ issuer: 'dispatcher-a' }).verify(token)).iss, 'dispatcher-a');
    await refused(hsVerifier(), token);
  });

  test('ES256 with a generated key: JWKS holds only the public key and verifies tokens', async () => {
    const issuer = await createCapabilityIssuer({ alg: 'ES256' });
    const token = await issuer.sign(grant(), 300);
    const header = decodeProtectedHeader(token);
    assert.equal(header.alg, 'ES256');
    assert.equal(header.kid, issuer.kid);
    const jwks = issuer.jwks();
    assert.equal(jwks.keys.length, 1);
    const [k] = jwks.keys;
    assert.deepEqual(Object.keys(k!).sort(), ['alg', 'crv', 'kid', 'kty', 'use', 'x', 'y']);
    assert.equal(k!.kid, issuer.kid);
    assert.ok(!('d' in k!), 'no private part');
    const verifier = createCapabilityVerifier({ jwks: JSON.parse(JSON.stringify(jwks)) });
    const claims = await verifier.verify(token);
    assert.equal(claims.aud, 'trace.task');
    assert.equal((await issuer.verifier().verify(token)).jti, claims.jti);
  });

  test('ES256 keys load from PEM and from JWK config', async () => {
    const pair = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const pem = pair.privateKey.export({ format: 'pem', type: 'pkcs8' }).toString();
    const fromPem = await createCapabilityIssuer({ alg: 'ES256', current: { kid: 'pem-1', privateKey: pem } });
    assert.equal(fromPem.kid, 'pem-1');
    const jwk = { ...pair.privateKey.export({ format: 'jwk' }), kid: 'jwk-1' };
    const fromJwk = await createCapabilityIssuer({ alg: 'ES256', current: { privateKey: JSON.stringify(jwk) } });
    assert.equal(fromJwk.kid, 'jwk-1');
    assert.equal(fromJwk.jwks().keys[0]!.x, fromPem.jwks().keys[0]!.x, 'same key pair, same public key');
    // A token from one verifies with a JWKS naming the same key under the same kid.
    const token = await fromPem.sign(grant(), 60);
    assert.ok(await createCapabilityVerifier({ jwks: fromPem.jwks() }).verify(token));
    await refused(createCapabilityVerifier({ jwks: fromJwk.jwks() }), token); // kid pem-1 unknown there
    // Wrong curve and private keys in a JWKS are configuration errors.
    const p384 = generateKeyPairSync('ec', { namedCurve: 'P-384' }).privateKey.export({ format: 'pem', type: 'pkcs8' }).toString();
    await assert.rejects(createCapabilityIssuer({ alg: 'ES256', current: { privateKey: p384 } }), /P-256/);
    assert.throws(() => createCapabilityVerifier({ jwks: { keys: [{ ...jwk }] } }), /private/);
  });

  test('capabilityTtlSeconds: timeout + 300, capped at 24 h, never below the timeout', () => {
    assert.equal(capabilityTtlSeconds(60), 360);
    assert.equal(capabilityTtlSeconds(3600), 3900);
    assert.equal(capabilityTtlSeconds(86_000), 86_300);
    assert.equal(capabilityTtlSeconds(86_200), 86_400);
    assert.equal(capabilityTtlSeconds(86_400), 86_400);
    assert.equal(capabilityTtlSeconds(100_000), 100_000);
    assert.throws(() => capabilityTtlSeconds(0));
    assert.throws(() => capabilityTtlSeconds(Number.NaN));
  });

  test('the issuer refuses to sign a malformed grant', async () => {
    const issuer = await createCapabilityIssuer({ alg: 'HS256', current: { kid: 'k1', secret: SECRET } });
    const err = await rejects(issuer.sign(grant({ attempt: 0 }), 60), 500, 'INVALID_CAPABILITY_GRANT');
    assert.equal(err.problems?.[0]?.path, 'attempt');
    await rejects(issuer.sign(grant({ task_id: 'not-a-uuid' }), 60), 500, 'INVALID_CAPABILITY_GRANT');
    await assert.rejects(issuer.sign(grant(), 0), TypeError);
  });

  test('a dataset grant carries an input edge filter; a malformed one is not signed', async () => {
    const issuer = await createCapabilityIssuer({ alg: 'HS256', current: { kid: 'k1', secret: SECRET } });
    const withWhere = (where: unknown) => {
      const g = grant();
      return { ...g, datasets: [{ ...g.datasets[0]!, where }] } as unknown as CapabilityGrant;
    };
    const claims = await hsVerifier().verify(await issuer.sign(withWhere({ sym: ['eth', 'sol'], live: true, n: 1.5 }), 60));
    assert.deepEqual(claims.datasets[0]!.where, { sym: ['eth', 'sol'], live: true, n: 1.5 });
    for (const bad of [{}, { 'a) OR (1=1': 1 }, { sym: [] }, { sym: null }, { sym: { eq: 1 } }, "sym = 'eth'", { sym: 'x'.repeat(300) }]) {
      await rejects(issuer.sign(withWhere(bad), 60), 500, 'INVALID_CAPABILITY_GRANT');
    }
  });

  test('configuration: short secrets, bad kids, clock tolerance above 60 s are refused', async () => {
    await assert.rejects(createCapabilityIssuer({ alg: 'HS256', current: { kid: 'k1', secret: 'short' } }), /32 bytes/);
    await assert.rejects(createCapabilityIssuer({ alg: 'HS256', current: { kid: 'bad kid!', secret: SECRET } }), /kid/);
    await assert.rejects(
      createCapabilityIssuer({ alg: 'HS256', current: { kid: 'k1', secret: SECRET }, next: { kid: 'k1', secret: NEXT_SECRET } }),
      /different kids/,
    );
    assert.throws(() => hsVerifier({ clockToleranceSeconds: 61 }), /clockTolerance/);
  });

  test('capabilityKeyConfigFromEnv reads secrets and derives stable kids', async () => {
    const env = readEnv({ TRACE_TASK_CAPABILITY_SECRET: SECRET, TRACE_TASK_CAPABILITY_NEXT_SECRET: NEXT_SECRET, TRACE_TASK_CAPABILITY_NEXT_KID: 'n1' });
    const cfg = capabilityKeyConfigFromEnv(env)!;
    assert.equal(cfg.current.kid, capabilityKeyConfigFromEnv(env)!.current.kid);
    assert.match(cfg.current.kid, /^hs-[0-9a-f]{16}$/);
    assert.equal(cfg.next?.kid, 'n1');
    assert.equal(capabilityKeyConfigFromEnv(readEnv({})), undefined);
    const issuer = await createCapabilityIssuer(cfg);
    assert.ok(await createCapabilityVerifier({ hs256: cfg }).verify(await issuer.sign(grant(), 60)));
  });
});

describe('capability tokens: key rotation', () => {
  test('HS256: next key accepted during overlap, retired key refused after rotation', async () => {
    const before = await createCapabilityIssuer({ alg: 'HS256', current: { kid: 'k1', secret: SECRET }, next: { kid: 'k2', secret: NEXT_SECRET } });
    const after = await createCapabilityIssuer({ alg: 'HS256', current: { kid: 'k2', secret: NEXT_SECRET } });
    const oldToken = await before.sign(grant(), 600);
    const newToken = await after.sign(grant(), 600);
    const overlap = createCapabilityVerifier({ hs256: { current: { kid: 'k1', secret: SECRET }, next: { kid: 'k2', secret: NEXT_SECRET } } });
    assert.ok(await overlap.verify(oldToken));
    assert.ok(await overlap.verify(newToken), 'token by the next key verifies during the overlap');
    assert.ok(await before.verifier().verify(newToken));
    const rotated = createCapabilityVerifier({ hs256: { current: { kid: 'k2', secret: NEXT_SECRET } } });
    assert.ok(await rotated.verify(newToken));
    const err = await refused(rotated, oldToken);
    assert.match(err.message, /unknown key id/);
  });

  test('ES256: the next public key is published early; the retired key fails after rotation', async () => {
    const k1 = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const k2 = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const pem = (k: typeof k1) => k.privateKey.export({ format: 'pem', type: 'pkcs8' }).toString();
    const spki = (k: typeof k1) => k.publicKey.export({ format: 'pem', type: 'spki' }).toString();
    const before = await createCapabilityIssuer({ alg: 'ES256', current: { kid: 'e1', privateKey: pem(k1) }, next: { kid: 'e2', publicKey: spki(k2) } });
    assert.deepEqual(before.jwks().keys.map((k) => k.kid), ['e1', 'e2']);
    const after = await createCapabilityIssuer({ alg: 'ES256', current: { kid: 'e2', privateKey: pem(k2) } });
    const oldToken = await before.sign(grant(), 600);
    const newToken = await after.sign(grant(), 600);
    const overlap = createCapabilityVerifier({ jwks: before.jwks() });
    assert.ok(await overlap.verify(oldToken));
    assert.ok(await overlap.verify(newToken));
    const rotated = createCapabilityVerifier({ jwks: after.jwks() });
    assert.ok(await rotated.verify(newToken));
    await refused(rotated, oldToken);
  });
});

describe('capability tokens: hostile input is refused with 401 INVALID_CAPABILITY', () => {
  const v = hsVerifier();

  test('control: a hand-made token with valid claims verifies (so the refusals below mean something)', async () => {
    const p = capabilityPayload();
    const claims = await v.verify(rawHs256(HEADER, p, SECRET));
    assert.equal(claims.task_id, p.task_id);
  });

  test('missing and garbage tokens', async () => {
    for (const t of [undefined, '', 'garbage', 'a.b.c', 'a.b.', '..', 'x'.repeat(20_000), `${'e30'}.${'e30'}.sig extra`]) {
      await refused(v, t);
    }
    await rejects(v.verify(null), 401, 'INVALID_CAPABILITY');
  });

  test('forged signature, tampered payload, other secret', async () => {
    const good = rawHs256(HEADER, capabilityPayload(), SECRET);
    const [h, p, s] = good.split('.');
    const flipped = s!.slice(0, -2) + (s!.endsWith('AA') ? 'BB' : 'AA');
    await refused(v, `${h}.${p}.${flipped}`);
    const tampered = Buffer.from(JSON.stringify({ ...JSON.parse(Buffer.from(p!, 'base64url').toString()), attempt: 7 })).toString('base64url');
    await refused(v, `${h}.${tampered}.${s}`);
    const err = await refused(v, rawHs256(HEADER, capabilityPayload(), 'another-secret-of-sufficient-length-000'));
    assert.match(err.message, /bad signature/);
    assert.ok(!err.message.includes(SECRET));
  });

  test('expired, and iat in the future beyond 60 s of skew', async () => {
    const now = nowSec();
    await refused(v, rawHs256(HEADER, capabilityPayload({ iat: now - 7200, exp: now - 3600 }), SECRET));
    await refused(v, rawHs256(HEADER, capabilityPayload({ iat: now - 700, exp: now - 61 }), SECRET));
    const past = await createCapabilityIssuer({ alg: 'HS256', current: { kid: 'k1', secret: SECRET } }, { clock: () => Date.now() - 3_600_000 });
    const e = await refused(v, await past.sign(grant(), 600));
    assert.match(e.message, /expired/);
    await refused(v, rawHs256(HEADER, capabilityPayload({ iat: now + 120, exp: now + 720 }), SECRET));
    const future = await createCapabilityIssuer({ alg: 'HS256', current: { kid: 'k1', secret: SECRET } }, { clock: () => Date.now() + 90_000 });
    const f = await refused(v, await future.sign(grant(), 600));
    assert.match(f.message, /future/);
    // Within the skew: accepted.
    assert.ok(await v.verify(rawHs256(HEADER, capabilityPayload({ iat: now + 30, exp: now + 630 }), SECRET)));
    // A stricter tolerance is honoured.
    await refused(hsVerifier({ clockToleranceSeconds: 5 }), rawHs256(HEADER, capabilityPayload({ iat: now + 30, exp: now + 630 }), SECRET));
  });

  test('alg none (hand crafted), in any spelling, with or without a signature', async () => {
    for (const alg of ['none', 'None', 'NONE']) {
      await refused(v, rawUnsigned({ ...HEADER, alg }, capabilityPayload()));
      await refused(v, rawUnsigned({ ...HEADER, alg }, capabilityPayload(), 'AAAA'));
    }
  });

  test('algorithm confusion: HS256 refused by an ES256 verifier, including HMAC keyed with the public key', async () => {
    const issuer = await createCapabilityIssuer({ alg: 'ES256' });
    const es = createCapabilityVerifier({ jwks: issuer.jwks() });
    const publicJwk = issuer.jwks().keys[0]!;
    const { createPublicKey } = await import('node:crypto');
    const publicPem = createPublicKey({ key: { kty: 'EC', crv: 'P-256', x: publicJwk.x, y: publicJwk.y }, format: 'jwk' })
      .export({ format: 'pem', type: 'spki' })
      .toString();
    const header = { alg: 'HS256', kid: issuer.kid, typ: 'trace-task+jwt' };
    for (const secret of [publicPem, JSON.stringify(publicJwk), publicJwk.x]) {
      const forged = rawHs256(header, capabilityPayload(), secret);
      // The forgery is well formed: a naive verifier keyed with the same bytes would accept it.
      assert.ok((await jwtVerify(forged, new TextEncoder().encode(secret))).payload);
      const err = await refused(es, forged);
      assert.match(err.message, /algorithm/);
    }
    await refused(issuer.verifier(), rawHs256(header, capabilityPayload(), publicPem));
    // And the other way round: an ES256 token under an HS256 kid.
    const pair = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    await refused(v, rawEs256({ ...HEADER, alg: 'ES256' }, capabilityPayload(), pair.privateKey));
    // Algorithms outside the pinned set.
    for (const alg of ['HS384', 'HS512', 'RS256', 'PS256']) await refused(v, rawHs256({ ...HEADER, alg }, capabilityPayload(), SECRET));
  });

  test('unknown kid and missing kid', async () => {
    const e = await refused(v, rawHs256({ ...HEADER, kid: 'k9' }, capabilityPayload(), SECRET));
    assert.match(e.message, /unknown key id/);
    await refused(v, rawHs256({ alg: 'HS256', typ: 'trace-task+jwt' }, capabilityPayload(), SECRET));
    await refused(v, rawHs256({ ...HEADER, kid: 42 }, capabilityPayload(), SECRET));
  });

  test('header-supplied keys (jwk, jku, x5u, x5c) and unknown header parameters', async () => {
    const known = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const issuer = await createCapabilityIssuer({ alg: 'ES256', current: { kid: 'e1', privateKey: known.privateKey.export({ format: 'pem', type: 'pkcs8' }).toString() } });
    const es = createCapabilityVerifier({ jwks: issuer.jwks() });
    const esHeader = { alg: 'ES256', kid: 'e1', typ: 'trace-task+jwt' };
    // Control: the configured key without an embedded jwk is accepted.
    assert.ok(await es.verify(rawEs256(esHeader, capabilityPayload(), known.privateKey)));
    // The embedded-key attack: the attacker signs with its own key and ships the public half in the header.
    const attacker = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    await refused(es, rawEs256({ ...esHeader, jwk: attacker.publicKey.export({ format: 'jwk' }) }, capabilityPayload(), attacker.privateKey));
    // Even a correctly signed token is refused once it carries a key in its header.
    await refused(es, rawEs256({ ...esHeader, jwk: known.publicKey.export({ format: 'jwk' }) }, capabilityPayload(), known.privateKey));
    for (const extra of [
      { jwk: { kty: 'oct', k: Buffer.from(SECRET).toString('base64url') } },
      { jku: 'http://127.0.0.1:9/jwks.json' },
      { x5u: 'http://127.0.0.1:9/cert.pem' },
      { x5c: ['MIIB'] },
      { crit: ['exp'] },
      { b64: false },
      { cty: 'JWT' },
    ]) {
      const e = await refused(v, rawHs256({ ...HEADER, ...extra }, capabilityPayload(), SECRET));
      assert.ok(!e.message.includes('127.0.0.1'));
    }
  });

  test('wrong aud, iss, sub', async () => {
    await refused(v, rawHs256(HEADER, capabilityPayload({ aud: 'trace.user' }), SECRET));
    await refused(v, rawHs256(HEADER, capabilityPayload({ aud: ['trace.task', 'trace.user'] }), SECRET));
    await refused(v, rawHs256(HEADER, capabilityPayload({ iss: 'someone-else' }), SECRET));
    await refused(v, rawHs256(HEADER, capabilityPayload({ sub: `task:${randomUUID()}` }), SECRET));
    const p = capabilityPayload();
    await refused(v, rawHs256(HEADER, { ...p, sub: p.task_id }, SECRET));
  });

  test('missing required claims, one at a time', async () => {
    for (const claim of ['exp', 'iat', 'iss', 'aud', 'sub', 'org_id', 'task_id', 'attempt', 'datasets', 's3']) {
      const p = capabilityPayload();
      delete p[claim];
      const e = await refused(v, rawHs256(HEADER, p, SECRET));
      assert.ok(!e.message.includes(SECRET));
    }
  });

  test('non-finite or non-integer times', async () => {
    const p = capabilityPayload();
    const json = JSON.stringify({ ...p, exp: 0 }).replace('"exp":0', '"exp":1e400'); // parses to Infinity
    await refused(v, rawHs256(HEADER, json, SECRET));
    await refused(v, rawHs256(HEADER, JSON.stringify({ ...p, iat: 0 }).replace('"iat":0', '"iat":-1e400'), SECRET));
    await refused(v, rawHs256(HEADER, capabilityPayload({ exp: String(nowSec() + 600) }), SECRET));
    await refused(v, rawHs256(HEADER, capabilityPayload({ exp: nowSec() + 600.5 }), SECRET));
    await refused(v, rawHs256(HEADER, capabilityPayload({ iat: null }), SECRET));
  });

  test('malformed custom claims', async () => {
    for (const attempt of [1.5, 0, -1, '1', null, 2 ** 60]) await refused(v, rawHs256(HEADER, capabilityPayload({ attempt }), SECRET));
    const ds = (storage_ref: unknown) => [{ dataset_uuid: randomUUID(), dataset_version: randomUUID(), storage_ref }];
    const bad: Array<Record<string, unknown>> = [
      { org_id: 'org-1' },
      { datasets: 'all' },
      { datasets: [{ dataset_uuid: randomUUID() }] },
      { datasets: [{ dataset_uuid: randomUUID(), dataset_version: randomUUID(), admin: true }] },
      { datasets: ds({ scheme: 'http', prefix: '/x/', glob: '*' }) },
      { datasets: ds({ scheme: 'file', prefix: '/var/trace/../../etc/', glob: '*.parquet' }) },
      { datasets: ds({ scheme: 'file', prefix: 'relative/', glob: '*.parquet' }) },
      { datasets: ds({ scheme: 'file', prefix: '/data/', glob: '../*.parquet' }) },
      { datasets: ds({ scheme: 's3', prefix: 'cryo/', glob: '*' }) },
      { datasets: ds({ scheme: 's3', bucket: 'Bad_Bucket', prefix: 'cryo/', glob: '*' }) },
      { datasets: ds({ scheme: 'file', prefix: '/data/', glob: '*', bucket: 'x' }) },
      { s3: { read_prefixes: ['https://example.com/'], write_prefixes: [] } },
      { s3: { read_prefixes: ['s3://bucket/no-trailing-slash'], write_prefixes: [] } },
      { s3: { read_prefixes: ['s3://bucket/a/../b/'], write_prefixes: [] } },
      { s3: { read_prefixes: [] } },
      { admin: true },
      { token_use: 'access' },
      { jti: '' },
    ];
    for (const o of bad) await refused(v, rawHs256(HEADER, capabilityPayload(o), SECRET));
    // Control: an empty grant is fine.
    assert.ok(await v.verify(rawHs256(HEADER, capabilityPayload({ datasets: [], s3: { read_prefixes: [], write_prefixes: [] } }), SECRET)));
  });

  test('a user token is never a capability token', async () => {
    // Dev user token signed with the very same secret.
    await refused(v, await mintDevUserToken(SECRET, 'alice'));
    // Capability-shaped claims and the right key, but without the capability typ: refused.
    const e = await refused(v, rawHs256({ alg: 'HS256', kid: 'k1' }, capabilityPayload(), SECRET));
    assert.match(e.message, /not a task capability token/);
    await refused(v, rawHs256({ alg: 'HS256', kid: 'k1', typ: 'JWT' }, capabilityPayload(), SECRET));
    await refused(v, rawHs256({ ...HEADER, typ: 'at+jwt' }, capabilityPayload(), SECRET));
    // The capability typ but a user audience: refused.
    await refused(v, rawHs256(HEADER, capabilityPayload({ aud: 'trace.user' }), SECRET));
  });
});

describe('bindTaskRequest', () => {
  test('matches task_id and attempt exactly, else 403 CAPABILITY_MISMATCH', async () => {
    const issuer = await createCapabilityIssuer({ alg: 'HS256', current: { kid: 'k1', secret: SECRET } });
    const g = grant({ attempt: 3 });
    const claims = await hsVerifier().verify(await issuer.sign(g, 60));
    bindTaskRequest(claims, { task_id: g.task_id, attempt: 3 });
    const bad: Array<{ task_id: unknown; attempt: unknown }> = [
      { task_id: randomUUID(), attempt: 3 },
      { task_id: g.task_id, attempt: 2 },
      { task_id: g.task_id, attempt: 4 },
      { task_id: g.task_id, attempt: '3' },
      { task_id: g.task_id.toUpperCase(), attempt: 3 },
      { task_id: undefined, attempt: undefined },
    ];
    for (const body of bad) {
      assert.throws(
        () => bindTaskRequest(claims, body),
        (e: unknown) => e instanceof TraceError && e.status === 403 && e.code === 'CAPABILITY_MISMATCH',
      );
    }
  });
});
