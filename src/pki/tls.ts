import "reflect-metadata";
import { generateKeyPairSync, randomBytes, X509Certificate } from "node:crypto";
import { hostname } from "node:os";
import * as x509 from "@peculiar/x509";
import type { HsmKeyRef, Keystore } from "../hsm/index.js";
import { hsmSigningCrypto, hsmSigningKey } from "./signer.js";

const HSM_EC_SIGNING_KEY = hsmSigningKey("ecdsa-p256");
const ECDSA_SHA256 = { name: "ECDSA", hash: "SHA-256" } as const;

/**
 * The bootstrap TLS authority: a CA whose P-256 key lives in the HSM, and the
 * server certificate it issues for Custos's own HTTPS listener. The full PKI
 * (intermediates, roles, CRL, OCSP) grows from here; this file stays the place
 * that knows how Custos's own listener gets its certificate.
 */

/** Label of the CA key pair on the token. */
export const TLS_CA_KEY_LABEL = "custos-tls-ca";

const DAY_MS = 86_400_000;
const CA_LIFETIME_MS = 10 * 365 * DAY_MS;
/** Short enough that renewal is exercised, long enough to survive a holiday. */
export const SERVER_CERT_LIFETIME_MS = 90 * DAY_MS;

function serial(): string {
  const bytes = randomBytes(16);
  bytes[0] = (bytes[0] ?? 0) & 0x7f; // positive INTEGER
  return bytes.toString("hex");
}

/** Creates the self-signed CA certificate over an HSM key pair; returns its PEM. */
export async function createTlsCaCertificate(
  keystore: Keystore,
  caKey: HsmKeyRef,
  caSpki: Buffer,
  now = new Date(),
): Promise<string> {
  const crypto = hsmSigningCrypto(keystore, caKey, "ecdsa-p256");
  const publicKey = new x509.PublicKey(caSpki);
  const cert = await x509.X509CertificateGenerator.create(
    {
      serialNumber: serial(),
      subject: "CN=Custos Bootstrap CA, O=Custos",
      issuer: "CN=Custos Bootstrap CA, O=Custos",
      notBefore: new Date(now.getTime() - 60_000),
      notAfter: new Date(now.getTime() + CA_LIFETIME_MS),
      publicKey,
      signingKey: HSM_EC_SIGNING_KEY,
      signingAlgorithm: ECDSA_SHA256,
      extensions: [
        new x509.BasicConstraintsExtension(true, 0, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
        await x509.SubjectKeyIdentifierExtension.create(publicKey, false, crypto),
      ],
    },
    crypto,
  );
  return cert.toString("pem");
}

export interface ServerTls {
  readonly certPem: string;
  readonly keyPem: string;
  readonly notAfter: Date;
}

/** Names a local listener is reached by. */
export function defaultServerNames(listenHost: string): string[] {
  return [...new Set(["localhost", "127.0.0.1", "::1", hostname(), listenHost].filter((h) => h && h !== "0.0.0.0"))];
}

/**
 * Issues a server certificate for `names`. The server's own key is made here, in
 * memory: Node's TLS stack must hold it to terminate TLS, so it is an ordinary
 * leaf key kept in a 0600 file, not a key of the HSM's.
 */
export async function issueServerCertificate(
  keystore: Keystore,
  caKey: HsmKeyRef,
  caCertPem: string,
  names: readonly string[],
  now = new Date(),
): Promise<ServerTls> {
  const crypto = hsmSigningCrypto(keystore, caKey, "ecdsa-p256");
  const ca = new x509.X509Certificate(caCertPem);
  const { publicKey, privateKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
  const spki = new x509.PublicKey(publicKey.export({ type: "spki", format: "der" }));
  const notAfter = new Date(now.getTime() + SERVER_CERT_LIFETIME_MS);
  const isIp = (n: string): boolean => /^[\d.]+$/.test(n) || n.includes(":");
  const cert = await x509.X509CertificateGenerator.create(
    {
      serialNumber: serial(),
      subject: `CN=${names[0] ?? "localhost"}`,
      issuer: ca.subject,
      notBefore: new Date(now.getTime() - 60_000),
      notAfter,
      publicKey: spki,
      signingKey: HSM_EC_SIGNING_KEY,
      signingAlgorithm: ECDSA_SHA256,
      extensions: [
        new x509.BasicConstraintsExtension(false, undefined, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
        new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth], false),
        new x509.SubjectAlternativeNameExtension(
          names.map((n) => (isIp(n) ? { type: "ip" as const, value: n } : { type: "dns" as const, value: n })),
          false,
        ),
        await x509.AuthorityKeyIdentifierExtension.create(ca, false, crypto),
        await x509.SubjectKeyIdentifierExtension.create(spki, false, crypto),
      ],
    },
    crypto,
  );
  return {
    certPem: cert.toString("pem"),
    keyPem: privateKey.export({ type: "pkcs8", format: "pem" }).toString(),
    notAfter,
  };
}

/** True when less than a third of the certificate's lifetime is left (renew then). */
export function needsRenewal(certPem: string, now = new Date()): boolean {
  const cert = new X509Certificate(certPem);
  const from = new Date(cert.validFrom).getTime();
  const to = new Date(cert.validTo).getTime();
  return now.getTime() > to - (to - from) / 3;
}
