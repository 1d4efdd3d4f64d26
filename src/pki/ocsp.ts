import "reflect-metadata";
import { createHash } from "node:crypto";
import {
  BasicOCSPResponse,
  type CertID,
  CertStatus,
  id_pkix_ocsp_basic,
  id_pkix_ocsp_nonce,
  KeyHash,
  OCSPRequest,
  OCSPResponse,
  OCSPResponseStatus,
  ResponderID,
  ResponseBytes,
  ResponseData,
  RevokedInfo,
  SingleResponse,
} from "@peculiar/asn1-ocsp";
import { AsnConvert, OctetString } from "@peculiar/asn1-schema";
import { Certificate, CRLReason, type Extension } from "@peculiar/asn1-x509";
import type * as x509 from "@peculiar/x509";
import { CustosError } from "../errors/index.js";
import { CRL_REASON_CODES, isRevocationReason, type RevocationReason } from "./crl.js";
import { DerError, tlvAt } from "./der-reader.js";
import { OCTET_STRING } from "./der-tags.js";
import { type CaSigner, signAsX509, signatureAlgorithmOf } from "./signer.js";

/** What an OCSP CertID names: a certificate by its issuer's hashed name and key, and its serial. */
export interface OcspCertId {
  /** OID of the hash the issuer fields were made with. */
  readonly hashAlgorithm: string;
  readonly issuerNameHash: Buffer;
  readonly issuerKeyHash: Buffer;
  /** Lowercase hex, without the sign octet DER adds before a set top bit (as @peculiar/x509 writes serials). */
  readonly serial: string;
}

/** A certificate's status as the caller's store knows it. */
export type OcspStatus =
  | { status: "good" }
  | { status: "revoked"; revokedAt: Date; reason: RevocationReason }
  | { status: "unknown" };

/** OCSPResponseStatus values other than `successful`: an answer that carries no signed response. */
export type OcspErrorStatus = "malformedRequest" | "internalError" | "tryLater" | "sigRequired" | "unauthorized";

/** Hashes a CertID may be made with (RFC 6960 clients use SHA-1; newer ones SHA-256 and up). */
const CERT_ID_HASHES: Readonly<Record<string, string>> = {
  "1.3.14.3.2.26": "sha1",
  "2.16.840.1.101.3.4.2.1": "sha256",
  "2.16.840.1.101.3.4.2.2": "sha384",
  "2.16.840.1.101.3.4.2.3": "sha512",
};

/**
 * Each CertID costs a store lookup and the endpoint is unauthenticated: a bound keeps
 * one request from becoming thousands of lookups. Clients ask for one at a time.
 */
export const MAX_OCSP_CERT_IDS = 32;

/** RFC 8954 §2.1: Nonce ::= OCTET STRING (SIZE(1..32)); a responder MUST reject one of 0 octets. */
const MAX_NONCE_OCTETS = 32;

const DEFAULT_VALIDITY_SECONDS = 3600;

/**
 * Answers a DER OCSPRequest (RFC 6960) for the CAs in `issuers`.
 *
 * A CertID is matched to a served issuer by its issuerNameHash and issuerKeyHash
 * (SHA-1, SHA-256, SHA-384 or SHA-512). The first matched issuer answers: `lookup`
 * is asked about each of its CertIDs, and every other CertID (another served
 * issuer's, or one not served) answers `unknown`, so that one signature covers the
 * response. The response is a BasicOCSPResponse signed by that CA's own key,
 * responderID byKey, without certificates (the signer is the issuer, which the
 * client has); thisUpdate is `now` and nextUpdate `now + validitySeconds`; the
 * request's nonce extension is echoed.
 *
 * Bad input never throws; it answers an unsigned OCSPResponse: `malformedRequest`
 * for a request that does not parse, has no CertID, more than
 * {@link MAX_OCSP_CERT_IDS}, or a nonce that is not the OCTET STRING of 1 to 32
 * octets RFC 8954 allows;
 * `unauthorized` when no CertID names a served issuer. Failures of `lookup` or of
 * the signer (the HSM) are not bad input and propagate, so the caller can log them
 * and answer {@link ocspErrorResponse} `internalError` or `tryLater`. So do invalid
 * `options` (`invalid_request`) and a malformed `lookup` result (`internal`).
 */
export async function answerOcsp(
  requestDer: Uint8Array,
  issuers: readonly CaSigner[],
  lookup: (issuer: CaSigner, serial: string) => Promise<OcspStatus>,
  options: { now?: Date; validitySeconds?: number } = {},
): Promise<Buffer> {
  const now = wholeSeconds(options.now ?? new Date());
  const validitySeconds = options.validitySeconds ?? DEFAULT_VALIDITY_SECONDS;
  if (Number.isNaN(now.getTime())) throw new CustosError("invalid_request", "now must be a valid date");
  if (!Number.isSafeInteger(validitySeconds) || validitySeconds <= 0) {
    throw new CustosError("invalid_request", "validitySeconds must be a positive integer");
  }

  const parsed = parseRequest(requestDer);
  if (!parsed) return ocspErrorResponse("malformedRequest");

  const identities = issuers.map(issuerIdentity);
  const matches = parsed.certIds.map((id) => identities.findIndex((issuer) => issuer.names(id)));
  const chosen = matches.find((m) => m >= 0);
  if (chosen === undefined) return ocspErrorResponse("unauthorized");
  const signer = issuers[chosen]!;

  const nextUpdate = new Date(now.getTime() + validitySeconds * 1000);
  const responses = await Promise.all(
    parsed.requests.map(async (reqCert, i) => {
      const status: OcspStatus =
        matches[i] === chosen ? checkedStatus(await lookup(signer, parsed.certIds[i]!.serial)) : { status: "unknown" };
      // The CertID is echoed as received: clients match responses to requests on its exact fields.
      return new SingleResponse({ certID: reqCert, certStatus: certStatus(status), thisUpdate: now, nextUpdate });
    }),
  );

  const tbsResponseData = new ResponseData({
    responderID: new ResponderID({ byKey: new KeyHash(identities[chosen]!.keyHash("sha1")) }),
    producedAt: now,
    responses,
  });
  if (parsed.nonce) tbsResponseData.responseExtensions = [parsed.nonce];

  const basic = await sign(signer, tbsResponseData);
  return Buffer.from(
    AsnConvert.serialize(
      new OCSPResponse({
        responseStatus: OCSPResponseStatus.successful,
        responseBytes: new ResponseBytes({
          responseType: id_pkix_ocsp_basic,
          response: new OctetString(AsnConvert.serialize(basic)),
        }),
      }),
    ),
  );
}

/** An OCSPResponse that carries only an error status (RFC 6960 §2.3: such answers are not signed). */
export function ocspErrorResponse(status: OcspErrorStatus): Buffer {
  return Buffer.from(AsnConvert.serialize(new OCSPResponse({ responseStatus: OCSPResponseStatus[status] })));
}

/**
 * Whether `der`, an answer of {@link answerOcsp}, is an unsigned error answer: an
 * OCSPResponse without responseBytes is SEQUENCE { ENUMERATED status }, 30 03 0a 01 status.
 */
export function isOcspErrorResponse(der: Uint8Array): boolean {
  return der.length === 5 && der[0] === 0x30 && der[2] === 0x0a && der[4] !== OCSPResponseStatus.successful;
}

interface ParsedRequest {
  readonly requests: CertID[];
  readonly certIds: OcspCertId[];
  readonly nonce: Extension | undefined;
}

/** The request's CertIDs and nonce, or undefined when it is not one we can answer. */
function parseRequest(der: Uint8Array): ParsedRequest | undefined {
  let request: OCSPRequest;
  try {
    if (!(der instanceof Uint8Array) || der.byteLength === 0) return undefined;
    request = AsnConvert.parse(der, OCSPRequest);
  } catch {
    return undefined;
  }
  const list = request.tbsRequest.requestList;
  if (list.length === 0 || list.length > MAX_OCSP_CERT_IDS) return undefined;
  const requests = list.map((r) => r.reqCert);
  const certIds: OcspCertId[] = [];
  for (const id of requests) {
    const serial = Buffer.from(id.serialNumber);
    if (serial.length === 0) return undefined;
    certIds.push({
      hashAlgorithm: id.hashAlgorithm.algorithm,
      issuerNameHash: Buffer.from(id.issuerNameHash.buffer),
      issuerKeyHash: Buffer.from(id.issuerKeyHash.buffer),
      serial: serialHex(serial),
    });
  }
  const nonce = request.tbsRequest.requestExtensions?.find((e) => e.extnID === id_pkix_ocsp_nonce);
  if (nonce && !isNonce(Buffer.from(nonce.extnValue.buffer))) return undefined;
  return { requests, certIds, nonce };
}

/** Whether an extnValue is the DER of a Nonce: one OCTET STRING of 1 to 32 octets, nothing after it. */
function isNonce(extnValue: Buffer): boolean {
  try {
    const tlv = tlvAt(extnValue, 0, extnValue.length);
    const size = tlv.end - tlv.start;
    return tlv.tag === OCTET_STRING && tlv.end === extnValue.length && size >= 1 && size <= MAX_NONCE_OCTETS;
  } catch (e) {
    if (e instanceof DerError) return false;
    throw e;
  }
}

/** Same form as @peculiar/x509's `serialNumber`, which is what the store keys certificates by. */
function serialHex(serial: Buffer): string {
  const positive = serial.length > 1 && serial[0] === 0 && (serial[1]! & 0x80) !== 0 ? serial.subarray(1) : serial;
  return positive.toString("hex");
}

interface IssuerIdentity {
  names(id: OcspCertId): boolean;
  keyHash(hash: string): Buffer;
}

/** Parsing each CA certificate once, not on every request. */
const identityCache = new WeakMap<x509.X509Certificate, IssuerIdentity>();

/**
 * The issuer's subject and public key as CertIDs hash them: the DER of the Name (as
 * re-encoded from the parsed certificate, the same bytes for a DER certificate), and
 * the BIT STRING value of subjectPublicKey (without tag, length or unused-bits octet).
 */
function issuerIdentity(signer: CaSigner): IssuerIdentity {
  const known = identityCache.get(signer.certificate);
  if (known) return known;
  const tbs = AsnConvert.parse(signer.certificate.rawData, Certificate).tbsCertificate;
  const name = Buffer.from(AsnConvert.serialize(tbs.subject));
  const key = Buffer.from(tbs.subjectPublicKeyInfo.subjectPublicKey);
  const hashes = new Map<string, { name: Buffer; key: Buffer }>();
  const hashed = (hash: string) => {
    let h = hashes.get(hash);
    if (!h) {
      h = { name: createHash(hash).update(name).digest(), key: createHash(hash).update(key).digest() };
      hashes.set(hash, h);
    }
    return h;
  };
  const identity: IssuerIdentity = {
    names(id) {
      const hash = CERT_ID_HASHES[id.hashAlgorithm];
      if (!hash) return false;
      const h = hashed(hash);
      return h.name.equals(id.issuerNameHash) && h.key.equals(id.issuerKeyHash);
    },
    keyHash: (hash) => hashed(hash).key,
  };
  identityCache.set(signer.certificate, identity);
  return identity;
}

/** Guards against a store answer that would make a response lie or fail to encode. */
function checkedStatus(status: OcspStatus): OcspStatus {
  switch (status?.status) {
    case "good":
    case "unknown":
      return status;
    case "revoked":
      if (
        status.revokedAt instanceof Date &&
        !Number.isNaN(status.revokedAt.getTime()) &&
        isRevocationReason(status.reason)
      ) {
        return status;
      }
      break;
  }
  throw new CustosError("internal", "the certificate status lookup answered an invalid status");
}

function certStatus(status: OcspStatus): CertStatus {
  switch (status.status) {
    case "good":
      return new CertStatus({ good: null });
    case "unknown":
      return new CertStatus({ unknown: null });
    case "revoked": {
      const revoked = new RevokedInfo({ revocationTime: wholeSeconds(status.revokedAt) });
      // As in the CRL: "unspecified" is said by leaving the reason out.
      if (status.reason !== "unspecified") revoked.revocationReason = new CRLReason(CRL_REASON_CODES[status.reason]);
      return new CertStatus({ revoked });
    }
  }
}

/** Signs the ResponseData with the CA's key the way @peculiar/x509 signs a certificate. */
async function sign(signer: CaSigner, tbsResponseData: ResponseData): Promise<BasicOCSPResponse> {
  const signed = await signAsX509(signer, AsnConvert.serialize(tbsResponseData));
  // The schema wants an ArrayBuffer of exactly the signature (a Buffer may be a view into a larger pool): a copy.
  const signature = new Uint8Array(signed).buffer;
  return new BasicOCSPResponse({ tbsResponseData, signatureAlgorithm: signatureAlgorithmOf(signer), signature });
}

/**
 * asn1js writes milliseconds into a GeneralizedTime ("…00.25Z"), which every OCSP
 * time is; RFC 5280 §4.1.2.5.2, whose profile RFC 6960 follows, wants none.
 */
function wholeSeconds(d: Date): Date {
  return new Date(Math.floor(d.getTime() / 1000) * 1000);
}
