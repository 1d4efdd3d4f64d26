/**
 * The instance's own key and the CSR that proves it holds it. The key is made in
 * this process and never leaves it except as the PEM the caller asked for; the
 * broker uses only the CSR's public key (and checks its signature).
 */
import "reflect-metadata";
import { webcrypto } from "node:crypto";
import * as x509 from "@peculiar/x509";
import { BrokerError } from "./errors.js";

/** Key types an instance may ask its identity for (those the broker's identity role takes, short of RSA). */
export const KEY_TYPES = ["ec-p256", "ed25519"] as const;
export type KeyType = (typeof KEY_TYPES)[number];

/** A fresh key pair: its private half as PKCS#8 PEM and a CSR for its public half. */
export interface KeyAndCsr {
  readonly privateKeyPem: string;
  readonly csrPem: string;
}

interface Algorithms {
  readonly generate: webcrypto.EcKeyGenParams | webcrypto.Algorithm;
  readonly sign: webcrypto.EcdsaParams | webcrypto.Algorithm;
}

const ALGORITHMS: Readonly<Record<KeyType, Algorithms>> = {
  "ec-p256": { generate: { name: "ECDSA", namedCurve: "P-256" }, sign: { name: "ECDSA", hash: "SHA-256" } },
  ed25519: { generate: { name: "Ed25519" }, sign: { name: "Ed25519" } },
};

/** True when `value` names a key type this client can make. */
export function isKeyType(value: unknown): value is KeyType {
  return typeof value === "string" && (KEY_TYPES as readonly string[]).includes(value);
}

/** Generates a key of `keyType` and a CSR (subject CN=`commonName`) signed by it. */
export async function generateKeyAndCsr(keyType: KeyType, commonName: string): Promise<KeyAndCsr> {
  const algorithm = ALGORITHMS[keyType];
  if (algorithm === undefined) throw new BrokerError("invalid_argument", `unknown key type ${String(keyType)}`);
  const keys = (await webcrypto.subtle.generateKey(algorithm.generate, true, [
    "sign",
    "verify",
  ])) as webcrypto.CryptoKeyPair;
  const csr = await x509.Pkcs10CertificateRequestGenerator.create(
    {
      // The broker ignores the CSR's names; the CN only helps a human reading it.
      name: [{ CN: [commonName] }],
      keys,
      signingAlgorithm: algorithm.sign,
    },
    webcrypto as unknown as Parameters<typeof x509.Pkcs10CertificateRequestGenerator.create>[1],
  );
  const pkcs8 = Buffer.from(await webcrypto.subtle.exportKey("pkcs8", keys.privateKey));
  try {
    return { privateKeyPem: pem("PRIVATE KEY", pkcs8), csrPem: csr.toString("pem") };
  } finally {
    pkcs8.fill(0);
  }
}

function pem(label: string, der: Buffer): string {
  const lines = der.toString("base64").match(/.{1,64}/g) ?? [];
  return `-----BEGIN ${label}-----\n${lines.join("\n")}\n-----END ${label}-----\n`;
}
