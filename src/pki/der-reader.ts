/**
 * Strict DER reading for the few structures Custos walks by hand (a PKCS#10
 * request). Only DER is read: one-byte tags, definite lengths written in the
 * fewest bytes, no value running past its container. What breaks a rule is a
 * DerError; the caller turns it into its own error.
 */
import { TextDecoder } from "node:util";
import {
  BIT_STRING,
  BMP_STRING,
  BOOLEAN,
  IA5_STRING,
  OBJECT_IDENTIFIER,
  PRINTABLE_STRING,
  SEQUENCE,
  TELETEX_STRING,
  UNIVERSAL_STRING,
  UTF8_STRING,
} from "./der-tags.js";

/** A structure that is not DER, or not the DER the caller expected. */
export class DerError extends Error {
  override readonly name = "DerError";
}

/** Bit 6 of a tag: the content is itself a run of TLVs. */
const CONSTRUCTED = 0x20;
/** Deeper than any real certificate structure; bounds the recursion of walkWellFormed. */
const MAX_DEPTH = 32;

/** One TLV inside `der`: its tag, where its header starts, and where its content starts and ends. */
export interface Tlv {
  readonly der: Buffer;
  readonly tag: number;
  readonly offset: number;
  readonly start: number;
  readonly end: number;
}

function hex(byte: number): string {
  return `0x${byte.toString(16).padStart(2, "0")}`;
}

/** The byte at `at`, which must lie before `limit`. */
function byteAt(der: Buffer, at: number, limit: number): number {
  const byte = der[at];
  if (at >= limit || byte === undefined) throw new DerError(`truncated at byte ${at}`);
  return byte;
}

/**
 * The TLV whose header starts at `offset` and which must end by `limit`.
 * Refused: the high tag number form and tag 0 (end-of-contents, BER only), the
 * indefinite length, a length in more bytes than it needs (long form below 128,
 * a leading zero byte), more than 4 length bytes, a length past `limit`.
 */
export function tlvAt(der: Buffer, offset: number, limit: number): Tlv {
  const tag = byteAt(der, offset, limit);
  if (tag === 0 || (tag & 0x1f) === 0x1f) throw new DerError(`tag ${hex(tag)} at byte ${offset} is not a DER tag`);
  const first = byteAt(der, offset + 1, limit);
  let start = offset + 2;
  let length = first;
  if (first === 0x80) throw new DerError(`indefinite length at byte ${offset + 1}`);
  if (first > 0x80) {
    const count = first & 0x7f;
    if (count > 4) throw new DerError(`${count} length bytes at byte ${offset + 1}`);
    length = 0;
    for (let i = 0; i < count; i++) length = length * 256 + byteAt(der, start + i, limit);
    start += count;
    // Shortest form: below 128 is one byte; otherwise no leading zero byte.
    if (length < 0x80 || length < 256 ** (count - 1)) {
      throw new DerError(`length ${length} at byte ${offset + 1} is not in the fewest bytes`);
    }
  }
  const end = start + length;
  if (end > limit) throw new DerError(`length ${length} at byte ${offset + 1} runs past the end`);
  return { der, tag, offset, start, end };
}

/** Reads the TLVs laid end to end in der[start, end), in order. */
export class DerReader {
  readonly #der: Buffer;
  readonly #end: number;
  #at: number;

  constructor(der: Buffer, start = 0, end = der.length) {
    this.#der = der;
    this.#at = start;
    this.#end = end;
  }

  get atEnd(): boolean {
    return this.#at === this.#end;
  }

  /** The tag of the next TLV, undefined when there is none. */
  peekTag(): number | undefined {
    return this.atEnd ? undefined : this.#der[this.#at];
  }

  /** The next TLV, whatever its tag. */
  next(): Tlv {
    const tlv = tlvAt(this.#der, this.#at, this.#end);
    this.#at = tlv.end;
    return tlv;
  }

  /** The next TLV, which must have `tag`. */
  read(tag: number): Tlv {
    const tlv = this.next();
    if (tlv.tag !== tag) throw new DerError(`expected tag ${hex(tag)} at byte ${tlv.offset}, found ${hex(tlv.tag)}`);
    return tlv;
  }

  /** A reader over the content of the next TLV, which must have `tag`. */
  enter(tag: number): DerReader {
    return readerOf(this.read(tag), tag);
  }

  /** Refuses what is left unread. */
  finish(): void {
    if (!this.atEnd) throw new DerError(`unexpected bytes at byte ${this.#at}`);
  }
}

/** A reader over the content of `tlv`, which must have `tag`. */
export function readerOf(tlv: Tlv, tag: number): DerReader {
  if (tlv.tag !== tag) throw new DerError(`expected tag ${hex(tag)} at byte ${tlv.offset}, found ${hex(tlv.tag)}`);
  return new DerReader(tlv.der, tlv.start, tlv.end);
}

/** The content octets of `tlv` (a view, not a copy). */
export function contentOf(tlv: Tlv): Buffer {
  return tlv.der.subarray(tlv.start, tlv.end);
}

/** The whole encoding of `tlv`, header included (a view, not a copy). */
export function encodingOf(tlv: Tlv): Buffer {
  return tlv.der.subarray(tlv.offset, tlv.end);
}

/** Whether the whole encoding of `tlv` is exactly `expected`: how a known OID or AlgorithmIdentifier is recognised. */
export function isEncoding(tlv: Tlv, expected: Buffer): boolean {
  return tlv.end - tlv.offset === expected.length && encodingOf(tlv).equals(expected);
}

/**
 * Checks that a value read as opaque is still DER: a constructed TLV's content
 * must be TLVs that fill it exactly, all the way down. Primitive contents are
 * not interpreted.
 */
export function walkWellFormed(tlv: Tlv, depth = 0): void {
  if ((tlv.tag & CONSTRUCTED) === 0) return;
  if (depth >= MAX_DEPTH) throw new DerError(`nested deeper than ${MAX_DEPTH} at byte ${tlv.offset}`);
  const inner = new DerReader(tlv.der, tlv.start, tlv.end);
  while (!inner.atEnd) walkWellFormed(inner.next(), depth + 1);
}

/** The next TLV of `reader`, which must be an OBJECT IDENTIFIER (checked with validOid). */
export function readOid(reader: DerReader): Tlv {
  return validOid(reader.read(OBJECT_IDENTIFIER));
}

/**
 * `tlv` itself when its content is a well-formed OBJECT IDENTIFIER (whatever its
 * tag, so an IMPLICIT one is checked too): base-128 subidentifiers, none padded
 * with a leading 0x80, the last one ended.
 */
export function validOid(tlv: Tlv): Tlv {
  const content = contentOf(tlv);
  if (content.length === 0) throw new DerError(`empty OBJECT IDENTIFIER at byte ${tlv.offset}`);
  let subidentifierStarts = true;
  for (const byte of content) {
    if (subidentifierStarts && byte === 0x80) {
      throw new DerError(`OBJECT IDENTIFIER at byte ${tlv.offset} has a padded subidentifier`);
    }
    subidentifierStarts = byte < 0x80;
  }
  if (!subidentifierStarts) throw new DerError(`OBJECT IDENTIFIER at byte ${tlv.offset} ends inside a subidentifier`);
  return tlv;
}

/** The dotted text of an OBJECT IDENTIFIER checked with validOid. Arcs of any size (BigInt). */
export function oidText(oid: Tlv): string {
  const subidentifiers: bigint[] = [];
  let value = 0n;
  for (const byte of contentOf(oid)) {
    value = (value << 7n) | BigInt(byte & 0x7f);
    if (byte < 0x80) {
      subidentifiers.push(value);
      value = 0n;
    }
  }
  // The first subidentifier packs two arcs: 40 * first + second, the first arc being 0, 1 or 2.
  const [packed = 0n, ...rest] = subidentifiers;
  const first = packed < 40n ? 0n : packed < 80n ? 1n : 2n;
  return [first, packed - 40n * first, ...rest].join(".");
}

/** A DER BOOLEAN: one byte, 0x00 or 0xff. */
export function booleanOf(tlv: Tlv): boolean {
  const content = contentOf(tlv);
  if (tlv.tag !== BOOLEAN || content.length !== 1 || (content[0] !== 0x00 && content[0] !== 0xff)) {
    throw new DerError(`not a DER BOOLEAN at byte ${tlv.offset}`);
  }
  return content[0] === 0xff;
}

/** The bytes of a BIT STRING that holds whole bytes (a key, a signature): its unused-bits count must be 0. */
export function bitStringBytes(tlv: Tlv): Buffer {
  if (tlv.tag !== BIT_STRING || tlv.start === tlv.end || tlv.der[tlv.start] !== 0) {
    throw new DerError(`not a whole-byte BIT STRING at byte ${tlv.offset}`);
  }
  return tlv.der.subarray(tlv.start + 1, tlv.end);
}

const UTF8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

/** Text of 7-bit bytes (IA5String, PrintableString); a byte above 0x7f is no character of theirs. */
export function asciiText(tlv: Tlv): string {
  const content = contentOf(tlv);
  for (const byte of content) {
    if (byte > 0x7f) throw new DerError(`byte ${hex(byte)} in a 7-bit string at byte ${tlv.offset}`);
  }
  return content.toString("latin1");
}

/**
 * UCS-2 big-endian (BMPString): 2 bytes per character, none a surrogate. The
 * BMP holds no character beyond U+FFFF, and OpenSSL refuses a surrogate pair in
 * a BMPString too.
 */
function ucs2Text(tlv: Tlv): string {
  const content = contentOf(tlv);
  if (content.length % 2 !== 0) throw new DerError(`BMPString at byte ${tlv.offset} is not whole characters`);
  let text = "";
  for (let i = 0; i < content.length; i += 2) {
    const unit = content.readUInt16BE(i);
    if (unit >= 0xd800 && unit <= 0xdfff) {
      throw new DerError(`BMPString at byte ${tlv.offset} holds no character ${unit.toString(16)}`);
    }
    text += String.fromCharCode(unit);
  }
  return text;
}

/** UTF-32BE (UniversalString): 4 bytes per character, each a Unicode scalar value. */
function utf32Text(tlv: Tlv): string {
  const content = contentOf(tlv);
  if (content.length % 4 !== 0) throw new DerError(`UniversalString at byte ${tlv.offset} is not whole characters`);
  let text = "";
  for (let i = 0; i < content.length; i += 4) {
    const codePoint = content.readUInt32BE(i);
    if (codePoint > 0x10ffff || (codePoint >= 0xd800 && codePoint <= 0xdfff)) {
      throw new DerError(`UniversalString at byte ${tlv.offset} holds no character ${codePoint.toString(16)}`);
    }
    text += String.fromCodePoint(codePoint);
  }
  return text;
}

/** UTF-8 (UTF8String), malformed text refused rather than replaced. */
function utf8Text(tlv: Tlv): string {
  try {
    return UTF8.decode(contentOf(tlv));
  } catch (e) {
    throw new DerError(`malformed UTF-8 at byte ${tlv.offset}`, { cause: e });
  }
}

/**
 * The text of a directory string (the types an X.520 name attribute such as a
 * CN is written in, IA5String included): UTF8String, PrintableString,
 * IA5String, TeletexString (read as Latin-1, as everyone does), BMPString
 * (UCS-2BE) or UniversalString (UTF-32BE). Anything else, or malformed text, is
 * a DerError.
 */
export function directoryStringText(tlv: Tlv): string {
  switch (tlv.tag) {
    case UTF8_STRING:
      return utf8Text(tlv);
    case PRINTABLE_STRING:
    case IA5_STRING:
      return asciiText(tlv);
    case TELETEX_STRING:
      return contentOf(tlv).toString("latin1");
    case BMP_STRING:
      return ucs2Text(tlv);
    case UNIVERSAL_STRING:
      return utf32Text(tlv);
    default:
      throw new DerError(`tag ${hex(tlv.tag)} at byte ${tlv.offset} is not a directory string`);
  }
}

/** The subjectPublicKey bits of a DER SubjectPublicKeyInfo (what a key identifier hashes). */
export function subjectPublicKeyBits(spki: Buffer): Buffer {
  const top = new DerReader(spki);
  const fields = top.enter(SEQUENCE);
  top.finish();
  fields.read(SEQUENCE);
  const bits = bitStringBytes(fields.next());
  fields.finish();
  return bits;
}
