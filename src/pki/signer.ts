import "reflect-metadata";
import { webcrypto } from "node:crypto";
import type { AlgorithmIdentifier } from "@peculiar/asn1-x509";
import * as x509 from "@peculiar/x509";
import type { HsmKeyRef, Keystore, SignatureScheme } from "../hsm/index.js";
import { ecdsaSignatureDer } from "./der-writer.js";

/** Algorithms a CA key may have. */
export type CaAlgorithm = "ecdsa-p256" | "rsa-3072";

/**
 * What @peculiar/x509's generators need to sign as a CA: the CA's certificate, a
 * `Crypto` whose `subtle.sign` is done by the HSM, and the CryptoKey-shaped handle
 * and algorithm they read the signature algorithm from. The private key never
 * leaves the HSM; everything else is node's own WebCrypto.
 */
export interface CaSigner {
  readonly certificate: x509.X509Certificate;
  readonly crypto: webcrypto.Crypto;
  readonly signingKey: webcrypto.CryptoKey;
  readonly signingAlgorithm: webcrypto.EcdsaParams | webcrypto.Algorithm;
}

interface AlgorithmPlan {
  readonly scheme: SignatureScheme;
  readonly keyAlgorithm: webcrypto.KeyAlgorithm & Record<string, unknown>;
  readonly signingAlgorithm: webcrypto.EcdsaParams | webcrypto.Algorithm;
}

const PLANS: Readonly<Record<CaAlgorithm, AlgorithmPlan>> = {
  "ecdsa-p256": {
    scheme: "ecdsa-p256-sha256",
    keyAlgorithm: { name: "ECDSA", namedCurve: "P-256" },
    signingAlgorithm: { name: "ECDSA", hash: "SHA-256" },
  },
  "rsa-3072": {
    scheme: "rsa-pkcs1-sha256",
    keyAlgorithm: {
      name: "RSASSA-PKCS1-v1_5",
      hash: { name: "SHA-256" },
      modulusLength: 3072,
      publicExponent: new Uint8Array([1, 0, 1]),
    },
    signingAlgorithm: { name: "RSASSA-PKCS1-v1_5" },
  },
};

/** A WebCrypto `Crypto` whose `subtle.sign` is the HSM signing with `key`. */
function hsmSigningCrypto(keystore: Keystore, key: HsmKeyRef, algorithm: CaAlgorithm): webcrypto.Crypto {
  const subtle = webcrypto.subtle;
  const { scheme } = PLANS[algorithm];
  const sign = async (_algorithm: unknown, _key: unknown, data: webcrypto.BufferSource): Promise<ArrayBuffer> => {
    const bytes = ArrayBuffer.isView(data)
      ? new Uint8Array(data.buffer, data.byteOffset, data.byteLength)
      : new Uint8Array(data);
    // ECDSA comes back raw r‖s, which is what @peculiar/x509's formatter turns into DER.
    const signature = await keystore.sign(key, scheme, bytes);
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

/** The CryptoKey-shaped handle @peculiar/x509 reads a key's algorithm from. */
function hsmSigningKey(algorithm: CaAlgorithm): webcrypto.CryptoKey {
  return {
    algorithm: PLANS[algorithm].keyAlgorithm,
    type: "private",
    extractable: false,
    usages: ["sign"],
  } as unknown as webcrypto.CryptoKey;
}

/** The key's algorithm completes the signing one (the RSA hash, the EC curve), as @peculiar/x509's generators do. */
function fullAlgorithm(signer: CaSigning): webcrypto.Algorithm {
  return { ...signer.signingAlgorithm, ...signer.signingKey.algorithm };
}

/** The AlgorithmIdentifier of the signer's signatures, to put in what it signs and beside it. */
export function signatureAlgorithmOf(signer: CaSigning): AlgorithmIdentifier {
  return algorithmProvider.toAsnAlgorithm(fullAlgorithm(signer));
}

/**
 * Signs DER `tbs` bytes as the CA, returning the signature in its X.509 form
 * (ECDSA comes from WebCrypto and the HSM as r‖s and becomes a DER
 * ECDSA-Sig-Value; RSA passes as is).
 */
export async function signAsX509(signer: CaSigning, tbs: ArrayBuffer | Uint8Array): Promise<Uint8Array> {
  const algorithm = fullAlgorithm(signer);
  const raw = new Uint8Array(await signer.crypto.subtle.sign(algorithm, signer.signingKey, tbs));
  return algorithm.name === "ECDSA" ? ecdsaSignatureDer(raw) : raw;
}

const algorithmProvider = new x509.AlgorithmProvider();

/** What signs for a CA before it has a certificate (a root signing itself). */
export type CaSigning = Omit<CaSigner, "certificate">;

/** Signing by an HSM key pair. */
export function hsmSigning(keystore: Keystore, key: HsmKeyRef, algorithm: CaAlgorithm): CaSigning {
  return {
    crypto: hsmSigningCrypto(keystore, key, algorithm),
    signingKey: hsmSigningKey(algorithm),
    signingAlgorithm: { ...PLANS[algorithm].signingAlgorithm, ...hashOf(algorithm) },
  };
}

/** A CA signer over an HSM key pair. */
export function hsmCaSigner(
  keystore: Keystore,
  key: HsmKeyRef,
  algorithm: CaAlgorithm,
  certificate: x509.X509Certificate,
): CaSigner {
  return { ...hsmSigning(keystore, key, algorithm), certificate };
}

function hashOf(algorithm: CaAlgorithm): { hash?: string } {
  return algorithm === "ecdsa-p256" ? { hash: "SHA-256" } : {};
}

/**
 * A CA signer over a software key (tests, and oracles that must not depend on the
 * HSM). `privateKey` is a WebCrypto key with usage `sign`.
 */
export function softwareCaSigner(certificate: x509.X509Certificate, privateKey: webcrypto.CryptoKey): CaSigner {
  const ec = privateKey.algorithm.name === "ECDSA";
  return {
    certificate,
    crypto: webcrypto as webcrypto.Crypto,
    signingKey: privateKey,
    signingAlgorithm: ec ? { name: "ECDSA", hash: "SHA-256" } : { name: privateKey.algorithm.name },
  };
}
