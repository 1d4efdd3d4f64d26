import "reflect-metadata";
import type * as x509 from "@peculiar/x509";
import { type Actor, auditEntry } from "../audit/index.js";
import { CustosError, isCustosError } from "../errors/index.js";
import type { CertificateQuery, CertificateRecord, RoleRecord, Store } from "../store/index.js";
import type { Authority } from "./authority.js";
import { BACKDATE_MS, buildLeaf, fingerprintOf, newSerial } from "./certificate.js";
import { isRevocationReason, REVOCATION_REASONS, type RevocationReason } from "./crl.js";
import { keyTypeOf, type ParsedCsr, parseCsr } from "./csr.js";
import { generateCallerKey } from "./keys.js";
import {
  type CheckedNames,
  checkKeyType,
  checkNames,
  checkRoleName,
  checkTtl,
  isKeyType,
  type KeyType,
  keyUsagesFor,
  parseRole,
  type RequestedNames,
  type Role,
} from "./role.js";

/** Names a caller asks a certificate for (any may be omitted). */
export interface NamesInput {
  readonly commonName?: string | undefined;
  readonly dnsNames?: readonly string[] | undefined;
  readonly ipAddresses?: readonly string[] | undefined;
  readonly uris?: readonly string[] | undefined;
}

export interface SignInput extends NamesInput {
  readonly csr: string;
  readonly ttlSeconds?: number | undefined;
}

export interface IssueInput extends NamesInput {
  readonly ttlSeconds?: number | undefined;
  readonly keyType?: string | undefined;
}

/** A certificate just issued, with what a server needs to serve it. */
export interface Issued {
  readonly serial: string;
  /** The leaf, PEM. */
  readonly certificate: string;
  /** The issuing intermediate, PEM: serve leaf + chain. */
  readonly chain: string;
  /** The intermediate then the root. */
  readonly caChain: string;
  readonly notBefore: string;
  readonly notAfter: string;
  readonly fingerprint: string;
}

export interface IssuedWithKey extends Issued {
  /** PKCS#8 PEM, returned once and never stored. */
  readonly privateKey: string;
}

export interface CertificateView {
  readonly serial: string;
  readonly issuer: string;
  readonly role: string;
  readonly subject: string;
  readonly commonName: string | null;
  readonly dnsNames: readonly string[];
  readonly ipAddresses: readonly string[];
  readonly uris: readonly string[];
  readonly keyType: string;
  readonly notBefore: string;
  readonly notAfter: string;
  readonly fingerprint: string;
  readonly status: "valid" | "revoked" | "expired";
  readonly revokedAt: string | null;
  readonly revocationReason: string | null;
  readonly issuedBy: string;
}

export interface RoleView extends Role {
  readonly createdAt: string;
  readonly updatedAt: string;
  readonly revision: number;
}

/** What a new certificate is for, checked already. */
export interface LeafRequest {
  readonly role: Role;
  readonly names: CheckedNames;
  readonly publicKey: Buffer;
  readonly keyType: KeyType;
  readonly ttlSeconds: number;
  /** Extra subject attributes after the CN (organisation, units). */
  readonly subject?: x509.JsonName;
  /** How far notBefore goes back for clients with slow clocks; default BACKDATE_MS. */
  readonly backdateMs?: number;
}

/** Role names Custos keeps for itself. */
const RESERVED_ROLE_PREFIX = "custos-";
/** The built-in role Custos's own HTTPS certificates are recorded under. */
export const SERVER_ROLE = "custos-server";
/** How many times a revocation retries when another process replaced the CRL first. */
const REVOKE_ATTEMPTS = 5;

/**
 * Roles and the certificates issued under them: issue from a CSR or with a key
 * made for the caller, renew, revoke (with the CRL re-signed in the same
 * transaction), list and inspect. Every certificate is recorded durably, with its
 * audit record, before it is returned.
 */
export class Issuer {
  readonly #store: Store;
  readonly #authority: Authority;
  readonly #now: () => Date;
  readonly #roles = new Map<string, { revision: number; role: Role }>();

  constructor(options: { store: Store; authority: Authority; clock?: () => Date }) {
    this.#store = options.store;
    this.#authority = options.authority;
    this.#now = options.clock ?? (() => new Date());
  }

  // ---- roles -----------------------------------------------------------------

  async putRole(actor: Actor, name: string, body: unknown): Promise<RoleView> {
    checkRoleName(name);
    if (name.startsWith(RESERVED_ROLE_PREFIX)) {
      throw new CustosError("invalid_request", `role names starting with "${RESERVED_ROLE_PREFIX}" are reserved`);
    }
    const role = parseRole(name, body);
    const existing = await this.#store.getRole(name);
    const now = this.#now().toISOString();
    const { name: _name, ...definition } = role;
    const record: RoleRecord = {
      name,
      definition,
      createdAt: existing?.createdAt ?? now,
      updatedAt: now,
      revision: (existing?.revision ?? 0) + 1,
    };
    await this.#store.putRole(
      record,
      existing?.revision ?? null,
      auditEntry(actor, existing ? "pki.role.update" : "pki.role.create", `pki/role/${name}`, {
        before: existing?.definition ?? null,
        after: definition,
      }),
    );
    return roleView(role, record);
  }

  async getRole(name: string): Promise<RoleView> {
    const record = await this.#roleRecord(name);
    return roleView(this.#parsed(record), record);
  }

  async listRoles(): Promise<RoleView[]> {
    return (await this.#store.listRoles()).map((r) => roleView(this.#parsed(r), r));
  }

  async deleteRole(actor: Actor, name: string): Promise<void> {
    await this.#roleRecord(name);
    await this.#store.deleteRole(name, auditEntry(actor, "pki.role.delete", `pki/role/${name}`));
    this.#roles.delete(name);
  }

  /** The role, validated; `not_found` when there is none. */
  async role(name: string): Promise<Role> {
    return this.#parsed(await this.#roleRecord(name));
  }

  async #roleRecord(name: string): Promise<RoleRecord> {
    const record = await this.#store.getRole(name);
    if (!record) throw new CustosError("not_found", `no role ${name}`);
    return record;
  }

  #parsed(record: RoleRecord): Role {
    const cached = this.#roles.get(record.name);
    if (cached?.revision === record.revision) return cached.role;
    const role = parseRole(record.name, record.definition);
    this.#roles.set(record.name, { revision: record.revision, role });
    return role;
  }

  // ---- issuing ---------------------------------------------------------------

  /**
   * Issues for a CSR: the requester keeps its key. SANs come from the CSR unless
   * the input names some (then its CN comes from the input only); a commonName in
   * the input alone replaces only the CSR's CN.
   */
  async sign(actor: Actor, roleName: string, input: SignInput): Promise<Issued> {
    const role = await this.role(roleName);
    const csr = await parseCsr(input.csr);
    checkKeyType(role, csr.keyType);
    const sansFromInput = input.dnsNames || input.ipAddresses || input.uris;
    const names = checkNames(role, sansFromInput ? requested(input) : csrNames(csr, input.commonName));
    const ttlSeconds = checkTtl(role, input.ttlSeconds);
    return this.#record(actor, "csr", {
      role,
      names,
      publicKey: csr.publicKey,
      keyType: csr.keyType,
      ttlSeconds,
    });
  }

  /** Issues with a key made here for the caller: returned once, never stored. */
  async issue(actor: Actor, roleName: string, input: IssueInput): Promise<IssuedWithKey> {
    const role = await this.role(roleName);
    const keyType = input.keyType ?? defaultKeyType(role);
    if (!isKeyType(keyType)) throw new CustosError("invalid_request", `unknown key type ${String(keyType)}`);
    checkKeyType(role, keyType);
    const names = checkNames(role, requested(input));
    const ttlSeconds = checkTtl(role, input.ttlSeconds);
    const key = await generateCallerKey(keyType);
    const issued = await this.#record(actor, "generated", {
      role,
      names,
      publicKey: key.publicKey,
      keyType,
      ttlSeconds,
    });
    return { ...issued, privateKey: key.privateKeyPem };
  }

  /** A new certificate for the same key, names and role, under the role as it is now. */
  async renew(actor: Actor, serial: string, ttl: number | undefined): Promise<Issued> {
    const old = await this.#certificate(serial);
    if (old.role.startsWith(RESERVED_ROLE_PREFIX)) {
      throw new CustosError("invalid_request", `certificates of the built-in role ${old.role} renew themselves`);
    }
    if (old.status === "revoked") throw new CustosError("conflict", "a revoked certificate can't be renewed");
    const role = await this.role(old.role);
    const keyType = keyTypeOf(old.publicKey);
    if (keyType === undefined) throw new CustosError("key_type_not_allowed", "the certificate's key type is unknown");
    checkKeyType(role, keyType);
    const names = checkNames(role, {
      ...(old.commonName === null ? {} : { commonName: old.commonName, commonNameDerived: true }),
      dnsNames: old.dnsNames,
      ipAddresses: old.ipAddresses,
      uris: old.uris,
    });
    const ttlSeconds = checkTtl(role, ttl);
    return this.#record(
      actor,
      "renew",
      { role, names, publicKey: old.publicKey, keyType, ttlSeconds },
      { renewedFrom: old.serial },
    );
  }

  async #record(
    actor: Actor,
    mode: "csr" | "generated" | "renew",
    request: LeafRequest,
    extra: Record<string, unknown> = {},
  ): Promise<Issued> {
    const { record, issued } = await this.build(actor, request);
    await this.#store.createCertificate(record, this.issueAudit(actor, record, mode, extra));
    return issued;
  }

  /** The audit entry of an issuance: what was issued, never a key. */
  issueAudit(actor: Actor, record: CertificateRecord, mode: string, extra: Record<string, unknown> = {}) {
    return auditEntry(actor, "pki.issue", `pki/role/${record.role}`, {
      mode,
      serial: record.serial,
      issuer: record.issuerId,
      subject: record.subject,
      dnsNames: record.dnsNames,
      ipAddresses: record.ipAddresses,
      uris: record.uris,
      keyType: record.keyType,
      notAfter: record.notAfter,
      fingerprint: record.fingerprint,
      ...extra,
    });
  }

  /** Builds and signs a leaf under the active intermediate; the caller stores the record. */
  async build(actor: Actor, request: LeafRequest): Promise<{ record: CertificateRecord; issued: Issued }> {
    const ca = this.#authority.active();
    const now = this.#now();
    // No leaf outlives its CA.
    const notAfter = new Date(
      Math.min(now.getTime() + request.ttlSeconds * 1000, ca.signer.certificate.notAfter.getTime()),
    );
    const { names } = request;
    const serial = newSerial();
    const cert = await buildLeaf(
      ca.signer,
      {
        serial,
        publicKey: request.publicKey,
        commonName: names.commonName,
        dnsNames: names.dnsNames,
        ipAddresses: names.ipAddresses,
        uris: names.uris,
        keyUsages: keyUsagesFor(request.keyType, request.role.keyUsages),
        extKeyUsages: request.role.extKeyUsages,
        notBefore: new Date(now.getTime() - (request.backdateMs ?? BACKDATE_MS)),
        notAfter,
        ...(request.subject === undefined ? {} : { subject: request.subject }),
      },
      this.#authority.urlsFor(ca.id),
    );
    const record: CertificateRecord = {
      serial,
      issuerId: ca.id,
      role: request.role.name,
      subject: cert.subject,
      commonName: names.commonName ?? null,
      dnsNames: names.dnsNames,
      ipAddresses: names.ipAddresses,
      uris: names.uris,
      keyType: request.keyType,
      publicKey: request.publicKey,
      notBefore: cert.notBefore.toISOString(),
      notAfter: cert.notAfter.toISOString(),
      fingerprint: fingerprintOf(cert.der),
      pem: cert.pem,
      status: "valid",
      revokedAt: null,
      revocationReason: null,
      issuedBy: actor.principal,
    };
    return { record, issued: issuedOf(record, ca.certPem, this.#authority.caChainPem(ca.id)) };
  }

  // ---- inventory and revocation ------------------------------------------------

  async get(serial: string): Promise<CertificateView & { pem: string }> {
    const record = await this.#certificate(serial);
    return { ...this.view(record), pem: record.pem };
  }

  async list(query: CertificateQuery): Promise<CertificateView[]> {
    return (await this.#store.listCertificates({ ...query, now: this.#now().toISOString() })).map((r) => this.view(r));
  }

  /** The stored certificate, or undefined (OCSP asks about serials Custos may never have issued). */
  find(serial: string): Promise<CertificateRecord | undefined> {
    return this.#store.getCertificate(serial);
  }

  /** The role a certificate was issued under (for authorising its renewal or revocation). */
  async roleOf(serial: string): Promise<string> {
    return (await this.#certificate(serial)).role;
  }

  /**
   * Revokes and re-signs the issuer's CRL in the same transaction, so the CRL never
   * lags. `conflict` only when the certificate is already revoked: revocations under
   * one CA in this process take turns at its CRL (`Authority.changeCrl`), and one
   * that another process's writer keeps beating is `store_unavailable`, to retry.
   */
  async revoke(actor: Actor, given: string, reason = "unspecified"): Promise<CertificateView> {
    if (!isRevocationReason(reason)) {
      throw new CustosError("invalid_request", `reason must be one of ${REVOCATION_REASONS.join(", ")}`);
    }
    // The CRL, the store and the audit record all want the serial as stored: lowercase.
    const serial = checkSerial(given);
    const { issuerId } = await this.#certificate(serial);
    return this.#authority.changeCrl(issuerId, async () => {
      let lost: unknown;
      for (let attempt = 1; ; attempt++) {
        // Read on every attempt: what was queued or written before may have revoked it.
        const cert = await this.#certificate(serial);
        if (cert.status === "revoked") throw new CustosError("conflict", "the certificate is already revoked");
        if (attempt > REVOKE_ATTEMPTS) {
          throw new CustosError("store_unavailable", `the CRL of CA ${cert.issuerId} kept changing; try again`, {
            cause: lost,
          });
        }
        const revokedAt = this.#now();
        const crl = await this.#authority.crlWith(cert.issuerId, { serial, revokedAt, reason });
        try {
          await this.#store.revokeCertificate(
            serial,
            revokedAt.toISOString(),
            reason,
            crl,
            auditEntry(actor, "pki.revoke", `pki/cert/${serial}`, {
              reason,
              role: cert.role,
              crlNumber: crl.crlNumber,
            }),
          );
          await this.#authority.reload();
          return this.view(await this.#certificate(serial));
        } catch (e) {
          // Another process replaced the CRL first: rebuild it with both.
          if (!(isCustosError(e) && e.code === "conflict")) throw e;
          lost = e;
        }
      }
    });
  }

  /**
   * Revokes each certificate in turn, each with its issuer's CRL re-signed in the
   * same transaction (as `revoke`); ones revoked meanwhile are skipped. Returns the
   * serials this call revoked. Used when everything issued to something must go
   * (a stopped container instance).
   */
  async revokeAll(actor: Actor, serials: readonly string[], reason: RevocationReason): Promise<string[]> {
    const revoked: string[] = [];
    for (const serial of serials) {
      try {
        await this.revoke(actor, serial, reason);
        revoked.push(serial);
      } catch (e) {
        if (!(isCustosError(e) && e.code === "conflict" && (await this.#certificate(serial)).status === "revoked")) {
          throw e;
        }
      }
    }
    return revoked;
  }

  async #certificate(serial: string): Promise<CertificateRecord> {
    const record = await this.#store.getCertificate(checkSerial(serial));
    if (!record) throw new CustosError("not_found", "certificate not found");
    return record;
  }

  view(r: CertificateRecord): CertificateView {
    const expired = r.status === "valid" && Date.parse(r.notAfter) <= this.#now().getTime();
    return {
      serial: r.serial,
      issuer: r.issuerId,
      role: r.role,
      subject: r.subject,
      commonName: r.commonName,
      dnsNames: r.dnsNames,
      ipAddresses: r.ipAddresses,
      uris: r.uris,
      keyType: r.keyType,
      notBefore: r.notBefore,
      notAfter: r.notAfter,
      fingerprint: r.fingerprint,
      status: expired ? "expired" : r.status,
      revokedAt: r.revokedAt,
      revocationReason: r.revocationReason,
      issuedBy: r.issuedBy,
    };
  }
}

/** The issued form of a stored certificate. */
export function issuedOf(r: CertificateRecord, chain: string, caChain: string): Issued {
  return {
    serial: r.serial,
    certificate: r.pem,
    chain,
    caChain,
    notBefore: r.notBefore,
    notAfter: r.notAfter,
    fingerprint: r.fingerprint,
  };
}

/** A serial as stored (lowercase hex), in whichever case it was given; invalid_request when it is no hex. */
function checkSerial(serial: string): string {
  const normalised = typeof serial === "string" ? serial.toLowerCase() : "";
  if (!/^[0-9a-f]{1,64}$/.test(normalised)) throw new CustosError("invalid_request", "a serial is hex digits");
  return normalised;
}

/** A CSR's names, its CN replaced by `commonName` when given (a CN taken from the CSR is only derived). */
function csrNames(csr: ParsedCsr, commonName: string | undefined): RequestedNames {
  const cn =
    commonName !== undefined
      ? { commonName }
      : csr.commonName !== undefined
        ? { commonName: csr.commonName, commonNameDerived: true }
        : {};
  return { ...cn, dnsNames: csr.dnsNames, ipAddresses: csr.ipAddresses, uris: csr.uris };
}

function requested(input: NamesInput) {
  return {
    ...(input.commonName === undefined ? {} : { commonName: input.commonName }),
    dnsNames: input.dnsNames ?? [],
    ipAddresses: input.ipAddresses ?? [],
    uris: input.uris ?? [],
  };
}

/** EC P-256 when the role allows it (small and fast), else the role's first type. */
export function defaultKeyType(role: Role): KeyType {
  return role.keyTypes.includes("ec-p256") ? "ec-p256" : (role.keyTypes[0] ?? "ec-p256");
}

function roleView(role: Role, record: RoleRecord): RoleView {
  return { ...role, createdAt: record.createdAt, updatedAt: record.updatedAt, revision: record.revision };
}
