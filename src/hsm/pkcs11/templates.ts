import type { AesGCM, Mechanism, Template } from "pkcs11js";
import type { SigningAlgorithm } from "../keystore.js";
import { CKK_EC_EDWARDS, CKM_EC_EDWARDS_KEY_PAIR_GEN, OID_ED25519, OID_P256, pk } from "./constants.js";
import type { NestedAttribute } from "./nested-template.js";

/**
 * Key templates. Every capability is spelled out (true or false) instead of left to
 * module defaults, which differ between HSMs.
 */

/** A template attribute with its value given (what both pkcs11js and a nested template take). */
type Attribute = { type: number; value: boolean | number };

const NO_USES: Attribute[] = [
  { type: pk.CKA_ENCRYPT, value: false },
  { type: pk.CKA_DECRYPT, value: false },
  { type: pk.CKA_WRAP, value: false },
  { type: pk.CKA_UNWRAP, value: false },
  { type: pk.CKA_SIGN, value: false },
  { type: pk.CKA_VERIFY, value: false },
  { type: pk.CKA_DERIVE, value: false },
];

function uses(allowed: number[]): Attribute[] {
  return NO_USES.map((a) => ({ type: a.type, value: allowed.includes(a.type) }));
}

/**
 * Where a token key is generated: on the token, or in the session first and copied
 * onto the token after (see the keystore's #generateOnToken).
 */
export type KeyBirthplace = "token" | "session";

/**
 * Where a token key lands, it is unmodifiable: with the PIN, a modifiable root key
 * could be given CKA_DECRYPT (or copied with it), and decrypting a wrapped key
 * version block by block inverts RFC 5649 and yields the key in the clear; a signing
 * or HMAC key could gain CKA_DERIVE or CKA_DECRYPT. An unmodifiable object also
 * refuses every copy that changes an attribute. A key born in a session stays
 * modifiable only until its copy onto the token, which is made with `TOKEN_COPY`.
 */
function modifiable(where: KeyBirthplace): Attribute[] {
  return [{ type: pk.CKA_MODIFIABLE, value: where === "session" }];
}

/** What C_CopyObject changes when it puts a session-born key on the token. */
export const TOKEN_COPY: Template = [
  { type: pk.CKA_TOKEN, value: true },
  { type: pk.CKA_MODIFIABLE, value: false },
];

/**
 * The root key: a token AES-256 key that can only wrap and unwrap, never leave. What
 * it unwraps must be a key version as the keystore holds one (CKA_UNWRAP_TEMPLATE):
 * whoever has the PIN can't unwrap a key version into an extractable object and read
 * it. Its nested template goes through nested-template.ts, not pkcs11js.
 */
export function rootKeyTemplate(label: string, id: Buffer, where: KeyBirthplace): NestedAttribute[] {
  return [
    { type: pk.CKA_CLASS, value: pk.CKO_SECRET_KEY },
    { type: pk.CKA_KEY_TYPE, value: pk.CKK_AES },
    { type: pk.CKA_VALUE_LEN, value: 32 },
    { type: pk.CKA_TOKEN, value: where === "token" },
    ...modifiable(where),
    { type: pk.CKA_PRIVATE, value: true },
    { type: pk.CKA_SENSITIVE, value: true },
    { type: pk.CKA_EXTRACTABLE, value: false },
    { type: pk.CKA_LABEL, value: label },
    { type: pk.CKA_ID, value: id },
    ...uses([pk.CKA_WRAP, pk.CKA_UNWRAP]),
    { type: pk.CKA_UNWRAP_TEMPLATE, value: unwrappedAesTemplate() },
  ];
}

/**
 * A fresh encryption key, alive only long enough to be wrapped: extractable (so the
 * root key can wrap it) but sensitive and with no uses of its own.
 */
export function transientAesTemplate(): Template {
  return [
    { type: pk.CKA_CLASS, value: pk.CKO_SECRET_KEY },
    { type: pk.CKA_KEY_TYPE, value: pk.CKK_AES },
    { type: pk.CKA_VALUE_LEN, value: 32 },
    { type: pk.CKA_TOKEN, value: false },
    { type: pk.CKA_PRIVATE, value: true },
    { type: pk.CKA_SENSITIVE, value: true },
    { type: pk.CKA_EXTRACTABLE, value: true },
    ...uses([]),
  ];
}

/** An unwrapped encryption key: a session object that can encrypt and decrypt and never be exported again. */
export function unwrappedAesTemplate(): Attribute[] {
  return [
    { type: pk.CKA_CLASS, value: pk.CKO_SECRET_KEY },
    { type: pk.CKA_KEY_TYPE, value: pk.CKK_AES },
    { type: pk.CKA_TOKEN, value: false },
    { type: pk.CKA_PRIVATE, value: true },
    { type: pk.CKA_SENSITIVE, value: true },
    { type: pk.CKA_EXTRACTABLE, value: false },
    ...uses([pk.CKA_ENCRYPT, pk.CKA_DECRYPT]),
  ];
}

/** A known, public AES key imported only to be wrapped for the key check value. */
export function checkValueKeyTemplate(value: Buffer): Template {
  return [
    { type: pk.CKA_CLASS, value: pk.CKO_SECRET_KEY },
    { type: pk.CKA_KEY_TYPE, value: pk.CKK_AES },
    { type: pk.CKA_TOKEN, value: false },
    { type: pk.CKA_EXTRACTABLE, value: true },
    { type: pk.CKA_VALUE, value },
    ...uses([]),
  ];
}

/** The audit HMAC key: 32 random bytes that can only sign and verify. */
export function hmacKeyTemplate(label: string, id: Buffer, where: KeyBirthplace): Template {
  return [
    { type: pk.CKA_CLASS, value: pk.CKO_SECRET_KEY },
    { type: pk.CKA_KEY_TYPE, value: pk.CKK_GENERIC_SECRET },
    { type: pk.CKA_VALUE_LEN, value: 32 },
    { type: pk.CKA_TOKEN, value: where === "token" },
    ...modifiable(where),
    { type: pk.CKA_PRIVATE, value: true },
    { type: pk.CKA_SENSITIVE, value: true },
    { type: pk.CKA_EXTRACTABLE, value: false },
    { type: pk.CKA_LABEL, value: label },
    { type: pk.CKA_ID, value: id },
    ...uses([pk.CKA_SIGN, pk.CKA_VERIFY]),
  ];
}

/** A private token data object of Custos's under `label` (its value added when it is made). */
export function dataObjectTemplate(label: string): Template {
  return [
    { type: pk.CKA_CLASS, value: pk.CKO_DATA },
    { type: pk.CKA_TOKEN, value: true },
    { type: pk.CKA_PRIVATE, value: true },
    { type: pk.CKA_APPLICATION, value: "custos" },
    { type: pk.CKA_LABEL, value: label },
  ];
}

/** Mechanism and templates for a signing key pair stored on the token. */
export function keyPairTemplates(
  algorithm: SigningAlgorithm,
  label: string,
  id: Buffer,
  where: KeyBirthplace,
): { mechanism: Mechanism; publicKey: Template; privateKey: Template } {
  const common: Template = [
    { type: pk.CKA_TOKEN, value: where === "token" },
    ...modifiable(where),
    { type: pk.CKA_LABEL, value: label },
    { type: pk.CKA_ID, value: id },
  ];
  const publicKey: Template = [
    { type: pk.CKA_CLASS, value: pk.CKO_PUBLIC_KEY },
    { type: pk.CKA_PRIVATE, value: false },
    { type: pk.CKA_VERIFY, value: true },
    { type: pk.CKA_ENCRYPT, value: false },
    { type: pk.CKA_WRAP, value: false },
    { type: pk.CKA_DERIVE, value: false },
    ...common,
  ];
  const privateKey: Template = [
    { type: pk.CKA_CLASS, value: pk.CKO_PRIVATE_KEY },
    { type: pk.CKA_PRIVATE, value: true },
    { type: pk.CKA_SENSITIVE, value: true },
    { type: pk.CKA_EXTRACTABLE, value: false },
    { type: pk.CKA_SIGN, value: true },
    { type: pk.CKA_DECRYPT, value: false },
    { type: pk.CKA_UNWRAP, value: false },
    { type: pk.CKA_DERIVE, value: false },
    ...common,
  ];
  switch (algorithm) {
    case "ecdsa-p256":
      publicKey.push({ type: pk.CKA_KEY_TYPE, value: pk.CKK_EC }, { type: pk.CKA_EC_PARAMS, value: OID_P256 });
      privateKey.push({ type: pk.CKA_KEY_TYPE, value: pk.CKK_EC });
      return { mechanism: { mechanism: pk.CKM_EC_KEY_PAIR_GEN }, publicKey, privateKey };
    case "ed25519":
      publicKey.push({ type: pk.CKA_KEY_TYPE, value: CKK_EC_EDWARDS }, { type: pk.CKA_EC_PARAMS, value: OID_ED25519 });
      privateKey.push({ type: pk.CKA_KEY_TYPE, value: CKK_EC_EDWARDS });
      return { mechanism: { mechanism: CKM_EC_EDWARDS_KEY_PAIR_GEN }, publicKey, privateKey };
    case "rsa-3072":
      publicKey.push(
        { type: pk.CKA_KEY_TYPE, value: pk.CKK_RSA },
        { type: pk.CKA_MODULUS_BITS, value: 3072 },
        { type: pk.CKA_PUBLIC_EXPONENT, value: Buffer.from([1, 0, 1]) },
      );
      privateKey.push({ type: pk.CKA_KEY_TYPE, value: pk.CKK_RSA });
      return { mechanism: { mechanism: pk.CKM_RSA_PKCS_KEY_PAIR_GEN }, publicKey, privateKey };
  }
}

/** AES-GCM with a 96-bit IV and a 128-bit tag. */
export function gcmMechanism(iv: Buffer, aad: Buffer): Mechanism {
  const parameter: AesGCM = { type: pk.CK_PARAMS_AES_GCM, iv, ivBits: 96, tagBits: 128 };
  if (aad.length > 0) parameter.aad = aad;
  return { mechanism: pk.CKM_AES_GCM, parameter };
}

/** RFC 5649 AES key wrap with padding (deterministic). */
export const KEY_WRAP_PAD: Mechanism = { mechanism: pk.CKM_AES_KEY_WRAP_PAD };
