import { createPublicKey, type JsonWebKey, type KeyObject, verify } from "node:crypto";
import { SocketAddress } from "node:net";
import { CustosError } from "../errors/index.js";
import {
  asciiText,
  bitStringBytes,
  booleanOf,
  contentOf,
  DerError,
  DerReader,
  directoryStringText,
  encodingOf,
  isEncoding,
  oidText,
  readerOf,
  readOid,
  type Tlv,
  validOid,
  walkWellFormed,
} from "./der-reader.js";
import {
  BOOLEAN,
  DNS_NAME,
  EMAIL_NAME,
  INTEGER,
  IP_ADDRESS_NAME,
  OCTET_STRING,
  REGISTERED_ID_NAME,
  SEQUENCE,
  SET,
  URI_NAME,
} from "./der-tags.js";
import { type KeyAlgorithm, type KeyType, keyAlgorithmOf } from "./role.js";

/** What Custos takes from a PKCS#10 request: the key, and the names it asks for (as written in it). */
export interface ParsedCsr {
  /** SubjectPublicKeyInfo, DER, as node:crypto exports the key: one encoding per key. */
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

/** Runs a step of the walk, a DerError in it made csr_invalid with `message`. */
function walking<T>(message: string, step: () => T): T {
  try {
    return step();
  } catch (e) {
    if (e instanceof DerError) throw csrInvalid(message, e);
    throw e;
  }
}

function derHex(hex: string): Buffer {
  return Buffer.from(hex, "hex");
}

// DER encodings the walk recognises by comparing bytes, the OIDs in the comments.
const VERSION_1 = derHex("020100"); // INTEGER 0
const COMMON_NAME = derHex("0603550403"); // 2.5.4.3
const EXTENSION_REQUEST = derHex("06092a864886f70d01090e"); // 1.2.840.113549.1.9.14
const SUBJECT_ALT_NAME = derHex("0603551d11"); // 2.5.29.17
/** attributes [0] IMPLICIT SET OF Attribute. */
const ATTRIBUTES = 0xa0;

/** What the walk of a request keeps: views into its DER. */
interface WalkedRequest {
  /** CertificationRequestInfo as it lies in the request: what the signature covers. */
  readonly signed: Buffer;
  readonly spki: Tlv;
  /** The SPKI's AlgorithmIdentifier, whole, and its OID. */
  readonly keyAlgorithm: Tlv;
  readonly keyAlgorithmOid: Tlv;
  /** The subjectPublicKey bits. */
  readonly key: Buffer;
  /** The values of the subject's common names, as written. */
  readonly commonNames: Tlv[];
  /** The values of the extensionRequest attributes, walked but not read yet. */
  readonly extensionRequests: Tlv[];
  readonly signatureAlgorithmOid: Tlv;
  readonly signature: Buffer;
}

/**
 * Walks CertificationRequest ::= SEQUENCE { certificationRequestInfo,
 * signatureAlgorithm AlgorithmIdentifier, signature BIT STRING } to its last
 * byte. A DerError when it is anything else; bytes after it are their own error,
 * so one CSR has one encoding.
 */
function walkRequest(der: Buffer): WalkedRequest {
  const top = new DerReader(der);
  const request = top.enter(SEQUENCE);
  if (!top.atEnd) throw csrInvalid("the CSR has bytes after its end");
  const info = request.read(SEQUENCE);
  const signatureAlgorithmOid = walkAlgorithm(request.read(SEQUENCE));
  const signature = bitStringBytes(request.next());
  request.finish();
  return { signed: encodingOf(info), ...walkInfo(info), signatureAlgorithmOid, signature };
}

/**
 * CertificationRequestInfo ::= SEQUENCE { version INTEGER (v1, 0), subject Name,
 * subjectPKInfo SubjectPublicKeyInfo, attributes [0] IMPLICIT SET OF Attribute }.
 */
function walkInfo(info: Tlv): Omit<WalkedRequest, "signed" | "signatureAlgorithmOid" | "signature"> {
  const fields = readerOf(info, SEQUENCE);
  if (!isEncoding(fields.read(INTEGER), VERSION_1)) throw new DerError("the version is not v1 (0)");
  const commonNames = walkSubject(fields.enter(SEQUENCE));
  const spki = fields.read(SEQUENCE);
  const publicKey = walkSpki(spki);
  const extensionRequests = walkAttributes(fields.enter(ATTRIBUTES));
  fields.finish();
  return { spki, ...publicKey, commonNames, extensionRequests };
}

/**
 * Name ::= SEQUENCE OF RelativeDistinguishedName, each a SET OF
 * AttributeTypeAndValue ::= SEQUENCE { type OID, value ANY }. Returns the values
 * of the common names; the other attributes are walked and left.
 */
function walkSubject(name: DerReader): Tlv[] {
  const commonNames: Tlv[] = [];
  while (!name.atEnd) {
    const rdn = name.enter(SET);
    while (!rdn.atEnd) {
      const attribute = rdn.enter(SEQUENCE);
      const type = readOid(attribute);
      const value = attribute.next();
      attribute.finish();
      walkWellFormed(value);
      if (isEncoding(type, COMMON_NAME)) commonNames.push(value);
    }
  }
  return commonNames;
}

/** SubjectPublicKeyInfo ::= SEQUENCE { algorithm AlgorithmIdentifier, subjectPublicKey BIT STRING }. */
function walkSpki(spki: Tlv): Pick<WalkedRequest, "keyAlgorithm" | "keyAlgorithmOid" | "key"> {
  const fields = readerOf(spki, SEQUENCE);
  const keyAlgorithm = fields.read(SEQUENCE);
  const keyAlgorithmOid = walkAlgorithm(keyAlgorithm);
  const key = bitStringBytes(fields.next());
  fields.finish();
  return { keyAlgorithm, keyAlgorithmOid, key };
}

/** AlgorithmIdentifier ::= SEQUENCE { algorithm OID, parameters ANY OPTIONAL }: the OID (parameters walked, not read). */
function walkAlgorithm(algorithm: Tlv): Tlv {
  const fields = readerOf(algorithm, SEQUENCE);
  const oid = readOid(fields);
  if (!fields.atEnd) walkWellFormed(fields.next());
  fields.finish();
  return oid;
}

/**
 * The attributes, each an Attribute ::= SEQUENCE { type OID, values SET OF ANY }.
 * Returns the values of extensionRequest attributes; the others are walked and left.
 */
function walkAttributes(attributes: DerReader): Tlv[] {
  const extensionRequests: Tlv[] = [];
  while (!attributes.atEnd) {
    const attribute = attributes.enter(SEQUENCE);
    const isExtensionRequest = isEncoding(readOid(attribute), EXTENSION_REQUEST);
    const values = attribute.enter(SET);
    attribute.finish();
    while (!values.atEnd) {
      const value = values.next();
      walkWellFormed(value);
      if (isExtensionRequest) extensionRequests.push(value);
    }
  }
  return extensionRequests;
}

interface ImportedKey {
  readonly key: KeyObject;
  readonly keyType: KeyType;
  /** node:crypto's DER export of the key (on the JWK path, a copy of the request's SPKI: the same bytes). */
  readonly spki: Buffer;
}

/** The SPKI AlgorithmIdentifiers (DER) of the keys imported as a JWK, and the JWK their key bits make. */
const JWK_KEYS: readonly { algorithm: Buffer; keyType: KeyType; jwkOf(key: Buffer): JsonWebKey | undefined }[] = [
  // id-ecPublicKey 1.2.840.10045.2.1 on prime256v1 1.2.840.10045.3.1.7
  { algorithm: derHex("301306072a8648ce3d020106082a8648ce3d030107"), keyType: "ec-p256", jwkOf: ecJwk("P-256", 32) },
  // id-ecPublicKey on secp384r1 1.3.132.0.34
  { algorithm: derHex("301006072a8648ce3d020106052b81040022"), keyType: "ec-p384", jwkOf: ecJwk("P-384", 48) },
  // Ed25519 1.3.101.112, no parameters
  { algorithm: derHex("300506032b6570"), keyType: "ed25519", jwkOf: ed25519Jwk },
];

/** The JWK of an uncompressed point (0x04 x y); others (compressed points) take the DER path. */
function ecJwk(crv: string, size: number): (point: Buffer) => JsonWebKey | undefined {
  return (point) => {
    if (point.length !== 1 + 2 * size || point[0] !== 0x04) return undefined;
    const x = point.subarray(1, 1 + size).toString("base64url");
    const y = point.subarray(1 + size).toString("base64url");
    return { kty: "EC", crv, x, y };
  };
}

function ed25519Jwk(key: Buffer): JsonWebKey | undefined {
  return key.length === 32 ? { kty: "OKP", crv: "Ed25519", x: key.toString("base64url") } : undefined;
}

/**
 * The request's key, imported as a JWK where it can be: OpenSSL 3 decodes a DER
 * SPKI in about 110 us here, a JWK in about 75 (P-256, the point still checked
 * to be on the curve) or 9 (Ed25519), and the key type is known without asking
 * node:crypto for the key's details. Anything else (RSA, compressed points)
 * takes the DER path. On the JWK path the request's SPKI is returned as is: it
 * was matched byte for byte (AlgorithmIdentifier, no unused bits, an
 * uncompressed point, shortest lengths) as the only DER of that key, which is
 * what node:crypto would export, for about 20 us more.
 */
function importSpki(request: WalkedRequest): ImportedKey | undefined {
  const known = JWK_KEYS.find((k) => isEncoding(request.keyAlgorithm, k.algorithm));
  const jwk = known?.jwkOf(request.key);
  if (known !== undefined && jwk !== undefined) {
    try {
      const key = createPublicKey({ key: jwk, format: "jwk" });
      return { key, keyType: known.keyType, spki: Buffer.from(encodingOf(request.spki)) };
    } catch {
      return undefined;
    }
  }
  const key = publicKeyObject(encodingOf(request.spki));
  const keyType = key === undefined ? undefined : keyTypeOfKey(key);
  if (key === undefined || keyType === undefined) return undefined;
  return { key, keyType, spki: key.export({ format: "der", type: "spki" }) };
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

/**
 * Signature algorithms a CSR may be signed with (DER OIDs), the key algorithm
 * each is for, and the digest node:crypto.verify needs (null: none, Ed25519).
 * node:crypto.verify picks the scheme from the key alone, so the OID must be
 * matched to the key here (RFC 2986 4.2: signed with the subject's key by the
 * algorithm the request names).
 */
const CSR_SIGNATURES: readonly { oid: Buffer; name: string; key: KeyAlgorithm; digest: string | null }[] = [
  // 1.2.840.10045.4.3.2, .3, .4
  { oid: derHex("06082a8648ce3d040302"), name: "ecdsa-with-SHA256", key: "ec", digest: "sha256" },
  { oid: derHex("06082a8648ce3d040303"), name: "ecdsa-with-SHA384", key: "ec", digest: "sha384" },
  { oid: derHex("06082a8648ce3d040304"), name: "ecdsa-with-SHA512", key: "ec", digest: "sha512" },
  // 1.2.840.113549.1.1.11, .12, .13
  { oid: derHex("06092a864886f70d01010b"), name: "sha256WithRSAEncryption", key: "rsa", digest: "sha256" },
  { oid: derHex("06092a864886f70d01010c"), name: "sha384WithRSAEncryption", key: "rsa", digest: "sha384" },
  { oid: derHex("06092a864886f70d01010d"), name: "sha512WithRSAEncryption", key: "rsa", digest: "sha512" },
  // 1.3.101.112
  { oid: derHex("06032b6570"), name: "Ed25519", key: "ed25519", digest: null },
];

/**
 * node:crypto.verify on libuv's thread pool (its callback form): the main thread
 * pays about 15 us of a P-256 check instead of about 65.
 */
function verifyOnPool(digest: string | null, data: Buffer, key: KeyObject, signature: Buffer): Promise<boolean> {
  return new Promise((resolve, reject) => {
    verify(digest, data, key, signature, (error, valid) => (error ? reject(error) : resolve(valid)));
  });
}

/**
 * The extnValue of the subjectAltName extension, if requested. Each
 * extensionRequest value is Extensions ::= SEQUENCE OF Extension ::= SEQUENCE {
 * extnID OID, critical BOOLEAN DEFAULT FALSE, extnValue OCTET STRING }; the
 * other extensions are walked and left.
 */
function subjectAltName(extensionRequests: readonly Tlv[]): Tlv | undefined {
  const found: Tlv[] = [];
  for (const value of extensionRequests) {
    const extensions = readerOf(value, SEQUENCE);
    while (!extensions.atEnd) {
      const extension = extensions.enter(SEQUENCE);
      const id = readOid(extension);
      if (extension.peekTag() === BOOLEAN) booleanOf(extension.next());
      const extnValue = extension.read(OCTET_STRING);
      extension.finish();
      if (isEncoding(id, SUBJECT_ALT_NAME)) found.push(extnValue);
    }
  }
  if (found.length > 1) throw csrInvalid("the CSR requests more than one subjectAltName extension");
  return found[0];
}

/** The other GeneralName tags, with the name an error gives them. */
const REFUSED_SAN_TYPES: ReadonlyMap<number, string> = new Map([
  [0xa0, "otherName"],
  [EMAIL_NAME, "email"],
  [0xa3, "x400Address"],
  [0xa4, "directoryName"],
  [0xa5, "ediPartyName"],
  [REGISTERED_ID_NAME, "registeredId"],
]);

/** The SAN's content: GeneralNames ::= SEQUENCE OF GeneralName, only DNS, URI and IP names taken. */
function requestedNames(extensionRequests: readonly Tlv[]): Pick<ParsedCsr, "dnsNames" | "ipAddresses" | "uris"> {
  const out = { dnsNames: [] as string[], ipAddresses: [] as string[], uris: [] as string[] };
  const san = subjectAltName(extensionRequests);
  if (san === undefined) return out;
  const extnValue = readerOf(san, OCTET_STRING);
  const names = extnValue.enter(SEQUENCE);
  extnValue.finish();
  while (!names.atEnd) {
    const name = names.next();
    if (name.tag === DNS_NAME) out.dnsNames.push(asciiText(name));
    else if (name.tag === URI_NAME) out.uris.push(asciiText(name));
    else if (name.tag === IP_ADDRESS_NAME) out.ipAddresses.push(ipAddressOf(name));
    else throw refusedSan(name);
  }
  return out;
}

/** The error for a GeneralName Custos does not issue (an email SAN would otherwise vanish from the certificate unnoticed). */
function refusedSan(name: Tlv): CustosError {
  const type = REFUSED_SAN_TYPES.get(name.tag);
  if (type === undefined) throw new DerError(`tag 0x${name.tag.toString(16)} at byte ${name.offset} is no GeneralName`);
  const value =
    name.tag === EMAIL_NAME ? asciiText(name) : name.tag === REGISTERED_ID_NAME ? oidText(validOid(name)) : undefined;
  const shown = value === undefined ? "" : ` (${value})`;
  return csrInvalid(`the CSR requests a SAN of type ${type}${shown}; Custos issues only DNS, IP and URI names`);
}

/** Canonical text (node:net) of a 4- or 16-byte iPAddress; 8 or 32 bytes are an address and a mask: no address. */
function ipAddressOf(name: Tlv): string {
  const bytes = contentOf(name);
  if (bytes.length !== 4 && bytes.length !== 16) {
    throw csrInvalid(`the CSR requests an IP SAN that is no IP address (${shownIpSan(bytes)})`);
  }
  return ipText(bytes);
}

function ipText(bytes: Buffer): string {
  if (bytes.length === 4) return bytes.join(".");
  const groups: string[] = [];
  for (let i = 0; i < bytes.length; i += 2) groups.push(bytes.readUInt16BE(i).toString(16));
  // SocketAddress writes an IPv6 address in its canonical form (an IPv4-mapped one with a dotted tail).
  return new SocketAddress({ address: groups.join(":"), family: "ipv6" }).address;
}

/** An IP SAN of another length, as the error shows it: 8 or 32 bytes as address/prefix (the name-constraint form), others in hex. */
function shownIpSan(bytes: Buffer): string {
  if (bytes.length !== 8 && bytes.length !== 32) return bytes.toString("hex");
  const half = bytes.length / 2;
  let prefix = 0;
  for (const byte of bytes.subarray(half)) for (let bits = byte; bits > 0; bits >>= 1) prefix += bits & 1;
  return `${ipText(bytes.subarray(0, half))}/${prefix}`;
}

function commonNameOf(values: readonly Tlv[]): string | undefined {
  if (values.length > 1) throw csrInvalid("the CSR's subject has more than one common name");
  const value = values[0];
  return value === undefined ? undefined : directoryStringText(value);
}

/**
 * Parses a PEM (or base64 DER) PKCS#10 request, verifies its self-signature, and
 * reads the SANs from its extensionRequest. The request is walked once, strictly
 * (DER only, every field of CertificationRequest in place, no byte left over at
 * any level), by hand: @peculiar/asn1-schema took some 270 us a request for it.
 * The signature is checked by node:crypto over the request's own
 * CertificationRequestInfo bytes (not a re-encoding of them).
 *
 * csr_invalid when the text is larger than 64 KiB (checked first, in UTF-8
 * bytes), does not parse (trailing bytes after the DER included), holds a key
 * that is none of KEY_TYPES (e.g. P-521, RSA-1024, DSA; the message names it),
 * names a signatureAlgorithm that is not for its key's algorithm (an RSA one on
 * an EC key, say), has a signature that does not verify, has more than one CN,
 * or asks for a SAN other than DNS, IP or URI (an email SAN would otherwise
 * vanish silently from the certificate). Whether the key type is allowed by a
 * role is not this function's business: see checkKeyType.
 */
export async function parseCsr(text: string): Promise<ParsedCsr> {
  if (typeof text !== "string") throw csrInvalid("the CSR must be a string");
  if (Buffer.byteLength(text, "utf8") > MAX_CSR_BYTES) throw csrInvalid("the CSR is larger than 64 KiB");
  const der = derOf(text);
  const request = walking("the CSR does not parse as PKCS#10", () => walkRequest(der));

  const imported = importSpki(request);
  if (imported === undefined) {
    const key = describeKey(encodingOf(request.spki), oidText(request.keyAlgorithmOid));
    throw csrInvalid(`the CSR holds ${key}, which Custos does not certify`);
  }

  const algorithm = CSR_SIGNATURES.find((s) => isEncoding(request.signatureAlgorithmOid, s.oid));
  if (algorithm === undefined) {
    throw csrInvalid(`the CSR is signed with ${oidText(request.signatureAlgorithmOid)}, which Custos does not check`);
  }
  if (algorithm.key !== keyAlgorithmOf(imported.keyType)) {
    throw csrInvalid(
      `the CSR's signatureAlgorithm ${algorithm.name} is not for its ${imported.keyType} key, so its signature does not verify`,
    );
  }
  let verified = false;
  try {
    verified = await verifyOnPool(algorithm.digest, request.signed, imported.key, request.signature);
  } catch (e) {
    throw csrInvalid("the CSR's signature does not verify", e);
  }
  if (!verified) throw csrInvalid("the CSR's signature does not verify");

  const unreadable = "the CSR's subject or extensions do not parse";
  const names = walking(unreadable, () => requestedNames(request.extensionRequests));
  const commonName = walking(unreadable, () => commonNameOf(request.commonNames));
  return { publicKey: imported.spki, keyType: imported.keyType, commonName, ...names };
}
