import "reflect-metadata";
import { webcrypto } from "node:crypto";
import { AsnConvert } from "@peculiar/asn1-schema";
import { CRLNumber, CRLReasons, id_ce_cRLNumber } from "@peculiar/asn1-x509";
import * as x509 from "@peculiar/x509";
import { CustosError } from "../errors/index.js";
import { derToPem } from "./certificate.js";
import type { CaSigner } from "./signer.js";

/** The revocation reasons Custos records (RFC 5280 §5.3.1, minus the ones only attribute authorities or delta CRLs use). */
export const REVOCATION_REASONS = [
  "unspecified",
  "keyCompromise",
  "caCompromise",
  "affiliationChanged",
  "superseded",
  "cessationOfOperation",
  "certificateHold",
  "privilegeWithdrawn",
] as const;

/** One of {@link REVOCATION_REASONS}. */
export type RevocationReason = (typeof REVOCATION_REASONS)[number];

/** Whether `v` is one of {@link REVOCATION_REASONS}. */
export function isRevocationReason(v: string): v is RevocationReason {
  return (REVOCATION_REASONS as readonly string[]).includes(v);
}

/** The CRLReason code of each reason; shared with OCSP, whose RevokedInfo carries the same code. */
export const CRL_REASON_CODES: Readonly<Record<RevocationReason, CRLReasons>> = {
  unspecified: CRLReasons.unspecified,
  keyCompromise: CRLReasons.keyCompromise,
  caCompromise: CRLReasons.cACompromise,
  affiliationChanged: CRLReasons.affiliationChanged,
  superseded: CRLReasons.superseded,
  cessationOfOperation: CRLReasons.cessationOfOperation,
  certificateHold: CRLReasons.certificateHold,
  privilegeWithdrawn: CRLReasons.privilegeWithdrawn,
};

/** A revoked certificate as a CRL lists it. */
export interface RevokedEntry {
  /** Lowercase hex; a leading `00` (for serials whose top bit is set) may be present or not. */
  readonly serial: string;
  readonly revokedAt: Date;
  readonly reason: RevocationReason;
}

/** RFC 5280 §4.1.2.2: conforming serials are at most 20 octets. */
const MAX_SERIAL_OCTETS = 20;
const HEX = /^[0-9a-f]+$/;

/**
 * A CRL v2 for the signer's CA, signed by its key: the CRL number and authority key
 * identifier extensions, and a reason code per entry (omitted for `unspecified`, as
 * RFC 5280 §5.3.1 recommends). Returns DER.
 *
 * Preconditions (else `invalid_request`): `number` is a non-negative safe integer,
 * both dates are valid and `nextUpdate` is after `thisUpdate`, every entry has a
 * lowercase hex serial of at most 20 octets, a valid date and a known reason, and
 * no serial appears twice. Errors of the signer (the HSM) propagate as they are.
 */
export async function buildCrl(
  signer: CaSigner,
  params: { number: number; thisUpdate: Date; nextUpdate: Date; entries: readonly RevokedEntry[] },
): Promise<Buffer> {
  const { number, thisUpdate, nextUpdate, entries } = params;
  if (!Number.isSafeInteger(number) || number < 0) {
    throw new CustosError("invalid_request", "the CRL number must be a non-negative integer");
  }
  if (!isValidDate(thisUpdate) || !isValidDate(nextUpdate)) {
    throw new CustosError("invalid_request", "thisUpdate and nextUpdate must be valid dates");
  }
  if (nextUpdate.getTime() <= thisUpdate.getTime()) {
    throw new CustosError("invalid_request", "nextUpdate must be after thisUpdate");
  }
  const seen = new Set<string>();
  const crlEntries: x509.X509CrlEntryParams[] = entries.map((entry) => {
    const serial = canonicalSerial(entry.serial);
    if (seen.has(serial)) throw new CustosError("invalid_request", `serial ${entry.serial} is listed twice`);
    seen.add(serial);
    if (!isValidDate(entry.revokedAt)) {
      throw new CustosError("invalid_request", `the revocation date of ${entry.serial} is not a valid date`);
    }
    if (!isRevocationReason(entry.reason)) {
      throw new CustosError("invalid_request", `unknown revocation reason for ${entry.serial}`);
    }
    // The generator skips a falsy reason itself; leaving it out here says so instead of relying on it.
    return {
      serialNumber: serial,
      revocationDate: entry.revokedAt,
      ...(entry.reason === "unspecified" ? {} : { reason: CRL_REASON_CODES[entry.reason] as number }),
    };
  });

  const crl = await x509.X509CrlGenerator.create(
    {
      // The parsed Name, not its string form: a string would be re-encoded and could
      // differ from the certificates' issuer field byte for byte (clients match on bytes).
      issuer: signer.certificate.subjectName,
      thisUpdate,
      nextUpdate,
      entries: crlEntries,
      extensions: [
        await authorityKeyIdentifier(signer.certificate),
        new x509.Extension(id_ce_cRLNumber, false, AsnConvert.serialize(new CRLNumber(number))),
      ],
      signingKey: signer.signingKey,
      signingAlgorithm: signer.signingAlgorithm,
    },
    signer.crypto,
  );
  return Buffer.from(crl.rawData);
}

/** PEM of a DER CRL, with the label OpenSSL expects ("X509 CRL"; @peculiar/x509 writes "CRL"). */
export function crlToPem(der: Uint8Array): string {
  return derToPem(der, "X509 CRL");
}

/**
 * The CA's own subject key identifier when it has one: RFC 5280 §4.2.1.1 wants the
 * AKI to be that value, which need not be the SHA-1 of the key (another issuer's
 * method may have made it).
 */
async function authorityKeyIdentifier(ca: x509.X509Certificate): Promise<x509.AuthorityKeyIdentifierExtension> {
  const ski = ca.getExtension(x509.SubjectKeyIdentifierExtension);
  if (ski) return new x509.AuthorityKeyIdentifierExtension(ski.keyId, false);
  return x509.AuthorityKeyIdentifierExtension.create(ca.publicKey, false, webcrypto as webcrypto.Crypto);
}

function canonicalSerial(serial: string): string {
  if (typeof serial !== "string" || !HEX.test(serial)) {
    throw new CustosError("invalid_request", "a serial must be lowercase hex");
  }
  const even = serial.length % 2 === 1 ? `0${serial}` : serial;
  const stripped = even.replace(/^(?:00)+(?=..)/, "");
  const octets = stripped.length / 2 + (Number.parseInt(stripped.slice(0, 2), 16) > 0x7f ? 1 : 0);
  if (octets > MAX_SERIAL_OCTETS) throw new CustosError("invalid_request", `serial ${serial} is longer than 20 octets`);
  return stripped;
}

function isValidDate(d: unknown): d is Date {
  return d instanceof Date && !Number.isNaN(d.getTime());
}
