import { CustosError, decryptionFailed } from "../errors/index.js";
import type { KeyPurpose, KeyRecord } from "../store/index.js";

/**
 * Refuses a crypto operation the key's purpose or state doesn't allow. Disabled and
 * pending-destruction keys answer `key_disabled` (pending destruction must be
 * reversible, so it behaves like disabled); destroyed keys answer `key_destroyed`,
 * except for decryption, where the answer is the uniform `decryption_failed`.
 */
export function assertUsable(key: KeyRecord, purpose: KeyPurpose, op: "decrypt" | "other" = "other"): void {
  if (key.purpose !== purpose) {
    throw new CustosError("key_purpose_mismatch", `key "${key.name}" is a ${key.purpose} key`);
  }
  switch (key.state) {
    case "enabled":
      return;
    case "disabled":
      throw new CustosError("key_disabled", `key "${key.name}" is disabled`);
    case "pending_destruction":
      throw new CustosError("key_disabled", `key "${key.name}" is pending destruction`);
    case "destroyed":
      if (op === "decrypt") throw decryptionFailed();
      throw new CustosError("key_destroyed", `key "${key.name}" is destroyed`);
  }
}

/** Refuses management of a destroyed key. */
export function assertNotDestroyed(key: KeyRecord): void {
  if (key.state === "destroyed") throw new CustosError("key_destroyed", `key "${key.name}" is destroyed`);
}
