import type { EncryptionContext } from "../context/index.js";
import { CustosError, decryptionFailed } from "../errors/index.js";
import type { KeyRecord, KeyVersionRecord } from "../store/index.js";
import { ALG_AES_256_GCM, additionalDataFrom, boundHeader, encodeCiphertextFrom, parseCiphertext } from "./format.js";
import type { KmsContext } from "./internal.js";
import type { DecryptResult, EncryptResult } from "./types.js";
import { checkPlaintext, checkVersion } from "./validate.js";

/**
 * A key as one operation (or one whole batch) sees it: the record read once, and its
 * versions — fetched one by one for single calls, preloaded for batches.
 */
export interface KeyView {
  readonly key: KeyRecord;
  version(v: number): Promise<KeyVersionRecord | undefined>;
  /** The bound header bytes for encrypting under version `v` (built once per version). */
  bound(v: number): Buffer;
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
  return { key, version: (v) => ctx.store.getKeyVersion(key.id, v), bound: boundMemo(key) };
}

/** A view over versions read once (batches: no per-item store reads). */
export async function preloadedView(ctx: KmsContext, key: KeyRecord): Promise<KeyView> {
  const byVersion = new Map((await ctx.store.listKeyVersions(key.id)).map((v) => [v.version, v]));
  return { key, version: async (v) => byVersion.get(v), bound: boundMemo(key) };
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
  ctx: KmsContext,
  view: KeyView,
  plaintext: Uint8Array,
  context: EncryptionContext,
  version: number,
): Promise<EncryptResult> {
  const material = await view.version(version);
  if (material === undefined || material.state !== "active" || material.wrappedKey === null) {
    throw new CustosError("internal", `key version ${version} has no material`);
  }
  const bound = view.bound(version);
  const sealed = await ctx.keystore.encrypt(material.wrappedKey, plaintext, additionalDataFrom(bound, context));
  return { ciphertext: encodeCiphertextFrom(bound, sealed.iv, sealed.ciphertext), version };
}

/** Validates caller input and encrypts it under `context` (already validated). */
export async function sealInput(
  ctx: KmsContext,
  view: KeyView,
  input: { plaintext?: unknown; version?: unknown },
  context: EncryptionContext,
): Promise<EncryptResult> {
  const plaintext = checkPlaintext(input.plaintext);
  return seal(ctx, view, plaintext, context, encryptionVersion(view.key, input.version));
}

/**
 * Decrypts a ciphertext under the (already state-checked) key. Every way the
 * ciphertext can be wrong is `decryption_failed`; the one exception is a version
 * retired by minDecryptionVersion, answered `version_too_old` (the version is in the
 * clear header, so saying so reveals nothing an attacker holding the blob lacks).
 */
export async function open(
  ctx: KmsContext,
  view: KeyView,
  ciphertext: unknown,
  context: EncryptionContext,
): Promise<DecryptResult> {
  const parsed = parseCiphertext(ciphertext);
  const { key } = view;
  if (parsed.keyId !== key.id || parsed.keyVersion > key.latestVersion) throw decryptionFailed();
  if (parsed.keyVersion < key.minDecryptionVersion) throw tooOld(key, parsed.keyVersion);
  const material = await view.version(parsed.keyVersion);
  if (material === undefined || material.state !== "active" || material.wrappedKey === null) {
    throw decryptionFailed();
  }
  const plaintext = await ctx.keystore.decrypt(material.wrappedKey, parsed.iv, parsed.sealed, parsed.aad(context));
  return { plaintext, version: parsed.keyVersion };
}

/** Decrypts under the ciphertext's version and re-encrypts under the latest; the plaintext is zeroed. */
export async function reseal(
  ctx: KmsContext,
  view: KeyView,
  ciphertext: unknown,
  context: EncryptionContext,
): Promise<EncryptResult & { fromVersion: number }> {
  const opened = await open(ctx, view, ciphertext, context);
  try {
    const sealed = await opened.plaintext.use((bytes) => seal(ctx, view, bytes, context, view.key.latestVersion));
    return { ...sealed, fromVersion: opened.version };
  } finally {
    opened.plaintext.destroy();
  }
}
