import { constants, createPublicKey, verify as nodeVerify } from "node:crypto";
import type { Actor } from "../audit/index.js";
import { CustosError } from "../errors/index.js";
import type { SignatureScheme } from "../hsm/index.js";
import type { KeyRecord, KeyVersionRecord } from "../store/index.js";
import { hsmRef, type KmsContext, loadKey, recordOp } from "./internal.js";
import { assertUsable } from "./state.js";
import type { SignInput, SignResult, VerifyInput, VerifyResult } from "./types.js";
import { checkMessage, checkName, checkScheme, checkVersion } from "./validate.js";

/** Largest signature any supported scheme produces (RSA-3072: 384 bytes), with room. */
const MAX_SIGNATURE_BYTES = 1024;

async function activeVersion(ctx: KmsContext, key: KeyRecord, requested: unknown): Promise<KeyVersionRecord> {
  const version = requested === undefined ? key.latestVersion : checkVersion(requested, key.latestVersion);
  const v = await ctx.store.getKeyVersion(key.id, version);
  if (v === undefined || v.state !== "active") {
    throw new CustosError("key_destroyed", `key "${key.name}" version ${version} is destroyed`);
  }
  return v;
}

/** Signs `message` in the HSM with one version of a sign key (the HSM hashes where the scheme needs it). */
export async function sign(ctx: KmsContext, actor: Actor, name: string, input: SignInput): Promise<SignResult> {
  checkName(name);
  const message = checkMessage(input.message);
  const key = await loadKey(ctx, name);
  assertUsable(key, "sign");
  const scheme = checkScheme(key.algorithm, input.scheme);
  const v = await activeVersion(ctx, key, input.version);
  const signature = await ctx.keystore.sign(hsmRef(v), scheme, message);
  await recordOp(ctx, actor, "key.sign", name, { version: v.version, scheme, messageBytes: message.length });
  return { signature, version: v.version, scheme };
}

/**
 * Checks a signature with node:crypto against the stored public key: no HSM round
 * trip, and an oracle independent of the HSM that made the signature. A malformed
 * signature is simply not valid.
 */
export async function verify(ctx: KmsContext, actor: Actor, name: string, input: VerifyInput): Promise<VerifyResult> {
  checkName(name);
  const message = checkMessage(input.message);
  if (!(input.signature instanceof Uint8Array) || input.signature.length > MAX_SIGNATURE_BYTES) {
    throw new CustosError("invalid_request", `signature must be at most ${MAX_SIGNATURE_BYTES} bytes`);
  }
  const key = await loadKey(ctx, name);
  assertUsable(key, "sign");
  const scheme = checkScheme(key.algorithm, input.scheme);
  const v = await activeVersion(ctx, key, input.version);
  if (v.publicKey === null) throw new CustosError("internal", `key version ${v.version} has no public key`);
  const valid = verifyWithNode(v.publicKey, scheme, message, input.signature);
  await recordOp(ctx, actor, "key.verify", name, { version: v.version, scheme, valid });
  return { valid };
}

/** Verifies one signature with node:crypto; never throws for a bad signature. */
export function verifyWithNode(
  spki: Buffer,
  scheme: SignatureScheme,
  message: Uint8Array,
  signature: Uint8Array,
): boolean {
  const key = createPublicKey({ key: spki, format: "der", type: "spki" });
  try {
    switch (scheme) {
      case "ecdsa-p256-sha256":
        return nodeVerify("sha256", message, { key, dsaEncoding: "ieee-p1363" }, signature);
      case "ed25519":
        return nodeVerify(null, message, key, signature);
      case "rsa-pkcs1-sha256":
        return nodeVerify("sha256", message, { key, padding: constants.RSA_PKCS1_PADDING }, signature);
      case "rsa-pss-sha256":
        return nodeVerify(
          "sha256",
          message,
          { key, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: constants.RSA_PSS_SALTLEN_DIGEST },
          signature,
        );
    }
  } catch {
    return false;
  }
}
