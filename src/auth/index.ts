/** Public API of src/auth: task capability tokens, user JWTs, the worker token. */
export {
  bindTaskRequest,
  capabilityKeyConfigFromEnv,
  capabilityTtlSeconds,
  createCapabilityIssuer,
  createCapabilityVerifier,
  derivedKid,
  CAPABILITY_AUDIENCE,
  CAPABILITY_TYP,
  DEFAULT_CAPABILITY_ISSUER,
} from './capability.js';
export type {
  CapabilityAlg,
  CapabilityIssuer,
  CapabilityKeyConfig,
  CapabilityVerifier,
  CapabilityVerifierOptions,
  Es256KeyConfig,
  HmacKeyInput,
  Hs256KeyConfig,
  IssuerTuning,
  TaskJwks,
  VerifierTuning,
} from './capability.js';
export { capabilityClaimsSchema, capabilityGrantSchema, datasetGrantSchema, storageRefSchema } from './capability-claims.js';
export type { CapabilityClaims, CapabilityGrant, CapabilityS3Scope, DatasetGrant, StorageRef } from './capability-claims.js';
export { generateEcKey, loadEcKey, privateKeyPem } from './ec-keys.js';
export type { EcKeyInput, LoadedEcKey, PublicEcJwk } from './ec-keys.js';
export {
  createUserVerifier,
  mintDevUserToken,
  userVerifierConfigFromEnv,
  DEV_USER_AUDIENCE,
  DEV_USER_ISSUER,
  DEV_USER_KID,
  DEV_USER_TOKEN_TTL_SECONDS,
} from './user.js';
export type { DevUserVerifierConfig, OidcAlg, OidcUserVerifierConfig, UserIdentity, UserVerifier, UserVerifierConfig } from './user.js';
export { checkWorkerToken, WORKER_TOKEN_HEADER } from './worker-token.js';
export { MAX_CLOCK_TOLERANCE_SECONDS } from './jwt-common.js';

/** Header carrying the task capability token on task-scoped routes. */
export const CAPABILITY_HEADER = 'x-trace-task-capability';
