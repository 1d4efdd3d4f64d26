/**
 * The encryption context: a caller's string map bound into the AAD of KMS ciphertexts
 * and stored in envelope headers. One validation and one canonical byte encoding,
 * shared by the KMS and the envelope library.
 */
import { CustosError } from "../errors/index.js";

/** Caller-supplied encryption context: bound into the AAD, never stored, logged in clear in audit. */
export type EncryptionContext = Readonly<Record<string, string>>;

/** At most this many entries per context. */
export const MAX_CONTEXT_ENTRIES = 64;
/** Keys and values are 1..256 characters, counted as UTF-16 code units (an emoji counts 2). */
export const MAX_CONTEXT_CHARS = 256;

// In `u` mode a surrogate pair is one code point, so this matches only lone surrogates,
// which UTF-8 encoding would silently turn into U+FFFD and make two contexts collide.
const LONE_SURROGATE = /[\uD800-\uDFFF]/u;

function checkText(what: string, text: unknown): asserts text is string {
  if (typeof text !== "string") throw new CustosError("invalid_request", `context ${what} must be a string`);
  if (text.length < 1 || text.length > MAX_CONTEXT_CHARS) {
    throw new CustosError(
      "invalid_request",
      `context ${what} must be 1..${MAX_CONTEXT_CHARS} characters (UTF-16 code units: an emoji counts 2)`,
    );
  }
  if (LONE_SURROGATE.test(text)) throw new CustosError("invalid_request", `context ${what} is not valid Unicode`);
}

/** Sets an own entry: plain assignment of a reserved name (see `validateContext`) would set the prototype. */
function setEntry(context: Record<string, string>, key: string, value: string): void {
  Object.defineProperty(context, key, { value, enumerable: true, writable: true, configurable: true });
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
    // JSON parsers refuse or drop this member to guard their prototypes, so a context
    // holding it could be sealed in process and never opened over the API.
    if (key === "__proto__") throw new CustosError("invalid_request", "context key __proto__ is reserved");
    checkText("value", value);
    setEntry(out, key, value);
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

/**
 * Why `parseCanonicalContext` refused its input. `needed` is set when the input is a
 * valid beginning that ends too early: the total length needed to go on.
 */
export class NonCanonicalContext extends Error {
  constructor(
    message: string,
    readonly needed?: number,
  ) {
    super(message);
  }
}

/**
 * Reads a canonical context from `bytes` at `offset` and returns it with the offset
 * just past it. Refuses anything `canonicalContext` would not have written (unsorted
 * or repeated keys, limits broken, malformed UTF-8), so each context has one spelling.
 */
export function parseCanonicalContext(bytes: Buffer, offset: number): { context: EncryptionContext; end: number } {
  let at = offset;
  const need = (n: number) => {
    if (at + n > bytes.length) throw new NonCanonicalContext("context runs past the end", at + n);
  };
  need(4);
  const count = bytes.readUInt32BE(at);
  at += 4;
  if (count > MAX_CONTEXT_ENTRIES) throw new NonCanonicalContext("too many context entries");
  const text = (): { raw: Buffer; value: string } => {
    need(4);
    const length = bytes.readUInt32BE(at);
    at += 4;
    // Four UTF-8 bytes per character at most; checked before slicing so a huge length can't allocate.
    if (length < 1 || length > 4 * MAX_CONTEXT_CHARS) throw new NonCanonicalContext("context text length out of range");
    need(length);
    const raw = bytes.subarray(at, at + length);
    at += length;
    const value = raw.toString("utf8");
    // A round trip that changes the bytes means malformed UTF-8 (decoded as U+FFFD).
    if (value.length > MAX_CONTEXT_CHARS || !raw.equals(Buffer.from(value, "utf8"))) {
      throw new NonCanonicalContext("context text is not canonical UTF-8");
    }
    return { raw, value };
  };
  const context: Record<string, string> = {};
  let previous: Buffer | undefined;
  for (let i = 0; i < count; i++) {
    const key = text();
    if (previous !== undefined && Buffer.compare(previous, key.raw) >= 0) {
      throw new NonCanonicalContext("context keys are not strictly ascending");
    }
    previous = key.raw;
    setEntry(context, key.value, text().value);
  }
  return { context, end: at };
}
