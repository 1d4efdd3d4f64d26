import { CustosError } from "../errors/index.js";

/** Caller-supplied encryption context: bound into the AAD, never stored, logged in clear in audit. */
export type EncryptionContext = Readonly<Record<string, string>>;

/** At most this many entries per context. */
export const MAX_CONTEXT_ENTRIES = 64;
/** Keys and values are 1..256 characters. */
export const MAX_CONTEXT_CHARS = 256;

// In `u` mode a surrogate pair is one code point, so this matches only lone surrogates,
// which UTF-8 encoding would silently turn into U+FFFD and make two contexts collide.
const LONE_SURROGATE = /[\uD800-\uDFFF]/u;

function checkText(what: string, text: unknown): asserts text is string {
  if (typeof text !== "string") throw new CustosError("invalid_request", `context ${what} must be a string`);
  if (text.length < 1 || text.length > MAX_CONTEXT_CHARS) {
    throw new CustosError("invalid_request", `context ${what} must be 1..${MAX_CONTEXT_CHARS} characters`);
  }
  if (LONE_SURROGATE.test(text)) throw new CustosError("invalid_request", `context ${what} is not valid Unicode`);
}

/**
 * Checks a context from a caller and returns it as a plain object (`{}` when absent).
 * Throws `invalid_request` naming what is wrong; messages never echo values.
 */
export function validateContext(context: unknown): EncryptionContext {
  if (context === undefined || context === null) return {};
  if (typeof context !== "object" || Array.isArray(context)) {
    throw new CustosError("invalid_request", "context must be an object of string keys to string values");
  }
  const entries = Object.entries(context);
  if (entries.length > MAX_CONTEXT_ENTRIES) {
    throw new CustosError("invalid_request", `context has more than ${MAX_CONTEXT_ENTRIES} entries`);
  }
  const out: Record<string, string> = {};
  for (const [key, value] of entries) {
    checkText("key", key);
    checkText("value", value);
    out[key] = value;
  }
  return out;
}

/**
 * The canonical bytes of a context: entry count, then each entry sorted by the UTF-8
 * bytes of its key, as length-prefixed key and value (all lengths uint32 big-endian).
 * Length prefixes make the encoding injective (unlike JSON or `k=v` joins, no two
 * contexts share bytes), and sorting makes it independent of the order the caller
 * built the object in. `prefix` bytes, if given, are written first (one allocation
 * for the whole AAD: this runs once per item of every batch).
 */
export function canonicalContext(context: EncryptionContext, prefix?: Uint8Array): Buffer {
  const pairs = Object.entries(context).map(([k, v]) => [Buffer.from(k, "utf8"), Buffer.from(v, "utf8")] as const);
  if (pairs.length > 1) pairs.sort((a, b) => Buffer.compare(a[0], b[0]));
  let size = (prefix?.length ?? 0) + 4;
  for (const [k, v] of pairs) size += 8 + k.length + v.length;
  const out = Buffer.allocUnsafe(size);
  let at = 0;
  if (prefix) {
    out.set(prefix, 0);
    at = prefix.length;
  }
  at = out.writeUInt32BE(pairs.length, at);
  for (const [k, v] of pairs) {
    at = out.writeUInt32BE(k.length, at);
    at += k.copy(out, at);
    at = out.writeUInt32BE(v.length, at);
    at += v.copy(out, at);
  }
  return out;
}
