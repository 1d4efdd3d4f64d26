import { createPublicKey, type JsonWebKey, type KeyObject, verify } from "node:crypto";
import { isIP, SocketAddress } from "node:net";
import { CertificationRequest, type CertificationRequestInfo } from "@peculiar/asn1-csr";
import { AsnConvert } from "@peculiar/asn1-schema";
import * as asn1X509 from "@peculiar/asn1-x509";
import { CustosError } from "../errors/index.js";
import type { KeyType } from "./role.js";

/** What Custos takes from a PKCS#10 request: the key, and the names it asks for (as written in it). */
export interface ParsedCsr {
  /** SubjectPublicKeyInfo, DER, re-encoded by node:crypto. */
  readonly publicKey: Buffer;
  readonly keyType: KeyType;
  readonly commonName: string | undefined;
  readonly dnsNames: string[];
  /** Canonical text (node:net), whatever the 4 or 16 bytes were. */
  readonly ipAddresses: string[];
  readonly uris: string[];
}

/** Bound on the text accepted, checked before any parsing. A real CSR is a few KiB at most. */
export const MAX_CSR_BYTES = 64 * 1024;

const PEM_RE =
  /^-----BEGIN (NEW )?CERTIFICATE REQUEST-----\r?\n([A-Za-z0-9+/=\r\n]+)-----END \1CERTIFICATE REQUEST-----\s*$/;
const BASE64_RE = /^[A-Za-z0-9+/]+={0,2}$/;

function csrInvalid(message: string, cause?: unknown): CustosError {
  return new CustosError("csr_invalid", message, { cause });
}

/** Strict base64: what does not round-trip is not base64 (Buffer.from would skip the junk silently). */
function strictBase64(text: string): Buffer | undefined {
  const compact = text.replace(/\s+/g, "");
  if (compact.length % 4 !== 0 || !BASE64_RE.test(compact)) return undefined;
  const bytes = Buffer.from(compact, "base64");
  return bytes.toString("base64") === compact ? bytes : undefined;
}

function derOf(text: string): Buffer {
  const trimmed = text.trim();
  const pem = PEM_RE.exec(trimmed);
  const der = strictBase64(pem ? (pem[2] ?? "") : trimmed);
  if (der === undefined || der.length === 0) {
    throw csrInvalid("the CSR is neither a PEM CERTIFICATE REQUEST nor base64 DER");
  }
  return der;
}

/**
 * Length of the outer DER SEQUENCE, header included, or undefined when the header
 * is malformed. The parser ignores bytes after it; we don't, so one CSR has one
 * encoding.
 */
function derLength(der: Buffer): number | undefined {
  if (der[0] !== 0x30 || der.length < 2) return undefined;
  const first = der[1] ?? 0;
  if (first < 0x80) return 2 + first;
  const count = first & 0x7f;
  if (count === 0 || count > 4 || der.length < 2 + count) return undefined;
  let length = 0;
  for (let i = 0; i < count; i++) length = length * 256 + (der[2 + i] ?? 0);
  return 2 + count + length;
}

/** The curve parameters (DER OIDs) of the EC keys Custos certifies, with their JWK names and point sizes. */
const EC_CURVES = [
  { params: Buffer.from("06082a8648ce3d030107", "hex"), crv: "P-256", keyType: "ec-p256", size: 32 },
  { params: Buffer.from("06052b81040022", "hex"), crv: "P-384", keyType: "ec-p384", size: 48 },
] as const;
const EC_PUBLIC_KEY_OID = "1.2.840.10045.2.1";
const ED25519_OID = "1.3.101.112";

/**
 * The key of a parsed SPKI, imported as a JWK where it can be: OpenSSL 3 decodes a
 * DER SPKI in about 130 us here, a JWK in about 70 (P-256, the point still checked
 * to be on the curve) or 9 (Ed25519), and the key type is known without asking
 * node:crypto for the key's details. Anything else (RSA, compressed points) takes
 * the DER path. The SPKI returned is node:crypto's DER export of the key (or the
 * schema's DER re-encoding on the DER path): one encoding per key.
 */
function importSpki(
  info: asn1X509.SubjectPublicKeyInfo,
): { key: KeyObject; keyType: KeyType; spki: Buffer } | undefined {
  const algorithm = info.algorithm.algorithm;
  const point = Buffer.from(info.subjectPublicKey);
  const fromJwk = (jwk: JsonWebKey, keyType: KeyType) => {
    try {
      const key = createPublicKey({ key: jwk, format: "jwk" });
      return { key, keyType, spki: key.export({ format: "der", type: "spki" }) };
    } catch {
      return undefined;
    }
  };
  if (algorithm === ED25519_OID && point.length === 32 && info.algorithm.parameters == null) {
    return fromJwk({ kty: "OKP", crv: "Ed25519", x: point.toString("base64url") }, "ed25519");
  }
  const params = info.algorithm.parameters ? Buffer.from(info.algorithm.parameters) : undefined;
  const curve = EC_CURVES.find((c) => params?.equals(c.params));
  if (algorithm === EC_PUBLIC_KEY_OID && curve && point.length === 1 + 2 * curve.size && point[0] === 0x04) {
    const x = point.subarray(1, 1 + curve.size).toString("base64url");
    const y = point.subarray(1 + curve.size).toString("base64url");
    return fromJwk({ kty: "EC", crv: curve.crv, x, y }, curve.keyType);
  }
  const spki = Buffer.from(AsnConvert.serialize(info));
  const key = publicKeyObject(spki);
  const keyType = key === undefined ? undefined : keyTypeOfKey(key);
  return key === undefined || keyType === undefined ? undefined : { key, keyType, spki };
}

function publicKeyObject(spki: Buffer): KeyObject | undefined {
  try {
    return createPublicKey({ key: spki, format: "der", type: "spki" });
  } catch {
    return undefined;
  }
}

/** The KeyType of a SPKI DER (node:crypto createPublicKey + asymmetricKeyDetails), or undefined when it is none of KEY_TYPES. */
export function keyTypeOf(spki: Buffer): KeyType | undefined {
  const key = publicKeyObject(spki);
  return key === undefined ? undefined : keyTypeOfKey(key);
}

/** The KeyType of a public key already decoded (decoding costs more than the rest of a CSR check). */
function keyTypeOfKey(key: KeyObject): KeyType | undefined {
  const details = key.asymmetricKeyDetails;
  switch (key.asymmetricKeyType) {
    case "ec":
      if (details?.namedCurve === "prime256v1") return "ec-p256";
      if (details?.namedCurve === "secp384r1") return "ec-p384";
      return undefined;
    case "ed25519":
      return "ed25519";
    case "rsa":
      if (details?.modulusLength === 2048) return "rsa-2048";
      if (details?.modulusLength === 3072) return "rsa-3072";
      if (details?.modulusLength === 4096) return "rsa-4096";
      return undefined;
    default:
      return undefined;
  }
}

/** A human name for a key Custos does not take, for the error message. */
function describeKey(spki: Buffer, algorithm: string): string {
  const key = publicKeyObject(spki);
  if (key === undefined) return `a ${algorithm} key`;
  const details = key.asymmetricKeyDetails;
  if (details?.namedCurve !== undefined) return `an ${key.asymmetricKeyType} key on curve ${details.namedCurve}`;
  if (details?.modulusLength !== undefined) return `a ${details.modulusLength}-bit ${key.asymmetricKeyType} key`;
  return `a ${key.asymmetricKeyType ?? algorithm} key`;
}

function canonicalIp(text: string): string | undefined {
  const family = isIP(text);
  if (family === 0 || text.includes("%")) return undefined;
  return new SocketAddress({ address: text, family: family === 4 ? "ipv4" : "ipv6" }).address;
}

const EXTENSION_REQUEST_OID = "1.2.840.113549.1.9.14";
const COMMON_NAME_OID = "2.5.4.3";
/** Signature algorithms a CSR may be signed with, and the digest node:crypto.verify needs (null: none, Ed25519). */
const CSR_SIGNATURES: Readonly<Record<string, string | null>> = {
  "1.2.840.10045.4.3.2": "sha256",
  "1.2.840.10045.4.3.3": "sha384",
  "1.2.840.10045.4.3.4": "sha512",
  "1.2.840.113549.1.1.11": "sha256",
  "1.2.840.113549.1.1.12": "sha384",
  "1.2.840.113549.1.1.13": "sha512",
  "1.3.101.112": null,
};

const SAN_TYPE_NAMES: Readonly<Record<string, string>> = { rfc822Name: "email", registeredID: "registeredId" };

function requestedNames(info: CertificationRequestInfo): Pick<ParsedCsr, "dnsNames" | "ipAddresses" | "uris"> {
  const out = { dnsNames: [] as string[], ipAddresses: [] as string[], uris: [] as string[] };
  const requests = info.attributes.filter((a) => a.type === EXTENSION_REQUEST_OID);
  const sans = requests
    .flatMap((a) => a.values.map((v) => AsnConvert.parse(v, asn1X509.Extensions)))
    .flatMap((extensions) => extensions.filter((e) => e.extnID === asn1X509.id_ce_subjectAltName));
  if (sans.length > 1) throw csrInvalid("the CSR requests more than one subjectAltName extension");
  const san = sans[0];
  if (san === undefined) return out;
  for (const name of AsnConvert.parse(san.extnValue, asn1X509.SubjectAlternativeName)) {
    if (name.dNSName !== undefined) out.dnsNames.push(name.dNSName);
    else if (name.uniformResourceIdentifier !== undefined) out.uris.push(name.uniformResourceIdentifier);
    else if (name.iPAddress !== undefined) {
      // 8- or 32-byte values (address and mask) come out as "a.b.c.d/n": not an address.
      const ip = canonicalIp(name.iPAddress);
      if (ip === undefined) throw csrInvalid(`the CSR requests an IP SAN that is no IP address (${name.iPAddress})`);
      out.ipAddresses.push(ip);
    } else {
      const [field, value] = Object.entries(name).find(([, v]) => v !== undefined) ?? (["unknown", undefined] as const);
      const shown = typeof value === "string" ? ` (${value})` : "";
      throw csrInvalid(
        `the CSR requests a SAN of type ${SAN_TYPE_NAMES[field] ?? field}${shown}; Custos issues only DNS, IP and URI names`,
      );
    }
  }
  return out;
}

function commonNameOf(info: CertificationRequestInfo): string | undefined {
  const cns = info.subject.flatMap((rdn) => rdn.filter((atv) => atv.type === COMMON_NAME_OID));
  if (cns.length > 1) throw csrInvalid("the CSR's subject has more than one common name");
  return cns[0]?.value.toString();
}

/**
 * Parses a PEM (or base64 DER) PKCS#10 request, verifies its self-signature, and
 * reads the SANs from its extensionRequest. The request is decoded once with the
 * PKCS#10 schema of @peculiar/asn1-csr and its signature checked by node:crypto over
 * the request's own bytes (not a re-encoding of them).
 *
 * csr_invalid when the text is larger than 64 KiB (checked first, in UTF-8
 * bytes), does not parse (trailing bytes after the DER included), holds a key
 * that is none of KEY_TYPES (e.g. P-521, RSA-1024, DSA; the message names it),
 * has a signature that does not verify, has more than one CN, or asks for a SAN
 * other than DNS, IP or URI (an email SAN would otherwise vanish silently from
 * the certificate). Whether the key type is allowed by a role is not this
 * function's business: see checkKeyType.
 */
export async function parseCsr(text: string): Promise<ParsedCsr> {
  if (typeof text !== "string") throw csrInvalid("the CSR must be a string");
  if (Buffer.byteLength(text, "utf8") > MAX_CSR_BYTES) throw csrInvalid("the CSR is larger than 64 KiB");
  const der = derOf(text);
  if (derLength(der) !== der.length) throw csrInvalid("the CSR has bytes after its end");

  let csr: CertificationRequest;
  try {
    csr = AsnConvert.parse(der, CertificationRequest);
  } catch (e) {
    throw csrInvalid("the CSR does not parse as PKCS#10", e);
  }
  const info = csr.certificationRequestInfo;
  const imported = importSpki(info.subjectPKInfo);
  if (imported === undefined) {
    const spki = Buffer.from(AsnConvert.serialize(info.subjectPKInfo));
    throw csrInvalid(
      `the CSR holds ${describeKey(spki, info.subjectPKInfo.algorithm.algorithm)}, which Custos does not certify`,
    );
  }

  const digest = CSR_SIGNATURES[csr.signatureAlgorithm.algorithm];
  const signed = csr.certificationRequestInfoRaw;
  if (digest === undefined || signed === undefined) {
    throw csrInvalid(`the CSR is signed with ${csr.signatureAlgorithm.algorithm}, which Custos does not check`);
  }
  let verified = false;
  try {
    verified = verify(digest, Buffer.from(signed), imported.key, Buffer.from(csr.signature));
  } catch (e) {
    throw csrInvalid("the CSR's signature does not verify", e);
  }
  if (!verified) throw csrInvalid("the CSR's signature does not verify");

  let names: ReturnType<typeof requestedNames>;
  let commonName: string | undefined;
  try {
    names = requestedNames(info);
    commonName = commonNameOf(info);
  } catch (e) {
    if (e instanceof CustosError) throw e;
    throw csrInvalid("the CSR's subject or extensions do not parse", e);
  }

  return { publicKey: imported.spki, keyType: imported.keyType, commonName, ...names };
}
