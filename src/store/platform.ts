import type { AuditEntry } from "./types.js";

/**
 * The platform area of the Store (see docs/broker.md): orgs, spaces and apps with
 * their owners. Every change commits with its audit entry in one transaction.
 *
 * Errors: `conflict` for a name taken, a stale revision, or a parent that still has
 * children (an org with spaces, a space with apps); `not_found` for changing
 * something absent; `invalid_request` for a dangling reference (a space in an org
 * that does not exist, an owner that is not a user or group).
 */
export interface PlatformStore {
  createOrg(org: OrgRecord, audit: AuditEntry): Promise<void>;
  getOrg(name: string): Promise<OrgRecord | undefined>;
  listOrgs(): Promise<OrgRecord[]>;
  deleteOrg(name: string, audit: AuditEntry): Promise<void>;

  createSpace(space: SpaceRecord, audit: AuditEntry): Promise<void>;
  getSpace(org: string, name: string): Promise<SpaceRecord | undefined>;
  listSpaces(org: string): Promise<SpaceRecord[]>;
  deleteSpace(org: string, name: string, audit: AuditEntry): Promise<void>;

  createApp(app: AppRecord, audit: AuditEntry): Promise<void>;
  getApp(org: string, space: string, name: string): Promise<AppRecord | undefined>;
  getAppById(id: string): Promise<AppRecord | undefined>;
  listApps(org: string, space: string): Promise<AppRecord[]>;
  /** The apps any of these users or groups own, by name. */
  appsOwnedBy(userIds: readonly string[], groupIds: readonly string[]): Promise<AppRecord[]>;
  /** Replaces the owners; `app.revision` must be `expectedRevision + 1`. */
  updateApp(app: AppRecord, expectedRevision: number, audit: AuditEntry): Promise<void>;
  /**
   * Marks the app as being deleted, in the transaction that finds it has no live
   * instance (`conflict` if it has one; `not_found` if it is gone): from then on the
   * broker registers no instance of it. Marking it again is harmless; each mark is
   * audited (`audit`), in its transaction.
   */
  beginDeleteApp(id: string, at: string, audit: AuditEntry): Promise<void>;
  /**
   * Deletes the app, its owners, its secrets (every version) and its grants;
   * `conflict` while it has a live instance.
   */
  deleteApp(id: string, audit: AuditEntry): Promise<void>;
}

export interface OrgRecord {
  readonly name: string;
  readonly createdAt: string;
}

export interface SpaceRecord {
  readonly org: string;
  readonly name: string;
  readonly createdAt: string;
}

export interface AppRecord {
  readonly id: string;
  readonly org: string;
  readonly space: string;
  readonly name: string;
  /** Its KMS key: `app.<org>.<space>.<app>`. */
  readonly keyName: string;
  /** Owner user ids and group ids. */
  readonly ownerUsers: readonly string[];
  readonly ownerGroups: readonly string[];
  readonly createdAt: string;
  readonly updatedAt: string;
  readonly revision: number;
}
