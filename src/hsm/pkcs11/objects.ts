import type { Template } from "pkcs11js";
import { CustosError } from "../../errors/index.js";
import type { HsmKeyRef } from "../keystore.js";
import type { OpContext } from "./connection.js";
import { pk } from "./constants.js";

/** All handles matching `template` (never kept beyond the operation that found them). */
export function findAll(ctx: OpContext, template: Template, max = 16): Buffer[] {
  ctx.p.C_FindObjectsInit(ctx.session, template);
  ctx.active = true;
  try {
    return ctx.p.C_FindObjects(ctx.session, max);
  } finally {
    ctx.p.C_FindObjectsFinal(ctx.session);
    ctx.active = false;
  }
}

/** The first handle matching `template`, if any. */
export function findOne(ctx: OpContext, template: Template): Buffer | undefined {
  return findAll(ctx, template, 1)[0];
}

/** Reads one attribute as bytes. */
export function attribute(ctx: OpContext, handle: Buffer, type: number): Buffer {
  const [result] = ctx.p.C_GetAttributeValue(ctx.session, handle, [{ type }]);
  if (!result) throw new CustosError("hsm_error", "attribute missing from HSM answer");
  return result.value;
}

/** Reads a CK_ULONG attribute (little-endian as pkcs11js returns it on this platform). */
export function ulongAttribute(ctx: OpContext, handle: Buffer, type: number): number {
  const value = attribute(ctx, handle, type);
  return value.length >= 8 ? Number(value.readBigUInt64LE(0)) : value.readUInt32LE(0);
}

const LABEL_MAX = 128;
const ID_HEX = /^(?:[0-9a-f]{2}){1,64}$/;

/** Validates a caller-supplied label (it becomes CKA_LABEL). */
export function checkLabel(label: string): void {
  const ok =
    typeof label === "string" &&
    label.length > 0 &&
    label.length <= LABEL_MAX &&
    [...label].every((ch) => ch.charCodeAt(0) >= 0x20 && ch.charCodeAt(0) !== 0x7f);
  if (!ok) throw new CustosError("invalid_request", "key label must be 1-128 printable characters");
}

/** Validates a key reference and returns its CKA_ID bytes. */
export function idOf(ref: HsmKeyRef): Buffer {
  checkLabel(ref.label);
  if (typeof ref.id !== "string" || !ID_HEX.test(ref.id)) {
    throw new CustosError("invalid_request", "key id must be lower-case hex");
  }
  return Buffer.from(ref.id, "hex");
}

/**
 * Template selecting one object class of a labelled, identified key that the token
 * generated itself (see `ownKey`).
 */
export function refTemplate(objectClass: number, ref: HsmKeyRef): Template {
  return [...ownKey(objectClass), { type: pk.CKA_LABEL, value: ref.label }, { type: pk.CKA_ID, value: idOf(ref) }];
}

/**
 * What a search for one of Custos's keys asks beside its label: a key the token
 * generated (CKA_LOCAL, which only the token sets) and, for a secret or private key,
 * a private object. Without these, a process without the PIN could plant a public,
 * known-value key under our label (SoftHSM lets it create public objects) and have
 * it adopted as the root, an audit or a signing key.
 */
export function ownKey(objectClass: number): Template {
  const local = { type: pk.CKA_LOCAL, value: true };
  if (objectClass === pk.CKO_PUBLIC_KEY) return [{ type: pk.CKA_CLASS, value: objectClass }, local];
  return [{ type: pk.CKA_CLASS, value: objectClass }, local, { type: pk.CKA_PRIVATE, value: true }];
}
