import { CustosError } from "../errors/index.js";
import type { SignatureScheme } from "../hsm/index.js";
import type { KeyAlgorithm, KeyPurpose } from "../store/index.js";
import { MAX_PLAINTEXT_BYTES } from "./format.js";

const NAME = /^[a-zA-Z0-9][a-zA-Z0-9._-]{0,127}$/;

/** Automatic rotation: at least an hour, at most ten years. */
export const MIN_ROTATION_PERIOD_SECONDS = 3600;
export const MAX_ROTATION_PERIOD_SECONDS = 10 * 365 * 86400;
/** Longest waiting period before a scheduled destruction. */
export const MAX_DESTRUCTION_WAIT_SECONDS = 365 * 86400;
/** Items per batch call. */
export const MAX_BATCH_ITEMS = 1000;
/** Bytes per `random` call. */
export const MAX_RANDOM_BYTES = 1024;
export const MAX_DESCRIPTION_CHARS = 1024;
/** Largest message `sign`/`verify` accept. */
export const MAX_MESSAGE_BYTES = 64 * 1024;

function invalid(message: string): CustosError {
  return new CustosError("invalid_request", message);
}

/** A key name as a caller gave it. */
export function checkName(name: unknown): string {
  if (typeof name !== "string" || !NAME.test(name)) {
    throw invalid("key name must be 1..128 of [a-zA-Z0-9._-], starting with a letter or digit");
  }
  return name;
}

/**
 * Prefixes of the names services give the keys they make themselves: the platform's
 * `app.<org>.<space>.<app>` and the secrets store's `secrets.shared`. A key made
 * under one of them through the API would stand in for the service's own.
 */
export const SERVICE_KEY_PREFIXES = ["app.", "secrets."] as const;

/** Refuses a name a service keeps for its own keys (see `SERVICE_KEY_PREFIXES`). */
export function checkNotServiceKeyName(name: string): void {
  if (SERVICE_KEY_PREFIXES.some((prefix) => name.startsWith(prefix))) {
    throw invalid(
      `key names starting ${SERVICE_KEY_PREFIXES.join(" or ")} are kept for the keys Custos makes for apps and shared secrets`,
    );
  }
}

export function checkPurpose(purpose: unknown): KeyPurpose {
  if (purpose !== "encrypt" && purpose !== "sign") throw invalid('purpose must be "encrypt" or "sign"');
  return purpose;
}

/** The algorithm for a purpose, defaulted; refuses combinations that don't fit. */
export function checkAlgorithm(purpose: KeyPurpose, algorithm: unknown): KeyAlgorithm {
  if (purpose === "encrypt") {
    if (algorithm === undefined || algorithm === "aes-256-gcm") return "aes-256-gcm";
    throw invalid('encrypt keys use algorithm "aes-256-gcm"');
  }
  if (algorithm === undefined) return "ecdsa-p256";
  if (algorithm === "ecdsa-p256" || algorithm === "ed25519" || algorithm === "rsa-3072") return algorithm;
  throw invalid('sign keys use algorithm "ecdsa-p256", "ed25519" or "rsa-3072"');
}

export function checkDescription(description: unknown): string {
  if (typeof description !== "string" || description.length > MAX_DESCRIPTION_CHARS) {
    throw invalid(`description must be a string of at most ${MAX_DESCRIPTION_CHARS} characters`);
  }
  return description;
}

export function checkRotationPeriod(seconds: unknown): number {
  if (
    typeof seconds !== "number" ||
    !Number.isSafeInteger(seconds) ||
    seconds < MIN_ROTATION_PERIOD_SECONDS ||
    seconds > MAX_ROTATION_PERIOD_SECONDS
  ) {
    throw invalid(
      `rotationPeriodSeconds must be an integer from ${MIN_ROTATION_PERIOD_SECONDS} to ${MAX_ROTATION_PERIOD_SECONDS}`,
    );
  }
  return seconds;
}

export function checkWaitingSeconds(seconds: unknown, min: number): number {
  const max = Math.max(MAX_DESTRUCTION_WAIT_SECONDS, min);
  if (typeof seconds !== "number" || !Number.isSafeInteger(seconds) || seconds < min || seconds > max) {
    throw invalid(`waitingSeconds must be an integer from ${min} to ${max}`);
  }
  return seconds;
}

/** A version number a caller named: an integer from 1 to `latest`. */
export function checkVersion(version: unknown, latest: number): number {
  if (typeof version !== "number" || !Number.isSafeInteger(version) || version < 1 || version > latest) {
    throw invalid(`version must be an integer from 1 to ${latest}`);
  }
  return version;
}

export function checkPlaintext(plaintext: unknown): Uint8Array {
  if (!(plaintext instanceof Uint8Array)) throw invalid("plaintext must be bytes");
  if (plaintext.length < 1 || plaintext.length > MAX_PLAINTEXT_BYTES) {
    throw invalid(`plaintext must be 1..${MAX_PLAINTEXT_BYTES} bytes`);
  }
  return plaintext;
}

export function checkMessage(message: unknown): Uint8Array {
  if (!(message instanceof Uint8Array)) throw invalid("message must be bytes");
  if (message.length > MAX_MESSAGE_BYTES) throw invalid(`message must be at most ${MAX_MESSAGE_BYTES} bytes`);
  return message;
}

export function checkDataKeyBytes(bytes: unknown): 16 | 24 | 32 {
  if (bytes === undefined) return 32;
  if (bytes === 16 || bytes === 24 || bytes === 32) return bytes;
  throw invalid("bytes must be 16, 24 or 32");
}

export function checkWithPlaintext(flag: unknown): boolean {
  if (flag === undefined) return true;
  if (typeof flag !== "boolean") throw invalid("withPlaintext must be a boolean");
  return flag;
}

export function checkRandomBytes(bytes: unknown): number {
  if (typeof bytes !== "number" || !Number.isSafeInteger(bytes) || bytes < 1 || bytes > MAX_RANDOM_BYTES) {
    throw invalid(`bytes must be an integer from 1 to ${MAX_RANDOM_BYTES}`);
  }
  return bytes;
}

export function checkBatch<T>(items: unknown): readonly T[] {
  if (!Array.isArray(items)) throw invalid("items must be an array");
  if (items.length < 1 || items.length > MAX_BATCH_ITEMS) throw invalid(`a batch holds 1..${MAX_BATCH_ITEMS} items`);
  return items as readonly T[];
}

export function checkListLimit(limit: unknown): number {
  if (limit === undefined) return 100;
  if (typeof limit !== "number" || !Number.isSafeInteger(limit) || limit < 1 || limit > 1000) {
    throw invalid("limit must be an integer from 1 to 1000");
  }
  return limit;
}

/** The schemes each signing algorithm supports; the first is the default. */
const SCHEMES: Readonly<Record<string, readonly SignatureScheme[]>> = {
  "ecdsa-p256": ["ecdsa-p256-sha256"],
  ed25519: ["ed25519"],
  "rsa-3072": ["rsa-pkcs1-sha256", "rsa-pss-sha256"],
};

/** The scheme to sign or verify with, defaulted for the key's algorithm. */
export function checkScheme(algorithm: KeyAlgorithm, scheme: unknown): SignatureScheme {
  const allowed = SCHEMES[algorithm] ?? [];
  if (scheme === undefined && allowed[0] !== undefined) return allowed[0];
  const found = allowed.find((s) => s === scheme);
  if (found === undefined) throw invalid(`scheme must be one of: ${allowed.join(", ")}`);
  return found;
}
