import { createHash, randomBytes } from "node:crypto";
import { Secret } from "../secret/index.js";

/**
 * Token strings: `cst_` + 16-character public id + `_` + 43 base64url characters
 * of 32 random bytes. The prefix makes leaked tokens easy to spot (secret
 * scanners, logs); the public id names the token in lists and audit records
 * without revealing it. Only SHA-256 of the whole string is stored: the secret
 * part has 256 bits of entropy, so a slow hash would add nothing.
 */

const TOKEN_RE = /^cst_([a-z2-7]{16})_([A-Za-z0-9_-]{43})$/;
const BASE32 = "abcdefghijklmnopqrstuvwxyz234567";

/** A fresh public token id: 16 base32 characters (80 random bits). */
export function newTokenId(): string {
  const bytes = randomBytes(10);
  let bits = 0;
  let value = 0;
  let out = "";
  for (const byte of bytes) {
    value = (value << 8) | byte;
    bits += 8;
    while (bits >= 5) {
      out += BASE32[(value >>> (bits - 5)) & 31];
      bits -= 5;
    }
  }
  return out;
}

/** A new token: its public id, the full token string (as a Secret) and the hash to store. */
export function generateToken(id: string = newTokenId()): { id: string; token: Secret; hash: string } {
  const random = randomBytes(32);
  const token = Secret.fromString(`cst_${id}_${random.toString("base64url")}`);
  random.fill(0);
  return { id, token, hash: token.use(hashTokenBytes) };
}

function hashTokenBytes(bytes: Uint8Array): string {
  return createHash("sha256").update(bytes).digest("hex");
}

/** SHA-256 (hex) of the whole token string: the only form of a token the store holds. */
export function hashToken(token: string): string {
  return createHash("sha256").update(token, "utf8").digest("hex");
}

/** The public id of a well-formed token string, or undefined when it is not one. */
export function parseTokenId(token: string): string | undefined {
  return TOKEN_RE.exec(token)?.[1];
}
