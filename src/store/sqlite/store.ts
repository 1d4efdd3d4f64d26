import type { KeyObject } from "node:crypto";
import type Database from "better-sqlite3";
import { CustosError } from "../../errors/index.js";
import type { Logger } from "../../log/index.js";
import { type AuditChainKey, auditRecordHash, canonicalJson, GENESIS_HASH } from "../audit-chain.js";
import type {
  AuditCheckpoint,
  AuditEntry,
  AuditQuery,
  AuditRecord,
  CaRecord,
  CertificateQuery,
  CertificateRecord,
  ConsumerAgentRecord,
  ConsumerChange,
  ConsumerGenerationRecord,
  ConsumerRecord,
  CrlChange,
  GroupRecord,
  InitialState,
  KeyChange,
  KeyListQuery,
  KeyRecord,
  KeyVersionRecord,
  PolicyRecord,
  RoleRecord,
  Store,
  StoredAuditRecord,
  SudoGrantRecord,
  TokenRecord,
  UserRecord,
} from "../types.js";
import type { Area, Sql } from "./area.js";
import { brokerStore } from "./broker.js";
import { MAX_BUSY_TIMEOUT_MS, openDatabase } from "./connection.js";
import { toStoreError, unavailable } from "./errors.js";
import * as pki from "./pki.js";
import { platformStore } from "./platform.js";
import { ReadCache } from "./read-cache.js";
import {
  type AuditRow,
  auditFromRow,
  type CheckpointRow,
  checkpointFromRow,
  type GroupRow,
  groupFromRow,
  type KeyRow,
  type KeyVersionRow,
  keyFromRow,
  keyParams,
  keyVersionFromRow,
  keyVersionParams,
  type PolicyRow,
  policyFromRow,
  policyParams,
  type SudoGrantRow,
  storedAuditFromRow,
  sudoGrantFromRow,
  sudoGrantParams,
  type TokenRow,
  tokenFromRow,
  tokenParams,
  type UserRow,
  userFromRow,
  userParams,
} from "./rows.js";
import { secretStore } from "./secrets.js";
import { lockForServer, type ServerLock } from "./server-lock.js";
import { copyDatabase, removeStaleCopies } from "./snapshot.js";
import { sshStore } from "./ssh.js";
import { WriteQueue } from "./write-queue.js";

export interface SqliteStoreOptions {
  /** A write not durable within this many milliseconds rejects with `store_unavailable`. Default 5000. */
  readonly writeTimeoutMs?: number | undefined;
  /** Where batch failures are reported (never with record contents). */
  readonly logger?: Logger | undefined;
  /** Hold the database for this process alone, as a server must (`lockForServer`); refused if another does. */
  readonly exclusive?: boolean | undefined;
}

/** Page size of `listAudit` when the query names none, and the most it will return at once. */
export const AUDIT_DEFAULT_LIMIT = 1000;
export const AUDIT_MAX_LIMIT = 10_000;

interface ChainHead {
  seq: number;
  hash: string;
}

const GROUP_COLUMNS = `g.id, g.name, g.policies, g.created_at, g.updated_at, g.revision,
  (SELECT json_group_array(m.user_id ORDER BY m.position) FROM group_members m WHERE m.group_id = g.id) AS members`;

const INITIALIZED = "initialized_at";
/** The store meta row holding the first seq of the keyed audit chain (see `useAuditChainKey`). */
const CHAIN_KEYED_FROM = "audit_chain_keyed_from";

/** How many keys (and, separately, key versions) the read cache holds: the working set of a busy server. */
const KEY_CACHE_LIMIT = 10_000;

/**
 * The embedded `Store`: SQLite in WAL mode. Writes are group-committed and each
 * batch's WAL is fsynced before it is acknowledged, off the main thread (see
 * `WriteQueue`); reads run on the same connection between batches, so they see
 * only committed state, and answer once it is durable. The audit chain head is kept in
 * memory, loaded at open, and follows every savepoint and transaction outcome.
 */
export class SqliteStore implements Store {
  readonly #db: Database.Database;
  readonly #lock: ServerLock | undefined;
  readonly #queue: WriteQueue<ChainHead>;
  readonly #statements = new Map<string, Database.Statement>();
  /** Keys by name and key versions by `<key id>/<version>`: cleared by every write to either table. */
  readonly #keys = new ReadCache<KeyRecord>(KEY_CACHE_LIMIT);
  readonly #keyVersions = new ReadCache<KeyVersionRecord>(KEY_CACHE_LIMIT);
  /** Statement helpers lent to the per-area SQL modules. */
  readonly #sql: Sql = {
    get: (sql, ...params) => this.#get(sql, ...params),
    all: (sql, ...params) => this.#all(sql, ...params),
    run: (sql, ...params) => this.#run(sql, ...params),
  };
  /** How the per-area modules read and write (see area.ts). */
  readonly #area: Area = {
    read: (fn) => this.#read(() => fn(this.#sql)),
    write: (fn) => this.#write(() => fn(this.#sql, (entry) => this.#appendAuditRow(entry))),
  };
  readonly platform = platformStore(this.#area);
  readonly secrets = secretStore(this.#area);
  readonly broker = brokerStore(this.#area);
  readonly ssh = sshStore(this.#area);
  #head: ChainHead = { seq: 0, hash: GENESIS_HASH };
  #headStale = true;
  /** Told the audit head after each committed write (see `watchAuditHead`). */
  readonly #auditWatchers = new Set<(headSeq: number) => void>();
  /** The first keyed seq as recorded in store meta (read with the head); undefined while the chain is unkeyed. */
  #keyedFrom: number | undefined;
  /** Set by `useAuditChainKey`; held in memory only. */
  #chainKey: KeyObject | undefined;
  #closed = false;
  #closing: Promise<void> | undefined;

  private constructor(
    db: Database.Database,
    options: SqliteStoreOptions,
    walPath: string | null,
    lock: ServerLock | undefined,
  ) {
    this.#db = db;
    this.#lock = lock;
    this.#loadHead();
    // `initialize` writes the init record with the initialised mark, so an initialised
    // store with no records had its log deleted: a new chain over it would verify.
    if (this.#head.seq < 1 && this.#get("SELECT 1 FROM store_meta WHERE name = ?", INITIALIZED) !== undefined) {
      throw new CustosError(
        "audit_unavailable",
        "the store is initialised but its audit log is empty (its records were deleted): " +
          "refusing to start a new audit chain over it; restore the database from a backup",
      );
    }
    this.#queue = new WriteQueue<ChainHead>(
      db,
      {
        save: () => ({ ...this.#head }),
        restore: (saved) => {
          this.#head = saved;
        },
        reload: () => {
          this.#headStale = true;
          this.#loadHead();
        },
      },
      { timeoutMs: options.writeTimeoutMs ?? 5000, logger: options.logger, walPath },
    );
  }

  /**
   * Opens (creating and migrating as needed) the database at `path`; the file and
   * its WAL are mode 0600. `store_unavailable` if it can't be opened;
   * `audit_unavailable` if it is initialised but its audit log is empty.
   */
  static async open(path: string, options: SqliteStoreOptions = {}): Promise<SqliteStore> {
    const timeout = options.writeTimeoutMs ?? 5000;
    if (!Number.isFinite(timeout) || timeout <= 0) {
      throw new CustosError("invalid_request", "writeTimeoutMs must be a positive number");
    }
    const lock = options.exclusive && path !== ":memory:" ? lockForServer(path) : undefined;
    // A copy left by a backup that a crash cut short; only the server that holds the lock makes them.
    if (lock !== undefined) removeStaleCopies(path);
    let db: Database.Database;
    try {
      db = openDatabase(path, Math.min(MAX_BUSY_TIMEOUT_MS, timeout));
    } catch (e) {
      lock?.release();
      throw e;
    }
    try {
      return new SqliteStore(db, options, path === ":memory:" ? null : `${path}-wal`, lock);
    } catch (e) {
      db.close();
      lock?.release();
      throw toStoreError(e);
    }
  }

  // ---- plumbing -------------------------------------------------------------

  #stmt(sql: string): Database.Statement {
    let s = this.#statements.get(sql);
    if (s === undefined) {
      s = this.#db.prepare(sql);
      this.#statements.set(sql, s);
    }
    return s;
  }

  #get<R>(sql: string, ...params: unknown[]): R | undefined {
    return this.#stmt(sql).get(...params) as R | undefined;
  }

  #all<R>(sql: string, ...params: unknown[]): R[] {
    return this.#stmt(sql).all(...params) as R[];
  }

  #run(sql: string, ...params: unknown[]): Database.RunResult {
    return this.#stmt(sql).run(...params);
  }

  async #read<T>(fn: () => T): Promise<T> {
    if (this.#closed) throw unavailable(undefined, "the store is closed");
    let value: T;
    try {
      value = fn();
    } catch (e) {
      throw toStoreError(e);
    }
    // What was read may include a commit whose WAL sync is still running: answer once it is durable.
    await this.#queue.whenDurable();
    return value;
  }

  #write<T>(op: () => T): Promise<T> {
    const written = this.#queue.submit(op);
    if (this.#auditWatchers.size === 0) return written;
    return written.then((value) => {
      for (const watcher of this.#auditWatchers) watcher(this.#head.seq);
      return value;
    });
  }

  watchAuditHead(watcher: (headSeq: number) => void): () => void {
    this.#auditWatchers.add(watcher);
    return () => this.#auditWatchers.delete(watcher);
  }

  #loadHead(): void {
    const row = this.#get<{ seq: number; hash: string }>("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1");
    this.#head = row ?? { seq: 0, hash: GENESIS_HASH };
    // Once this process holds the key, the first keyed seq it checked stands: editing the row can't unkey records.
    if (this.#chainKey === undefined) {
      const row = this.#get<{ value: string }>("SELECT value FROM store_meta WHERE name = ?", CHAIN_KEYED_FROM);
      this.#keyedFrom = row === undefined ? undefined : Number(row.value);
    }
    this.#headStale = false;
  }

  /** How the next record is hashed: keyed once the chain is, plain SHA-256 before. */
  #chain(): AuditChainKey | undefined {
    if (this.#keyedFrom === undefined) return undefined;
    if (this.#chainKey === undefined) {
      throw new CustosError("audit_unavailable", "the audit chain is keyed, but the store was not given its key");
    }
    return { key: this.#chainKey, keyedFrom: this.#keyedFrom };
  }

  /** Appends `entry` at the head of the chain; runs inside an operation's savepoint. */
  #appendAuditRow(entry: AuditEntry): AuditRecord {
    if (this.#headStale) this.#loadHead();
    const details = normaliseDetails(entry.details);
    // The column's text, computed once: the hash covers exactly these bytes.
    const detailsJson = canonicalJson(details);
    const seq = this.#head.seq + 1;
    const prevHash = this.#head.hash;
    const normalised: AuditEntry = { ...pickEntry(entry), details };
    const hash = auditRecordHash(seq, prevHash, normalised, detailsJson, this.#chain());
    this.#run(
      `INSERT INTO audit_log (seq, time, request_id, principal, source, action, resource, outcome, error_code, details, prev_hash, hash)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
      seq,
      normalised.time,
      normalised.requestId,
      normalised.principal,
      normalised.source,
      normalised.action,
      normalised.resource,
      normalised.outcome,
      normalised.errorCode,
      detailsJson,
      prevHash,
      hash,
    );
    this.#head = { seq, hash };
    return { ...normalised, seq, prevHash, hash };
  }

  #revisionOf(table: "keys" | "users" | "groups" | "policies", column: "id" | "name", value: string): number {
    const row = this.#get<{ revision: number }>(`SELECT revision FROM ${table} WHERE ${column} = ?`, value);
    if (row === undefined) throw new CustosError("not_found", `${singular(table)} not found`);
    return row.revision;
  }

  #checkRevision(
    table: "keys" | "users" | "groups" | "policies",
    column: "id" | "name",
    value: string,
    expected: number,
  ): void {
    const current = this.#revisionOf(table, column, value);
    if (current !== expected) {
      throw new CustosError(
        "conflict",
        `${singular(table)} was changed by another writer (revision ${current}, expected ${expected})`,
      );
    }
  }

  #setMembers(groupId: string, members: readonly string[]): void {
    if (new Set(members).size !== members.length) {
      throw new CustosError("invalid_request", "a group lists the same member twice");
    }
    this.#run("DELETE FROM group_members WHERE group_id = ?", groupId);
    members.forEach((userId, position) => {
      this.#run("INSERT INTO group_members (group_id, user_id, position) VALUES (?, ?, ?)", groupId, userId, position);
    });
  }

  // ---- initialisation and settings -------------------------------------------

  isInitialized(): Promise<boolean> {
    return this.#read(() => this.#get("SELECT 1 FROM store_meta WHERE name = ?", INITIALIZED) !== undefined);
  }

  initialize(state: InitialState, audit: AuditEntry): Promise<void> {
    return this.#write(() => {
      if (this.#get("SELECT 1 FROM store_meta WHERE name = ?", INITIALIZED) !== undefined) {
        throw new CustosError("conflict", "the store is already initialised");
      }
      for (const [name, value] of Object.entries(state.settings)) this.#upsertSetting(name, value);
      for (const policy of state.policies) this.#insertPolicy(policy);
      this.#insertUser(state.admin);
      this.#insertToken(state.adminToken);
      this.#run("INSERT INTO store_meta (name, value) VALUES (?, ?)", INITIALIZED, audit.time);
      this.#appendAuditRow(audit);
    });
  }

  getSetting(name: string): Promise<string | undefined> {
    return this.#read(() => this.#get<{ value: string }>("SELECT value FROM settings WHERE name = ?", name)?.value);
  }

  putSetting(name: string, value: string, audit: AuditEntry): Promise<void> {
    return this.#write(() => {
      this.#upsertSetting(name, value);
      this.#appendAuditRow(audit);
    });
  }

  #upsertSetting(name: string, value: string): void {
    this.#run(
      "INSERT INTO settings (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = excluded.value",
      name,
      value,
    );
  }

  // ---- keys -------------------------------------------------------------------

  createKey(key: KeyRecord, firstVersion: KeyVersionRecord, audit: AuditEntry): Promise<void> {
    return this.#write(() => {
      this.#forgetKeys();
      if (firstVersion.keyId !== key.id) {
        throw new CustosError("invalid_request", "the first version belongs to another key");
      }
      this.#insertKey(key);
      this.#insertKeyVersion(firstVersion);
      this.#appendAuditRow(audit);
    });
  }

  #insertKey(key: KeyRecord): void {
    this.#run(
      `INSERT INTO keys (id, name, purpose, algorithm, state, description, created_at, updated_at, revision,
         latest_version, min_decryption_version, rotation_period_seconds, next_rotation_at, destroy_at)
       VALUES (:id, :name, :purpose, :algorithm, :state, :description, :created_at, :updated_at, :revision,
         :latest_version, :min_decryption_version, :rotation_period_seconds, :next_rotation_at, :destroy_at)`,
      keyParams(key),
    );
  }

  #insertKeyVersion(version: KeyVersionRecord): void {
    this.#run(
      `INSERT INTO key_versions (key_id, version, state, created_at, wrapped_key, hsm_label, hsm_id, public_key)
       VALUES (:key_id, :version, :state, :created_at, :wrapped_key, :hsm_label, :hsm_id, :public_key)`,
      keyVersionParams(version),
    );
  }

  /** Every write to `keys` or `key_versions` calls this inside its transaction (see ReadCache). */
  #forgetKeys(): void {
    this.#keys.clear();
    this.#keyVersions.clear();
  }

  getKey(name: string): Promise<KeyRecord | undefined> {
    return this.#read(() => {
      const cached = this.#keys.get(name);
      if (cached !== undefined) return cached;
      const row = this.#get<KeyRow>("SELECT * FROM keys WHERE name = ?", name);
      return row === undefined ? undefined : this.#keys.set(name, keyFromRow(row));
    });
  }

  listKeys(query: KeyListQuery = {}): Promise<KeyRecord[]> {
    return this.#read(() => {
      const prefix = query.prefix ?? "";
      const after = query.after ?? null;
      const limit = query.limit === undefined ? -1 : checkLimit(query.limit, Number.MAX_SAFE_INTEGER);
      // substr() instead of LIKE: key names may contain % and _.
      return this.#all<KeyRow>(
        `SELECT * FROM keys
         WHERE substr(name, 1, length(:prefix)) = :prefix AND (:after IS NULL OR name > :after)
         ORDER BY name LIMIT :limit`,
        { prefix, after, limit },
      ).map(keyFromRow);
    });
  }

  listKeyVersions(keyId: string): Promise<KeyVersionRecord[]> {
    return this.#read(() =>
      this.#all<KeyVersionRow>("SELECT * FROM key_versions WHERE key_id = ? ORDER BY version", keyId).map(
        keyVersionFromRow,
      ),
    );
  }

  getKeyVersion(keyId: string, version: number): Promise<KeyVersionRecord | undefined> {
    return this.#read(() => {
      const id = `${keyId}/${version}`;
      const cached = this.#keyVersions.get(id);
      if (cached !== undefined) return cached;
      const row = this.#get<KeyVersionRow>(
        "SELECT * FROM key_versions WHERE key_id = ? AND version = ?",
        keyId,
        version,
      );
      return row === undefined ? undefined : this.#keyVersions.set(id, keyVersionFromRow(row));
    });
  }

  updateKey(change: KeyChange, audit: AuditEntry): Promise<void> {
    return this.#write(() => {
      this.#forgetKeys();
      const { key, expectedRevision } = change;
      this.#checkRevision("keys", "id", key.id, expectedRevision);
      if (key.revision !== expectedRevision + 1) {
        throw new CustosError("invalid_request", "the new key record's revision must be expectedRevision + 1");
      }
      this.#run(
        `UPDATE keys SET name = :name, purpose = :purpose, algorithm = :algorithm, state = :state,
           description = :description, created_at = :created_at, updated_at = :updated_at, revision = :revision,
           latest_version = :latest_version, min_decryption_version = :min_decryption_version,
           rotation_period_seconds = :rotation_period_seconds, next_rotation_at = :next_rotation_at,
           destroy_at = :destroy_at
         WHERE id = :id`,
        keyParams(key),
      );
      if (change.addVersion !== undefined) {
        if (change.addVersion.keyId !== key.id) {
          throw new CustosError("invalid_request", "the added version belongs to another key");
        }
        this.#insertKeyVersion(change.addVersion);
      }
      for (const version of change.destroyVersions ?? []) {
        const result = this.#run(
          "UPDATE key_versions SET state = 'destroyed', wrapped_key = NULL WHERE key_id = ? AND version = ?",
          key.id,
          version,
        );
        if (result.changes === 0) throw new CustosError("not_found", `key version ${version} not found`);
      }
      this.#appendAuditRow(audit);
    });
  }

  listKeysDue(now: string): Promise<KeyRecord[]> {
    return this.#read(() =>
      this.#all<KeyRow>(
        `SELECT * FROM keys
         WHERE (next_rotation_at IS NOT NULL AND next_rotation_at <= :now)
            OR (destroy_at IS NOT NULL AND destroy_at <= :now)
         ORDER BY name`,
        { now },
      ).map(keyFromRow),
    );
  }

  // ---- users ------------------------------------------------------------------

  createUser(user: UserRecord, audit: AuditEntry): Promise<void> {
    return this.#write(() => {
      this.#insertUser(user);
      this.#appendAuditRow(audit);
    });
  }

  #insertUser(user: UserRecord): void {
    this.#run(
      `INSERT INTO users (id, name, password_hash, policies, disabled, created_at, updated_at, revision)
       VALUES (:id, :name, :password_hash, :policies, :disabled, :created_at, :updated_at, :revision)`,
      userParams(user),
    );
  }

  getUser(id: string): Promise<UserRecord | undefined> {
    return this.#read(() => {
      const row = this.#get<UserRow>("SELECT * FROM users WHERE id = ?", id);
      return row === undefined ? undefined : userFromRow(row);
    });
  }

  getUserByName(name: string): Promise<UserRecord | undefined> {
    return this.#read(() => {
      const row = this.#get<UserRow>("SELECT * FROM users WHERE name = ?", name);
      return row === undefined ? undefined : userFromRow(row);
    });
  }

  listUsers(): Promise<UserRecord[]> {
    return this.#read(() => this.#all<UserRow>("SELECT * FROM users ORDER BY name").map(userFromRow));
  }

  /** Stores `user` with revision `expectedRevision + 1`, whatever revision the record carries. */
  updateUser(
    user: UserRecord,
    expectedRevision: number,
    audit: AuditEntry,
    options: { endSessions?: boolean } = {},
  ): Promise<void> {
    return this.#write(() => {
      this.#checkRevision("users", "id", user.id, expectedRevision);
      if (options.endSessions) {
        this.#run(
          "UPDATE tokens SET revoked_at = ? WHERE user_id = ? AND kind = 'session' AND revoked_at IS NULL",
          audit.time,
          user.id,
        );
      }
      this.#run(
        `UPDATE users SET name = :name, password_hash = :password_hash, policies = :policies, disabled = :disabled,
           created_at = :created_at, updated_at = :updated_at, revision = :revision
         WHERE id = :id`,
        userParams(user, expectedRevision + 1),
      );
      this.#appendAuditRow(audit);
    });
  }

  /**
   * Revokes the user's live tokens and the standalone tokens they made with a login
   * session, and the tokens those made (at the audit entry's time; the audit record's
   * `revokedWith` names all but the user's own), and bumps the revision of groups they leave.
   */
  deleteUser(id: string, audit: AuditEntry): Promise<void> {
    return this.#write(() => {
      this.#revisionOf("users", "id", id);
      const revoked = this.#all<{ id: string }>(
        "UPDATE tokens SET revoked_at = ? WHERE user_id = ? AND revoked_at IS NULL RETURNING id",
        audit.time,
        id,
      );
      const madeByThem = this.#revokeDescendants(
        revoked.map((r) => r.id),
        audit.time,
        id,
      );
      this.#run(
        `UPDATE groups SET revision = revision + 1, updated_at = ?
         WHERE id IN (SELECT group_id FROM group_members WHERE user_id = ?)`,
        audit.time,
        id,
      );
      this.#run("DELETE FROM users WHERE id = ?", id);
      this.#appendAuditRow(withRevokedTokens(audit, madeByThem));
    });
  }

  // ---- groups -----------------------------------------------------------------

  createGroup(group: GroupRecord, audit: AuditEntry): Promise<void> {
    return this.#write(() => {
      this.#run(
        `INSERT INTO groups (id, name, policies, created_at, updated_at, revision)
         VALUES (?, ?, ?, ?, ?, ?)`,
        group.id,
        group.name,
        JSON.stringify(group.policies),
        group.createdAt,
        group.updatedAt,
        group.revision,
      );
      this.#setMembers(group.id, group.members);
      this.#appendAuditRow(audit);
    });
  }

  getGroupByName(name: string): Promise<GroupRecord | undefined> {
    return this.#read(() => {
      const row = this.#get<GroupRow>(`SELECT ${GROUP_COLUMNS} FROM groups g WHERE g.name = ?`, name);
      return row === undefined ? undefined : groupFromRow(row);
    });
  }

  listGroups(): Promise<GroupRecord[]> {
    return this.#read(() =>
      this.#all<GroupRow>(`SELECT ${GROUP_COLUMNS} FROM groups g ORDER BY g.name`).map(groupFromRow),
    );
  }

  groupsOfUser(userId: string): Promise<GroupRecord[]> {
    return this.#read(() =>
      this.#all<GroupRow>(
        `SELECT ${GROUP_COLUMNS} FROM groups g
         WHERE g.id IN (SELECT group_id FROM group_members WHERE user_id = ?) ORDER BY g.name`,
        userId,
      ).map(groupFromRow),
    );
  }

  /** Stores `group` (members replaced) with revision `expectedRevision + 1`. */
  updateGroup(group: GroupRecord, expectedRevision: number, audit: AuditEntry): Promise<void> {
    return this.#write(() => {
      this.#checkRevision("groups", "id", group.id, expectedRevision);
      this.#run(
        "UPDATE groups SET name = ?, policies = ?, created_at = ?, updated_at = ?, revision = ? WHERE id = ?",
        group.name,
        JSON.stringify(group.policies),
        group.createdAt,
        group.updatedAt,
        expectedRevision + 1,
        group.id,
      );
      this.#setMembers(group.id, group.members);
      this.#appendAuditRow(audit);
    });
  }

  deleteGroup(id: string, audit: AuditEntry): Promise<void> {
    return this.#write(() => {
      this.#revisionOf("groups", "id", id);
      this.#run("DELETE FROM groups WHERE id = ?", id);
      this.#appendAuditRow(audit);
    });
  }

  // ---- tokens -----------------------------------------------------------------

  /**
   * `unauthenticated` if the token's parent was revoked, or its maker deleted, before
   * this write: the token would outlive them.
   */
  createToken(token: TokenRecord, audit: AuditEntry): Promise<void> {
    return this.#write(() => {
      if (token.parentId !== null) {
        const parent = this.#get<{ revoked_at: string | null }>(
          "SELECT revoked_at FROM tokens WHERE id = ?",
          token.parentId,
        );
        if (parent?.revoked_at !== null) throw new CustosError("unauthenticated", "invalid or expired token");
      }
      if (
        token.makerUserId !== null &&
        this.#get("SELECT 1 FROM users WHERE id = ?", token.makerUserId) === undefined
      ) {
        // Its maker was deleted before this write: deletion would have revoked it.
        throw new CustosError("unauthenticated", "invalid or expired token");
      }
      this.#insertToken(token);
      this.#appendAuditRow(audit);
    });
  }

  #insertToken(token: TokenRecord): void {
    this.#run(
      `INSERT INTO tokens (id, hash, kind, name, user_id, policies, created_at, expires_at, revoked_at, parent_id,
         maker_user_id, renew_ttl_seconds, max_expires_at)
       VALUES (:id, :hash, :kind, :name, :user_id, :policies, :created_at, :expires_at, :revoked_at, :parent_id,
         :maker_user_id, :renew_ttl_seconds, :max_expires_at)`,
      tokenParams(token),
    );
  }

  getToken(id: string): Promise<TokenRecord | undefined> {
    return this.#read(() => {
      const row = this.#get<TokenRow>("SELECT * FROM tokens WHERE id = ?", id);
      return row === undefined ? undefined : tokenFromRow(row);
    });
  }

  getTokenByHash(hash: string): Promise<TokenRecord | undefined> {
    return this.#read(() => {
      const row = this.#get<TokenRow>("SELECT * FROM tokens WHERE hash = ?", hash);
      return row === undefined ? undefined : tokenFromRow(row);
    });
  }

  listTokens(userId?: string): Promise<TokenRecord[]> {
    return this.#read(() =>
      (userId === undefined
        ? this.#all<TokenRow>("SELECT * FROM tokens ORDER BY created_at, id")
        : this.#all<TokenRow>("SELECT * FROM tokens WHERE user_id = ? ORDER BY created_at, id", userId)
      ).map(tokenFromRow),
    );
  }

  listTokensMadeBy(parentId: string): Promise<TokenRecord[]> {
    return this.#read(() =>
      this.#all<TokenRow>("SELECT * FROM tokens WHERE parent_id = ? ORDER BY created_at, id", parentId).map(
        tokenFromRow,
      ),
    );
  }

  listTokensMadeByUser(userId: string): Promise<TokenRecord[]> {
    return this.#read(() =>
      this.#all<TokenRow>("SELECT * FROM tokens WHERE maker_user_id = ? ORDER BY created_at, id", userId).map(
        tokenFromRow,
      ),
    );
  }

  /** Idempotent: a token already revoked keeps its first revocation time. */
  revokeToken(id: string, at: string, audit: AuditEntry): Promise<string[]> {
    return this.#write(() => {
      const result = this.#run("UPDATE tokens SET revoked_at = COALESCE(revoked_at, ?) WHERE id = ?", at, id);
      if (result.changes === 0) throw new CustosError("not_found", "token not found");
      const revokedWith = this.#revokeDescendants([id], at);
      this.#appendAuditRow(withRevokedTokens(audit, revokedWith));
      return revokedWith;
    });
  }

  renewToken(id: string, expectedExpiresAt: string, expiresAt: string, audit: AuditEntry): Promise<void> {
    return this.#write(() => {
      const result = this.#run(
        "UPDATE tokens SET expires_at = ? WHERE id = ? AND revoked_at IS NULL AND expires_at = ?",
        expiresAt,
        id,
        expectedExpiresAt,
      );
      if (result.changes === 0) throw new CustosError("conflict", "the token was revoked or renewed meanwhile");
      this.#appendAuditRow(audit);
    });
  }

  /**
   * Revokes every live token made by `parents` (or, given `makerUserId`, with that
   * user's login sessions), and by those, at `at`; returns their ids, oldest first.
   * A child is always younger than its parent, so the walk ends.
   */
  #revokeDescendants(parents: readonly string[], at: string, makerUserId: string | null = null): string[] {
    if (parents.length === 0 && makerUserId === null) return [];
    const ids = this.#all<{ id: string }>(
      `WITH RECURSIVE made(id) AS (
         SELECT id FROM tokens WHERE parent_id IN (SELECT value FROM json_each(?)) OR maker_user_id = ?
         UNION SELECT tokens.id FROM tokens JOIN made ON tokens.parent_id = made.id)
       SELECT id FROM tokens WHERE id IN made AND revoked_at IS NULL ORDER BY created_at, id`,
      JSON.stringify(parents),
      makerUserId,
    ).map((r) => r.id);
    if (ids.length > 0) {
      this.#run(
        "UPDATE tokens SET revoked_at = ? WHERE id IN (SELECT value FROM json_each(?))",
        at,
        JSON.stringify(ids),
      );
    }
    return ids;
  }

  // ---- policies ---------------------------------------------------------------

  /** `expectedRevision` null creates (`conflict` if the name exists); otherwise stores revision `expectedRevision + 1`. */
  putPolicy(policy: PolicyRecord, expectedRevision: number | null, audit: AuditEntry): Promise<void> {
    return this.#write(() => {
      if (expectedRevision === null) {
        this.#insertPolicy(policy);
      } else {
        this.#checkRevision("policies", "name", policy.name, expectedRevision);
        this.#run(
          `UPDATE policies SET description = :description, rules = :rules, created_at = :created_at,
             updated_at = :updated_at, revision = :revision
           WHERE name = :name`,
          policyParams(policy, expectedRevision + 1),
        );
      }
      this.#appendAuditRow(audit);
    });
  }

  #insertPolicy(policy: PolicyRecord): void {
    this.#run(
      `INSERT INTO policies (name, description, rules, created_at, updated_at, revision)
       VALUES (:name, :description, :rules, :created_at, :updated_at, :revision)`,
      policyParams(policy),
    );
  }

  getPolicy(name: string): Promise<PolicyRecord | undefined> {
    return this.#read(() => {
      const row = this.#get<PolicyRow>("SELECT * FROM policies WHERE name = ?", name);
      return row === undefined ? undefined : policyFromRow(row);
    });
  }

  listPolicies(): Promise<PolicyRecord[]> {
    return this.#read(() => this.#all<PolicyRow>("SELECT * FROM policies ORDER BY name").map(policyFromRow));
  }

  deletePolicy(name: string, audit: AuditEntry): Promise<void> {
    return this.#write(() => {
      const result = this.#run("DELETE FROM policies WHERE name = ?", name);
      if (result.changes === 0) throw new CustosError("not_found", "policy not found");
      this.#appendAuditRow(audit);
    });
  }

  // ---- sudo grants --------------------------------------------------------------

  createSudoGrant(grant: SudoGrantRecord, audit: AuditEntry): Promise<void> {
    return this.#write(() => {
      this.#run(
        `INSERT INTO sudo_grants (id, subject_type, subject_id, policies, reason, granted_by, created_at, expires_at, revoked_at)
         VALUES (:id, :subject_type, :subject_id, :policies, :reason, :granted_by, :created_at, :expires_at, :revoked_at)`,
        sudoGrantParams(grant),
      );
      this.#appendAuditRow(audit);
    });
  }

  getSudoGrant(id: string): Promise<SudoGrantRecord | undefined> {
    return this.#read(() => {
      const row = this.#get<SudoGrantRow>("SELECT * FROM sudo_grants WHERE id = ?", id);
      return row === undefined ? undefined : sudoGrantFromRow(row);
    });
  }

  listSudoGrants(now?: string): Promise<SudoGrantRecord[]> {
    return this.#read(() =>
      (now === undefined
        ? this.#all<SudoGrantRow>("SELECT * FROM sudo_grants ORDER BY created_at, id")
        : this.#all<SudoGrantRow>(
            "SELECT * FROM sudo_grants WHERE revoked_at IS NULL AND expires_at > ? ORDER BY created_at, id",
            now,
          )
      ).map(sudoGrantFromRow),
    );
  }

  /** Idempotent: a grant already revoked keeps its first revocation time. */
  revokeSudoGrant(id: string, at: string, audit: AuditEntry): Promise<void> {
    return this.#write(() => {
      const result = this.#run("UPDATE sudo_grants SET revoked_at = COALESCE(revoked_at, ?) WHERE id = ?", at, id);
      if (result.changes === 0) throw new CustosError("not_found", "sudo grant not found");
      this.#appendAuditRow(audit);
    });
  }

  // ---- pki (statements in pki.ts) ---------------------------------------------

  listCas(): Promise<CaRecord[]> {
    return this.#read(() => pki.listCas(this.#sql));
  }

  getCa(id: string): Promise<CaRecord | undefined> {
    return this.#read(() => pki.getCa(this.#sql, id));
  }

  addCas(
    cas: readonly CaRecord[],
    retire: readonly { id: string; expectedRevision: number }[],
    settings: Readonly<Record<string, string>>,
    audit: AuditEntry,
  ): Promise<void> {
    return this.#write(() => {
      for (const r of retire) pki.retireCa(this.#sql, r.id, r.expectedRevision);
      for (const ca of cas) pki.insertCa(this.#sql, ca);
      for (const [name, value] of Object.entries(settings)) this.#upsertSetting(name, value);
      this.#appendAuditRow(audit);
    });
  }

  replaceCrl(change: CrlChange): Promise<void> {
    return this.#write(() => pki.replaceCrl(this.#sql, change));
  }

  createCertificate(certificate: CertificateRecord, audit: AuditEntry): Promise<void> {
    return this.#write(() => {
      pki.insertCertificate(this.#sql, certificate);
      this.#appendAuditRow(audit);
    });
  }

  getCertificate(serial: string): Promise<CertificateRecord | undefined> {
    return this.#read(() => pki.getCertificate(this.#sql, serial));
  }

  listCertificates(query: CertificateQuery = {}): Promise<CertificateRecord[]> {
    return this.#read(() => {
      const limit = query.limit === undefined ? AUDIT_DEFAULT_LIMIT : checkLimit(query.limit, AUDIT_MAX_LIMIT);
      return pki.listCertificates(this.#sql, query, limit);
    });
  }

  listRevoked(issuerId: string, notAfterSince: string): Promise<CertificateRecord[]> {
    return this.#read(() => pki.listRevoked(this.#sql, issuerId, notAfterSince));
  }

  revokeCertificate(
    serial: string,
    revokedAt: string,
    reason: string,
    crl: CrlChange,
    audit: AuditEntry,
  ): Promise<void> {
    return this.#write(() => {
      pki.revokeCertificate(this.#sql, serial, revokedAt, reason);
      pki.replaceCrl(this.#sql, crl);
      this.#appendAuditRow(audit);
    });
  }

  putRole(role: RoleRecord, expectedRevision: number | null, audit: AuditEntry): Promise<void> {
    return this.#write(() => {
      pki.putRole(this.#sql, role, expectedRevision);
      this.#appendAuditRow(audit);
    });
  }

  getRole(name: string): Promise<RoleRecord | undefined> {
    return this.#read(() => pki.getRole(this.#sql, name));
  }

  listRoles(): Promise<RoleRecord[]> {
    return this.#read(() => pki.listRoles(this.#sql));
  }

  deleteRole(name: string, audit: AuditEntry): Promise<void> {
    return this.#write(() => {
      pki.deleteRole(this.#sql, name);
      this.#appendAuditRow(audit);
    });
  }

  writeConsumer(change: ConsumerChange, audit: AuditEntry): Promise<void> {
    return this.#write(() => {
      pki.writeConsumer(this.#sql, change);
      this.#appendAuditRow(audit);
    });
  }

  getConsumer(name: string): Promise<ConsumerRecord | undefined> {
    return this.#read(() => pki.getConsumer(this.#sql, name));
  }

  listConsumers(): Promise<ConsumerRecord[]> {
    return this.#read(() => pki.listConsumers(this.#sql));
  }

  getConsumerGeneration(consumer: string, generation: number): Promise<ConsumerGenerationRecord | undefined> {
    return this.#read(() => pki.getConsumerGeneration(this.#sql, consumer, generation));
  }

  reportConsumerAgent(
    agent: ConsumerAgentRecord,
    consumerUpdate: { consumer: ConsumerRecord; expectedRevision: number } | null,
    audit: AuditEntry,
  ): Promise<void> {
    return this.#write(() => {
      pki.upsertConsumerAgent(this.#sql, agent);
      if (consumerUpdate !== null) pki.writeConsumer(this.#sql, consumerUpdate);
      this.#appendAuditRow(audit);
    });
  }

  listConsumerAgents(consumer: string): Promise<ConsumerAgentRecord[]> {
    return this.#read(() => pki.listConsumerAgents(this.#sql, consumer));
  }

  // ---- audit ------------------------------------------------------------------

  appendAudit(entry: AuditEntry): Promise<AuditRecord> {
    return this.#write(() => this.#appendAuditRow(entry));
  }

  /**
   * Filters are exact matches. `afterSeq` is a cursor in the listing's order:
   * `seq > afterSeq` oldest first, `seq < afterSeq` newest first.
   * At most `limit` records (default 1000, at most 10000).
   */
  listAudit(query: AuditQuery = {}): Promise<AuditRecord[]> {
    return this.#read(() => {
      const where: string[] = [];
      const params: Record<string, string | number> = {
        limit: query.limit === undefined ? AUDIT_DEFAULT_LIMIT : checkLimit(query.limit, AUDIT_MAX_LIMIT),
      };
      if (query.afterSeq !== undefined) {
        where.push(query.descending === true ? "seq < :afterSeq" : "seq > :afterSeq");
        params.afterSeq = query.afterSeq;
      }
      for (const field of ["principal", "action", "resource"] as const) {
        const value = query[field];
        if (value !== undefined) {
          where.push(`${field} = :${field}`);
          params[field] = value;
        }
      }
      const sql = `SELECT * FROM audit_log ${where.length > 0 ? `WHERE ${where.join(" AND ")}` : ""}
        ORDER BY seq ${query.descending === true ? "DESC" : "ASC"} LIMIT :limit`;
      return this.#all<AuditRow>(sql, params).map(auditFromRow);
    });
  }

  readAuditRange(fromSeq: number, toSeq: number): Promise<StoredAuditRecord[]> {
    return this.#read(() =>
      this.#all<AuditRow>("SELECT * FROM audit_log WHERE seq BETWEEN ? AND ? ORDER BY seq", fromSeq, toSeq).map(
        storedAuditFromRow,
      ),
    );
  }

  readAuditAfter(afterSeq: number, limit: number): Promise<StoredAuditRecord[]> {
    return this.#read(() =>
      this.#all<AuditRow>(
        "SELECT * FROM audit_log WHERE seq > ? ORDER BY seq LIMIT ?",
        afterSeq,
        checkLimit(limit, AUDIT_MAX_LIMIT),
      ).map(storedAuditFromRow),
    );
  }

  async useAuditChainKey(key: KeyObject): Promise<number> {
    const keyedFrom = await this.#write(() => {
      if (this.#headStale) this.#loadHead();
      const next = this.#head.seq + 1;
      const recorded = this.#keyedFrom;
      if (recorded === undefined) {
        this.#run("INSERT INTO store_meta (name, value) VALUES (?, ?)", CHAIN_KEYED_FROM, String(next));
        // Until the key is set below, appends fail rather than go unkeyed.
        this.#keyedFrom = next;
        return next;
      }
      // Only ever the seq after the head is recorded, and the head only grows.
      if (!Number.isSafeInteger(recorded) || recorded < 1 || recorded > next) {
        throw new CustosError(
          "audit_unavailable",
          `the audit chain is keyed from record ${String(recorded)} but the log ends at record ${this.#head.seq}: ` +
            "records were deleted or the store meta was edited",
        );
      }
      return recorded;
    });
    // Set once the first keyed seq is durable; from here #loadHead no longer re-reads it.
    this.#chainKey = key;
    return keyedFrom;
  }

  /** Read from the table, not the in-memory head, so a verifier sees what is actually stored. */
  auditHead(): Promise<{ seq: number; hash: string }> {
    return this.#read(
      () =>
        this.#get<{ seq: number; hash: string }>("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1") ?? {
          seq: 0,
          hash: GENESIS_HASH,
        },
    );
  }

  /** `conflict` if a checkpoint at that seq exists. */
  addAuditCheckpoint(checkpoint: AuditCheckpoint): Promise<void> {
    return this.#write(() => {
      this.#run(
        `INSERT INTO audit_checkpoints (seq, hash, time, key_label, key_id, scheme, signature)
         VALUES (?, ?, ?, ?, ?, ?, ?)`,
        checkpoint.seq,
        checkpoint.hash,
        checkpoint.time,
        checkpoint.keyLabel,
        checkpoint.keyId,
        checkpoint.scheme,
        checkpoint.signature,
      );
    });
  }

  listAuditCheckpoints(): Promise<AuditCheckpoint[]> {
    return this.#read(() =>
      this.#all<CheckpointRow>("SELECT * FROM audit_checkpoints ORDER BY seq").map(checkpointFromRow),
    );
  }

  // ---- lifecycle ----------------------------------------------------------------

  async snapshot(): Promise<{ path: string; auditSeq: number }> {
    if (this.#closed) throw unavailable(undefined, "the store is closed");
    return copyDatabase(this.#db);
  }

  /** Lets queued writes settle, then closes the database. Idempotent. */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      await this.#queue.close();
      this.#closed = true;
      this.#statements.clear();
      this.#db.close();
      this.#lock?.release();
      this.#queue.release();
    })();
    return this.#closing;
  }
}

/** A revocation's audit entry, naming the tokens revoked with it (made, directly or not, by those it revoked). */
function withRevokedTokens(audit: AuditEntry, ids: readonly string[]): AuditEntry {
  return ids.length === 0 ? audit : { ...audit, details: { ...audit.details, revokedWith: ids } };
}

function singular(table: "keys" | "users" | "groups" | "policies"): string {
  return { keys: "key", users: "user", groups: "group", policies: "policy" }[table];
}

function checkLimit(limit: number, max: number): number {
  if (!Number.isSafeInteger(limit) || limit < 1) {
    throw new CustosError("invalid_request", "limit must be a positive integer");
  }
  return Math.min(limit, max);
}

/** Only the entry's own fields: a caller passing a richer object must not smuggle extra data into the chain. */
function pickEntry(e: AuditEntry): Omit<AuditEntry, "details"> {
  return {
    time: e.time,
    requestId: e.requestId,
    principal: e.principal,
    source: e.source,
    action: e.action,
    resource: e.resource,
    outcome: e.outcome,
    errorCode: e.errorCode,
  };
}

/**
 * Details as they will read back: JSON round-tripped, so values JSON changes
 * (Dates, Buffers, undefined) hash the same at write time as at verify time.
 */
function normaliseDetails(details: Readonly<Record<string, unknown>>): Record<string, unknown> {
  let value: unknown;
  try {
    value = JSON.parse(JSON.stringify(details ?? {}));
  } catch (e) {
    throw new CustosError("invalid_request", "audit details are not JSON-serialisable", { cause: e });
  }
  if (value === null || typeof value !== "object" || Array.isArray(value)) {
    throw new CustosError("invalid_request", "audit details must be a JSON object");
  }
  return value as Record<string, unknown>;
}
