/**
 * The envelope message format v1 (docs/envelope-format.md): the header's layout,
 * its parser, per-message key derivation and chunk nonces. Pure functions over
 * bytes; no I/O, no KMS.
 */
import { createHmac, hkdfSync, timingSafeEqual } from "node:crypto";
import {
  canonicalContext,
  type EncryptionContext,
  NonCanonicalContext,
  parseCanonicalContext,
} from "../context/index.js";
import { decryptionFailed } from "./errors.js";

export const MAGIC = Buffer.from("CUSTENV", "ascii");
export const FORMAT_VERSION = 0x01;
export const SUITE = 0x01;
/** magic ‖ version ‖ suite: the HKDF info, and the first bytes of every message. */
const PREAMBLE = Buffer.concat([MAGIC, Buffer.from([FORMAT_VERSION, SUITE])]);

export const TAG_BYTES = 16;
export const NONCE_PREFIX_BYTES = 7;
export const MESSAGE_ID_BYTES = 32;
export const COMMITMENT_BYTES = 32;
export const MAC_BYTES = 32;
export const MIN_CHUNK_SIZE = 1;
export const MAX_CHUNK_SIZE = 16 * 1024 * 1024;
/**
 * Each chunk costs a fresh cipher, a nonce and a tag: at 64 KiB that was a fifth of a
 * stream's time here, at 256 KiB it is a few percent. Larger chunks would only make
 * range reads decrypt more around their edges and decoders hold more.
 */
export const DEFAULT_CHUNK_SIZE = 256 * 1024;
export const MAX_CHUNKS = 2 ** 32;
const MAX_KEY_NAME_BYTES = 128;
const MAX_WRAPPED_BYTES = 1024;
const KEY_NAME = /^[a-zA-Z0-9][a-zA-Z0-9._-]*$/;
/** Printable ASCII: KMS ciphertexts are `custos:v1:` and base64. */
const WRAPPED = /^[\x21-\x7e]+$/;

/** Everything the header says, parsed. */
export interface Header {
  readonly keyName: string;
  readonly context: EncryptionContext;
  readonly chunkSize: number;
  readonly noncePrefix: Buffer;
  readonly messageId: Buffer;
  readonly commitment: Buffer;
  readonly mac: Buffer;
  /** Bytes from the magic through the commitment: what the MAC covers. */
  readonly bound: Buffer;
  readonly keyVersion: number;
  readonly wrappedKey: string;
  /** Total header length in bytes; the first chunk starts here. */
  readonly length: number;
}

/** The fields an encoder chooses; the rest are derived. */
export interface HeaderFields {
  readonly keyName: string;
  readonly context: EncryptionContext;
  readonly chunkSize: number;
  readonly noncePrefix: Buffer;
  readonly messageId: Buffer;
  readonly keyVersion: number;
  readonly wrappedKey: string;
}

/** The per-message keys derived from a data key; `destroy()` zeroes them. */
export interface MessageKeys {
  readonly contentKey: Buffer;
  readonly macKey: Buffer;
  readonly commitment: Buffer;
  destroy(): void;
}

/** HKDF-SHA256(data key, salt = message id, info = preamble) → content key ‖ MAC key ‖ commitment. */
export function deriveKeys(dataKey: Buffer, messageId: Buffer): MessageKeys {
  const okm = Buffer.from(hkdfSync("sha256", dataKey, messageId, PREAMBLE, 96));
  return {
    contentKey: okm.subarray(0, 32),
    macKey: okm.subarray(32, 64),
    commitment: okm.subarray(64, 96),
    destroy: () => okm.fill(0),
  };
}

export function headerMac(macKey: Buffer, bound: Buffer): Buffer {
  return createHmac("sha256", macKey).update(bound).digest();
}

/** Builds a header; the commitment and MAC come from `keys`. */
export function encodeHeader(fields: HeaderFields, keys: MessageKeys): Buffer {
  const name = Buffer.from(fields.keyName, "ascii");
  const bound = Buffer.concat([
    PREAMBLE,
    uint16(name.length),
    name,
    canonicalContext(fields.context),
    uint32(fields.chunkSize),
    fields.noncePrefix,
    fields.messageId,
    keys.commitment,
  ]);
  return Buffer.concat([bound, headerMac(keys.macKey, bound), ...keySection(fields.keyVersion, fields.wrappedKey)]);
}

/** The part of a header that rewrap replaces: key version, wrapped length, wrapped data key. */
export function keySection(keyVersion: number, wrappedKey: string): Buffer[] {
  const wrapped = Buffer.from(wrappedKey, "ascii");
  return [uint32(keyVersion), uint16(wrapped.length), wrapped];
}

/** The same header with another key version and wrapped data key. Rewrap's only change. */
export function replaceKeySection(header: Header, keyVersion: number, wrappedKey: string): Buffer {
  return Buffer.concat([header.bound, header.mac, ...keySection(keyVersion, wrappedKey)]);
}

/** Thrown by `parseHeader` when `bytes` is a correct beginning that ends too early. */
export class IncompleteHeader extends Error {
  constructor(readonly needed: number) {
    super("header incomplete");
  }
}

/**
 * Parses a header from the start of `bytes`. A malformed header is
 * `decryption_failed`; a prefix of a valid one throws `IncompleteHeader` with the
 * number of bytes needed to go on, so stream readers know how much to wait for.
 */
export function parseHeader(bytes: Buffer): Header {
  let at = 0;
  const need = (n: number) => {
    if (at + n > bytes.length) throw new IncompleteHeader(at + n);
  };
  const take = (n: number) => {
    need(n);
    at += n;
    return bytes.subarray(at - n, at);
  };
  const preamble = take(PREAMBLE.length);
  if (!preamble.equals(PREAMBLE)) throw decryptionFailed();
  const nameLength = take(2).readUInt16BE(0);
  if (nameLength < 1 || nameLength > MAX_KEY_NAME_BYTES) throw decryptionFailed();
  const keyName = take(nameLength).toString("latin1");
  if (!KEY_NAME.test(keyName)) throw decryptionFailed();
  const context = parseContextAt(bytes, at);
  at = context.end;
  const chunkSize = take(4).readUInt32BE(0);
  if (chunkSize < MIN_CHUNK_SIZE || chunkSize > MAX_CHUNK_SIZE) throw decryptionFailed();
  const noncePrefix = Buffer.from(take(NONCE_PREFIX_BYTES));
  const messageId = Buffer.from(take(MESSAGE_ID_BYTES));
  const commitment = Buffer.from(take(COMMITMENT_BYTES));
  const bound = Buffer.from(bytes.subarray(0, at));
  const mac = Buffer.from(take(MAC_BYTES));
  const keyVersion = take(4).readUInt32BE(0);
  if (keyVersion < 1) throw decryptionFailed();
  const wrappedLength = take(2).readUInt16BE(0);
  if (wrappedLength < 1 || wrappedLength > MAX_WRAPPED_BYTES) throw decryptionFailed();
  const wrappedKey = take(wrappedLength).toString("latin1");
  if (!WRAPPED.test(wrappedKey)) throw decryptionFailed();
  return {
    keyName,
    context: context.context,
    chunkSize,
    noncePrefix,
    messageId,
    commitment,
    mac,
    bound,
    keyVersion,
    wrappedKey,
    length: at,
  };
}

function parseContextAt(bytes: Buffer, offset: number): { context: EncryptionContext; end: number } {
  try {
    return parseCanonicalContext(bytes, offset);
  } catch (e) {
    // Running past the end of a partial buffer is "wait for more", not damage.
    if (e instanceof NonCanonicalContext && e.needed !== undefined) throw new IncompleteHeader(e.needed);
    throw decryptionFailed();
  }
}

/** Checks the commitment and the MAC of a parsed header against keys derived from its data key. */
export function verifyHeader(header: Header, keys: MessageKeys): void {
  const commitmentOk = timingSafeEqual(header.commitment, keys.commitment);
  const macOk = timingSafeEqual(header.mac, headerMac(keys.macKey, header.bound));
  if (!commitmentOk || !macOk) throw decryptionFailed();
}

/** nonce[i] = prefix ‖ uint32 i ‖ last flag. */
export function chunkNonce(prefix: Buffer, index: number, last: boolean): Buffer {
  const nonce = Buffer.allocUnsafe(12);
  prefix.copy(nonce, 0);
  nonce.writeUInt32BE(index, NONCE_PREFIX_BYTES);
  nonce[11] = last ? 1 : 0;
  return nonce;
}

/** How a body of `bodyLength` bytes splits into chunks, or `decryption_failed` if no valid message has it. */
export function chunkLayout(bodyLength: number, chunkSize: number): { chunks: number; plaintextLength: number } {
  const stride = chunkSize + TAG_BYTES;
  const chunks = Math.max(1, Math.ceil(bodyLength / stride));
  const lastLength = bodyLength - (chunks - 1) * stride;
  const lastMin = chunks === 1 ? TAG_BYTES : TAG_BYTES + 1;
  if (lastLength < lastMin || chunks > MAX_CHUNKS) throw decryptionFailed();
  return { chunks, plaintextLength: bodyLength - chunks * TAG_BYTES };
}

export function checkKeyName(name: string): boolean {
  return name.length <= MAX_KEY_NAME_BYTES && KEY_NAME.test(name);
}

function uint16(n: number): Buffer {
  const b = Buffer.allocUnsafe(2);
  b.writeUInt16BE(n, 0);
  return b;
}

function uint32(n: number): Buffer {
  const b = Buffer.allocUnsafe(4);
  b.writeUInt32BE(n, 0);
  return b;
}
