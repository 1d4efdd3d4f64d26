import type { Migration } from "./types.js";

/**
 * The first schema. JSON-valued fields (policy lists, rules, audit details) are
 * TEXT holding JSON; booleans are INTEGER 0/1; key material and public keys are
 * BLOB. Times are ISO-8601 strings, which sort correctly as text.
 */
export const initialSchema: Migration = {
  version: 1,
  name: "initial",
  sql: `
CREATE TABLE store_meta (
  name  TEXT PRIMARY KEY,
  value TEXT NOT NULL
) STRICT;

CREATE TABLE settings (
  name  TEXT PRIMARY KEY,
  value TEXT NOT NULL
) STRICT;

CREATE TABLE keys (
  id                      TEXT PRIMARY KEY,
  name                    TEXT NOT NULL UNIQUE,
  purpose                 TEXT NOT NULL,
  algorithm               TEXT NOT NULL,
  state                   TEXT NOT NULL,
  description             TEXT NOT NULL,
  created_at              TEXT NOT NULL,
  updated_at              TEXT NOT NULL,
  revision                INTEGER NOT NULL,
  latest_version          INTEGER NOT NULL,
  min_decryption_version  INTEGER NOT NULL,
  rotation_period_seconds INTEGER,
  next_rotation_at        TEXT,
  destroy_at              TEXT
) STRICT;
CREATE INDEX keys_next_rotation_at ON keys (next_rotation_at) WHERE next_rotation_at IS NOT NULL;
CREATE INDEX keys_destroy_at ON keys (destroy_at) WHERE destroy_at IS NOT NULL;

CREATE TABLE key_versions (
  key_id      TEXT NOT NULL REFERENCES keys (id),
  version     INTEGER NOT NULL,
  state       TEXT NOT NULL,
  created_at  TEXT NOT NULL,
  wrapped_key BLOB,
  hsm_label   TEXT,
  hsm_id      TEXT,
  public_key  BLOB,
  PRIMARY KEY (key_id, version)
) STRICT;

CREATE TABLE users (
  id            TEXT PRIMARY KEY,
  name          TEXT NOT NULL UNIQUE,
  password_hash TEXT,
  policies      TEXT NOT NULL,
  disabled      INTEGER NOT NULL CHECK (disabled IN (0, 1)),
  created_at    TEXT NOT NULL,
  updated_at    TEXT NOT NULL,
  revision      INTEGER NOT NULL
) STRICT;

CREATE TABLE groups (
  id         TEXT PRIMARY KEY,
  name       TEXT NOT NULL UNIQUE,
  policies   TEXT NOT NULL,
  created_at TEXT NOT NULL,
  updated_at TEXT NOT NULL,
  revision   INTEGER NOT NULL
) STRICT;

-- position keeps the member order the caller gave.
CREATE TABLE group_members (
  group_id TEXT NOT NULL REFERENCES groups (id) ON DELETE CASCADE,
  user_id  TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
  position INTEGER NOT NULL,
  PRIMARY KEY (group_id, user_id)
) STRICT;
CREATE INDEX group_members_user ON group_members (user_id);

-- user_id has no foreign key: revoked tokens outlive their user as history.
CREATE TABLE tokens (
  id         TEXT PRIMARY KEY,
  hash       TEXT NOT NULL UNIQUE,
  kind       TEXT NOT NULL,
  name       TEXT NOT NULL,
  user_id    TEXT,
  policies   TEXT,
  created_at TEXT NOT NULL,
  expires_at TEXT,
  revoked_at TEXT
) STRICT;
CREATE INDEX tokens_user ON tokens (user_id);

CREATE TABLE policies (
  name        TEXT PRIMARY KEY,
  description TEXT NOT NULL,
  rules       TEXT NOT NULL,
  created_at  TEXT NOT NULL,
  updated_at  TEXT NOT NULL,
  revision    INTEGER NOT NULL
) STRICT;

CREATE TABLE sudo_grants (
  id           TEXT PRIMARY KEY,
  subject_type TEXT NOT NULL,
  subject_id   TEXT NOT NULL,
  policies     TEXT NOT NULL,
  reason       TEXT NOT NULL,
  granted_by   TEXT NOT NULL,
  created_at   TEXT NOT NULL,
  expires_at   TEXT NOT NULL,
  revoked_at   TEXT
) STRICT;

CREATE TABLE audit_log (
  seq        INTEGER PRIMARY KEY,
  time       TEXT NOT NULL,
  request_id TEXT NOT NULL,
  principal  TEXT NOT NULL,
  source     TEXT NOT NULL,
  action     TEXT NOT NULL,
  resource   TEXT NOT NULL,
  outcome    TEXT NOT NULL,
  error_code TEXT,
  details    TEXT NOT NULL,
  prev_hash  TEXT NOT NULL,
  hash       TEXT NOT NULL
) STRICT;
CREATE INDEX audit_log_principal ON audit_log (principal, seq);
CREATE INDEX audit_log_action ON audit_log (action, seq);
CREATE INDEX audit_log_resource ON audit_log (resource, seq);

CREATE TABLE audit_checkpoints (
  seq       INTEGER PRIMARY KEY,
  hash      TEXT NOT NULL,
  time      TEXT NOT NULL,
  key_label TEXT NOT NULL,
  key_id    TEXT NOT NULL,
  scheme    TEXT NOT NULL,
  signature TEXT NOT NULL
) STRICT;
`,
};
