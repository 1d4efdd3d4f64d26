/** Versioned secrets scoped to apps (and shared ones granted to apps), encrypted at rest through the KMS. */
export { ALPHABETS, DEFAULT_LENGTH, MAX_LENGTH, MIN_LENGTH } from "./generate.js";
export { type ListTarget, parseGrantTarget, parseListPrefix, parseSecretPath, type SecretTarget } from "./paths.js";
export {
  DEFAULT_MAX_VERSIONS,
  type DeliveredSecret,
  type GrantView,
  MAX_CUSTOM_METADATA,
  MAX_VALUE_BYTES,
  type MetadataInput,
  type SecretMetadata,
  Secrets,
  type SecretsOptions,
  type SecretValue,
  SHARED_KEY,
  type ValueHmac,
  type VersionState,
  type WriteResult,
} from "./secrets.js";
