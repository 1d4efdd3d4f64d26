import pkcs11js from "pkcs11js";

/** The pkcs11js module object (constants and the PKCS11 class). */
export const pk = pkcs11js;

/** Constants pkcs11js 2.x does not export (PKCS#11 3.0 Edwards curves, session states). */
export const CKK_EC_EDWARDS = 0x40;
export const CKM_EC_EDWARDS_KEY_PAIR_GEN = 0x1055;
export const CKM_EDDSA = 0x1057;
export const CKS_RO_USER_FUNCTIONS = 1;
export const CKS_RW_USER_FUNCTIONS = 3;
export const CKF_USER_PIN_FINAL_TRY = 0x20000;
export const CKF_USER_PIN_LOCKED = 0x40000;

/** DER OIDs used as CKA_EC_PARAMS. */
export const OID_P256 = Buffer.from("06082a8648ce3d030107", "hex");
export const OID_ED25519 = Buffer.from("06032b6570", "hex");

/** RFC 5649 wrapping of a 32-byte key: 8-byte integrity block + 32 bytes. */
export const WRAPPED_AES256_LENGTH = 40;
export const GCM_IV_LENGTH = 12;
export const GCM_TAG_LENGTH = 16;
/** The keystore's GCM is for keys, secrets and certificates, never bulk data (that runs in node:crypto). */
export const MAX_GCM_INPUT = 1024 * 1024;
