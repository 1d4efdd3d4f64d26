import type { Actor } from "../audit/index.js";
import { auditEntry } from "../audit/index.js";
import { validateContext } from "../context/index.js";
import { Secret } from "../secret/index.js";
import { encryptionVersion, lazyView, open, reseal, seal } from "./crypto.js";
import { type KmsContext, loadKey, recordOp } from "./internal.js";
import { assertUsable } from "./state.js";
import type {
  DataKeyInput,
  DataKeyResult,
  DecryptInput,
  DecryptResult,
  EncryptInput,
  EncryptResult,
  RewrapInput,
  RewrapResult,
} from "./types.js";
import { checkDataKeyBytes, checkName, checkPlaintext, checkRandomBytes, checkWithPlaintext } from "./validate.js";

/** Encrypts up to 64 KiB under the key's latest (or a named) version. */
export async function encrypt(
  ctx: KmsContext,
  actor: Actor,
  name: string,
  input: EncryptInput,
): Promise<EncryptResult> {
  checkName(name);
  const plaintext = checkPlaintext(input.plaintext);
  const context = validateContext(input.context);
  const key = await loadKey(ctx, name);
  assertUsable(key, "encrypt");
  const result = await seal(lazyView(ctx, key), plaintext, context, encryptionVersion(key, input.version));
  await recordOp(ctx, actor, "key.encrypt", name, { version: result.version, context });
  return result;
}

/** Decrypts a ciphertext made under this key; the caller owns the returned `Secret`. */
export async function decrypt(
  ctx: KmsContext,
  actor: Actor,
  name: string,
  input: DecryptInput,
): Promise<DecryptResult> {
  checkName(name);
  const context = validateContext(input.context);
  const key = await loadKey(ctx, name);
  assertUsable(key, "encrypt", "decrypt");
  const result = await open(lazyView(ctx, key), input.ciphertext, context);
  return withAudit(result.plaintext, result, () =>
    recordOp(ctx, actor, "key.decrypt", name, { version: result.version, context }),
  );
}

/** Moves a ciphertext to the latest version without exposing the plaintext. */
export async function rewrap(ctx: KmsContext, actor: Actor, name: string, input: RewrapInput): Promise<RewrapResult> {
  checkName(name);
  const context = validateContext(input.context);
  const key = await loadKey(ctx, name);
  assertUsable(key, "encrypt", "decrypt");
  const { fromVersion, ...result } = await reseal(lazyView(ctx, key), input.ciphertext, context);
  await recordOp(ctx, actor, "key.rewrap", name, { fromVersion, version: result.version, context });
  return result;
}

/** A fresh data key from the HSM's RNG and its ciphertext under the latest version. */
export async function generateDataKey(
  ctx: KmsContext,
  actor: Actor,
  name: string,
  input: DataKeyInput = {},
): Promise<DataKeyResult> {
  checkName(name);
  const bytes = checkDataKeyBytes(input.bytes);
  const context = validateContext(input.context);
  const withPlaintext = checkWithPlaintext(input.withPlaintext);
  const key = await loadKey(ctx, name);
  assertUsable(key, "encrypt");
  const plaintext = Secret.adopt(await ctx.keystore.random(bytes));
  try {
    const sealed = await plaintext.use((b) => seal(lazyView(ctx, key), b, context, key.latestVersion));
    await recordOp(ctx, actor, "key.datakey", name, { version: sealed.version, context, bytes, withPlaintext });
    if (!withPlaintext) {
      plaintext.destroy();
      return sealed;
    }
    return { ...sealed, plaintext };
  } catch (e) {
    plaintext.destroy();
    throw e;
  }
}

/** `bytes` (1..1024) from the HSM's RNG. */
export async function random(ctx: KmsContext, actor: Actor, bytes: number): Promise<Buffer> {
  const n = checkRandomBytes(bytes);
  const out = await ctx.keystore.random(n);
  try {
    // The action and resource the API authorises (random:generate on "random"), so that its
    // refusals, which the API records, and this success are found under one name.
    await ctx.audit.record(auditEntry(actor, "random.generate", "random", { bytes: n }));
  } catch (e) {
    out.fill(0);
    throw e;
  }
  return out;
}

/** Runs the audit write; if it fails the plaintext is zeroed and the caller gets the audit error. */
async function withAudit<T>(plaintext: Secret, result: T, record: () => Promise<void>): Promise<T> {
  try {
    await record();
    return result;
  } catch (e) {
    plaintext.destroy();
    throw e;
  }
}
