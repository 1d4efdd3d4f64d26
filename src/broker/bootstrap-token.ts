import { createHash, randomBytes, timingSafeEqual } from "node:crypto";

/**
 * One-time bootstrap tokens: `cbt.<id>.<secret>`, both parts base64url. The id (96
 * random bits) names the token in audit records and lets the store find it; the
 * secret (256 random bits) is what proves possession. Only SHA-256 of the whole
 * string is stored: with 256 bits of entropy a slow hash would add nothing.
 */

const TOKEN_RE = /^cbt\.([A-Za-z0-9_-]{16})\.([A-Za-z0-9_-]{43})$/;

export interface NewBootstrapToken {
  readonly id: string;
  /** The token string: handed to the agent once, never stored or logged. */
  readonly token: string;
  readonly hash: string;
}

export function newBootstrapToken(): NewBootstrapToken {
  const id = randomBytes(12).toString("base64url");
  const token = `cbt.${id}.${randomBytes(32).toString("base64url")}`;
  return { id, token, hash: hashBootstrapToken(token) };
}

/** SHA-256 (hex) of the whole token string. */
export function hashBootstrapToken(token: string): string {
  return createHash("sha256").update(token, "utf8").digest("hex");
}

/** The id of a well-formed token string, or undefined. */
export function bootstrapTokenId(token: unknown): string | undefined {
  return typeof token === "string" ? TOKEN_RE.exec(token)?.[1] : undefined;
}

/** Whether `token` hashes to `storedHash`, compared in constant time. */
export function bootstrapTokenMatches(token: string, storedHash: string): boolean {
  const a = Buffer.from(hashBootstrapToken(token), "hex");
  const b = Buffer.from(storedHash, "hex");
  return a.length === b.length && timingSafeEqual(a, b);
}
