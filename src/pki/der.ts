import { CustosError } from "../errors/index.js";

/**
 * The little DER the leaf builder writes itself: TLVs around already-encoded
 * fields, and the few primitive values a leaf's own fields are made of (OIDs,
 * strings, times). Finding a field's bytes inside a structure the schema has
 * encoded or checked is here too (readTlv).
 */

const BOOLEAN = 0x01;
export const INTEGER = 0x02;
export const BIT_STRING = 0x03;
export const OCTET_STRING = 0x04;
const OBJECT_IDENTIFIER = 0x06;
const UTF8_STRING = 0x0c;
const UTC_TIME = 0x17;
const GENERALIZED_TIME = 0x18;
export const SEQUENCE = 0x30;
export const SET = 0x31;

/** The DER length octets of `n`: one byte below 128, else 0x80 + count, then the count bytes of `n`. */
function lengthOctets(n: number): number[] {
  if (n < 0x80) return [n];
  const bytes: number[] = [];
  for (let rest = n; rest > 0; rest = Math.floor(rest / 256)) bytes.unshift(rest & 0xff);
  return [0x80 | bytes.length, ...bytes];
}

/** A TLV whose content is the concatenation of `parts`. */
export function tlv(tag: number, parts: readonly Uint8Array[]): Buffer {
  let length = 0;
  for (const part of parts) length += part.length;
  const lengthBytes = lengthOctets(length);
  // Every byte is written below: the tag, the length, then each part in turn.
  const out = Buffer.allocUnsafe(1 + lengthBytes.length + length);
  out[0] = tag;
  out.set(lengthBytes, 1);
  let offset = 1 + lengthBytes.length;
  for (const part of parts) {
    out.set(part, offset);
    offset += part.length;
  }
  return out;
}

/** BOOLEAN TRUE as DER writes it (X.509 writes FALSE by leaving the field out). */
export const DER_TRUE: Buffer = Buffer.from([BOOLEAN, 0x01, 0xff]);

/** An OBJECT IDENTIFIER from its dotted text ("2.5.29.17"). */
export function objectIdentifier(dotted: string): Buffer {
  const arcs = dotted.split(".").map((arc) => (/^(0|[1-9][0-9]*)$/.test(arc) ? Number(arc) : Number.NaN));
  const [first = Number.NaN, second = Number.NaN, ...rest] = arcs;
  const valid = arcs.every(Number.isSafeInteger) && arcs.length >= 2 && first <= 2 && (first === 2 || second < 40);
  if (!valid) throw new CustosError("internal", `not an object identifier: ${dotted}`);
  // The first two arcs share one subidentifier (X.690 8.19.4).
  const content = [first * 40 + second, ...rest].flatMap(base128);
  return tlv(OBJECT_IDENTIFIER, [Uint8Array.from(content)]);
}

/** An OID subidentifier: base 128, most significant group first, the high bit set on all but the last. */
function base128(n: number): number[] {
  const groups = [n % 128];
  for (let rest = Math.floor(n / 128); rest > 0; rest = Math.floor(rest / 128)) groups.unshift(0x80 | (rest % 128));
  return groups;
}

/** A lone surrogate has no UTF-8 form: Buffer would silently write U+FFFD in its place. */
const LONE_SURROGATE = /\p{Surrogate}/u;

/** A UTF8String. */
export function utf8String(text: string): Buffer {
  if (LONE_SURROGATE.test(text)) throw new CustosError("internal", "a string with a lone surrogate has no UTF-8 form");
  return tlv(UTF8_STRING, [Buffer.from(text, "utf8")]);
}

const ASCII_ONLY = /^\p{ASCII}*$/u;

/** An IA5String (ASCII) under `tag`: GeneralName tags its IA5 names IMPLICIT [1], [2], [6]. */
export function ia5String(tag: number, text: string): Buffer {
  if (!ASCII_ONLY.test(text)) throw new CustosError("internal", `not an IA5String: ${JSON.stringify(text)}`);
  return tlv(tag, [Buffer.from(text, "latin1")]);
}

/**
 * An X.509 Time (RFC 5280 4.1.2.5): UTCTime (YYMMDDHHMMSSZ) through 2049,
 * GeneralizedTime (YYYYMMDDHHMMSSZ) from 2050. Whole seconds only: the caller
 * decides how to round, and a UTCTime has no room for years outside 1950–2049.
 */
export function x509Time(date: Date): Buffer {
  const ms = date.getTime();
  const year = date.getUTCFullYear();
  if (!Number.isFinite(ms) || ms % 1000 !== 0 || year < 1950 || year > 9999) {
    throw new CustosError("internal", `cannot encode ${String(date)} as an X.509 time`);
  }
  const monthToSecond = [
    twoDigits(date.getUTCMonth() + 1),
    twoDigits(date.getUTCDate()),
    twoDigits(date.getUTCHours()),
    twoDigits(date.getUTCMinutes()),
    twoDigits(date.getUTCSeconds()),
  ].join("");
  return year < 2050
    ? tlv(UTC_TIME, [Buffer.from(`${twoDigits(year % 100)}${monthToSecond}Z`, "latin1")])
    : tlv(GENERALIZED_TIME, [Buffer.from(`${year}${monthToSecond}Z`, "latin1")]);
}

const twoDigits = (n: number): string => n.toString().padStart(2, "0");

/** Where one TLV starting at `offset` keeps its content, or undefined when its header is malformed. */
export function readTlv(der: Uint8Array, offset: number): { tag: number; start: number; end: number } | undefined {
  const tag = der[offset];
  const first = der[offset + 1];
  if (tag === undefined || first === undefined) return undefined;
  let start = offset + 2;
  let length = first;
  if (first >= 0x80) {
    const count = first & 0x7f;
    if (count === 0 || count > 4) return undefined;
    length = 0;
    for (let i = 0; i < count; i++) {
      const b = der[start + i];
      if (b === undefined) return undefined;
      length = length * 256 + b;
    }
    start += count;
  }
  const end = start + length;
  return end <= der.length ? { tag, start, end } : undefined;
}

/** The subjectPublicKey bits of a DER SubjectPublicKeyInfo (what a key identifier hashes). */
export function subjectPublicKeyBits(spki: Uint8Array): Uint8Array {
  const outer = readTlv(spki, 0);
  const algorithm = outer && readTlv(spki, outer.start);
  const bits = algorithm && readTlv(spki, algorithm.end);
  if (!outer || outer.tag !== SEQUENCE || !bits || bits.tag !== BIT_STRING) {
    throw new Error("not a DER SubjectPublicKeyInfo");
  }
  // The first content byte counts unused bits (0 for keys); the key is what follows.
  return spki.subarray(bits.start + 1, bits.end);
}
