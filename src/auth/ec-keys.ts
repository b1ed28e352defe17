/**
 * ES256 (ECDSA P-256) key material for task capability tokens: load a key from PEM or JWK,
 * generate one with jose, and publish only its public half.
 */
import { createPrivateKey, createPublicKey, type JsonWebKey, type KeyObject } from 'node:crypto';
import { calculateJwkThumbprint, exportJWK, generateKeyPair, type JWK } from 'jose';
import { checkKid } from './jwt-common.js';

/**
 * One ES256 key as configured. `privateKey` / `publicKey` are PEM text (PKCS#8, SEC1 or SPKI),
 * JWK objects, or JWK JSON text. A signing key needs `privateKey`; a key that is only published
 * or verified (for example the next key, before rotation) may give `publicKey` alone.
 * `kid` defaults to the JWK's own `kid`, else its RFC 7638 thumbprint.
 */
export interface EcKeyInput {
  kid?: string;
  privateKey?: string | JWK;
  publicKey?: string | JWK;
}

/** A public P-256 key as published in the task JWKS. */
export interface PublicEcJwk {
  kty: 'EC';
  crv: 'P-256';
  x: string;
  y: string;
  kid: string;
  alg: 'ES256';
  use: 'sig';
}

export interface LoadedEcKey {
  kid: string;
  publicJwk: PublicEcJwk;
  publicKey: KeyObject;
  privateKey?: KeyObject;
}

function parseMaterial(material: string | JWK): { pem: string } | { jwk: JWK } {
  if (typeof material !== 'string') return { jwk: material };
  const text = material.trim();
  if (text.startsWith('{')) {
    try {
      return { jwk: JSON.parse(text) as JWK };
    } catch {
      throw new TypeError('ES256 key JSON is not valid JSON');
    }
  }
  if (text.startsWith('-----BEGIN ')) return { pem: text };
  throw new TypeError('ES256 key must be PEM text or a JWK');
}

function toPrivateKey(material: string | JWK): KeyObject {
  const m = parseMaterial(material);
  try {
    return 'pem' in m
      ? createPrivateKey({ key: m.pem, format: 'pem' })
      : createPrivateKey({ key: m.jwk as JsonWebKey, format: 'jwk' });
  } catch {
    throw new TypeError('ES256 private key could not be loaded');
  }
}

function toPublicKey(material: string | JWK): KeyObject {
  const m = parseMaterial(material);
  if ('jwk' in m && 'd' in m.jwk) throw new TypeError('ES256 public key JWK must not contain private parts');
  try {
    return 'pem' in m
      ? createPublicKey({ key: m.pem, format: 'pem' })
      : createPublicKey({ key: m.jwk as JsonWebKey, format: 'jwk' });
  } catch {
    throw new TypeError('ES256 public key could not be loaded');
  }
}

function embeddedKid(material: string | JWK | undefined): string | undefined {
  if (material === undefined) return undefined;
  const m = parseMaterial(material);
  return 'jwk' in m && typeof m.jwk.kid === 'string' ? m.jwk.kid : undefined;
}

/** Loads one configured key; throws TypeError (without key material) when it is unusable. */
export async function loadEcKey(input: EcKeyInput, what = 'ES256 key'): Promise<LoadedEcKey> {
  let privateKey: KeyObject | undefined;
  let publicKey: KeyObject;
  if (input.privateKey !== undefined) {
    privateKey = toPrivateKey(input.privateKey);
    publicKey = createPublicKey(privateKey);
  } else if (input.publicKey !== undefined) {
    publicKey = toPublicKey(input.publicKey);
  } else {
    throw new TypeError(`${what}: privateKey or publicKey is required`);
  }
  if (publicKey.asymmetricKeyType !== 'ec' || publicKey.asymmetricKeyDetails?.namedCurve !== 'prime256v1') {
    throw new TypeError(`${what}: ES256 needs an EC P-256 key`);
  }
  const exported = publicKey.export({ format: 'jwk' });
  if (typeof exported.x !== 'string' || typeof exported.y !== 'string') throw new TypeError(`${what}: unreadable public key`);
  if (privateKey !== undefined && input.publicKey !== undefined) {
    const other = toPublicKey(input.publicKey).export({ format: 'jwk' });
    if (other.x !== exported.x || other.y !== exported.y) throw new TypeError(`${what}: publicKey does not match privateKey`);
  }
  const base = { kty: 'EC' as const, crv: 'P-256' as const, x: exported.x, y: exported.y };
  const kid = checkKid(
    input.kid ?? embeddedKid(input.privateKey) ?? embeddedKid(input.publicKey) ?? (await calculateJwkThumbprint(base)),
    `${what} kid`,
  );
  const loaded: LoadedEcKey = { kid, publicJwk: { ...base, kid, alg: 'ES256', use: 'sig' }, publicKey };
  if (privateKey !== undefined) loaded.privateKey = privateKey;
  return loaded;
}

/** A fresh P-256 key pair made by jose; `kid` defaults to its thumbprint. */
export async function generateEcKey(kid?: string): Promise<LoadedEcKey> {
  const pair = await generateKeyPair('ES256', { extractable: true });
  const jwk = await exportJWK(pair.privateKey);
  return loadEcKey(kid === undefined ? { privateKey: jwk } : { kid, privateKey: jwk }, 'generated ES256 key');
}

/** Exports a loaded signing key as PKCS#8 PEM (for writing a generated key to a config file). */
export function privateKeyPem(key: LoadedEcKey): string {
  if (!key.privateKey) throw new TypeError('key has no private part');
  return key.privateKey.export({ format: 'pem', type: 'pkcs8' }).toString();
}
