import type { EncryptionContext } from "../context/index.js";
import { validateContext } from "../context/index.js";
import { CustosError } from "../errors/index.js";
import type { Secret } from "../secret/index.js";
import { lazyView, open, preloadedView, seal } from "./crypto.js";
import { type KmsContext, loadKey } from "./internal.js";
import { assertUsable } from "./state.js";
import type { DecryptResult } from "./types.js";
import { checkName, checkPlaintext } from "./validate.js";

/*
 * Encryption for services that keep their own data under a KMS key and audit their
 * own operations (the secrets service writes one record per secret operation,
 * atomically with its change). These do what encrypt/decrypt do but write no
 * `key.encrypt`/`key.decrypt` record: one per secret read or write would double the
 * journal and, for writes, land outside the transaction that holds the change.
 * They are not reachable from the API: only services call them.
 */

/** Encrypts under the key's latest version. */
export async function sealFor(
  ctx: KmsContext,
  name: string,
  plaintext: Uint8Array,
  context: EncryptionContext,
): Promise<string> {
  checkName(name);
  const bytes = checkPlaintext(plaintext);
  const ctxChecked = validateContext(context);
  const key = await loadKey(ctx, name);
  assertUsable(key, "encrypt");
  return (await seal(lazyView(ctx, key), bytes, ctxChecked, key.latestVersion)).ciphertext;
}

/**
 * Decrypts a ciphertext made by `sealFor`. Unlike the API's decrypt, a destroyed key
 * answers `key_destroyed` rather than the uniform `decryption_failed`: the caller is
 * a service that holds the ciphertext already, and must tell a crypto-shredded
 * secret from a damaged one. Every other failure stays `decryption_failed`.
 */
export async function openFor(
  ctx: KmsContext,
  name: string,
  ciphertext: string,
  context: EncryptionContext,
): Promise<Secret> {
  checkName(name);
  const ctxChecked = validateContext(context);
  const view = lazyView(ctx, await openableKey(ctx, name));
  return (await open(view, ciphertext, ctxChecked)).plaintext;
}

/**
 * `openFor` over several ciphertexts of one key, reading the key and its versions
 * once (an instance's secrets at boot). All or nothing: if one fails, the plaintexts
 * already made are destroyed and its error is thrown.
 */
export async function openManyFor(
  ctx: KmsContext,
  name: string,
  items: readonly { readonly ciphertext: string; readonly context: EncryptionContext }[],
): Promise<Secret[]> {
  checkName(name);
  const checked = items.map((item) => ({ ciphertext: item.ciphertext, context: validateContext(item.context) }));
  const view = await preloadedView(ctx, await openableKey(ctx, name));
  // Together, so that the KMS cipher gathers them into one HSM job.
  const opened = await Promise.allSettled(checked.map((item) => open(view, item.ciphertext, item.context)));
  const failure = opened.find((o) => o.status === "rejected");
  if (failure === undefined) return opened.map((o) => (o as PromiseFulfilledResult<DecryptResult>).value.plaintext);
  for (const o of opened) if (o.status === "fulfilled") o.value.plaintext.destroy();
  throw failure.reason;
}

/** The key `name` if it may decrypt; a destroyed one is `key_destroyed` (see openFor). */
async function openableKey(ctx: KmsContext, name: string) {
  const key = await loadKey(ctx, name);
  if (key.state === "destroyed") throw new CustosError("key_destroyed", `key "${name}" is destroyed`);
  assertUsable(key, "encrypt", "decrypt");
  return key;
}
