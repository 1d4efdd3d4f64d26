import "reflect-metadata";
import { createHash, hash, randomBytes } from "node:crypto";
import { AsnConvert, OctetString } from "@peculiar/asn1-schema";
import * as asn1X509 from "@peculiar/asn1-x509";
import * as x509 from "@peculiar/x509";
import { CustosError } from "../errors/index.js";
import { ipOctets } from "../net/ip.js";
import { subjectPublicKeyBits } from "./der-reader.js";
import { BIT_STRING, DNS_NAME, INTEGER, IP_ADDRESS_NAME, OCTET_STRING, SEQUENCE, SET, URI_NAME } from "./der-tags.js";
import { DER_TRUE, ia5String, objectIdentifier, tlv, utf8String, x509Time } from "./der-writer.js";
import type { ExtKeyUsageName, KeyUsageName } from "./role.js";
import { type CaSigner, type CaSigning, signAsX509, signatureAlgorithmOf } from "./signer.js";

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

/**
 * PEM as @peculiar/x509's PemConverter writes it (64-character base64 lines, "\n"
 * between lines), plus a final newline so PEMs concatenate into a valid bundle.
 */
export function derToPem(der: ArrayBuffer | Uint8Array, label = "CERTIFICATE"): string {
  const base64 = Buffer.from(der instanceof Uint8Array ? der : new Uint8Array(der)).toString("base64");
  const lines: string[] = [];
  for (let i = 0; i < base64.length; i += 64) lines.push(base64.slice(i, i + 64));
  const type = label.toLocaleUpperCase();
  return [`-----BEGIN ${type}-----`, ...lines, `-----END ${type}-----`, ""].join("\n");
}

/** When two thirds of a certificate's life (from issue, not from the backdated start) have passed. */
export function renewAtOf(notBefore: string, notAfter: string): Date {
  const from = Date.parse(notBefore) + BACKDATE_MS;
  const to = Date.parse(notAfter);
  return new Date(from + ((to - from) * 2) / 3);
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
        // The root answers OCSP for its intermediates (Authority.ocsp): say where, as every leaf does.
        new x509.AuthorityInfoAccessExtension({
          caIssuers: urls.caIssuers,
          ...(urls.ocsp === undefined ? {} : { ocsp: urls.ocsp }),
        }),
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

/** The signed leaf, with what the store and the API need, read from what was built rather than parsed back. */
export interface BuiltLeaf {
  readonly der: Buffer;
  readonly pem: string;
  readonly subject: string;
  /** As encoded: whole seconds. */
  readonly notBefore: Date;
  readonly notAfter: Date;
}

const KEY_USAGE_BITS: Readonly<Record<KeyUsageName, number>> = {
  digitalSignature: asn1X509.KeyUsageFlags.digitalSignature,
  keyEncipherment: asn1X509.KeyUsageFlags.keyEncipherment,
  keyAgreement: asn1X509.KeyUsageFlags.keyAgreement,
};

const EXT_KEY_USAGE_OIDS: Readonly<Record<ExtKeyUsageName, string>> = {
  serverAuth: asn1X509.id_kp_serverAuth,
  clientAuth: asn1X509.id_kp_clientAuth,
};

/** The name attributes a leaf's subject may hold, their OIDs encoded once; a Map, so a type such as "constructor" finds nothing. */
const NAME_OID_DER: ReadonlyMap<string, Buffer> = new Map(
  Object.entries({ CN: "2.5.4.3", O: "2.5.4.10", OU: "2.5.4.11", L: "2.5.4.7", ST: "2.5.4.8", C: "2.5.4.6" }).map(
    ([type, oid]) => [type, objectIdentifier(oid)],
  ),
);

/** The subject a leaf gets: its CN (when it has one) and any extra attributes. */
function leafSubject(spec: Pick<LeafSpec, "commonName" | "subject">): x509.JsonName {
  return [...(spec.commonName === undefined ? [] : [{ CN: [spec.commonName] }]), ...(spec.subject ?? [])];
}

function extension(extnID: string, critical: boolean, value: unknown): asn1X509.Extension {
  return new asn1X509.Extension({ extnID, critical, extnValue: new OctetString(AsnConvert.serialize(value)) });
}

const der = (value: unknown): Buffer => Buffer.from(AsnConvert.serialize(value));

/**
 * What every leaf of one CA shares, DER-encoded once per CA rather than once per
 * certificate: encoding is most of what issuing a leaf costs.
 */
interface LeafTemplate {
  /** [0] EXPLICIT version v3. */
  readonly version: Buffer;
  readonly signatureAlgorithm: Buffer;
  readonly issuer: Buffer;
  readonly basicConstraints: Buffer;
  readonly authorityKeyId: Buffer;
  readonly crlDistribution: Buffer;
  readonly authorityInfo: Buffer;
  /** keyUsage and extKeyUsage by role profile (few distinct ones). */
  readonly usages: Map<string, Buffer>;
}

const templates = new WeakMap<CaSigner, { urls: CaUrls; template: LeafTemplate }>();

function templateOf(ca: CaSigner, urls: CaUrls): LeafTemplate {
  const cached = templates.get(ca);
  if (cached && cached.urls.crl === urls.crl && cached.urls.caIssuers === urls.caIssuers) return cached.template;
  const caTbs = AsnConvert.parse(ca.certificate.rawData, asn1X509.Certificate).tbsCertificate;
  const ski = caTbs.extensions?.find((e) => e.extnID === asn1X509.id_ce_subjectKeyIdentifier);
  const keyIdentifier = ski
    ? AsnConvert.parse(ski.extnValue, asn1X509.SubjectKeyIdentifier)
    : new asn1X509.KeyIdentifier(
        createHash("sha1").update(new Uint8Array(caTbs.subjectPublicKeyInfo.subjectPublicKey)).digest(),
      );
  const uri = (value: string) => new asn1X509.GeneralName({ uniformResourceIdentifier: value });
  const template: LeafTemplate = {
    version: tlv(VERSION, [tlv(INTEGER, [Uint8Array.of(2)])]),
    signatureAlgorithm: der(signatureAlgorithmOf(ca)),
    issuer: der(caTbs.subject),
    basicConstraints: der(
      extension(asn1X509.id_ce_basicConstraints, true, new asn1X509.BasicConstraints({ cA: false })),
    ),
    authorityKeyId: der(
      extension(asn1X509.id_ce_authorityKeyIdentifier, false, new asn1X509.AuthorityKeyIdentifier({ keyIdentifier })),
    ),
    crlDistribution: der(
      extension(
        asn1X509.id_ce_cRLDistributionPoints,
        false,
        new asn1X509.CRLDistributionPoints([
          new asn1X509.DistributionPoint({
            distributionPoint: new asn1X509.DistributionPointName({ fullName: [uri(urls.crl)] }),
          }),
        ]),
      ),
    ),
    authorityInfo: der(
      extension(
        asn1X509.id_pe_authorityInfoAccess,
        false,
        new asn1X509.AuthorityInfoAccessSyntax([
          new asn1X509.AccessDescription({
            accessMethod: asn1X509.id_ad_caIssuers,
            accessLocation: uri(urls.caIssuers),
          }),
          ...(urls.ocsp === undefined
            ? []
            : [new asn1X509.AccessDescription({ accessMethod: asn1X509.id_ad_ocsp, accessLocation: uri(urls.ocsp) })]),
        ]),
      ),
    ),
    usages: new Map(),
  };
  templates.set(ca, { urls, template });
  return template;
}

/**
 * keyUsage then extKeyUsage, encoded once per distinct profile. An empty list
 * leaves its extension out: RFC 5280 requires at least one bit set in a keyUsage
 * (4.2.1.3) and one purpose in an extKeyUsage (4.2.1.12).
 */
function usageExtensions(
  template: LeafTemplate,
  keyUsages: readonly KeyUsageName[],
  extKeyUsages: readonly ExtKeyUsageName[],
): Buffer {
  const id = `${keyUsages.join(",")}/${extKeyUsages.join(",")}`;
  let encoded = template.usages.get(id);
  if (encoded === undefined) {
    const usage = keyUsages.reduce((flags, u) => flags | KEY_USAGE_BITS[u], 0);
    const purposes = extKeyUsages.map((u) => EXT_KEY_USAGE_OIDS[u]);
    encoded = Buffer.concat([
      ...(usage === 0 ? [] : [der(extension(asn1X509.id_ce_keyUsage, true, new asn1X509.KeyUsage(usage)))]),
      ...(purposes.length === 0
        ? []
        : [der(extension(asn1X509.id_ce_extKeyUsage, false, new asn1X509.ExtendedKeyUsage(purposes)))]),
    ]);
    template.usages.set(id, encoded);
  }
  return encoded;
}

// --- the fields of each leaf, encoded directly as DER -----------------------------
// Each leaf's own fields are written here rather than through the schema objects of
// @peculiar/asn1-x509: building and serialising those objects was most of what a
// leaf cost. The bytes are the ones the schema writes (test/pki/leaf-encoding.test.ts
// keeps the schema encoding as the oracle), except for an IPv6 address with a dotted
// IPv4 ending (::ffff:10.0.0.1), whose ending the schema misread as one hex group.

/** A Name: one RDN per attribute type of each JsonName entry, its values UTF8Strings in one SET. */
function nameDer(name: x509.JsonName): Buffer {
  const rdns = name.flatMap((rdn) =>
    Object.entries(rdn).map(([type, values]) => {
      const oid = NAME_OID_DER.get(type);
      if (oid === undefined) throw new CustosError("internal", `unsupported name attribute ${type}`);
      return tlv(
        SET,
        values.map((value) => tlv(SEQUENCE, [oid, utf8String(value)])),
      );
    }),
  );
  return tlv(SEQUENCE, rdns);
}

function validityDer(notBefore: Date, notAfter: Date): Buffer {
  return tlv(SEQUENCE, [x509Time(notBefore), x509Time(notAfter)]);
}

/** An Extension; `critical` FALSE is the default, so DER leaves it out. */
function extensionDer(oid: Buffer, critical: boolean, value: Buffer): Buffer {
  const extnValue = tlv(OCTET_STRING, [value]);
  return tlv(SEQUENCE, critical ? [oid, DER_TRUE, extnValue] : [oid, extnValue]);
}

const SUBJECT_ALT_NAME = objectIdentifier(asn1X509.id_ce_subjectAltName);
const SUBJECT_KEY_IDENTIFIER = objectIdentifier(asn1X509.id_ce_subjectKeyIdentifier);

function subjectAltNameDer(spec: Pick<LeafSpec, "dnsNames" | "ipAddresses" | "uris">, critical: boolean): Buffer {
  const names = [
    ...spec.dnsNames.map((name) => ia5String(DNS_NAME, name)),
    ...spec.ipAddresses.map((ip) => tlv(IP_ADDRESS_NAME, [ipAddressOctets(ip)])),
    ...spec.uris.map((uri) => ia5String(URI_NAME, uri)),
  ];
  return extensionDer(SUBJECT_ALT_NAME, critical, tlv(SEQUENCE, names));
}

function subjectKeyIdDer(keyId: Uint8Array): Buffer {
  return extensionDer(SUBJECT_KEY_IDENTIFIER, false, tlv(OCTET_STRING, [keyId]));
}

/** An iPAddress's content (RFC 5280 4.2.1.6): the 4 bytes of an IPv4 address, the 16 of an IPv6 one. */
function ipAddressOctets(text: string): Buffer {
  const octets = ipOctets(text);
  if (octets === undefined) throw new CustosError("internal", `not an IP address: ${JSON.stringify(text)}`);
  return octets;
}

// At module level: tsx names every function declared inside another on each call.
const escaped = (v: string): string => v.replace(/[,+"\\<>;]/g, (c) => `\\${c}`);

/** RFC 4514 text of a name, as @peculiar/x509 prints subjects. */
function nameText(name: x509.JsonName): string {
  return name
    .flatMap((rdn) => Object.entries(rdn).map(([t, vs]) => vs.map((v) => `${t}=${escaped(v)}`).join("+")))
    .join(", ");
}

const wholeSeconds = (d: Date): Date => new Date(Math.floor(d.getTime() / 1000) * 1000);

/**
 * An end-entity certificate issued by `ca`. What all leaves of the CA share is
 * encoded once by the X.509 schema of @peculiar/asn1-x509 (templateOf); the
 * leaf's own fields (serial, validity, subject, SAN, subject key identifier) are
 * written directly as DER (der.ts), and everything is joined into the
 * TBSCertificate and Certificate SEQUENCEs: the high-level generator spent
 * milliseconds per certificate re-encoding names and extensions that never
 * change, and the schema objects tens of microseconds on the rest.
 */
export async function buildLeaf(ca: CaSigner, spec: LeafSpec, urls: CaUrls): Promise<BuiltLeaf> {
  const template = templateOf(ca, urls);
  const subject = leafSubject(spec);
  const keyId = hash("sha1", subjectPublicKeyBits(spec.publicKey), "buffer");
  const extensions = [
    template.basicConstraints,
    usageExtensions(template, spec.keyUsages, spec.extKeyUsages),
    // RFC 5280: with an empty subject the SAN extension must be critical.
    subjectAltNameDer(spec, subject.length === 0),
    template.authorityKeyId,
    subjectKeyIdDer(keyId),
    template.crlDistribution,
    template.authorityInfo,
  ];
  const notBefore = wholeSeconds(spec.notBefore);
  const notAfter = wholeSeconds(spec.notAfter);
  const tbs = tlv(SEQUENCE, [
    template.version,
    serialNumber(spec.serial),
    template.signatureAlgorithm,
    template.issuer,
    validityDer(notBefore, notAfter),
    nameDer(subject),
    spec.publicKey,
    tlv(EXTENSIONS, [tlv(SEQUENCE, extensions)]),
  ]);
  const signature = await signAsX509(ca, tbs);
  const certificate = tlv(SEQUENCE, [tbs, template.signatureAlgorithm, tlv(BIT_STRING, [Uint8Array.of(0), signature])]);
  return { der: certificate, pem: derToPem(certificate), subject: nameText(subject), notBefore, notAfter };
}

/** [0] EXPLICIT and [3] EXPLICIT: the version's and the extensions' tags in a TBSCertificate. */
const VERSION = 0xa0;
const EXTENSIONS = 0xa3;

/**
 * The serial as a DER INTEGER: positive, so a leading zero byte when its top bit is
 * set. Only hex whose bytes the INTEGER holds as they are (whole bytes, no leading
 * zero byte), so the stored serial is the encoded one.
 */
function serialNumber(hex: string): Buffer {
  if (!/^(?!00)([0-9a-f]{2})+$/i.test(hex)) {
    throw new CustosError("internal", `not a serial to encode: ${JSON.stringify(hex)}`);
  }
  const bytes = Buffer.from(hex, "hex");
  return tlv(INTEGER, (bytes[0] ?? 0) >= 0x80 ? [Buffer.from([0]), bytes] : [bytes]);
}
