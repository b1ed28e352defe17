// Hand-made JWTs for hostile-token tests: every byte of header and payload under the test's control.
import { createHmac, sign, type KeyObject } from 'node:crypto';
import { randomUUID } from 'node:crypto';
import assert from 'node:assert/strict';
import { TraceError } from '../../src/core/errors.js';

export const SECRET = 'test-capability-secret-0123456789abcdef';
export const NEXT_SECRET = 'test-capability-next-secret-0123456789abcdef';
export const USER_SECRET = 'test-user-jwt-secret-0123456789abcdef0123';

const part = (v: unknown): string => Buffer.from(typeof v === 'string' ? v : JSON.stringify(v)).toString('base64url');

/** HS256 over exactly the given header and payload (payload may be raw JSON text). */
export function rawHs256(header: Record<string, unknown>, payload: Record<string, unknown> | string, secret: string | Uint8Array): string {
  const signingInput = `${part(header)}.${part(payload)}`;
  return `${signingInput}.${createHmac('sha256', secret).update(signingInput).digest('base64url')}`;
}

/** ES256 over exactly the given header and payload. */
export function rawEs256(header: Record<string, unknown>, payload: Record<string, unknown> | string, key: KeyObject): string {
  const signingInput = `${part(header)}.${part(payload)}`;
  const sig = sign('sha256', Buffer.from(signingInput), { key, dsaEncoding: 'ieee-p1363' });
  return `${signingInput}.${sig.toString('base64url')}`;
}

/** Header + payload with a signature we choose (for alg none and forged signatures). */
export function rawUnsigned(header: Record<string, unknown>, payload: Record<string, unknown> | string, signature = ''): string {
  return `${part(header)}.${part(payload)}.${signature}`;
}

export const nowSec = () => Math.floor(Date.now() / 1000);

export function grant(overrides: Record<string, unknown> = {}) {
  return {
    org_id: randomUUID(),
    task_id: randomUUID(),
    attempt: 1,
    datasets: [
      {
        dataset_uuid: randomUUID(),
        dataset_version: randomUUID(),
        storage_ref: { scheme: 'file' as const, prefix: '/var/trace/data/blocks/', glob: '*.parquet' },
      },
      {
        dataset_uuid: randomUUID(),
        dataset_version: randomUUID(),
        storage_ref: { scheme: 's3' as const, bucket: 'trace-data', prefix: 'cryo/143/', glob: '**/*.parquet' },
      },
      { dataset_uuid: randomUUID(), dataset_version: randomUUID() },
    ],
    s3: { read_prefixes: ['s3://trace-data/cryo/143/'], write_prefixes: ['s3://trace-scratch/tasks/abc/'] },
    ...overrides,
  };
}

/** A complete, valid capability payload (registered + custom claims). */
export function capabilityPayload(overrides: Record<string, unknown> = {}): Record<string, unknown> {
  const g = grant();
  const iat = nowSec();
  return {
    ...g,
    iss: 'trace-dispatcher',
    aud: 'trace.task',
    sub: `task:${g.task_id}`,
    iat,
    exp: iat + 600,
    jti: randomUUID(),
    ...overrides,
  };
}

export async function rejects(p: Promise<unknown>, status: number, code: string): Promise<TraceError> {
  let caught: unknown;
  try {
    await p;
  } catch (e) {
    caught = e;
  }
  assert.ok(caught instanceof TraceError, `expected TraceError ${code}, got ${caught === undefined ? 'success' : String(caught)}`);
  assert.equal(caught.status, status);
  assert.equal(caught.code, code);
  return caught;
}
