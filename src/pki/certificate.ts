import "reflect-metadata";
import { createHash, randomBytes } from "node:crypto";
import * as x509 from "@peculiar/x509";
import type { ExtKeyUsageName, KeyUsageName } from "./role.js";
import type { CaSigner, CaSigning } from "./signer.js";

/**
 * Building certificates with @peculiar/x509: the root, intermediates and leaves.
 * Every builder signs through a `CaSigner`, so the CA key stays in the HSM.
 */

const YEAR_MS = 365 * 86_400_000;
export const ROOT_LIFETIME_MS = 10 * YEAR_MS;
export const INTERMEDIATE_LIFETIME_MS = 5 * YEAR_MS;
/** Leaves start a minute early, so a client whose clock is a little behind still accepts them. */
export const BACKDATE_MS = 60_000;

/** Where clients fetch a CA's certificate and CRL, and ask OCSP. */
export interface CaUrls {
  readonly caIssuers: string;
  readonly crl: string;
  readonly ocsp?: string;
}

/**
 * A random positive 128-bit serial whose first byte is 0x10–0x7f: never a leading
 * zero to drop, so the hex the DER encodes is the hex we store, always 32 digits.
 */
export function newSerial(): string {
  const bytes = randomBytes(16);
  bytes[0] = 0x10 + ((bytes[0] ?? 0) % 0x70);
  return bytes.toString("hex");
}

/** SHA-256 of the DER, lowercase hex: how certificates are named to agents and admins. */
export function fingerprintOf(der: ArrayBuffer | Uint8Array): string {
  return createHash("sha256")
    .update(der instanceof Uint8Array ? der : new Uint8Array(der))
    .digest("hex");
}

/** PEM ending in a newline, so PEMs concatenate into a valid bundle (@peculiar/x509 writes none). */
export function pemOf(cert: x509.X509Certificate): string {
  const pem = cert.toString("pem");
  return pem.endsWith("\n") ? pem : `${pem}\n`;
}

function caName(kind: "Root" | "Intermediate", generation: number): x509.JsonName {
  return [{ CN: [`Custos ${kind} CA ${generation}`] }, { O: ["Custos"] }];
}

/** A self-signed root over the signer's key. */
export async function buildRoot(
  signer: CaSigning,
  publicKeyDer: Buffer,
  generation: number,
  now: Date,
): Promise<x509.X509Certificate> {
  const publicKey = new x509.PublicKey(publicKeyDer);
  const name = caName("Root", generation);
  return x509.X509CertificateGenerator.create(
    {
      serialNumber: newSerial(),
      subject: name,
      issuer: name,
      notBefore: new Date(now.getTime() - BACKDATE_MS),
      notAfter: new Date(now.getTime() + ROOT_LIFETIME_MS),
      publicKey,
      signingKey: signer.signingKey,
      signingAlgorithm: signer.signingAlgorithm,
      extensions: [
        new x509.BasicConstraintsExtension(true, undefined, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
        await x509.SubjectKeyIdentifierExtension.create(publicKey, false, signer.crypto),
      ],
    },
    signer.crypto,
  );
}

/** An intermediate signed by the root `signer`: it may sign leaves only (pathlen 0), CRLs and OCSP answers. */
export async function buildIntermediate(
  root: CaSigner,
  publicKeyDer: Buffer,
  generation: number,
  urls: CaUrls,
  now: Date,
): Promise<x509.X509Certificate> {
  const publicKey = new x509.PublicKey(publicKeyDer);
  const notAfter = Math.min(now.getTime() + INTERMEDIATE_LIFETIME_MS, root.certificate.notAfter.getTime());
  return x509.X509CertificateGenerator.create(
    {
      serialNumber: newSerial(),
      subject: caName("Intermediate", generation),
      issuer: root.certificate.subjectName,
      notBefore: new Date(now.getTime() - BACKDATE_MS),
      notAfter: new Date(notAfter),
      publicKey,
      signingKey: root.signingKey,
      signingAlgorithm: root.signingAlgorithm,
      extensions: [
        new x509.BasicConstraintsExtension(true, 0, true),
        new x509.KeyUsagesExtension(
          x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign | x509.KeyUsageFlags.digitalSignature,
          true,
        ),
        await x509.AuthorityKeyIdentifierExtension.create(root.certificate, false, root.crypto),
        await x509.SubjectKeyIdentifierExtension.create(publicKey, false, root.crypto),
        new x509.CRLDistributionPointsExtension([urls.crl]),
        new x509.AuthorityInfoAccessExtension({ caIssuers: urls.caIssuers }),
      ],
    },
    root.crypto,
  );
}

export interface LeafSpec {
  readonly serial: string;
  readonly publicKey: Buffer;
  readonly commonName: string | undefined;
  readonly dnsNames: readonly string[];
  readonly ipAddresses: readonly string[];
  readonly uris: readonly string[];
  readonly keyUsages: readonly KeyUsageName[];
  readonly extKeyUsages: readonly ExtKeyUsageName[];
  readonly notBefore: Date;
  readonly notAfter: Date;
  /** Extra subject attributes (organisation, organisational units) after the CN. */
  readonly subject?: x509.JsonName;
}

const KEY_USAGE_FLAGS: Readonly<Record<KeyUsageName, number>> = {
  digitalSignature: x509.KeyUsageFlags.digitalSignature,
  keyEncipherment: x509.KeyUsageFlags.keyEncipherment,
  keyAgreement: x509.KeyUsageFlags.keyAgreement,
};

const EXT_KEY_USAGE_OIDS: Readonly<Record<ExtKeyUsageName, string>> = {
  serverAuth: x509.ExtendedKeyUsage.serverAuth,
  clientAuth: x509.ExtendedKeyUsage.clientAuth,
};

/** The subject a leaf gets: its CN (when it has one) and any extra attributes. */
export function leafSubject(spec: Pick<LeafSpec, "commonName" | "subject">): x509.JsonName {
  return [...(spec.commonName === undefined ? [] : [{ CN: [spec.commonName] }]), ...(spec.subject ?? [])];
}

/** An end-entity certificate issued by `ca`. */
export async function buildLeaf(ca: CaSigner, spec: LeafSpec, urls: CaUrls): Promise<x509.X509Certificate> {
  const publicKey = new x509.PublicKey(spec.publicKey);
  const subject = leafSubject(spec);
  const names: x509.JsonGeneralName[] = [
    ...spec.dnsNames.map((value) => ({ type: "dns" as const, value })),
    ...spec.ipAddresses.map((value) => ({ type: "ip" as const, value })),
    ...spec.uris.map((value) => ({ type: "url" as const, value })),
  ];
  const usage = spec.keyUsages.reduce((flags, u) => flags | KEY_USAGE_FLAGS[u], 0);
  const extensions: x509.Extension[] = [
    new x509.BasicConstraintsExtension(false, undefined, true),
    new x509.KeyUsagesExtension(usage, true),
    new x509.ExtendedKeyUsageExtension(
      spec.extKeyUsages.map((u) => EXT_KEY_USAGE_OIDS[u]),
      false,
    ),
    // RFC 5280: with an empty subject the SAN extension must be critical.
    new x509.SubjectAlternativeNameExtension(names, subject.length === 0),
    await x509.AuthorityKeyIdentifierExtension.create(ca.certificate, false, ca.crypto),
    await x509.SubjectKeyIdentifierExtension.create(publicKey, false, ca.crypto),
    new x509.CRLDistributionPointsExtension([urls.crl]),
    new x509.AuthorityInfoAccessExtension({
      caIssuers: urls.caIssuers,
      ...(urls.ocsp === undefined ? {} : { ocsp: urls.ocsp }),
    }),
  ];
  return x509.X509CertificateGenerator.create(
    {
      serialNumber: spec.serial,
      subject,
      issuer: ca.certificate.subjectName,
      notBefore: spec.notBefore,
      notAfter: spec.notAfter,
      publicKey,
      signingKey: ca.signingKey,
      signingAlgorithm: ca.signingAlgorithm,
      extensions,
    },
    ca.crypto,
  );
}
