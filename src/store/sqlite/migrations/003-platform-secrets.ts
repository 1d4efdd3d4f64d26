import type { Migration } from "./types.js";

/**
 * Orgs, spaces, apps and their owners; versioned secrets and shared-secret grants.
 * A secret's value is stored only as a KMS ciphertext (under its app's key or
 * `secrets.shared`): there is no plaintext column, and a destroyed version keeps
 * its dates but not its ciphertext. Deleting an app takes its owners, secrets and
 * grants with it (its key is destroyed by the platform service first).
 */
export const platformSecretsSchema: Migration = {
  version: 3,
  name: "platform-secrets",
  sql: `
CREATE TABLE platform_orgs (
  name       TEXT PRIMARY KEY,
  created_at TEXT NOT NULL
) STRICT;

CREATE TABLE platform_spaces (
  org        TEXT NOT NULL REFERENCES platform_orgs (name),
  name       TEXT NOT NULL,
  created_at TEXT NOT NULL,
  PRIMARY KEY (org, name)
) STRICT;

CREATE TABLE platform_apps (
  id         TEXT PRIMARY KEY,
  org        TEXT NOT NULL,
  space      TEXT NOT NULL,
  name       TEXT NOT NULL,
  key_name   TEXT NOT NULL UNIQUE,
  created_at TEXT NOT NULL,
  updated_at TEXT NOT NULL,
  revision   INTEGER NOT NULL,
  UNIQUE (org, space, name),
  FOREIGN KEY (org, space) REFERENCES platform_spaces (org, name)
) STRICT;

-- One row per owner: a user or a group, which take their ownerships with them when deleted.
CREATE TABLE platform_app_owners (
  app_id   TEXT NOT NULL REFERENCES platform_apps (id) ON DELETE CASCADE,
  user_id  TEXT REFERENCES users (id) ON DELETE CASCADE,
  group_id TEXT REFERENCES groups (id) ON DELETE CASCADE,
  CHECK ((user_id IS NULL) <> (group_id IS NULL))
) STRICT;
CREATE UNIQUE INDEX platform_app_owner_users ON platform_app_owners (app_id, user_id) WHERE user_id IS NOT NULL;
CREATE UNIQUE INDEX platform_app_owner_groups ON platform_app_owners (app_id, group_id) WHERE group_id IS NOT NULL;
CREATE INDEX platform_app_owners_user ON platform_app_owners (user_id) WHERE user_id IS NOT NULL;
CREATE INDEX platform_app_owners_group ON platform_app_owners (group_id) WHERE group_id IS NOT NULL;

CREATE TABLE secrets (
  path            TEXT PRIMARY KEY,
  app_id          TEXT REFERENCES platform_apps (id) ON DELETE CASCADE,
  current_version INTEGER NOT NULL CHECK (current_version >= 0),
  max_versions    INTEGER NOT NULL CHECK (max_versions BETWEEN 1 AND 100),
  cas_required    INTEGER NOT NULL CHECK (cas_required IN (0, 1)),
  custom_metadata TEXT NOT NULL,
  created_at      TEXT NOT NULL,
  updated_at      TEXT NOT NULL,
  revision        INTEGER NOT NULL,
  CHECK ((app_id IS NULL) = (substr(path, 1, 7) = 'shared/'))
) STRICT;
CREATE INDEX secrets_app ON secrets (app_id, path);

CREATE TABLE secret_versions (
  path         TEXT NOT NULL REFERENCES secrets (path) ON DELETE CASCADE,
  version      INTEGER NOT NULL CHECK (version >= 1),
  created_at   TEXT NOT NULL,
  deleted_at   TEXT,
  destroyed_at TEXT,
  ciphertext   TEXT,
  PRIMARY KEY (path, version),
  CHECK ((destroyed_at IS NULL) = (ciphertext IS NOT NULL))
) STRICT;

-- target: a shared secret's path, or a folder prefix ending in '/'.
CREATE TABLE secret_grants (
  target     TEXT NOT NULL CHECK (substr(target, 1, 7) = 'shared/'),
  app_id     TEXT NOT NULL REFERENCES platform_apps (id) ON DELETE CASCADE,
  granted_by TEXT NOT NULL,
  created_at TEXT NOT NULL,
  PRIMARY KEY (target, app_id)
) STRICT;
CREATE INDEX secret_grants_app ON secret_grants (app_id, target);
`,
};
