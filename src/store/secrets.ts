import type { AuditEntry } from "./types.js";

/**
 * The secrets area of the Store (see docs/broker.md): versioned secrets, only ever
 * as ciphertext, and grants of shared secrets to apps. Every change commits with
 * its audit entry in one transaction; concurrent writers are ordered by the
 * secret's `revision` (a stale one is `conflict`).
 */
export interface SecretStore {
  /** The secret's metadata and every version's state (no ciphertext). */
  getSecret(path: string): Promise<SecretRecord | undefined>;
  /** One version with its ciphertext (null once destroyed). */
  getSecretVersion(path: string, version: number): Promise<SecretVersionRecord | undefined>;
  /**
   * The names directly under `prefix` (which ends with `/`): the next segment of
   * every path that starts with it, with a `/` after it when more segments follow
   * (a folder), each once, in order; at most `limit` of them, those after `after`
   * (a name as listed). However many secrets a folder holds, it costs one step.
   */
  listSecretNames(prefix: string, limit: number, after?: string): Promise<string[]>;
  /**
   * The newest version that is neither deleted nor destroyed of every secret of
   * the app and of every shared secret granted to it, with its ciphertext.
   */
  liveVersionsForApp(appId: string): Promise<SecretVersionRecord[]>;
  /** Applies one change to one secret (creating it when `expectedRevision` is null). */
  changeSecret(change: SecretChange, audit: AuditEntry): Promise<void>;
  /** Removes the secret and all its versions; `conflict` on a stale revision. */
  deleteSecret(path: string, expectedRevision: number, audit: AuditEntry): Promise<void>;

  /**
   * Grants a shared secret or a `shared/<folder>/` prefix to apps; an existing grant is
   * kept as it was. Resolves with the grants as stored, in the order given.
   */
  putGrants(grants: readonly SecretGrantRecord[], audit: AuditEntry): Promise<SecretGrantRecord[]>;
  listGrants(): Promise<SecretGrantRecord[]>;
  /** Whether some grant to the app covers the shared path. */
  isGranted(appId: string, path: string): Promise<boolean>;
}

export interface SecretRecord {
  /** The whole path: `<org>/<space>/<app>/<name>` or `shared/<name>`. */
  readonly path: string;
  /** The owning app's id; null for shared secrets. */
  readonly appId: string | null;
  /** The highest version ever written (0 before the first). */
  readonly currentVersion: number;
  readonly maxVersions: number;
  readonly casRequired: boolean;
  readonly customMetadata: Readonly<Record<string, string>>;
  readonly createdAt: string;
  readonly updatedAt: string;
  readonly revision: number;
  /** Versions still recorded (oldest first); without ciphertext. */
  readonly versions: readonly SecretVersionInfo[];
}

export interface SecretVersionInfo {
  readonly version: number;
  readonly createdAt: string;
  readonly deletedAt: string | null;
  readonly destroyedAt: string | null;
}

export interface SecretVersionRecord extends SecretVersionInfo {
  readonly path: string;
  /** KMS ciphertext of the value; null once destroyed. */
  readonly ciphertext: string | null;
}

/** What a change to one secret does, checked against the revision it was computed from. */
export interface SecretChange {
  /** The new metadata (versions are not read from it); `revision` = `expectedRevision + 1`, or 1 on creation. */
  readonly secret: Omit<SecretRecord, "versions">;
  readonly expectedRevision: number | null;
  readonly addVersion?: SecretVersionRecord;
  /** Soft deletes (at the time given) and undeletes. */
  readonly deleteVersions?: { readonly versions: readonly number[]; readonly at: string };
  readonly undeleteVersions?: readonly number[];
  /** Versions whose ciphertext is erased for good. */
  readonly destroyVersions?: { readonly versions: readonly number[]; readonly at: string };
  /** Versions whose records go entirely (beyond maxVersions): ciphertext and all. */
  readonly pruneVersions?: readonly number[];
}

export interface SecretGrantRecord {
  /** A shared secret path (`shared/x`) or a folder prefix ending in `/` (`shared/certs/`). */
  readonly target: string;
  readonly appId: string;
  readonly grantedBy: string;
  readonly createdAt: string;
}
