export type * from "./keystore.js";
export { ensureKeyPair } from "./keystore.js";
export { type HsmLogger, Pkcs11Keystore, type Pkcs11KeystoreOptions } from "./pkcs11/index.js";
