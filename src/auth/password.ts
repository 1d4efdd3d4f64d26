import argon2 from "argon2";
import { CustosError } from "../errors/index.js";
import { Secret } from "../secret/index.js";
import type { PasswordInput } from "./types.js";

/** Shortest password accepted, in characters. */
export const MIN_PASSWORD_LENGTH = 12;
/** Longest password accepted, in bytes: enough for any passphrase, and bounds the hashing input. */
export const MAX_PASSWORD_BYTES = 1024;

/**
 * An argon2id hash (package defaults: 64 MiB, t=3, p=4) of 32 random bytes nobody
 * kept. Login verifies against it when the user is unknown or has no password, so
 * those answers take as long as a wrong password for a real user.
 */
const DUMMY_HASH = "$argon2id$v=19$m=65536,p=4,t=3$WBNPXjCYlR/Ht7IpAC+SoQ$LH4uBYXWnAFcWsKKZ8658Xb+LKN/RbVjT0vroZf1m8k";

/** Characters in UTF-8 bytes, counted without making an (unzeroable) JS string. */
function utf8Length(bytes: Uint8Array): number {
  let count = 0;
  for (const byte of bytes) if ((byte & 0xc0) !== 0x80) count++;
  return count;
}

/** Throws `invalid_request` unless the password is 12+ characters and at most 1 KiB in UTF-8. */
export function checkPasswordStrength(password: Secret): void {
  const { bytes, characters } = password.use((b) => ({ bytes: b.length, characters: utf8Length(b) }));
  if (bytes > MAX_PASSWORD_BYTES) {
    throw new CustosError(
      "invalid_request",
      `passwords must be at most ${MAX_PASSWORD_BYTES} bytes in UTF-8 (a non-ASCII character takes 2 to 4)`,
    );
  }
  if (characters < MIN_PASSWORD_LENGTH) {
    throw new CustosError("invalid_request", `passwords must be at least ${MIN_PASSWORD_LENGTH} characters`);
  }
}

/** argon2id hash of a password that passed `checkPasswordStrength`, in the encoded `$argon2id$…` form. */
export async function hashPassword(password: Secret): Promise<string> {
  checkPasswordStrength(password);
  // argon2 reads the bytes before the promise settles; copy so the caller may destroy theirs meanwhile.
  const copy = password.use((bytes) => Buffer.from(bytes));
  try {
    return await argon2.hash(copy, { type: argon2.argon2id });
  } finally {
    copy.fill(0);
  }
}

/**
 * True when `password` matches `encoded`. With `encoded` null (unknown user, no
 * password set) it verifies against a dummy hash and returns false, taking the
 * same time as a real mismatch.
 */
export async function verifyPassword(encoded: string | null, password: Secret): Promise<boolean> {
  // An attempt longer than any password can be fails the same way. It is never cut
  // down to size: the cut would match a stored password that is its prefix.
  const stored = password.length > MAX_PASSWORD_BYTES ? null : encoded;
  const copy = stored === null ? Buffer.alloc(0) : password.use((bytes) => Buffer.from(bytes));
  try {
    const ok = await argon2.verify(stored ?? DUMMY_HASH, copy);
    return ok && stored !== null;
  } catch {
    // A corrupt stored hash is a failed login, not a 500 that tells the caller the user exists.
    return false;
  } finally {
    copy.fill(0);
  }
}

/** Runs `fn` with the password as a Secret, zeroing it afterwards if this call made it. */
export async function withPassword<T>(password: PasswordInput, fn: (secret: Secret) => Promise<T>): Promise<T> {
  if (password instanceof Secret) return fn(password);
  if (typeof password !== "string") throw new CustosError("invalid_request", "password must be a string");
  const secret = Secret.fromString(password);
  try {
    return await fn(secret);
  } finally {
    secret.destroy();
  }
}
