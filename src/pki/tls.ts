import { X509Certificate } from "node:crypto";
import { isIP } from "node:net";
import { hostname } from "node:os";
import type { Actor } from "../audit/index.js";
import type { Store } from "../store/index.js";
import type { Authority } from "./authority.js";
import { renewAtOf } from "./certificate.js";
import { type Issuer, SERVER_ROLE } from "./issuer.js";
import { generateCallerKey } from "./keys.js";
import { MAX_COMMON_NAME_LENGTH, type Role } from "./role.js";

/**
 * Custos's own HTTPS certificate, issued by its PKI under the built-in role
 * `custos-server` and recorded like any other. Its key is made here, in memory:
 * Node's TLS stack must hold it to terminate TLS, so it is an ordinary leaf key kept
 * in a 0600 file, not a key of the HSM's.
 */

export interface ServerTls {
  /** The leaf followed by its intermediate: what the listener serves. */
  readonly cert: string;
  readonly key: string;
  readonly notAfter: Date;
}

/** Listen addresses that mean every interface: no client reaches the listener by them, so no SAN names them. */
const ALL_INTERFACES: ReadonlySet<string> = new Set(["0.0.0.0", "::"]);

/** Names a local listener is reached by. */
export function defaultServerNames(listenHost: string): string[] {
  return [
    ...new Set(["localhost", "127.0.0.1", "::1", hostname(), listenHost].filter((h) => h && !ALL_INTERFACES.has(h))),
  ];
}

function serverRole(ttlSeconds: number): Role {
  return {
    name: SERVER_ROLE,
    dnsNames: [],
    allowWildcardNames: false,
    ipRanges: [],
    uris: [],
    keyUsages: ["digitalSignature"],
    extKeyUsages: ["serverAuth"],
    keyTypes: ["ec-p256"],
    maxTtlSeconds: ttlSeconds,
    ttlSeconds,
  };
}

/** Issues and records a server certificate for `names`. */
export async function issueServerCertificate(
  issuer: Issuer,
  store: Store,
  actor: Actor,
  names: readonly string[],
  ttlSeconds: number,
): Promise<ServerTls> {
  const key = await generateCallerKey("ec-p256");
  const dnsNames = names.filter((n) => isIP(n) === 0).map((n) => n.toLowerCase());
  const ipAddresses = names.filter((n) => isIP(n) !== 0);
  // The CN only repeats the first name: one too long for a CN (RFC 5280 ub-common-name) is left out.
  const first = dnsNames[0];
  const commonName = first !== undefined && first.length <= MAX_COMMON_NAME_LENGTH ? first : undefined;
  const { record, issued } = await issuer.build(actor, {
    role: serverRole(ttlSeconds),
    names: { commonName, dnsNames, ipAddresses, uris: [] },
    publicKey: key.publicKey,
    keyType: "ec-p256",
    ttlSeconds,
  });
  await store.createCertificate(record, issuer.issueAudit(actor, record, "server"));
  return { cert: `${issued.certificate}${issued.chain}`, key: key.privateKeyPem, notAfter: new Date(issued.notAfter) };
}

/**
 * Whether the listener must get a new certificate: it is past two thirds of its
 * life, was not issued by a CA this PKI still trusts (the core's bootstrap CA,
 * before an install was migrated), or was revoked (an admin revoking a
 * compromised server key expects Custos to stop serving it). The revocation is
 * read from the store: one lookup per check.
 */
export async function serverNeedsNew(
  certPem: string,
  authority: Authority,
  issuer: Issuer,
  now = new Date(),
): Promise<boolean> {
  const leaf = new X509Certificate(certPem);
  const renewAt = renewAtOf(new Date(leaf.validFrom).toISOString(), new Date(leaf.validTo).toISOString());
  if (now.getTime() >= renewAt.getTime()) return true;
  const ours = authority.issuers().some((ca) => {
    if (ca.kind !== "intermediate") return false;
    const caCert = new X509Certificate(authority.issuer(ca.id).certPem);
    return leaf.checkIssued(caCert) && leaf.verify(caCert.publicKey);
  });
  if (!ours) return true;
  // Our serials have no leading zero to drop (newSerial): node's hex is the stored serial, in capitals.
  return (await issuer.find(leaf.serialNumber.toLowerCase()))?.status === "revoked";
}
