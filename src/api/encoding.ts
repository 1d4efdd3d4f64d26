import { CustosError } from "../errors/index.js";

const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

/** Whether `value` is standard base64, padded, and nothing else. */
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
