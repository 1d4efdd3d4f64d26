/**
 * The KMS: named, versioned keys whose material lives in the HSM, their life cycle,
 * and the operations on them (encrypt, decrypt, rewrap, data keys, sign, verify).
 */

export type { EncryptionContext } from "../context/index.js";
export { canonicalContext, MAX_CONTEXT_CHARS, MAX_CONTEXT_ENTRIES, validateContext } from "../context/index.js";
export {
  additionalData,
  CIPHERTEXT_PREFIX,
  type CiphertextHeader,
  MAX_PLAINTEXT_BYTES,
  type ParsedCiphertext,
  parseCiphertext,
} from "./format.js";
export { DEFAULT_DESTRUCTION_WAIT_SECONDS, keyPairLabel } from "./keys.js";
export { KmsService } from "./service.js";
export { verifyWithNode } from "./signing.js";
export type * from "./types.js";
export {
  checkNotServiceKeyName,
  MAX_BATCH_ITEMS,
  MAX_RANDOM_BYTES,
  MIN_ROTATION_PERIOD_SECONDS,
} from "./validate.js";
