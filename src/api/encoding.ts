import { CustosError } from "../errors/index.js";

/**
 * Padded standard base64 whose pad bits are zero (RFC 4648 3.5): the last character
 * before `==` is one of A Q g w, before `=` one of A E I M Q U Y c g k o s w 0 4 8.
 * Other spellings decode to the same bytes; refusing them keeps one spelling per value.
 */
const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/][AQgw]==|[A-Za-z0-9+/]{2}[AEIMQUYcgkosw048]=)?$/;

/** Whether `value` is canonical standard base64, padded, and nothing else. */
export function isBase64(value: string): boolean {
  return BASE64.test(value);
}

/**
 * Strict base64: `Buffer.from(s, "base64")` silently skips junk, which would turn a
 * client's encoding bug into wrong data. `field` names the offending input.
 */
export function fromBase64(value: string, field: string): Buffer {
  if (!isBase64(value)) throw new CustosError("invalid_request", `${field} must be standard base64`);
  return Buffer.from(value, "base64");
}
