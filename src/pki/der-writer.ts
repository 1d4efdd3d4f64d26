import { CustosError } from "../errors/index.js";

/**
 * The little DER the leaf builder writes itself: TLVs around already-encoded
 * fields, and the few primitive values a leaf's own fields and its signature are
 * made of (OIDs, strings, times, an ECDSA signature's integers).
 */

import { BOOLEAN, GENERALIZED_TIME, INTEGER, OBJECT_IDENTIFIER, SEQUENCE, UTC_TIME, UTF8_STRING } from "./der-tags.js";

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

/** A non-negative big-endian integer as a DER INTEGER: no leading zero bytes, but one when the top bit is set. */
function unsignedInteger(bytes: Uint8Array): Buffer {
  let from = 0;
  while (from < bytes.length - 1 && bytes[from] === 0) from++;
  const digits = bytes.subarray(from);
  return tlv(INTEGER, (digits[0] ?? 0) >= 0x80 ? [Uint8Array.of(0), digits] : [digits]);
}

/** An ECDSA signature as X.509 carries it, ECDSA-Sig-Value ::= SEQUENCE { r INTEGER, s INTEGER }, from r‖s. */
export function ecdsaSignatureDer(raw: Uint8Array): Buffer {
  if (raw.length === 0 || raw.length % 2 !== 0) throw new CustosError("internal", "an ECDSA signature is r and s");
  const half = raw.length / 2;
  return tlv(SEQUENCE, [unsignedInteger(raw.subarray(0, half)), unsignedInteger(raw.subarray(half))]);
}
