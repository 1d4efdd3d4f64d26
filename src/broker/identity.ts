import type { KeyType, LeafRequest, Role } from "../pki/index.js";
import { type InstanceNames, spiffeIdOf } from "./names.js";

/** The built-in role identity certificates are recorded under (not stored: no one can edit it). */
export const IDENTITY_ROLE = "custos-identity";

const IDENTITY_KEY_TYPES: readonly KeyType[] = ["ec-p256", "ed25519", "rsa-2048", "rsa-3072"];

function identityRole(ttlSeconds: number): Role {
  return {
    name: IDENTITY_ROLE,
    dnsNames: [],
    allowWildcardNames: false,
    ipRanges: [],
    uris: [],
    keyUsages: ["digitalSignature"],
    extKeyUsages: ["clientAuth", "serverAuth"],
    keyTypes: IDENTITY_KEY_TYPES,
    maxTtlSeconds: ttlSeconds,
    ttlSeconds,
  };
}

/** Whether identity certificates are issued for keys of this type. */
export function identityKeyTypeAllowed(keyType: KeyType): boolean {
  return IDENTITY_KEY_TYPES.includes(keyType);
}

export const IDENTITY_KEY_TYPE_NAMES = IDENTITY_KEY_TYPES.join(", ");

/**
 * What an instance's identity certificate says: CN the instance id, DNS SAN the
 * instance id under the trust domain, URI SAN its SPIFFE id, and the org, space and
 * app in the subject, so a server reading only the subject still knows whom it talks
 * to. The DNS name is never a bare label: the certificate chains to the root that
 * clients of Custos itself trust, and an instance named `localhost` (or after any
 * host) must not get a server certificate for that host's name.
 */
export function identityRequest(
  names: InstanceNames,
  trustDomain: string,
  publicKey: Buffer,
  keyType: KeyType,
  ttlSeconds: number,
): LeafRequest {
  // The whole validity, backdating included, is the configured lifetime (≤ 1 h by
  // default): the backdate (a tenth of it, at most a minute) comes out of it.
  const backdateSeconds = Math.min(60, Math.floor(ttlSeconds / 10));
  return {
    role: identityRole(ttlSeconds),
    names: {
      commonName: names.instance,
      dnsNames: [`${names.instance}.${trustDomain}`],
      ipAddresses: [],
      uris: [spiffeIdOf(trustDomain, names)],
    },
    publicKey,
    keyType,
    ttlSeconds: ttlSeconds - backdateSeconds,
    backdateMs: backdateSeconds * 1000,
    subject: [{ OU: [`app:${names.app}`] }, { OU: [`space:${names.space}`] }, { O: [names.org] }],
  };
}

/** When a certificate should be renewed: at half its life. */
export function renewAtOf(notBefore: string, notAfter: string): string {
  const from = Date.parse(notBefore);
  return new Date(from + (Date.parse(notAfter) - from) / 2).toISOString();
}
