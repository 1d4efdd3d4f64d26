import { createPublicKey } from "node:crypto";
import { CustosError } from "../../errors/index.js";

const P256_SPKI_PREFIX = Buffer.from("3059301306072a8648ce3d020106082a8648ce3d030107034200", "hex");
const ED25519_SPKI_PREFIX = Buffer.from("302a300506032b6570032100", "hex");

/**
 * Unwraps the DER OCTET STRING that PKCS#11 puts around CKA_EC_POINT. The length is
 * parsed (short or long form) rather than assumed, since modules differ.
 */
export function unwrapEcPoint(der: Buffer): Buffer {
  if (der.length < 2 || der[0] !== 0x04) throw badKey("CKA_EC_POINT is not an OCTET STRING");
  let length = der[1]!;
  let offset = 2;
  if (length & 0x80) {
    const n = length & 0x7f;
    if (n === 0 || n > 2 || der.length < 2 + n) throw badKey("CKA_EC_POINT has a bad length");
    length = 0;
    for (let i = 0; i < n; i++) length = (length << 8) | der[2 + i]!;
    offset = 2 + n;
  }
  if (offset + length !== der.length) throw badKey("CKA_EC_POINT length mismatch");
  return der.subarray(offset);
}

/** SPKI DER of a P-256 public key from its DER-wrapped CKA_EC_POINT. */
export function p256Spki(ecPointDer: Buffer): Buffer {
  const point = unwrapEcPoint(ecPointDer);
  if (point.length !== 65 || point[0] !== 0x04) throw badKey("P-256 point must be 65 bytes, uncompressed");
  return checked(Buffer.concat([P256_SPKI_PREFIX, point]));
}

/** SPKI DER of an Ed25519 public key from its DER-wrapped CKA_EC_POINT. */
export function ed25519Spki(ecPointDer: Buffer): Buffer {
  // Some modules return the 32 raw bytes, PKCS#11 3.0 says DER OCTET STRING.
  const point = ecPointDer.length === 32 ? ecPointDer : unwrapEcPoint(ecPointDer);
  if (point.length !== 32) throw badKey("Ed25519 public key must be 32 bytes");
  return checked(Buffer.concat([ED25519_SPKI_PREFIX, point]));
}

/** SPKI DER of an RSA public key from CKA_MODULUS and CKA_PUBLIC_EXPONENT. */
export function rsaSpki(modulus: Buffer, exponent: Buffer): Buffer {
  const key = createPublicKey({
    key: { kty: "RSA", n: stripZeros(modulus).toString("base64url"), e: stripZeros(exponent).toString("base64url") },
    format: "jwk",
  });
  return key.export({ type: "spki", format: "der" });
}

function stripZeros(b: Buffer): Buffer {
  let i = 0;
  while (i < b.length - 1 && b[i] === 0) i++;
  return b.subarray(i);
}

/** Parses the SPKI with node:crypto so a malformed point never leaves the keystore. */
function checked(spki: Buffer): Buffer {
  try {
    createPublicKey({ key: spki, format: "der", type: "spki" });
  } catch (e) {
    throw new CustosError("hsm_error", "HSM returned an invalid public key", { cause: e });
  }
  return spki;
}

function badKey(message: string): CustosError {
  return new CustosError("hsm_error", message);
}
