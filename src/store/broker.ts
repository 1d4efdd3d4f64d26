import type { AuditEntry, CertificateRecord } from "./types.js";

/** The broker area of the Store (see docs/broker.md). */

export type InstanceState = "registered" | "running" | "stopped";

/** A container instance. Its id is unique forever: a stopped id is never reused. */
export interface InstanceRecord {
  readonly id: string;
  readonly org: string;
  readonly space: string;
  readonly app: string;
  /** The platform's id of the app, so a renamed or recreated app is not mistaken for it. */
  readonly appId: string;
  readonly state: InstanceState;
  readonly leaseExpiresAt: string;
  /** The principal that registered it (the platform agent). */
  readonly registeredBy: string;
  readonly createdAt: string;
  readonly updatedAt: string;
  readonly stoppedAt: string | null;
  /** `deregistered` or `lease-lapsed`. */
  readonly stopReason: string | null;
  readonly revision: number;
}

/** Which instances to list: by the names they were registered under, in id order. */
export interface InstanceListQuery {
  readonly org?: string;
  /** Only with `org`. */
  readonly space?: string;
  /** Only with `space`. */
  readonly app?: string;
  /** `live`: registered or running. */
  readonly state?: InstanceState | "live";
  /** Only ids after this one. */
  readonly after?: string;
  readonly limit: number;
}

export type BootstrapTokenState = "unused" | "used" | "void";

/** A one-time bootstrap token: only the SHA-256 of the token string is kept. */
export interface BootstrapTokenRecord {
  readonly id: string;
  readonly instanceId: string;
  /** SHA-256 (hex) of the whole token string. */
  readonly hash: string;
  readonly createdAt: string;
  readonly expiresAt: string;
  readonly state: BootstrapTokenState;
  readonly usedAt: string | null;
}

/** A JWT issued to an instance (never the token itself): its id, for the deny-list. */
export interface JwtRecord {
  readonly jti: string;
  readonly instanceId: string;
  readonly issuedAt: string;
  readonly expiresAt: string;
  /** Set when the instance stopped: the JWT is refused until it expires. */
  readonly deniedAt: string | null;
}

/** An identity certificate of an instance, with its PKI record's status. */
export interface InstanceCertificate {
  readonly serial: string;
  readonly instanceId: string;
  readonly notAfter: string;
  readonly status: "valid" | "revoked";
}

/** Credentials issued in one step (an exchange or a renewal), committed with their audit records. */
export interface IssuedCredentials {
  readonly instanceId: string;
  readonly certificate: CertificateRecord | null;
  readonly jwt: JwtRecord;
  /** The broker's record and, with a certificate, the PKI's issuance record. */
  readonly audits: readonly AuditEntry[];
}

export interface BrokerStore {
  /**
   * `conflict` if the id was ever used or the app is being deleted; `not_found` if
   * the app (`instance.appId`) is gone.
   */
  register(instance: InstanceRecord, token: BootstrapTokenRecord, audit: AuditEntry): Promise<void>;
  getInstance(id: string): Promise<InstanceRecord | undefined>;
  getToken(id: string): Promise<BootstrapTokenRecord | undefined>;
  /** The bootstrap token made when the instance was registered. */
  tokenOfInstance(instanceId: string): Promise<BootstrapTokenRecord | undefined>;
  /**
   * An exchange: the token becomes used (`conflict` "replay" if it is no longer
   * unused), the instance running (`conflict` unless it was registered), the
   * certificate and JWT are recorded, all with the audit record, atomically.
   */
  exchange(tokenId: string, at: string, credentials: IssuedCredentials): Promise<void>;
  /** A renewal or refresh: `conflict` unless the instance is running. */
  issue(credentials: IssuedCredentials): Promise<void>;
  /** Moves the lease (`conflict` unless the instance is live and at `expectedRevision`). */
  extendLease(
    id: string,
    expectedRevision: number,
    leaseExpiresAt: string,
    at: string,
    audit: AuditEntry,
  ): Promise<void>;
  /**
   * Stops the instance: state stopped, unused token void, live JWT ids deny-listed.
   * Returns the serials of its certificates still valid at `at` (for the caller to
   * revoke). `conflict` if already stopped.
   */
  stop(id: string, at: string, reason: string, audit: AuditEntry): Promise<string[]>;
  listInstances(query: InstanceListQuery): Promise<InstanceRecord[]>;
  /** Live instances whose lease ended at `now`. */
  listLapsed(now: string): Promise<InstanceRecord[]>;
  /** How many of an app's instances are in each state. */
  instanceCounts(appId: string): Promise<Record<string, number>>;
  /** Stopped instances that still have unexpired certificates not revoked (a stop interrupted half-way). */
  listUnrevoked(now: string): Promise<{ instanceId: string; serial: string }[]>;
  /** The instance a certificate was issued to, and the certificate's status. */
  certificate(serial: string): Promise<InstanceCertificate | undefined>;
  certificates(instanceId: string): Promise<InstanceCertificate[]>;
  getJwt(jti: string): Promise<JwtRecord | undefined>;
  /** JWTs issued to the instance that have not expired at `now`. */
  liveJwts(instanceId: string, now: string): Promise<JwtRecord[]>;
  /** Forgets deny-listed JWT ids past their expiry; returns how many. */
  pruneJwts(now: string): Promise<number>;
  /** Appends an audit record on its own (a refusal, a read). */
  record(audit: AuditEntry): Promise<void>;
}
