import { CustosError } from "../../errors/index.js";
import type {
  SecretChange,
  SecretGrantRecord,
  SecretRecord,
  SecretStore,
  SecretVersionInfo,
  SecretVersionRecord,
} from "../secrets.js";
import type { Area, Sql } from "./area.js";

/** The secrets area's statements, run through the store's reads and group-committed writes. */
export function secretStore(area: Area): SecretStore {
  return {
    getSecret: (path) => area.read((sql) => readSecret(sql, path)),
    getSecretVersion: (path, version) =>
      area.read((sql) => {
        const row = sql.get<VersionRow>("SELECT * FROM secret_versions WHERE path = ? AND version = ?", path, version);
        return row === undefined ? undefined : versionFromRow(row);
      }),
    listSecretNames: (prefix, limit, after) =>
      area.read((sql) =>
        sql
          .all<{ path: string }>(LIST_NAMES, {
            from: after === undefined ? prefix : prefix + after,
            first: prefix.length + 1,
            end: upperBound(prefix),
            limit,
          })
          .map((r) => nameOf(r.path, prefix)),
      ),
    liveVersionsForApp: (appId) =>
      area.read((sql) =>
        sql
          .all<VersionRow>(
            `SELECT v.* FROM secrets s
             JOIN secret_versions v ON v.path = s.path
             WHERE (s.app_id = :app
                    OR (s.app_id IS NULL AND EXISTS (
                          SELECT 1 FROM secret_grants g WHERE g.app_id = :app
                          AND (g.target = s.path
                               OR (substr(g.target, -1) = '/' AND substr(s.path, 1, length(g.target)) = g.target)))))
               AND v.deleted_at IS NULL AND v.destroyed_at IS NULL
               AND v.version = (SELECT max(w.version) FROM secret_versions w
                                WHERE w.path = s.path AND w.deleted_at IS NULL AND w.destroyed_at IS NULL)
             ORDER BY s.app_id IS NULL, s.path`,
            { app: appId },
          )
          .map(versionFromRow),
      ),
    changeSecret: (change, audit) =>
      area.write((sql, record) => {
        applyChange(sql, change);
        record(audit);
      }),
    deleteSecret: (path, expectedRevision, audit) =>
      area.write((sql, record) => {
        const current = sql.get<{ revision: number }>("SELECT revision FROM secrets WHERE path = ?", path);
        if (current === undefined) throw new CustosError("not_found", `secret ${path} not found`);
        if (current.revision !== expectedRevision) throw stale(path);
        sql.run("DELETE FROM secret_versions WHERE path = ?", path);
        sql.run("DELETE FROM secrets WHERE path = ?", path);
        record(audit);
      }),

    putGrants: (grants, audit) =>
      area.write((sql, record) => {
        const kept = grants.map((g) => {
          sql.run(
            `INSERT INTO secret_grants (target, app_id, granted_by, created_at) VALUES (?, ?, ?, ?)
             ON CONFLICT (target, app_id) DO NOTHING`,
            g.target,
            g.appId,
            g.grantedBy,
            g.createdAt,
          );
          const row = sql.get<GrantRow>(
            "SELECT * FROM secret_grants WHERE target = ? AND app_id = ?",
            g.target,
            g.appId,
          );
          return grantFromRow(row as GrantRow);
        });
        record(audit);
        return kept;
      }),
    listGrants: () =>
      area.read((sql) => sql.all<GrantRow>("SELECT * FROM secret_grants ORDER BY target, app_id").map(grantFromRow)),
    isGranted: (appId, path) =>
      area.read(
        (sql) =>
          sql.get(
            `SELECT 1 FROM secret_grants WHERE app_id = ?
             AND (target = ? OR (substr(target, -1) = '/' AND substr(?, 1, length(target)) = target)) LIMIT 1`,
            appId,
            path,
            path,
          ) !== undefined,
      ),
  };
}

/**
 * The first path of each name under a prefix (`:first` is where names start in a
 * path, `:end` is past every path of the prefix), by a skip scan of the primary
 * key: from one path, the next name's first path is the first one past the whole
 * folder (from `<prefix><folder>0`, as `0` follows `/`) or, after a secret, past
 * the path itself. Each step is one index seek, however many secrets a folder
 * holds. The walk starts at `:from`, the prefix and the cursor (a name as listed)
 * if any, which is not itself returned.
 */
const LIST_NAMES = `
  WITH RECURSIVE walk(step, path) AS (
    VALUES (0, :from)
    UNION ALL
    SELECT step + 1, (
      SELECT s.path FROM secrets s
      WHERE s.path >= (CASE instr(substr(walk.path, :first), '/')
                         WHEN 0 THEN walk.path
                         ELSE substr(walk.path, 1, :first + instr(substr(walk.path, :first), '/') - 2) || '0' END)
        AND s.path < :end AND s.path <> walk.path
      ORDER BY s.path LIMIT 1)
    FROM walk WHERE walk.path IS NOT NULL AND step < :limit
  )
  SELECT path FROM walk WHERE step > 0 AND path IS NOT NULL`;

/** The name `path` is listed under below `prefix`: its next segment, with `/` when more follow. */
function nameOf(path: string, prefix: string): string {
  const rest = path.slice(prefix.length);
  const slash = rest.indexOf("/");
  return slash === -1 ? rest : rest.slice(0, slash + 1);
}

/** The smallest string greater than every string starting with `prefix`. */
function upperBound(prefix: string): string {
  const last = prefix.charCodeAt(prefix.length - 1);
  return prefix.slice(0, -1) + String.fromCharCode(last + 1);
}

function stale(path: string): CustosError {
  return new CustosError("conflict", `secret ${path} was changed by another writer`);
}

function applyChange(sql: Sql, change: SecretChange): void {
  const s = change.secret;
  const metadata = JSON.stringify(s.customMetadata);
  if (change.expectedRevision === null) {
    sql.run(
      `INSERT INTO secrets (path, app_id, current_version, max_versions, cas_required, custom_metadata,
         created_at, updated_at, revision) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`,
      s.path,
      s.appId,
      s.currentVersion,
      s.maxVersions,
      s.casRequired ? 1 : 0,
      metadata,
      s.createdAt,
      s.updatedAt,
      s.revision,
    );
  } else {
    const result = sql.run(
      `UPDATE secrets SET current_version = ?, max_versions = ?, cas_required = ?, custom_metadata = ?,
         updated_at = ?, revision = ? WHERE path = ? AND revision = ?`,
      s.currentVersion,
      s.maxVersions,
      s.casRequired ? 1 : 0,
      metadata,
      s.updatedAt,
      s.revision,
      s.path,
      change.expectedRevision,
    );
    if (result.changes === 0) {
      if (sql.get("SELECT 1 FROM secrets WHERE path = ?", s.path) === undefined) {
        throw new CustosError("not_found", `secret ${s.path} not found`);
      }
      throw stale(s.path);
    }
  }
  const v = change.addVersion;
  if (v !== undefined) {
    sql.run(
      `INSERT INTO secret_versions (path, version, created_at, deleted_at, destroyed_at, ciphertext)
       VALUES (?, ?, ?, ?, ?, ?)`,
      s.path,
      v.version,
      v.createdAt,
      v.deletedAt,
      v.destroyedAt,
      v.ciphertext,
    );
  }
  if (change.deleteVersions !== undefined) {
    for (const n of change.deleteVersions.versions) {
      sql.run(
        "UPDATE secret_versions SET deleted_at = ? WHERE path = ? AND version = ? AND deleted_at IS NULL",
        change.deleteVersions.at,
        s.path,
        n,
      );
    }
  }
  for (const n of change.undeleteVersions ?? []) {
    sql.run("UPDATE secret_versions SET deleted_at = NULL WHERE path = ? AND version = ?", s.path, n);
  }
  if (change.destroyVersions !== undefined) {
    for (const n of change.destroyVersions.versions) {
      sql.run(
        `UPDATE secret_versions SET destroyed_at = ?, ciphertext = NULL
         WHERE path = ? AND version = ? AND destroyed_at IS NULL`,
        change.destroyVersions.at,
        s.path,
        n,
      );
    }
  }
  for (const n of change.pruneVersions ?? []) {
    sql.run("DELETE FROM secret_versions WHERE path = ? AND version = ?", s.path, n);
  }
}

interface SecretRow {
  path: string;
  app_id: string | null;
  current_version: number;
  max_versions: number;
  cas_required: number;
  custom_metadata: string;
  created_at: string;
  updated_at: string;
  revision: number;
}

interface VersionRow {
  path: string;
  version: number;
  created_at: string;
  deleted_at: string | null;
  destroyed_at: string | null;
  ciphertext: string | null;
}

function readSecret(sql: Sql, path: string): SecretRecord | undefined {
  const r = sql.get<SecretRow>("SELECT * FROM secrets WHERE path = ?", path);
  if (r === undefined) return undefined;
  const versions = sql
    .all<Omit<VersionRow, "ciphertext" | "path">>(
      "SELECT version, created_at, deleted_at, destroyed_at FROM secret_versions WHERE path = ? ORDER BY version",
      path,
    )
    .map(
      (v): SecretVersionInfo => ({
        version: v.version,
        createdAt: v.created_at,
        deletedAt: v.deleted_at,
        destroyedAt: v.destroyed_at,
      }),
    );
  return {
    path: r.path,
    appId: r.app_id,
    currentVersion: r.current_version,
    maxVersions: r.max_versions,
    casRequired: r.cas_required === 1,
    customMetadata: JSON.parse(r.custom_metadata) as Record<string, string>,
    createdAt: r.created_at,
    updatedAt: r.updated_at,
    revision: r.revision,
    versions,
  };
}

function versionFromRow(r: VersionRow): SecretVersionRecord {
  return {
    path: r.path,
    version: r.version,
    createdAt: r.created_at,
    deletedAt: r.deleted_at,
    destroyedAt: r.destroyed_at,
    ciphertext: r.ciphertext,
  };
}

interface GrantRow {
  target: string;
  app_id: string;
  granted_by: string;
  created_at: string;
}

function grantFromRow(r: GrantRow): SecretGrantRecord {
  return { target: r.target, appId: r.app_id, grantedBy: r.granted_by, createdAt: r.created_at };
}
