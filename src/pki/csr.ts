import "reflect-metadata";
import { createPublicKey, type KeyObject } from "node:crypto";
import { isIP, SocketAddress } from "node:net";
import * as x509 from "@peculiar/x509";
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
const SUBJECT_ALT_NAME_OID = "2.5.29.17";
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
  const details = key?.asymmetricKeyDetails;
  switch (key?.asymmetricKeyType) {
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

function requestedNames(csr: x509.Pkcs10CertificateRequest): Pick<ParsedCsr, "dnsNames" | "ipAddresses" | "uris"> {
  const out = { dnsNames: [] as string[], ipAddresses: [] as string[], uris: [] as string[] };
  const sans = csr.getExtensions(SUBJECT_ALT_NAME_OID);
  if (sans.length > 1) throw csrInvalid("the CSR requests more than one subjectAltName extension");
  const san = sans[0];
  if (san === undefined) return out;
  if (!(san instanceof x509.SubjectAlternativeNameExtension))
    throw csrInvalid("the CSR's subjectAltName does not parse");
  for (const name of san.names.items) {
    switch (name.type) {
      case "dns":
        out.dnsNames.push(name.value);
        break;
      case "url":
        out.uris.push(name.value);
        break;
      case "ip": {
        // 8- or 32-byte values (address and mask) come out as "a.b.c.d/n": not an address.
        const ip = canonicalIp(name.value);
        if (ip === undefined) throw csrInvalid(`the CSR requests an IP SAN that is no IP address (${name.value})`);
        out.ipAddresses.push(ip);
        break;
      }
      default:
        throw csrInvalid(
          `the CSR requests a SAN of type ${name.type} (${name.value}); Custos issues only DNS, IP and URI names`,
        );
    }
  }
  return out;
}

function commonNameOf(csr: x509.Pkcs10CertificateRequest): string | undefined {
  const cns = csr.subjectName.getField("CN");
  if (cns.length > 1) throw csrInvalid("the CSR's subject has more than one common name");
  return cns[0];
}

/**
 * Parses a PEM (or base64 DER) PKCS#10 request with @peculiar/x509, verifies its
 * self-signature, and reads the SANs from its extensionRequest.
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

  let csr: x509.Pkcs10CertificateRequest;
  try {
    csr = new x509.Pkcs10CertificateRequest(der);
  } catch (e) {
    throw csrInvalid("the CSR does not parse as PKCS#10", e);
  }
  if (derLength(der) !== der.length) throw csrInvalid("the CSR has bytes after its end");

  const spki = Buffer.from(csr.publicKey.rawData);
  const keyType = keyTypeOf(spki);
  if (keyType === undefined) {
    throw csrInvalid(`the CSR holds ${describeKey(spki, csr.publicKey.algorithm.name)}, which Custos does not certify`);
  }

  let verified = false;
  try {
    verified = await csr.verify();
  } catch (e) {
    throw csrInvalid("the CSR's signature does not verify", e);
  }
  if (!verified) throw csrInvalid("the CSR's signature does not verify");

  let names: ReturnType<typeof requestedNames>;
  let commonName: string | undefined;
  try {
    names = requestedNames(csr);
    commonName = commonNameOf(csr);
  } catch (e) {
    if (e instanceof CustosError) throw e;
    throw csrInvalid("the CSR's subject or extensions do not parse", e);
  }

  const publicKey = publicKeyObject(spki)?.export({ type: "spki", format: "der" }) ?? spki;
  return { publicKey, keyType, commonName, ...names };
}
