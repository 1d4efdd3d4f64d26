import { canonicalContext, type EncryptionContext } from "../context/index.js";
import { decryptionFailed } from "../errors/index.js";

/**
 * The KMS ciphertext format (see docs/ciphertext-format.md):
 *
 *   "custos:v1:" + base64( fmt(1) | keyId(16) | keyVersion(4, BE) | alg(1) | iv(12) | ciphertext‖tag )
 *
 * The first 22 bytes (everything before the IV) plus the canonical encryption context
 * are the GCM additional data, so none of them can be changed without the tag failing.
 * The IV is authenticated by GCM itself.
 */

/** Text prefix of every ciphertext this format produces. */
export const CIPHERTEXT_PREFIX = "custos:v1:";
/** First byte of the blob. */
export const FORMAT_VERSION = 1;
/** Algorithm ids (one byte). */
export const ALG_AES_256_GCM = 1;

const KEY_ID_BYTES = 16;
const IV_BYTES = 12;
const TAG_BYTES = 16;
/** fmt + keyId + keyVersion + alg: the part of the header fixed before encryption. */
export const BOUND_HEADER_BYTES = 1 + KEY_ID_BYTES + 4 + 1;
/** The whole header, IV included. */
export const HEADER_BYTES = BOUND_HEADER_BYTES + IV_BYTES;
/** Largest plaintext the KMS encrypts. */
export const MAX_PLAINTEXT_BYTES = 64 * 1024;
const MAX_BLOB_BYTES = HEADER_BYTES + MAX_PLAINTEXT_BYTES + TAG_BYTES;
const MAX_TEXT_CHARS = CIPHERTEXT_PREFIX.length + Math.ceil(MAX_BLOB_BYTES / 3) * 4;
const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/** What identifies the key version a ciphertext was made under. */
export interface CiphertextHeader {
  /** Key id as a lowercase UUID string. */
  readonly keyId: string;
  readonly keyVersion: number;
  readonly algorithm: number;
}

/** A parsed ciphertext. */
export interface ParsedCiphertext extends CiphertextHeader {
  readonly iv: Buffer;
  /** Ciphertext followed by the GCM tag. */
  readonly sealed: Buffer;
  /** The additional data to authenticate, given the caller's context. */
  aad(context: EncryptionContext): Buffer;
}

/** 16 bytes of a UUID string. Throws on anything that isn't one (a programming error). */
export function uuidToBytes(uuid: string): Buffer {
  const lower = uuid.toLowerCase();
  if (!UUID.test(lower)) throw new TypeError("key id is not a UUID");
  return Buffer.from(lower.replaceAll("-", ""), "hex");
}

/** The UUID string of 16 bytes. */
export function bytesToUuid(bytes: Uint8Array): string {
  const h = Buffer.from(bytes).toString("hex");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20, 32)}`;
}

/** The 22 header bytes that precede the IV. */
export function boundHeader(header: CiphertextHeader): Buffer {
  if (!Number.isInteger(header.keyVersion) || header.keyVersion < 1 || header.keyVersion > 0xffffffff) {
    throw new TypeError("key version out of range");
  }
  const out = Buffer.alloc(BOUND_HEADER_BYTES);
  out.writeUInt8(FORMAT_VERSION, 0);
  uuidToBytes(header.keyId).copy(out, 1);
  out.writeUInt32BE(header.keyVersion, 1 + KEY_ID_BYTES);
  out.writeUInt8(header.algorithm, 1 + KEY_ID_BYTES + 4);
  return out;
}

/** GCM additional data: the bound header followed by the canonical context. */
export function additionalData(header: CiphertextHeader, context: EncryptionContext): Buffer {
  return canonicalContext(context, boundHeader(header));
}

/** `additionalData` from an already built bound header (batches build it once per version). */
export function additionalDataFrom(bound: Buffer, context: EncryptionContext): Buffer {
  return canonicalContext(context, bound);
}

/** Serialises a ciphertext. */
export function encodeCiphertext(header: CiphertextHeader, iv: Uint8Array, sealed: Uint8Array): string {
  return encodeCiphertextFrom(boundHeader(header), iv, sealed);
}

/** `encodeCiphertext` from an already built bound header. */
export function encodeCiphertextFrom(bound: Buffer, iv: Uint8Array, sealed: Uint8Array): string {
  if (bound.length !== BOUND_HEADER_BYTES) throw new TypeError("bad bound header");
  if (iv.length !== IV_BYTES) throw new TypeError(`IV must be ${IV_BYTES} bytes`);
  if (sealed.length < TAG_BYTES) throw new TypeError("sealed data shorter than a tag");
  const blob = Buffer.allocUnsafe(HEADER_BYTES + sealed.length);
  blob.set(bound, 0);
  blob.set(iv, BOUND_HEADER_BYTES);
  blob.set(sealed, HEADER_BYTES);
  return CIPHERTEXT_PREFIX + blob.toString("base64");
}

/**
 * Parses a ciphertext string. Anything malformed — wrong prefix, non-canonical
 * base64, unknown format or algorithm, too short or too long — is the uniform
 * `decryption_failed`, the same error a failed tag gives.
 */
export function parseCiphertext(text: unknown): ParsedCiphertext {
  if (typeof text !== "string" || text.length > MAX_TEXT_CHARS || !text.startsWith(CIPHERTEXT_PREFIX)) {
    throw decryptionFailed();
  }
  const b64 = text.slice(CIPHERTEXT_PREFIX.length);
  if (b64.length % 4 !== 0 || !BASE64.test(b64)) throw decryptionFailed();
  const blob = Buffer.from(b64, "base64");
  // Non-zero padding bits decode to the same bytes; accept only the one canonical spelling.
  if (blob.toString("base64") !== b64) throw decryptionFailed();
  if (blob.length < HEADER_BYTES + TAG_BYTES + 1 || blob.length > MAX_BLOB_BYTES) throw decryptionFailed();
  if (blob.readUInt8(0) !== FORMAT_VERSION) throw decryptionFailed();
  const algorithm = blob.readUInt8(1 + KEY_ID_BYTES + 4);
  if (algorithm !== ALG_AES_256_GCM) throw decryptionFailed();
  const keyVersion = blob.readUInt32BE(1 + KEY_ID_BYTES);
  if (keyVersion < 1) throw decryptionFailed();
  const bound = blob.subarray(0, BOUND_HEADER_BYTES);
  return {
    keyId: bytesToUuid(blob.subarray(1, 1 + KEY_ID_BYTES)),
    keyVersion,
    algorithm,
    iv: blob.subarray(BOUND_HEADER_BYTES, HEADER_BYTES),
    sealed: blob.subarray(HEADER_BYTES),
    aad: (context) => canonicalContext(context, bound),
  };
}
