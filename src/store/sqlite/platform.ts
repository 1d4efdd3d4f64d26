import { CustosError } from "../../errors/index.js";
import type { AppRecord, OrgRecord, PlatformStore, SpaceRecord } from "../platform.js";
import type { Area, Sql } from "./area.js";

/** The platform area's statements, run through the store's reads and group-committed writes. */
export function platformStore(area: Area): PlatformStore {
  return {
    createOrg: (org, audit) =>
      area.write((sql, record) => {
        sql.run("INSERT INTO platform_orgs (name, created_at) VALUES (?, ?)", org.name, org.createdAt);
        record(audit);
      }),
    getOrg: (name) =>
      area.read((sql) => orgFromRow(sql.get<OrgRow>("SELECT * FROM platform_orgs WHERE name = ?", name))),
    listOrgs: () =>
      area.read((sql) => sql.all<OrgRow>("SELECT * FROM platform_orgs ORDER BY name").map((r) => orgFromRow(r)!)),
    deleteOrg: (name, audit) =>
      area.write((sql, record) => {
        if (sql.get("SELECT 1 FROM platform_spaces WHERE org = ? LIMIT 1", name) !== undefined) {
          throw new CustosError("conflict", `org ${name} still has spaces`);
        }
        if (sql.run("DELETE FROM platform_orgs WHERE name = ?", name).changes === 0) {
          throw new CustosError("not_found", `org ${name} not found`);
        }
        record(audit);
      }),

    createSpace: (space, audit) =>
      area.write((sql, record) => {
        if (sql.get("SELECT 1 FROM platform_orgs WHERE name = ?", space.org) === undefined) {
          throw new CustosError("not_found", `org ${space.org} not found`);
        }
        sql.run(
          "INSERT INTO platform_spaces (org, name, created_at) VALUES (?, ?, ?)",
          space.org,
          space.name,
          space.createdAt,
        );
        record(audit);
      }),
    getSpace: (org, name) =>
      area.read((sql) =>
        spaceFromRow(sql.get<SpaceRow>("SELECT * FROM platform_spaces WHERE org = ? AND name = ?", org, name)),
      ),
    listSpaces: (org) =>
      area.read((sql) =>
        sql
          .all<SpaceRow>("SELECT * FROM platform_spaces WHERE org = ? ORDER BY name", org)
          .map((r) => spaceFromRow(r)!),
      ),
    deleteSpace: (org, name, audit) =>
      area.write((sql, record) => {
        if (sql.get("SELECT 1 FROM platform_apps WHERE org = ? AND space = ? LIMIT 1", org, name) !== undefined) {
          throw new CustosError("conflict", `space ${org}/${name} still has apps`);
        }
        if (sql.run("DELETE FROM platform_spaces WHERE org = ? AND name = ?", org, name).changes === 0) {
          throw new CustosError("not_found", `space ${org}/${name} not found`);
        }
        record(audit);
      }),

    createApp: (app, audit) =>
      area.write((sql, record) => {
        if (sql.get("SELECT 1 FROM platform_spaces WHERE org = ? AND name = ?", app.org, app.space) === undefined) {
          throw new CustosError("not_found", `space ${app.org}/${app.space} not found`);
        }
        sql.run(
          `INSERT INTO platform_apps (id, org, space, name, key_name, created_at, updated_at, revision)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
          app.id,
          app.org,
          app.space,
          app.name,
          app.keyName,
          app.createdAt,
          app.updatedAt,
          app.revision,
        );
        insertOwners(sql, app);
        record(audit);
      }),
    getApp: (org, space, name) =>
      area.read((sql) =>
        appFromRow(
          sql,
          sql.get<AppRow>("SELECT * FROM platform_apps WHERE org = ? AND space = ? AND name = ?", org, space, name),
        ),
      ),
    getAppById: (id) =>
      area.read((sql) => appFromRow(sql, sql.get<AppRow>("SELECT * FROM platform_apps WHERE id = ?", id))),
    listApps: (org, space) =>
      area.read((sql) =>
        sql
          .all<AppRow>("SELECT * FROM platform_apps WHERE org = ? AND space = ? ORDER BY name", org, space)
          .map((r) => appFromRow(sql, r)!),
      ),
    appsOwnedBy: (userIds, groupIds) =>
      area.read((sql) =>
        sql
          // The id lists travel as JSON arrays: one statement whatever their lengths.
          .all<AppRow>(
            `SELECT * FROM platform_apps WHERE id IN (SELECT app_id FROM platform_app_owners
               WHERE user_id IN (SELECT value FROM json_each(?)) OR group_id IN (SELECT value FROM json_each(?)))
             ORDER BY org, space, name`,
            JSON.stringify(userIds),
            JSON.stringify(groupIds),
          )
          .map((r) => appFromRow(sql, r)!),
      ),
    updateApp: (app, expectedRevision, audit) =>
      area.write((sql, record) => {
        const result = sql.run(
          "UPDATE platform_apps SET updated_at = ?, revision = ? WHERE id = ? AND revision = ?",
          app.updatedAt,
          app.revision,
          app.id,
          expectedRevision,
        );
        if (result.changes === 0) {
          if (sql.get("SELECT 1 FROM platform_apps WHERE id = ?", app.id) === undefined) {
            throw new CustosError("not_found", `app ${app.org}/${app.space}/${app.name} not found`);
          }
          throw new CustosError("conflict", `app ${app.org}/${app.space}/${app.name} was changed by another writer`);
        }
        sql.run("DELETE FROM platform_app_owners WHERE app_id = ?", app.id);
        insertOwners(sql, app);
        record(audit);
      }),
    beginDeleteApp: (id, at, audit) =>
      area.write((sql, record) => {
        checkDeletable(sql, id);
        sql.run("UPDATE platform_apps SET deleting_since = coalesce(deleting_since, ?) WHERE id = ?", at, id);
        record(audit);
      }),
    deleteApp: (id, audit) =>
      area.write((sql, record) => {
        checkDeletable(sql, id);
        // Versions first so that secure_delete overwrites every ciphertext page now, not at a later vacuum.
        sql.run("DELETE FROM secret_versions WHERE path IN (SELECT path FROM secrets WHERE app_id = ?)", id);
        sql.run("DELETE FROM platform_apps WHERE id = ?", id);
        // SSH sudo grants keep the app's name for their history, so nothing cascades to them: end the live ones
        // here, or they would stay listed as active and count as rights of their holders. Its instances are
        // already deregistered, so no certificate issued under them reaches anything.
        const ended = sql
          .all<{ id: string }>(
            "UPDATE ssh_sudo_grants SET revoked_at = ? WHERE app_id = ? AND revoked_at IS NULL AND expires_at > ? RETURNING id",
            audit.time,
            id,
            audit.time,
          )
          .map((r) => r.id);
        record(ended.length === 0 ? audit : { ...audit, details: { ...audit.details, sshSudoGrantsEnded: ended } });
      }),
  };
}

/**
 * `not_found` for an app that is gone; `conflict` while it has an instance that is
 * not stopped: its secrets and key would go from under it. The broker's
 * registration checks the app in its own transaction, so of a registration and this
 * check exactly one sees the other.
 */
function checkDeletable(sql: Sql, id: string): void {
  const app = sql.get<{ org: string; space: string; name: string }>(
    "SELECT org, space, name FROM platform_apps WHERE id = ?",
    id,
  );
  if (app === undefined) throw new CustosError("not_found", "app not found");
  const live = sql.get<{ n: number }>(
    "SELECT count(*) AS n FROM broker_instances WHERE app_id = ? AND state != 'stopped'",
    id,
  );
  if (live !== undefined && live.n > 0) {
    throw new CustosError(
      "conflict",
      `app ${app.org}/${app.space}/${app.name} has ${live.n} live instances: deregister them first`,
    );
  }
}

interface OrgRow {
  name: string;
  created_at: string;
}

function orgFromRow(r: OrgRow | undefined): OrgRecord | undefined {
  return r === undefined ? undefined : { name: r.name, createdAt: r.created_at };
}

interface SpaceRow {
  org: string;
  name: string;
  created_at: string;
}

function spaceFromRow(r: SpaceRow | undefined): SpaceRecord | undefined {
  return r === undefined ? undefined : { org: r.org, name: r.name, createdAt: r.created_at };
}

interface AppRow {
  id: string;
  org: string;
  space: string;
  name: string;
  key_name: string;
  created_at: string;
  updated_at: string;
  revision: number;
}

function appFromRow(sql: Sql, r: AppRow | undefined): AppRecord | undefined {
  if (r === undefined) return undefined;
  const owners = sql.all<{ user_id: string | null; group_id: string | null }>(
    "SELECT user_id, group_id FROM platform_app_owners WHERE app_id = ? ORDER BY rowid",
    r.id,
  );
  return {
    id: r.id,
    org: r.org,
    space: r.space,
    name: r.name,
    keyName: r.key_name,
    ownerUsers: owners.flatMap((o) => (o.user_id === null ? [] : [o.user_id])),
    ownerGroups: owners.flatMap((o) => (o.group_id === null ? [] : [o.group_id])),
    createdAt: r.created_at,
    updatedAt: r.updated_at,
    revision: r.revision,
  };
}

function insertOwners(sql: Sql, app: AppRecord): void {
  for (const user of new Set(app.ownerUsers)) {
    sql.run("INSERT INTO platform_app_owners (app_id, user_id) VALUES (?, ?)", app.id, user);
  }
  for (const group of new Set(app.ownerGroups)) {
    sql.run("INSERT INTO platform_app_owners (app_id, group_id) VALUES (?, ?)", app.id, group);
  }
}
