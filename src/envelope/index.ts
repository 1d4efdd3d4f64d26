/**
 * `custos/envelope`: client-side envelope encryption for storage layers. See
 * docs/envelope-format.md for the format and README for usage.
 */
export type { EncryptionContext } from "../context/index.js";
export { type CacheLimits, DEFAULT_CACHE_LIMITS } from "./cache.js";
export { type DecryptOptions, type EncryptOptions, Envelope, type EnvelopeOptions } from "./envelope.js";
export { decryptionFailed } from "./errors.js";
export { DEFAULT_CHUNK_SIZE, type Header, MAX_CHUNK_SIZE } from "./format.js";
export type { DataKey, EnvelopeKms, ItemResult, Rewrapped, UnwrappedKey } from "./kms.js";
export { httpKms, httpKmsFromEnv } from "./kms-http.js";
export { bufferSource, fileSource, type RangeSource, readHeader } from "./range.js";
export { type RewrapOutcome, rewrapFiles, rewrapStream, TEMP_FILE } from "./rewrap.js";
