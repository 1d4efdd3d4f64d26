import "reflect-metadata";
import { webcrypto } from "node:crypto";
import type { HsmKeyRef, Keystore } from "../hsm/index.js";

/**
 * A WebCrypto `Crypto` for @peculiar/x509 whose `subtle.sign` is done by the HSM:
 * the CA's private key never leaves it. Everything else (digests, key import and
 * export of public keys, randomness for serial numbers) is node's own WebCrypto.
 */
export function hsmSigningCrypto(keystore: Keystore, caKey: HsmKeyRef): webcrypto.Crypto {
  const subtle = webcrypto.subtle;
  const sign = async (_algorithm: unknown, _key: unknown, data: webcrypto.BufferSource): Promise<ArrayBuffer> => {
    const bytes = ArrayBuffer.isView(data)
      ? new Uint8Array(data.buffer, data.byteOffset, data.byteLength)
      : new Uint8Array(data);
    // Raw r‖s is what @peculiar/x509's ECDSA formatter turns into DER.
    const signature = await keystore.sign(caKey, "ecdsa-p256-sha256", bytes);
    return signature.buffer.slice(signature.byteOffset, signature.byteOffset + signature.byteLength) as ArrayBuffer;
  };
  return {
    getRandomValues: <T extends ArrayBufferView | null>(array: T): T => webcrypto.getRandomValues(array as never),
    randomUUID: () => webcrypto.randomUUID(),
    subtle: {
      sign,
      digest: subtle.digest.bind(subtle),
      importKey: subtle.importKey.bind(subtle),
      exportKey: subtle.exportKey.bind(subtle),
      verify: subtle.verify.bind(subtle),
    },
  } as unknown as webcrypto.Crypto;
}

/** The CryptoKey-shaped handle @peculiar/x509 reads the algorithm from. */
export const HSM_EC_SIGNING_KEY = {
  algorithm: { name: "ECDSA", namedCurve: "P-256" },
  type: "private",
  extractable: false,
  usages: ["sign"],
} as unknown as webcrypto.CryptoKey;

export const ECDSA_SHA256 = { name: "ECDSA", hash: "SHA-256" } as const;
