import type { CustosError } from "../errors/index.js";
import type { Secret } from "../secret/index.js";
import { InFlight } from "./in-flight.js";

/**
 * The seam between Custos and its HSM. Everything above `hsm/` speaks to this
 * interface; only `hsm/pkcs11/` knows PKCS#11. Modelled on smallstep's small key
 * manager core: a few capabilities, keys addressed by label and id, never by raw
 * handle (handles die with sessions).
 *
 * Errors: every method throws `CustosError` — `hsm_unavailable` when the token could
 * not be reached within the operation's deadline (session/device-class failures that
 * self-healing could not repair in time), `hsm_error` for other PKCS#11 failures
 * (carrying the CKR name), `decryption_failed` from `decrypt` for any authentication
 * failure, `invalid_request` for bad arguments.
 */

/** Asymmetric algorithms whose private keys live in the HSM as token objects. */
export type SigningAlgorithm = "ecdsa-p256" | "ed25519" | "rsa-3072";

/**
 * How a signature is computed. ECDSA signatures are raw r‖s (64 bytes: JWS ES256
 * form); callers convert to DER or SSH form as their format needs.
 */
export type SignatureScheme = "ecdsa-p256-sha256" | "ed25519" | "rsa-pkcs1-sha256" | "rsa-pss-sha256";

/** Where a token object lives: its CKA_LABEL and CKA_ID (hex). */
export interface HsmKeyRef {
  readonly label: string;
  readonly id: string;
}

/** The root wrapping key, as recorded in the store at init. */
export interface RootKeyInfo extends HsmKeyRef {
  /** Deterministic key check value (hex) that identifies this exact key. */
  readonly checkValue: string;
  /**
   * Whether the key is unmodifiable and unwraps only into keys that can't leave the
   * HSM. False for a root key made before Custos made them so: with it, a session
   * logged in with the PIN can unwrap key versions into keys it can read.
   */
  readonly hardened: boolean;
}

export interface GeneratedKeyPair {
  readonly ref: HsmKeyRef;
  /** SubjectPublicKeyInfo, DER. */
  readonly publicKey: Buffer;
}

export interface GcmCiphertext {
  /** 12-byte IV. */
  readonly iv: Buffer;
  /** Ciphertext followed by the 16-byte GCM tag. */
  readonly ciphertext: Buffer;
}

/** One message for `encryptMany`. */
export interface GcmMessage {
  readonly plaintext: Uint8Array;
  readonly aad: Uint8Array;
}

/** One sealed message for `decryptMany`. */
export interface GcmSealed {
  readonly iv: Uint8Array;
  readonly ciphertext: Uint8Array;
  readonly aad: Uint8Array;
}

export type HsmHealthState = "ok" | "degraded" | "unavailable";

export interface HsmHealth {
  readonly state: HsmHealthState;
  /** Token label this keystore serves. */
  readonly token: string;
  /** Sessions open / pool size. */
  readonly sessions: { readonly open: number; readonly size: number };
  /** Last failure seen (a CKR name or a short reason), when not `ok`. */
  readonly lastError?: string;
  /** ISO time of the last successful recovery, if any. */
  readonly recoveredAt?: string;
}

export interface Keystore {
  /** Health as the API reports it; cheap, never touches the token. */
  health(): HsmHealth;

  // --- root key --------------------------------------------------------------

  /**
   * Creates the non-extractable AES-256 root wrapping key. `conflict` if one exists or
   * another was being created at the same time (a race never leaves two).
   */
  createRootKey(): Promise<RootKeyInfo>;
  /** Finds the root key by label; `undefined` when the token has none. */
  findRootKey(): Promise<RootKeyInfo | undefined>;

  // --- encryption keys (wrapped under the root key, unwrapped on use) ---------

  /** Generates an AES-256 key in the HSM and returns it wrapped by the root key (RFC 5649). */
  generateWrappedAesKey(): Promise<Buffer>;
  /** AES-256-GCM encrypt under the wrapped key, IV chosen by the keystore. */
  encrypt(wrappedKey: Buffer, plaintext: Uint8Array, aad: Uint8Array): Promise<GcmCiphertext>;
  /** AES-256-GCM decrypt; any authentication failure is `decryption_failed`. */
  decrypt(wrappedKey: Buffer, iv: Uint8Array, ciphertext: Uint8Array, aad: Uint8Array): Promise<Secret>;
  /**
   * `encrypt` of many messages under one key, as one HSM job (a batch's items). An item
   * `encrypt` would refuse gets its error in its place; a failure of the HSM or of the
   * wrapped key fails the whole call.
   */
  encryptMany(wrappedKey: Buffer, messages: readonly GcmMessage[]): Promise<Array<GcmCiphertext | CustosError>>;
  /**
   * `decrypt` of many messages under one key, as one HSM job, errors placed as
   * `encryptMany` places them; a wrapped key the root key did not make is every
   * item's `decryption_failed`.
   */
  decryptMany(wrappedKey: Buffer, sealed: readonly GcmSealed[]): Promise<Array<Secret | CustosError>>;

  // --- signing keys (token objects that never leave the HSM) ------------------

  /** Generates a non-extractable key pair stored on the token under `label`. */
  generateKeyPair(algorithm: SigningAlgorithm, label: string): Promise<GeneratedKeyPair>;
  /** A stored pair under `label` (the first found, when there are several), or undefined. */
  findKeyPair(label: string): Promise<GeneratedKeyPair | undefined>;
  /** Signs `data` (the keystore hashes it where the scheme needs a digest). */
  sign(ref: HsmKeyRef, scheme: SignatureScheme, data: Uint8Array): Promise<Buffer>;
  /** The public key of a stored pair, SPKI DER. `not_found` if absent. */
  publicKey(ref: HsmKeyRef): Promise<Buffer>;
  /** Destroys both halves of a stored pair. Idempotent. */
  destroyKeyPair(ref: HsmKeyRef): Promise<void>;

  // --- HMAC (audit) -----------------------------------------------------------

  /** Creates a non-extractable HMAC-SHA256 token key under `label`; returns it if it already exists. */
  ensureHmacKey(label: string): Promise<HsmKeyRef>;
  /** HMAC-SHA256 of `data` under a token HMAC key. */
  hmac(ref: HsmKeyRef, data: Uint8Array): Promise<Buffer>;

  // --- data objects -----------------------------------------------------------

  /**
   * The values of the private token data objects under `label`: none, one, or (when a
   * `writeData` was cut short) the old and the new. Only a session holding the PIN can
   * make one, which is what makes it a place to keep what the database must not be
   * able to roll back.
   */
  readData(label: string): Promise<Buffer[]>;
  /** Replaces the private token data objects under `label` by one holding `value` (at most 64 KiB). */
  writeData(label: string, value: Uint8Array): Promise<void>;

  // --- misc -------------------------------------------------------------------

  /** `length` bytes from the HSM's RNG. */
  random(length: number): Promise<Buffer>;
  /**
   * Closes every session and releases the module, after waiting for calls still inside
   * it (never finalizing under one).
   */
  close(): Promise<void>;
}

const keyPairEnsures = new WeakMap<Keystore, InFlight<GeneratedKeyPair>>();

/**
 * The pair under `label`, generated only if the token has none: one-time set-up
 * that died half-way and is run again reuses what it made instead of orphaning it.
 * Concurrent calls for one label on one keystore share a single find-or-generate.
 */
export async function ensureKeyPair(
  keystore: Keystore,
  algorithm: SigningAlgorithm,
  label: string,
): Promise<GeneratedKeyPair> {
  let ensures = keyPairEnsures.get(keystore);
  if (!ensures) {
    ensures = new InFlight();
    keyPairEnsures.set(keystore, ensures);
  }
  return ensures.run(
    label,
    async () => (await keystore.findKeyPair(label)) ?? (await keystore.generateKeyPair(algorithm, label)),
  );
}
