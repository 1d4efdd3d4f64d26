import type { EncryptionContext } from "../context/index.js";
import { CustosError, decryptionFailed } from "../errors/index.js";
import type { KeyRecord, KeyVersionRecord } from "../store/index.js";
import { ALG_AES_256_GCM, additionalDataFrom, boundHeader, encodeCiphertextFrom, parseCiphertext } from "./format.js";
import type { KeyCipher } from "./gather.js";
import type { KmsContext } from "./internal.js";
import type { DecryptResult, EncryptResult } from "./types.js";
import { checkPlaintext, checkVersion } from "./validate.js";

/**
 * A key as one operation (or one whole batch) sees it: the record read once, and its
 * versions — fetched one by one for single calls, preloaded for batches.
 */
export interface KeyView {
  readonly key: KeyRecord;
  /** The keystore's AES-GCM, calls made together gathered into HSM jobs (see gather.ts). */
  readonly cipher: KeyCipher;
  version(v: number): Promise<KeyVersionRecord | undefined>;
  /** The bound header bytes for encrypting under version `v` (built once per version). */
  bound(v: number): Buffer;
  /** The AAD for encrypting under version `v` in `context`: the bound header, then the canonical context. */
  additionalData(v: number, context: EncryptionContext): Buffer;
}

function boundMemo(key: KeyRecord): (v: number) => Buffer {
  const memo = new Map<number, Buffer>();
  return (v) => {
    let b = memo.get(v);
    if (b === undefined) {
      b = boundHeader({ keyId: key.id, keyVersion: v, algorithm: ALG_AES_256_GCM });
      memo.set(v, b);
    }
    return b;
  };
}

/** A view that reads versions from the store on demand. */
export function lazyView(ctx: KmsContext, key: KeyRecord): KeyView {
  const bound = boundMemo(key);
  return {
    key,
    cipher: ctx.cipher,
    version: (v) => ctx.store.getKeyVersion(key.id, v),
    bound,
    additionalData: (v, context) => additionalDataFrom(bound(v), context),
  };
}

/** A batch's view: versions read once (no per-item store reads). */
export async function preloadedView(ctx: KmsContext, key: KeyRecord): Promise<KeyView> {
  const byVersion = new Map((await ctx.store.listKeyVersions(key.id)).map((v) => [v.version, v]));
  const bound = boundMemo(key);
  // A batch's items mostly share a few contexts: each AAD is built once, keyed by the
  // context as it was sent (two spellings of one context just build it twice).
  const aads = new Map<string, Buffer>();
  return {
    key,
    cipher: ctx.cipher,
    version: async (v) => byVersion.get(v),
    bound,
    additionalData: (v, context) => {
      const id = `${v} ${JSON.stringify(context)}`;
      let aad = aads.get(id);
      if (aad === undefined) {
        aad = additionalDataFrom(bound(v), context);
        aads.set(id, aad);
      }
      return aad;
    },
  };
}

function tooOld(key: KeyRecord, version: number): CustosError {
  return new CustosError(
    "version_too_old",
    `key "${key.name}" version ${version} is below minDecryptionVersion ${key.minDecryptionVersion}`,
  );
}

/** The version encryption uses: the latest unless the caller names one still decryptable. */
export function encryptionVersion(key: KeyRecord, requested: unknown): number {
  if (requested === undefined) return key.latestVersion;
  const version = checkVersion(requested, key.latestVersion);
  // Encrypting under a retired version would make a ciphertext nobody can decrypt.
  if (version < key.minDecryptionVersion) throw tooOld(key, version);
  return version;
}

/** Encrypts checked plaintext under one version of the (already state-checked) key. */
export async function seal(
  view: KeyView,
  plaintext: Uint8Array,
  context: EncryptionContext,
  version: number,
): Promise<EncryptResult> {
  const material = await view.version(version);
  if (material === undefined || material.state !== "active" || material.wrappedKey === null) {
    throw new CustosError("internal", `key version ${version} has no material`);
  }
  const sealed = await view.cipher.encrypt(material.wrappedKey, plaintext, view.additionalData(version, context));
  return { ciphertext: encodeCiphertextFrom(view.bound(version), sealed.iv, sealed.ciphertext), version };
}

/** Validates caller input and encrypts it under `context` (already validated). */
export async function sealInput(
  view: KeyView,
  input: { plaintext?: unknown; version?: unknown },
  context: EncryptionContext,
): Promise<EncryptResult> {
  const plaintext = checkPlaintext(input.plaintext);
  return seal(view, plaintext, context, encryptionVersion(view.key, input.version));
}

/**
 * Decrypts a ciphertext under the (already state-checked) key. Every way the
 * ciphertext can be wrong is `decryption_failed`; the one exception is a version
 * retired by minDecryptionVersion, answered `version_too_old` (the version is in the
 * clear header, so saying so reveals nothing an attacker holding the blob lacks).
 */
export async function open(view: KeyView, ciphertext: unknown, context: EncryptionContext): Promise<DecryptResult> {
  const parsed = parseCiphertext(ciphertext);
  const { key } = view;
  if (parsed.keyId !== key.id || parsed.keyVersion > key.latestVersion) throw decryptionFailed();
  if (parsed.keyVersion < key.minDecryptionVersion) throw tooOld(key, parsed.keyVersion);
  const material = await view.version(parsed.keyVersion);
  if (material === undefined || material.state !== "active" || material.wrappedKey === null) {
    throw decryptionFailed();
  }
  const plaintext = await view.cipher.decrypt(material.wrappedKey, parsed.iv, parsed.sealed, parsed.aad(context));
  return { plaintext, version: parsed.keyVersion };
}

/** Decrypts under the ciphertext's version and re-encrypts under the latest; the plaintext is zeroed. */
export async function reseal(
  view: KeyView,
  ciphertext: unknown,
  context: EncryptionContext,
): Promise<EncryptResult & { fromVersion: number }> {
  const opened = await open(view, ciphertext, context);
  try {
    const sealed = await opened.plaintext.use((bytes) => seal(view, bytes, context, view.key.latestVersion));
    return { ...sealed, fromVersion: opened.version };
  } finally {
    opened.plaintext.destroy();
  }
}
