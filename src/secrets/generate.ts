import { randomInt } from "node:crypto";
import { CustosError } from "../errors/index.js";

const UPPER = "ABCDEFGHIJKLMNOPQRSTUVWXYZ";
const LOWER = "abcdefghijklmnopqrstuvwxyz";
const DIGITS = "0123456789";

/** The named alphabets of `generate`. */
export const ALPHABETS: Readonly<Record<string, string>> = {
  alnum: UPPER + LOWER + DIGITS,
  "alnum-symbols": `${UPPER}${LOWER}${DIGITS}!#$%&()*+,-./:;<=>?@[]^_{|}~`,
  hex: "0123456789abcdef",
  base64url: `${UPPER}${LOWER}${DIGITS}-_`,
};

export const MIN_LENGTH = 8;
export const MAX_LENGTH = 1024;
export const DEFAULT_LENGTH = 32;

/** Letters, marks, numbers, punctuation and symbols: printable, no spaces or controls. */
const PRINTABLE = /^[\p{L}\p{M}\p{N}\p{P}\p{S}]$/u;

/** The characters of a named or custom alphabet (code points, distinct, 2..256 of them). */
export function alphabetOf(value: unknown): string[] {
  if (value === undefined) return [...(ALPHABETS.alnum as string)];
  if (typeof value !== "string") throw new CustosError("invalid_request", "alphabet must be a string");
  const named = ALPHABETS[value];
  if (named !== undefined && Object.hasOwn(ALPHABETS, value)) return [...named];
  const chars = [...value];
  if (chars.length < 2 || chars.length > 256) {
    throw new CustosError(
      "invalid_request",
      `alphabet must be one of ${Object.keys(ALPHABETS).join(", ")} or 2..256 distinct printable characters`,
    );
  }
  if (new Set(chars).size !== chars.length) {
    throw new CustosError("invalid_request", "a custom alphabet's characters must be distinct");
  }
  if (!chars.every((c) => PRINTABLE.test(c))) {
    throw new CustosError(
      "invalid_request",
      "a custom alphabet's characters must be printable (no spaces or controls)",
    );
  }
  return chars;
}

export function lengthOf(value: unknown): number {
  if (value === undefined) return DEFAULT_LENGTH;
  if (typeof value !== "number" || !Number.isInteger(value) || value < MIN_LENGTH || value > MAX_LENGTH) {
    throw new CustosError("invalid_request", `length must be an integer from ${MIN_LENGTH} to ${MAX_LENGTH}`);
  }
  return value;
}

/**
 * A random string of `length` characters drawn uniformly and independently from
 * `alphabet`: `randomInt` rejects out-of-range draws rather than reducing modulo
 * the alphabet size, so no character is favoured.
 */
export function randomString(length: number, alphabet: readonly string[]): string {
  let out = "";
  for (let i = 0; i < length; i++) out += alphabet[randomInt(alphabet.length)];
  return out;
}
