/**
 * The PKCS#11 implementation of `Keystore`. The composition root opens it with
 * `Pkcs11Keystore.open({ modulePath, tokenLabel, pin })`.
 */
export type { HsmLogger } from "./connection.js";
export { Pkcs11Keystore, type Pkcs11KeystoreOptions } from "./keystore.js";
