import type { EncryptionContext } from "../context/index.js";
import type { ErrorCode } from "../errors/index.js";
import type { Keystore, SignatureScheme } from "../hsm/index.js";
import type { Secret } from "../secret/index.js";
import type { AuditEntry, KeyAlgorithm, KeyPurpose, KeyRecord, KeyVersionState, Store } from "../store/index.js";

/** Where crypto operations are audited. The real `AuditLog` satisfies it; it throws `audit_unavailable`. */
export interface AuditSink {
  record(entry: AuditEntry): Promise<void>;
}

/** What `KmsService` needs. */
export interface KmsDeps {
  readonly keystore: Keystore;
  readonly store: Store;
  readonly audit: AuditSink;
  /** Source of "now" for timestamps, rotation and destruction schedules. */
  readonly clock?: () => Date;
  /** Shortest waiting period `scheduleDestruction` accepts (default 86400). */
  readonly minDestructionWaitSeconds?: number;
}

/** Key metadata as callers see it: the stored key record, which holds no material (its versions do). */
export type KeyInfo = KeyRecord;

/** One version's metadata; signing versions carry their public key. */
export interface KeyVersionInfo {
  readonly version: number;
  readonly state: KeyVersionState;
  readonly createdAt: string;
  /** SPKI PEM, for sign keys whose version is not destroyed. */
  readonly publicKeyPem?: string;
}

export interface KeyDetails extends KeyInfo {
  readonly versions: readonly KeyVersionInfo[];
}

export interface CreateKeyInput {
  readonly name: string;
  readonly purpose: KeyPurpose;
  readonly algorithm?: KeyAlgorithm;
  readonly description?: string;
  readonly rotationPeriodSeconds?: number;
}

export interface ListKeysInput {
  readonly prefix?: string;
  readonly after?: string;
  /** 1..1000, default 100. */
  readonly limit?: number;
}

export interface UpdateKeyInput {
  readonly description?: string;
  /** Seconds, or null to stop automatic rotation. */
  readonly rotationPeriodSeconds?: number | null;
  /** Can only be raised (1..latestVersion): retiring a version is one-way. Encrypt keys only. */
  readonly minDecryptionVersion?: number;
  /** Enable or disable the key in the same change (a pending destruction must be cancelled instead). */
  readonly enabled?: boolean;
}

export interface ScheduleDestructionInput {
  /** Default 30 days (never less than the service's minimum). */
  readonly waitingSeconds?: number;
}

export interface EncryptInput {
  readonly plaintext: Uint8Array;
  readonly context?: EncryptionContext;
  /** Defaults to the latest version. */
  readonly version?: number;
}

export interface EncryptResult {
  readonly ciphertext: string;
  readonly version: number;
}

export interface DecryptInput {
  readonly ciphertext: string;
  readonly context?: EncryptionContext;
}

export interface DecryptResult {
  /** The caller owns it and should `destroy()` it when done. */
  readonly plaintext: Secret;
  readonly version: number;
}

export type RewrapInput = DecryptInput;
export type RewrapResult = EncryptResult;

export interface DataKeyInput {
  readonly context?: EncryptionContext;
  /** 16, 24 or 32 (default 32). */
  readonly bytes?: number;
  /** Return the plaintext key too (default true); false for "generate without plaintext". */
  readonly withPlaintext?: boolean;
}

export interface DataKeyResult {
  readonly plaintext?: Secret;
  readonly ciphertext: string;
  readonly version: number;
}

export interface SignInput {
  readonly message: Uint8Array;
  /** Defaults to the latest version. */
  readonly version?: number;
  /** Defaults to the algorithm's scheme (rsa-3072: rsa-pkcs1-sha256). */
  readonly scheme?: SignatureScheme;
}

export interface SignResult {
  /** ECDSA: raw r‖s (64 bytes); Ed25519: 64 bytes; RSA: 384 bytes. */
  readonly signature: Buffer;
  readonly version: number;
  readonly scheme: SignatureScheme;
}

export interface VerifyInput {
  readonly message: Uint8Array;
  readonly signature: Uint8Array;
  /** Defaults to the latest version. */
  readonly version?: number;
  /** Defaults to the algorithm's scheme. */
  readonly scheme?: SignatureScheme;
}

export interface VerifyResult {
  readonly valid: boolean;
}

/**
 * One item's outcome in a batch. A success carries the result both under `value`
 * and spread at the top level (the same objects), so callers can use either shape.
 */
export type BatchItemResult<T> =
  | ({ readonly ok: true; readonly value: T } & T)
  | { readonly ok: false; readonly error: { readonly code: ErrorCode; readonly message: string } };

/** Counts from one `runDue` pass. */
export interface RunDueResult {
  readonly rotated: number;
  readonly destroyed: number;
  readonly failed: number;
}
