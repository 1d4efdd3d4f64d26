import { generateKeyPair } from "node:crypto";
import type { KeyType } from "./role.js";

type Pair = { publicKey: Buffer; privateKey: string };

/** node:crypto's callback, settling a promise. */
function settle(resolve: (pair: Pair) => void, reject: (e: Error) => void) {
  return (err: Error | null, publicKey: Buffer, privateKey: string) =>
    err ? reject(err) : resolve({ publicKey, privateKey });
}

function generatePair(keyType: KeyType): Promise<Pair> {
  const publicKeyEncoding = { type: "spki", format: "der" } as const;
  const privateKeyEncoding = { type: "pkcs8", format: "pem" } as const;
  const rsa = (modulusLength: number) =>
    new Promise<Pair>((resolve, reject) =>
      generateKeyPair(
        "rsa",
        { modulusLength, publicExponent: 0x10001, publicKeyEncoding, privateKeyEncoding },
        settle(resolve, reject),
      ),
    );
  const ec = (namedCurve: string) =>
    new Promise<Pair>((resolve, reject) =>
      generateKeyPair("ec", { namedCurve, publicKeyEncoding, privateKeyEncoding }, settle(resolve, reject)),
    );
  switch (keyType) {
    case "ec-p256":
      return ec("P-256");
    case "ec-p384":
      return ec("P-384");
    case "ed25519":
      return new Promise<Pair>((resolve, reject) =>
        generateKeyPair("ed25519", { publicKeyEncoding, privateKeyEncoding }, settle(resolve, reject)),
      );
    case "rsa-2048":
      return rsa(2048);
    case "rsa-3072":
      return rsa(3072);
    case "rsa-4096":
      return rsa(4096);
  }
}

/**
 * A key pair made for a caller who asked Custos to generate one: node:crypto
 * generateKeyPair (async, not Sync: RSA-4096 takes long and would stall every
 * other request). The private key is PKCS#8 PEM, returned once and never stored
 * by the caller of this function.
 */
export async function generateCallerKey(keyType: KeyType): Promise<{ publicKey: Buffer; privateKeyPem: string }> {
  const pair = await generatePair(keyType);
  return { publicKey: pair.publicKey, privateKeyPem: pair.privateKey };
}
