import { CustosError } from "../errors/index.js";

/**
 * The one answer to every kind of damage, wrong key or wrong context: callers and
 * attackers learn nothing about which check failed.
 */
export function decryptionFailed(): CustosError {
  return new CustosError("decryption_failed", "decryption failed");
}
