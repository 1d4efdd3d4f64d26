import type { KeyObject } from "node:crypto";
import type { BrokerStore } from "./broker.js";
import type { PlatformStore } from "./platform.js";
import type { SecretStore } from "./secrets.js";
import type { SshStore } from "./ssh.js";
/**
 * The `Store`: everything Custos persists, seen as use-case-level atomic operations.
 * No SQL, no transactions and nothing SQLite-specific crosses this line, so a
 * PostgreSQL implementation can stand beside the SQLite one.
 *
 * Every state-changing operation takes the `AuditEntry` describing it and commits
 * the change and its audit record atomically: either both are durable or neither
 * is. A returned promise resolves only once the write is durable (fsynced).
 *
 * Concurrency: mutable records carry a `revision`; updates name the revision they
 * were computed from and fail with `conflict` if another writer got there first.
 *
 * Errors (`CustosError`): `conflict` (unique name taken, stale revision,
 * already initialised), `not_found` (updating something absent),
 * `store_unavailable` (the write could not be made durable within its deadline).
 */

// ---- audit ------------------------------------------------------------------

export type AuditOutcome = "success" | "denied" | "failure";

/** One audited action, before the store assigns its place in the chain. */
export interface AuditEntry {
  /** ISO-8601 UTC with milliseconds. */
  readonly time: string;
  readonly requestId: string;
  /** Who: `user:<name>`, `token:<id>`, `system`, … */
  readonly principal: string;
  /** Where from: client IP, or `cli`/`local` for local commands. */
  readonly source: string;
  /** What: `key.create`, `key.encrypt`, `auth.login`, … */
  readonly action: string;
  /** On what: `key/<name>`, `user/<name>`, … (empty when none). */
  readonly resource: string;
  readonly outcome: AuditOutcome;
  /** Error code when the outcome is not success. */
  readonly errorCode: string | null;
  /**
   * JSON-serialisable details: request parameters and, for state changes,
   * `{ before, after }`. Secret values must already be HMACed by the caller.
   */
  readonly details: Readonly<Record<string, unknown>>;
}

/** An audit entry with its place in the hash chain. */
export interface AuditRecord extends AuditEntry {
  /** 1-based, gap-free. */
  readonly seq: number;
  /** Hash (hex) of the previous record; 64 zeros for the first. */
  readonly prevHash: string;
  /** `auditRecordHash(this)`, hex. */
  readonly hash: string;
}

/** A record as stored, with the exact details text its hash covers (what a verifier reads). */
export interface StoredAuditRecord extends AuditRecord {
  readonly detailsJson: string;
}

/** A signed statement that the chain up to `seq` ends in `hash`. */
export interface AuditCheckpoint {
  readonly seq: number;
  readonly hash: string;
  readonly time: string;
  /** Signing key (label/id) and scheme, so a verifier can find the public key. */
  readonly keyLabel: string;
  readonly keyId: string;
  readonly scheme: string;
  /** Signature (base64) over `auditCheckpointMessage(seq, hash, time)`. */
  readonly signature: string;
}

export interface AuditQuery {
  /**
   * Records after this seq in the listing's order: greater oldest first, smaller
   * newest first, so the last seq of a page is the cursor to the next one.
   */
  readonly afterSeq?: number;
  readonly limit?: number;
  readonly principal?: string;
  readonly action?: string;
  readonly resource?: string;
  /** Newest first when true (default oldest first). */
  readonly descending?: boolean;
}

// ---- keys -------------------------------------------------------------------

export type KeyPurpose = "encrypt" | "sign";
export type KeyAlgorithm = "aes-256-gcm" | "ecdsa-p256" | "ed25519" | "rsa-3072";
export type KeyState = "enabled" | "disabled" | "pending_destruction" | "destroyed";

export interface KeyRecord {
  readonly id: string;
  readonly name: string;
  readonly purpose: KeyPurpose;
  readonly algorithm: KeyAlgorithm;
  readonly state: KeyState;
  readonly description: string;
  readonly createdAt: string;
  readonly updatedAt: string;
  readonly revision: number;
  readonly latestVersion: number;
  readonly minDecryptionVersion: number;
  /** Automatic rotation period in seconds, or null for none. */
  readonly rotationPeriodSeconds: number | null;
  readonly nextRotationAt: string | null;
  /** When a pending destruction takes effect. */
  readonly destroyAt: string | null;
}

export type KeyVersionState = "active" | "destroyed";

export interface KeyVersionRecord {
  readonly keyId: string;
  readonly version: number;
  readonly state: KeyVersionState;
  readonly createdAt: string;
  /** AES versions: the key wrapped by the root key. Null for signing keys and once destroyed. */
  readonly wrappedKey: Buffer | null;
  /** Signing versions: the HSM token object. Null for AES versions. */
  readonly hsmLabel: string | null;
  readonly hsmId: string | null;
  /** Signing versions: SPKI DER. */
  readonly publicKey: Buffer | null;
}

export interface KeyListQuery {
  readonly prefix?: string;
  /** Names strictly after this one (pagination). */
  readonly after?: string;
  readonly limit?: number;
}

/** An atomic change to one key: its new record and, optionally, versions added or destroyed. */
export interface KeyChange {
  /** The new record; its `revision` must be `expectedRevision + 1`. */
  readonly key: KeyRecord;
  readonly expectedRevision: number;
  readonly addVersion?: KeyVersionRecord;
  /** Versions to mark destroyed (their wrapped material is erased). */
  readonly destroyVersions?: readonly number[];
}

// ---- auth -------------------------------------------------------------------

export interface UserRecord {
  readonly id: string;
  readonly name: string;
  /** argon2id encoded hash; null for users who can't log in with a password. */
  readonly passwordHash: string | null;
  readonly policies: readonly string[];
  readonly disabled: boolean;
  readonly createdAt: string;
  readonly updatedAt: string;
  readonly revision: number;
}

export interface GroupRecord {
  readonly id: string;
  readonly name: string;
  /** User ids. */
  readonly members: readonly string[];
  readonly policies: readonly string[];
  readonly createdAt: string;
  readonly updatedAt: string;
  readonly revision: number;
}

export type TokenKind = "session" | "api";

export interface TokenRecord {
  /** Public identifier (appears in audit records and lists). */
  readonly id: string;
  /** SHA-256 (hex) of the secret part; the token itself is never stored. */
  readonly hash: string;
  readonly kind: TokenKind;
  readonly name: string;
  /** The user the token acts for, or null for a standalone API token. */
  readonly userId: string | null;
  /** Policies of the token itself; for user tokens, null means "the user's own". */
  readonly policies: readonly string[] | null;
  readonly createdAt: string;
  readonly expiresAt: string | null;
  readonly revokedAt: string | null;
  /**
   * The API token that made this one, which it can't outlive: revoking a token
   * revokes every token it made, and theirs. Null for login sessions, tokens made
   * with one, and the first admin's.
   */
  readonly parentId: string | null;
  /**
   * The user whose login session made this standalone token (a session is no
   * parent: the token outlives logout and a password change). That user lists and
   * revokes it without a policy, disabling them suspends it and deleting them
   * revokes it. Null for every other token.
   */
  readonly makerUserId: string | null;
  /** How the token may be renewed; null when it can't be. */
  readonly renewal: TokenRenewal | null;
}

export interface TokenRenewal {
  /** The lifetime a renewal gives when it names none. */
  readonly ttlSeconds: number;
  /** The latest expiry renewals may reach. */
  readonly maxExpiresAt: string;
}

export interface PolicyRule {
  /** Resource pattern, `*` matching any run of characters: `key/app-a-*`. */
  readonly resource: string;
  /** Actions, or `*` for all non-privileged actions. */
  readonly actions: readonly string[];
}

export interface PolicyRecord {
  readonly name: string;
  readonly description: string;
  readonly rules: readonly PolicyRule[];
  readonly createdAt: string;
  readonly updatedAt: string;
  readonly revision: number;
}

export type SudoSubjectType = "user" | "group";

export interface SudoGrantRecord {
  readonly id: string;
  readonly subjectType: SudoSubjectType;
  readonly subjectId: string;
  /** Policies the grant confers while active (usually `["admin"]`). */
  readonly policies: readonly string[];
  readonly reason: string;
  readonly grantedBy: string;
  readonly createdAt: string;
  readonly expiresAt: string;
  readonly revokedAt: string | null;
}

// ---- pki --------------------------------------------------------------------

export type CaKind = "root" | "intermediate";
/** `active` issues; `retiring` signs only CRLs and OCSP answers for what it issued. */
export type CaState = "active" | "retiring";

export interface CaRecord {
  /** `root-<n>` or `int-<n>`. */
  readonly id: string;
  readonly kind: CaKind;
  readonly algorithm: "ecdsa-p256" | "rsa-3072";
  /** The key pair's token object. */
  readonly hsmLabel: string;
  readonly hsmId: string;
  readonly certPem: string;
  /** The CA that signed this one; null for a root. */
  readonly parentId: string | null;
  readonly state: CaState;
  readonly createdAt: string;
  readonly notAfter: string;
  /** The newest CRL: its number, DER and when it must be replaced. */
  readonly crlNumber: number;
  readonly crlDer: Buffer;
  readonly crlNextUpdate: string;
  readonly revision: number;
}

/** A CA's CRL replaced, checked against the revision it was computed from. */
export interface CrlChange {
  readonly caId: string;
  readonly expectedRevision: number;
  readonly crlNumber: number;
  readonly crlDer: Buffer;
  readonly crlNextUpdate: string;
}

export type CertificateStatus = "valid" | "revoked";

export interface CertificateRecord {
  /** Lowercase hex, no leading zero. */
  readonly serial: string;
  readonly issuerId: string;
  readonly role: string;
  readonly subject: string;
  readonly commonName: string | null;
  readonly dnsNames: readonly string[];
  readonly ipAddresses: readonly string[];
  readonly uris: readonly string[];
  readonly keyType: string;
  /** SPKI DER, so the certificate can be renewed for the same key. */
  readonly publicKey: Buffer;
  readonly notBefore: string;
  readonly notAfter: string;
  /** SHA-256 of the DER, lowercase hex. */
  readonly fingerprint: string;
  readonly pem: string;
  readonly status: CertificateStatus;
  readonly revokedAt: string | null;
  readonly revocationReason: string | null;
  /** The principal it was issued to. */
  readonly issuedBy: string;
}

export interface CertificateQuery {
  readonly role?: string;
  readonly issuerId?: string;
  /** `expired`: valid by status but past `notAfter` at `now`. */
  readonly status?: CertificateStatus | "expired";
  readonly now?: string;
  /** Serials strictly after this one (pagination). */
  readonly after?: string;
  readonly limit?: number;
}

/** A role as stored: its definition is validated by pki/, the store only keeps it. */
export interface RoleRecord {
  readonly name: string;
  readonly definition: Readonly<Record<string, unknown>>;
  readonly createdAt: string;
  readonly updatedAt: string;
  readonly revision: number;
}

export interface ConsumerRotation {
  readonly kind: "rotate" | "renew" | "rollback";
  readonly from: number;
  readonly to: number;
  readonly startedAt: string;
  readonly completedAt: string | null;
}

/** A TLS consumer (the router) and the generation of its certificate its agents must serve. */
export interface ConsumerRecord {
  readonly name: string;
  readonly role: string;
  /** What its certificates are issued for: names, TTL, key type. */
  readonly request: Readonly<Record<string, unknown>>;
  readonly targetGeneration: number;
  readonly previousGeneration: number | null;
  readonly rotation: ConsumerRotation | null;
  readonly createdAt: string;
  readonly updatedAt: string;
  readonly revision: number;
}

export interface ConsumerGenerationRecord {
  readonly consumer: string;
  readonly generation: number;
  readonly serial: string;
  /** The private key, sealed by the HSM (never stored in clear). */
  readonly sealedKey: Buffer;
  readonly createdAt: string;
}

export interface ConsumerAgentRecord {
  readonly consumer: string;
  readonly agentId: string;
  readonly fingerprint: string;
  readonly reportedAt: string;
}

/** A consumer written with, optionally, a new generation and its certificate. */
export interface ConsumerChange {
  readonly consumer: ConsumerRecord;
  /** null creates the consumer. */
  readonly expectedRevision: number | null;
  readonly addGeneration?: { readonly generation: ConsumerGenerationRecord; readonly certificate: CertificateRecord };
}

// ---- initialisation ---------------------------------------------------------

/** What `custos init` writes, all at once. */
export interface InitialState {
  /** Settings such as the root key label/id/check value, audit key refs, TLS paths. */
  readonly settings: Readonly<Record<string, string>>;
  readonly policies: readonly PolicyRecord[];
  readonly admin: UserRecord;
  readonly adminToken: TokenRecord;
}

// ---- the interface ----------------------------------------------------------

export interface Store {
  /** Areas with their own operations (docs/broker.md). */
  readonly platform: PlatformStore;
  readonly secrets: SecretStore;
  readonly broker: BrokerStore;
  readonly ssh: SshStore;

  /** True once `initialize` has committed. */
  isInitialized(): Promise<boolean>;
  /**
   * Writes the initial state and its audit record atomically (on a fresh store,
   * the log's first record: verification checks it is there); `conflict` if
   * already initialised.
   */
  initialize(state: InitialState, audit: AuditEntry): Promise<void>;
  getSetting(name: string): Promise<string | undefined>;
  putSetting(name: string, value: string, audit: AuditEntry): Promise<void>;

  // keys
  createKey(key: KeyRecord, firstVersion: KeyVersionRecord, audit: AuditEntry): Promise<void>;
  getKey(name: string): Promise<KeyRecord | undefined>;
  listKeys(query?: KeyListQuery): Promise<KeyRecord[]>;
  listKeyVersions(keyId: string): Promise<KeyVersionRecord[]>;
  getKeyVersion(keyId: string, version: number): Promise<KeyVersionRecord | undefined>;
  updateKey(change: KeyChange, audit: AuditEntry): Promise<void>;
  /** Keys whose automatic rotation (`nextRotationAt`) or destruction (`destroyAt`) is due. */
  listKeysDue(now: string): Promise<KeyRecord[]>;

  // users, groups, tokens, policies, sudo
  createUser(user: UserRecord, audit: AuditEntry): Promise<void>;
  getUser(id: string): Promise<UserRecord | undefined>;
  getUserByName(name: string): Promise<UserRecord | undefined>;
  listUsers(): Promise<UserRecord[]>;
  /** With `endSessions`, the user's live login sessions are revoked in the same transaction (a password change). */
  updateUser(
    user: UserRecord,
    expectedRevision: number,
    audit: AuditEntry,
    options?: { endSessions?: boolean },
  ): Promise<void>;
  /**
   * Deletes the user, revokes their tokens and the standalone tokens they made with
   * a login session (and the tokens those made: see `revokeToken`) and removes them
   * from groups.
   */
  deleteUser(id: string, audit: AuditEntry): Promise<void>;

  createGroup(group: GroupRecord, audit: AuditEntry): Promise<void>;
  getGroupByName(name: string): Promise<GroupRecord | undefined>;
  listGroups(): Promise<GroupRecord[]>;
  groupsOfUser(userId: string): Promise<GroupRecord[]>;
  updateGroup(group: GroupRecord, expectedRevision: number, audit: AuditEntry): Promise<void>;
  deleteGroup(id: string, audit: AuditEntry): Promise<void>;

  /** `unauthenticated` if the token's parent is revoked, or its maker user deleted, by the time it is written. */
  createToken(token: TokenRecord, audit: AuditEntry): Promise<void>;
  getToken(id: string): Promise<TokenRecord | undefined>;
  getTokenByHash(hash: string): Promise<TokenRecord | undefined>;
  listTokens(userId?: string): Promise<TokenRecord[]>;
  /** The tokens `parentId` made itself (not theirs), oldest first. */
  listTokensMadeBy(parentId: string): Promise<TokenRecord[]>;
  /** The standalone tokens the user `userId` made with a login session (`makerUserId`), oldest first. */
  listTokensMadeByUser(userId: string): Promise<TokenRecord[]>;
  /**
   * Revokes the token and, in the same transaction, every live token it made and
   * theirs; answers their ids, which the audit record's `revokedWith` names too.
   */
  revokeToken(id: string, at: string, audit: AuditEntry): Promise<string[]>;
  /**
   * Moves a live token's expiry from `expectedExpiresAt` to `expiresAt`; `conflict` if it
   * was revoked or its expiry moved meanwhile.
   */
  renewToken(id: string, expectedExpiresAt: string, expiresAt: string, audit: AuditEntry): Promise<void>;

  putPolicy(policy: PolicyRecord, expectedRevision: number | null, audit: AuditEntry): Promise<void>;
  getPolicy(name: string): Promise<PolicyRecord | undefined>;
  listPolicies(): Promise<PolicyRecord[]>;
  deletePolicy(name: string, audit: AuditEntry): Promise<void>;

  createSudoGrant(grant: SudoGrantRecord, audit: AuditEntry): Promise<void>;
  getSudoGrant(id: string): Promise<SudoGrantRecord | undefined>;
  /** Grants not revoked and not expired at `now` (all grants when `now` is omitted). */
  listSudoGrants(now?: string): Promise<SudoGrantRecord[]>;
  revokeSudoGrant(id: string, at: string, audit: AuditEntry): Promise<void>;

  // pki
  listCas(): Promise<CaRecord[]>;
  getCa(id: string): Promise<CaRecord | undefined>;
  /** Adds CAs (first set-up or a rollover) and, atomically, retires the ones named. `conflict` on a stale revision. */
  addCas(
    cas: readonly CaRecord[],
    retire: readonly { id: string; expectedRevision: number }[],
    settings: Readonly<Record<string, string>>,
    audit: AuditEntry,
  ): Promise<void>;
  /** Replaces a CA's CRL (scheduled regeneration); not audited: nothing changes but the signing date. */
  replaceCrl(change: CrlChange): Promise<void>;
  createCertificate(certificate: CertificateRecord, audit: AuditEntry): Promise<void>;
  getCertificate(serial: string): Promise<CertificateRecord | undefined>;
  listCertificates(query?: CertificateQuery): Promise<CertificateRecord[]>;
  /** Revoked certificates of `issuerId` whose notAfter is later than `notAfterSince`: a CRL's entries. */
  listRevoked(issuerId: string, notAfterSince: string): Promise<CertificateRecord[]>;
  /** Revokes and replaces the issuer's CRL in one transaction. `conflict` if already revoked or the CRL moved on. */
  revokeCertificate(
    serial: string,
    revokedAt: string,
    reason: string,
    crl: CrlChange,
    audit: AuditEntry,
  ): Promise<void>;

  putRole(role: RoleRecord, expectedRevision: number | null, audit: AuditEntry): Promise<void>;
  getRole(name: string): Promise<RoleRecord | undefined>;
  listRoles(): Promise<RoleRecord[]>;
  deleteRole(name: string, audit: AuditEntry): Promise<void>;

  writeConsumer(change: ConsumerChange, audit: AuditEntry): Promise<void>;
  getConsumer(name: string): Promise<ConsumerRecord | undefined>;
  listConsumers(): Promise<ConsumerRecord[]>;
  getConsumerGeneration(consumer: string, generation: number): Promise<ConsumerGenerationRecord | undefined>;
  /** Records what an agent serves and, when given, the consumer's new record (a rotation completing). */
  reportConsumerAgent(
    agent: ConsumerAgentRecord,
    consumerUpdate: { consumer: ConsumerRecord; expectedRevision: number } | null,
    audit: AuditEntry,
  ): Promise<void>;
  listConsumerAgents(consumer: string): Promise<ConsumerAgentRecord[]>;

  // audit
  /** Appends one record (group-committed with other writes); resolves once durable. */
  appendAudit(entry: AuditEntry): Promise<AuditRecord>;
  /**
   * Calls `watcher` with the audit head's seq after every committed write, the
   * records services append with their changes included, until the returned
   * function is called. It runs before the write's caller hears back: it must only
   * note the seq or schedule work.
   */
  watchAuditHead(watcher: (headSeq: number) => void): () => void;
  listAudit(query?: AuditQuery): Promise<AuditRecord[]>;
  /** Records with `fromSeq <= seq <= toSeq`, oldest first, exactly as stored. */
  readAuditRange(fromSeq: number, toSeq: number): Promise<StoredAuditRecord[]>;
  /**
   * At most `limit` records with `seq > afterSeq`, oldest first, exactly as stored:
   * a verifier pages through whatever is there, however sparse the seqs.
   */
  readAuditAfter(afterSeq: number, limit: number): Promise<StoredAuditRecord[]>;
  /**
   * Keys the audit chain (see `AuditChainKey`) with `key` from now on; call once at
   * start, before the first audited write. The first call on a store records the
   * first keyed seq (the next one; 1 on a fresh store); later calls read it back.
   * Returns it. Once a store's chain is keyed, appending without the key fails
   * with `audit_unavailable`, and so does a recorded first keyed seq past the end
   * of the log (records were deleted since).
   */
  useAuditChainKey(key: KeyObject): Promise<number>;
  /** The newest record's seq and hash (`seq` 0 when empty). */
  auditHead(): Promise<{ seq: number; hash: string }>;
  addAuditCheckpoint(checkpoint: AuditCheckpoint): Promise<void>;
  listAuditCheckpoints(): Promise<AuditCheckpoint[]>;

  /**
   * Writes a consistent copy of the whole store, as of one moment, to a new file
   * (mode 0600) while the store goes on serving: a backup, which a restore puts back.
   * The file is the caller's to remove; it lies beside the store's own data, where its
   * space was planned. Answers its path and the newest audit record it holds.
   */
  snapshot(): Promise<{ path: string; auditSeq: number }>;

  /** Flushes pending writes and closes. */
  close(): Promise<void>;
}
