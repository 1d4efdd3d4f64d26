import type { AuditEntry } from "./types.js";

/** The SSH CA area of the Store (see docs/ssh-ca.md). */

export type SshCaKind = "user" | "host";
export type SshCaAlgorithm = "ecdsa-p256" | "ed25519";

/** A CA whose private key is an HSM token object; the store keeps its public key. */
export interface SshCaRecord {
  readonly id: string;
  readonly kind: SshCaKind;
  readonly algorithm: SshCaAlgorithm;
  readonly hsmLabel: string;
  readonly hsmId: string;
  /** The SSH public key blob. */
  readonly publicKey: Buffer;
  readonly state: "active" | "retired";
  readonly createdAt: string;
}

/** A certificate profile; `spec` is the role's JSON, validated by the service. */
export interface SshRoleRecord {
  readonly name: string;
  readonly certType: SshCaKind;
  readonly spec: Readonly<Record<string, unknown>>;
  readonly builtin: boolean;
  readonly createdAt: string;
  readonly updatedAt: string;
  readonly revision: number;
}

/** A signed certificate (its fields; the certificate itself went to the requester). */
export interface SshCertificateRecord {
  /** uint64, decimal. */
  readonly serial: string;
  readonly caId: string;
  readonly certType: SshCaKind;
  readonly keyId: string;
  readonly role: string;
  readonly principals: readonly string[];
  /** The audit display of who asked. */
  readonly requester: string;
  /** The subject key's `SHA256:…` fingerprint. */
  readonly fingerprint: string;
  readonly validAfter: string;
  readonly validBefore: string;
  readonly issuedAt: string;
  /** The sudo grant a privileged principal came from. */
  readonly sudoGrantId: string | null;
  readonly status: "valid" | "revoked";
  readonly revokedAt: string | null;
  readonly revocationReason: string | null;
}

/** A time-limited grant of `<account>@<instance>` on one app's instances to a user or group. */
export interface SshSudoGrantRecord {
  readonly id: string;
  readonly appId: string;
  readonly org: string;
  readonly space: string;
  readonly app: string;
  readonly subjectType: "user" | "group";
  readonly subjectId: string;
  readonly account: string;
  readonly reason: string;
  readonly grantedBy: string;
  readonly createdAt: string;
  readonly expiresAt: string;
  readonly revokedAt: string | null;
}

/** What a KRL must say at a moment: read inside the revoking transaction. */
export interface KrlState {
  /** The version the new KRL gets (the stored one plus one). */
  readonly version: number;
  /** Every CA with the serials of its revoked, unexpired certificates. */
  readonly cas: readonly { readonly caId: string; readonly publicKey: Buffer; readonly serials: readonly string[] }[];
  /** Raw SHA-256 fingerprints of revoked keys. */
  readonly fingerprints: readonly Buffer[];
}

/** Builds the KRL for a state; runs inside the store's transaction, so it must be synchronous and pure. */
export type KrlMaker = (state: KrlState) => Buffer;

export interface SshKrlRecord {
  readonly version: number;
  readonly generatedAt: string;
  readonly krl: Buffer;
}

/** A live instance (registered or running, lease not lapsed) a user reaches, with the app it belongs to. */
export interface ReachableInstance {
  readonly instanceId: string;
  readonly appId: string;
}

/** A live instance reached through an active sudo grant. */
export interface SudoInstance extends ReachableInstance {
  readonly account: string;
  readonly grantId: string;
  readonly grantExpiresAt: string;
}

export interface SshStore {
  /** First set-up: CAs, built-in roles and the first KRL, atomically. `conflict` if CAs exist. */
  initialize(
    cas: readonly SshCaRecord[],
    roles: readonly SshRoleRecord[],
    makeKrl: KrlMaker,
    audit: AuditEntry,
  ): Promise<void>;
  listCas(): Promise<SshCaRecord[]>;

  /** Creates (`expectedRevision` null; `conflict` if it exists) or replaces a role (`conflict` on a stale revision). */
  putRole(role: SshRoleRecord, expectedRevision: number | null, audit: AuditEntry): Promise<void>;
  getRole(name: string): Promise<SshRoleRecord | undefined>;
  listRoles(): Promise<SshRoleRecord[]>;
  /** `not_found` if absent, `conflict` for a built-in role. */
  deleteRole(name: string, audit: AuditEntry): Promise<void>;

  /**
   * Records a certificate with its audit entry. `conflict` if the serial exists;
   * `key_revoked` if its key was revoked (it is in the KRL).
   */
  insertCertificate(cert: SshCertificateRecord, audit: AuditEntry): Promise<void>;
  getCertificate(serial: string): Promise<SshCertificateRecord | undefined>;
  /**
   * Newest first. `status` is the effective one at `now`: `valid` leaves out the
   * certificates whose valid_before has passed (expired), `revoked` is revoked ones.
   */
  listCertificates(query: {
    status?: "valid" | "revoked";
    limit: number;
    now: string;
  }): Promise<SshCertificateRecord[]>;

  /** Revokes one certificate and stores the new KRL. `not_found`; `conflict` if already revoked. */
  revokeCertificate(
    serial: string,
    at: string,
    reason: string,
    makeKrl: KrlMaker,
    audit: AuditEntry,
  ): Promise<SshKrlRecord>;
  /**
   * Revokes a key (its fingerprint enters the KRL) and every valid certificate of it.
   * Returns their serials. Revoking a key already revoked only revokes new certificates.
   */
  revokeKey(
    key: { fingerprint: string; fingerprintRaw: Buffer },
    at: string,
    reason: string,
    by: string,
    makeKrl: KrlMaker,
    audit: AuditEntry,
  ): Promise<{ serials: string[]; krl: SshKrlRecord }>;
  getKrl(): Promise<SshKrlRecord | undefined>;

  createSudoGrant(grant: SshSudoGrantRecord, audit: AuditEntry): Promise<void>;
  getSudoGrant(id: string): Promise<SshSudoGrantRecord | undefined>;
  /** Newest first; only grants active at `now` when it is given. */
  listSudoGrants(now?: string): Promise<SshSudoGrantRecord[]>;
  /**
   * Revokes the grant and every valid certificate issued under it, and stores the
   * new KRL, in one transaction. `not_found`; `conflict` if already revoked.
   */
  revokeSudoGrant(
    id: string,
    at: string,
    makeKrl: KrlMaker,
    audit: AuditEntry,
  ): Promise<{ serials: string[]; krl: SshKrlRecord }>;

  /** Live instances of apps the user owns, directly or through a group. */
  ownedInstances(userId: string, now: string): Promise<ReachableInstance[]>;
  /** Live instances of apps on which the user or one of their groups holds a sudo grant active at `now`. */
  sudoInstances(userId: string, now: string): Promise<SudoInstance[]>;
  /** Live instances registered by `registeredBy` (an audit display, as the broker records it). */
  registeredInstances(registeredBy: string, now: string): Promise<ReachableInstance[]>;

  /** Appends an audit record on its own (a refusal). */
  record(audit: AuditEntry): Promise<void>;
}
